"""What the routers share: the app state as a dependency, request parsing and the search itself.

A route takes the app's :class:`AppState` as a parameter typed :data:`State`::

    @router.get("/api/status")
    def api_status(state: State):
        return state.status()
"""

from __future__ import annotations

import io
import os
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from jevsearch.engine import is_passage, to_json
from jevsearch.errors import InvalidInputError, JevsearchError, PageNotFoundError
from jevsearch.limits import UploadError
from jevsearch.serve import pages
from jevsearch.serve.state import AppState

#: Multipart framing around an uploaded image, allowed on top of Limits.max_upload_bytes.
FORM_OVERHEAD = 64 << 10


class HttpError(JevsearchError):
    """A request the app refuses, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def app_state(request: Request) -> AppState:
    """The app's one :class:`AppState` (``app.state.jev``)."""
    return request.app.state.jev


#: A route parameter typed ``State`` receives the app's AppState.
State = Annotated[AppState, Depends(app_state)]


def info(state: AppState) -> dict:
    """The index's name, counts and model, for the page header and ``/api/info``."""
    with state.work("reading the index") as eng:
        stats, manifest = eng.stats(), eng.manifest
    return {"name": os.path.basename(os.path.abspath(state.index_path)), "documents": stats["documents"],
            "pages": stats["pages"], "model": (manifest.get("model") or {}).get("source"),
            "text_index": bool(manifest.get("text_index"))}


def search(state: AppState, query, k: int, qid: str | None = None, marks: bool = False,
           mode: str | None = None) -> dict:
    """The hits as JSON rows; ``marks``: also ``passage_marks`` {page id: [(start, end, title)]},
    the words each text passage matched (for the HTML grid)."""
    with state.work("searching" if isinstance(query, str) else "searching with the image") as eng:
        hits = eng.search(query, k=k, mode=mode or None)
        passage_marks = {h.page_id: pages.passage_marks(state.explanation(eng, h.page_id, query, key(query, qid)))
                         for h in hits if marks and is_passage(h)}
    link = {"q": query} if qid is None else {"qi": qid}
    rows = [dict(row, thumbnail=f"/thumb/{row['page_id']}", page_url=f"/page/{row['page_id']}?" + urlencode(link),
                 document_url=f"/doc/{row['page_id']}#page={row['page']}") for row in to_json(hits)]
    out = {"query": query if qid is None else {"image": qid}, "k": k, "hits": rows}
    return dict(out, passage_marks=passage_marks) if marks else out


async def read_upload(state: AppState, request: Request) -> bytes:
    """The bytes of the form's ``image`` file, refused before reading when over the upload limit."""
    length = request.headers.get("content-length")
    limit = state.limits.max_upload_bytes
    if length is None:
        raise HttpError(411, "upload: no Content-Length (hint: send the image as a normal form upload)")
    if not length.isdigit() or int(length) > limit + FORM_OVERHEAD:
        raise UploadError(f"image: more than {limit} bytes (hint: a smaller image)", 413)
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise UploadError("image: no file in the form field 'image' (hint: choose an image file)")
    return await upload.read(limit + 1)


async def image_search(state: AppState, request: Request, k, marks: bool = False) -> dict:
    """:func:`search` with the uploaded image, remembered so its results and pages can link back."""
    data = await read_upload(state, request)

    def work():
        img = state.limits.read_image(data)
        with state.work("reading the query image") as eng:
            qid, prepared = state.remember_query_image(eng, img)
        return search(state, prepared, state.limits.check_k(k), qid, marks)

    return await run_in_threadpool(work)


def query_of(state: AppState, q: str | None, qi: str | None):
    """(query, cache key, link params) of ?q= or ?qi= (None when neither)."""
    if q is not None and qi is not None:
        raise InvalidInputError("query: give q or qi, not both")
    if q is not None:
        q = state.limits.check_query(q)
        return q, ("text", q), {"q": q}
    if qi is not None:
        return state.query_image(qi), ("image", qi), {"qi": qi}
    return None, None, {}


def token_of(ex, token: str | None) -> int | None:
    """The query token ``?token=`` names in explanation ``ex`` (None when not given)."""
    if token is None or token == "":
        return None
    try:
        return ex.token_index(int(token))
    except ValueError:
        raise InvalidInputError(f"token: {token!r} (hint: the token's index, as in the page's links)") from None


def parse_page_id(text: str) -> int:
    """A page id from the URL: digits only (anything else, e.g. ``../x`` or ``/etc/passwd``, is no page)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise PageNotFoundError(f"page id {text[:40]!r}: no such page (hint: page ids come from search results)")
    return int(text)


def png(image, cache: str = "no-store") -> Response:
    """A PIL image as a PNG response."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)  # level 3: faster than the default, a little larger
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": cache})


def key(query, qid: str | None):
    """The explanation cache key of a query (as query_of makes it)."""
    return ("text", query) if qid is None else ("image", qid)
