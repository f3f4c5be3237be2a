"""The FastAPI app: HTML pages, page pictures, source documents and a JSON API over one read-only index.

Routes (``{page_id}``: ``Hit.page_id``, the only way a request names anything in the index)::

    GET  /                       search box; ?q=...&k=... renders the results grid
    POST /                       multipart ``image``: search with an image
    GET  /page/{page_id}         the page large, heat-map of the query (?q= or ?qi=), token chips (?token=i)
    GET  /heatmap/{page_id}.png  the heat-map overlay (?q=|?qi=, ?token=i)
    GET  /page-image/{page_id}.png  the page (no heat-map)
    GET  /thumb/{page_id}        the stored thumbnail (?w= other widths)
    GET  /doc/{page_id}          the source document (a PDF opens at the page with #page=N)
    GET  /api/search?q=&k=       JSON: the hits of ``jevsearch search --json`` plus page_id and links
    POST /api/search             the same for an uploaded ``image``
    GET  /api/explain/{page_id}?q=|qi=   JSON: tokens, meaningful, token_scores, maps, grid, source, note
    GET  /api/status             JSON: model loading/ready, what runs now (pages poll it to show progress)
    GET  /api/info               JSON: the index's counts and model

Errors are a message on the page (HTML) or ``{"error": message}`` (API and pictures) with a 4xx
status: 400 bad input, 404 no such page / no index, 410 source file gone or changed, 413 upload too
large, 411 upload without a length. Anything unexpected is logged and answered 500 "internal error",
never with a stack trace. Documents are served only for page ids in the index and only while the file
on disk has the SHA-256 recorded at indexing (read from the handle that is then streamed), so no request
can reach any other file (``../``, absolute paths and symlinks are never even looked at).
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import os
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jevsearch import visuals
from jevsearch.docresults import to_json
from jevsearch.errors import (
    DocumentError,
    InvalidInputError,
    JevsearchError,
    NotAnIndexError,
    PageNotFoundError,
)
from jevsearch.ingest import thumbnail as thumbs
from jevsearch.search import explain as explain_maps
from jevsearch.search.explain import ALPHA
from jevsearch.serve import pages
from jevsearch.serve.security import Guard, HostCheck, scrub_paths
from jevsearch.serve.state import AppState, Limits, UploadError

log = logging.getLogger(__name__)

#: Multipart framing around an uploaded image, allowed on top of Limits.max_upload_bytes.
_FORM_OVERHEAD = 64 << 10


class HttpError(JevsearchError):
    """A request the app refuses, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _status_of(e: Exception) -> tuple[int, str]:
    if isinstance(e, HttpError):
        return e.status, str(e)
    if isinstance(e, UploadError):
        return e.status, str(e)
    if isinstance(e, (PageNotFoundError, NotAnIndexError)):
        return 404, e.cli_message() if isinstance(e, NotAnIndexError) else str(e)
    if isinstance(e, DocumentError):
        return 410, str(e)
    if isinstance(e, InvalidInputError):
        return 400, str(e)
    if isinstance(e, JevsearchError):
        return 409, str(e)  # e.g. a corrupt index: the request was fine, the index cannot serve it
    log.error("internal error", exc_info=e)
    return 500, f"internal error ({type(e).__name__}); see the server log"


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/heatmap/", "/page-image/", "/thumb/", "/static/"))


def build_app(index_path, *, model=None, limits: Limits | None = None, warm_up: bool = True,
              hosts: HostCheck | None = None) -> FastAPI:
    """See :func:`jevsearch.serve.create_app`."""
    state = AppState(index_path, model=model, limits=limits)
    hosts = hosts or HostCheck.for_bind()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm_up:
            state.start_warm_up()
        yield
        state.close()

    app = FastAPI(title="jevsearch", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.jev = state

    def error_response(request: Request, status: int, message: str, paths=()) -> Response:
        message = scrub_paths(message, (os.path.abspath(state.index_path), state.index_path, *paths))
        if _wants_json(request):
            return JSONResponse({"error": message, "status": status}, status_code=status)
        q = request.query_params.get("q", "")
        return HTMLResponse(pages.layout("Error", pages.error_box(message), None, q=q[:200],
                                         max_k=state.limits.max_k), status_code=status)

    @app.middleware("http")
    async def _unexpected_error(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:  # noqa: BLE001 - a bug: logged with its trace, answered without it
            return error_response(request, *_status_of(e))

    app.add_middleware(Guard, hosts=hosts)  # added last: outside the others, so its headers go on every answer

    @app.exception_handler(JevsearchError)
    async def _jev_error(request: Request, e: JevsearchError):
        return error_response(request, *_status_of(e), paths=[getattr(e, "path", None)])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = "no such page (hint: start from the search page, /)" if e.status_code == 404 else str(e.detail)
        return error_response(request, e.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(request, 400, "bad request: " + "; ".join(
            f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()))

    def info() -> dict:
        with state.work("reading the index") as eng:
            stats, manifest = eng.stats(), eng.manifest
        return {"name": os.path.basename(os.path.abspath(state.index_path)), "documents": stats["documents"],
                "pages": stats["pages"], "model": (manifest.get("model") or {}).get("source"),
                "text_index": bool(manifest.get("text_index"))}

    # -- search -----------------------------------------------------------------------------------
    def search(query, k: int, qid: str | None = None, marks: bool = False, mode: str | None = None) -> dict:
        """The hits as JSON rows; ``marks``: also ``passage_marks`` {page id: [(start, end, title)]},
        the words each text passage matched (for the HTML grid)."""
        with state.work("searching" if isinstance(query, str) else "searching with the image") as eng:
            hits = eng.search(query, k=k, mode=mode or None)
            passage_marks = {h.page_id: pages.passage_marks(state.explanation(eng, h.page_id, query, _key(query, qid)))
                             for h in hits if marks and visuals.is_passage(h)}
        link = {"q": query} if qid is None else {"qi": qid}
        rows = [dict(row, thumbnail=f"/thumb/{row['page_id']}", page_url=f"/page/{row['page_id']}?" + urlencode(link),
                     document_url=f"/doc/{row['page_id']}#page={row['page']}") for row in to_json(hits)]
        out = {"query": query if qid is None else {"image": qid}, "k": k, "hits": rows}
        return dict(out, passage_marks=passage_marks) if marks else out

    async def read_upload(request: Request) -> bytes:
        length = request.headers.get("content-length")
        limit = state.limits.max_upload_bytes
        if length is None:
            raise HttpError(411, "upload: no Content-Length (hint: send the image as a normal form upload)")
        if not length.isdigit() or int(length) > limit + _FORM_OVERHEAD:
            raise UploadError(f"image: more than {limit} bytes (hint: a smaller image)", 413)
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise UploadError("image: no file in the form field 'image' (hint: choose an image file)")
        return await upload.read(limit + 1)

    async def image_search(request: Request, k, marks: bool = False) -> dict:
        data = await read_upload(request)

        def work():
            img = state.read_image(data)
            with state.work("reading the query image") as eng:
                qid, prepared = state.remember_query_image(eng, img)
            return search(prepared, state.check_k(k), qid, marks)

        return await run_in_threadpool(work)

    def results_page(result: dict, link: dict, title: str, q: str = "", mode: str | None = None) -> str:
        link = dict(link, k=result["k"], **({"mode": mode} if mode else {}))
        body = pages.results(result["hits"], link, result["passage_marks"])
        return pages.layout(title, body, info(), q=q, k=result["k"], max_k=state.limits.max_k, mode=mode)

    @app.get("/", response_class=HTMLResponse)
    def home(q: str | None = None, k: str | None = None, qi: str | None = None, mode: str | None = None):
        if q is None and qi is None:
            return pages.layout("Search", "", info(), max_k=state.limits.max_k)
        query, _, link = query_of(q, qi)  # ?qi=: the results of an uploaded image again (the page's way back)
        result = search(query, state.check_k(k), qi, marks=True, mode=mode)
        return results_page(result, link, q if q is not None else "Image search", q or "", mode)

    @app.post("/", response_class=HTMLResponse)
    async def home_image(request: Request, k: str | None = None):
        result = await image_search(request, k, marks=True)
        return HTMLResponse(await run_in_threadpool(
            lambda: results_page(result, {"qi": result["query"]["image"]}, "Image search")))

    @app.get("/api/search")
    def api_search(q: str | None = None, k: str | None = None, mode: str | None = None):
        return search(state.check_query(q), state.check_k(k), mode=mode)

    @app.post("/api/search")
    async def api_search_image(request: Request, k: str | None = None):
        return await image_search(request, k)

    # -- one page ---------------------------------------------------------------------------------
    def query_of(q: str | None, qi: str | None):
        """(query, cache key, link params) of ?q= or ?qi= (None when neither)."""
        if q is not None and qi is not None:
            raise InvalidInputError("query: give q or qi, not both")
        if q is not None:
            q = state.check_query(q)
            return q, ("text", q), {"q": q}
        if qi is not None:
            return state.query_image(qi), ("image", qi), {"qi": qi}
        return None, None, {}

    def token_of(ex, token: str | None) -> int | None:
        if token is None or token == "":
            return None
        try:
            return ex.token_index(int(token))
        except ValueError:
            raise InvalidInputError(f"token: {token!r} (hint: the token's index, as in the page's links)") from None

    @app.get("/page/{page_id}", response_class=HTMLResponse)
    def page(page_id: str, q: str | None = None, qi: str | None = None, token: str | None = None,
             k: str | None = None):
        pid = _page_id(page_id)
        query, key, link = query_of(q, qi)
        kept_k = state.check_k(k) if k else None
        with state.work("explaining the page") as eng:
            hit = eng.page_hit(pid)
            ex = state.explanation(eng, pid, query, key) if query is not None else None
        chosen = token_of(ex, token) if ex is not None else None
        body = pages.page_view(hit, ex, dict(link, **({"k": kept_k} if kept_k else {})), chosen,
                               visuals.source_problem(hit), ALPHA)
        return pages.layout(f"{os.path.basename(hit.path)} p. {hit.page}", body, info(), q=q or "", k=kept_k,
                            max_k=state.limits.max_k)

    @app.get("/query-image/{name}")
    def query_image(name: str):
        return _png(state.query_image(name.removesuffix(".png")))

    @app.get("/legend.png")
    def legend(alpha: float = ALPHA):
        if not 0 <= alpha <= 1:
            raise InvalidInputError(f"alpha: {alpha} (hint: a number from 0 to 1)")
        return _png(explain_maps.legend(alpha), cache="max-age=86400")

    @app.get("/heatmap/{name}")
    def heatmap(name: str, q: str | None = None, qi: str | None = None, token: str | None = None,
                alpha: float = ALPHA):
        pid = _page_id(name.removesuffix(".png"))
        query, key, _ = query_of(q, qi)
        if query is None:
            raise InvalidInputError("heat-map: no query (hint: add ?q=words)")
        if not 0 <= alpha <= 1:
            raise InvalidInputError(f"alpha: {alpha} (hint: a number from 0 to 1)")
        with state.work("drawing the heat-map") as eng:
            ex = state.explanation(eng, pid, query, key)
            image = ex.overlay(token_of(ex, token), alpha)
        return _png(image)

    @app.get("/page-image/{name}")
    def page_image(name: str):
        pid = _page_id(name.removesuffix(".png"))
        with state.work("rendering the page") as eng:
            image, _ = visuals.display_image(eng, eng.page_hit(pid))
        return _png(image)

    @app.get("/thumb/{page_id}")
    def thumbnail(page_id: str, w: int | None = None):
        pid = _page_id(page_id)
        with state.work("reading a thumbnail") as eng:
            hit = eng.page_hit(pid)
            view = eng.page_data(hit, vectors=False)[1]
            if w is None and view is not None and view.thumbnail:
                data = view.thumbnail  # as stored: no re-encoding
                return Response(data, media_type=thumbs.mime_type(data), headers={"Cache-Control": "max-age=3600"})
            image = eng.thumbnail(hit, width=w if w is not None else thumbs.WIDTH)
        return _png(image)

    @app.get("/doc/{page_id}")
    def document(page_id: str):
        pid = _page_id(page_id)
        with state.work("opening the document") as eng:
            hit = eng.page_hit(pid)
        f = visuals.open_source(hit)  # checked: the very file indexed (same SHA-256), else DocumentError
        name = os.path.basename(hit.path)
        kind = hit.metadata.get("kind")
        media = "application/pdf" if kind == "pdf" else mimetypes.guess_type(name)[0] or "application/octet-stream"
        size = os.fstat(f.fileno()).st_size

        def chunks():
            with f:
                while chunk := f.read(1 << 16):
                    yield chunk

        return StreamingResponse(chunks(), media_type=media, headers={
            "Content-Length": str(size),
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"})

    @app.get("/api/explain/{page_id}")
    def api_explain(page_id: str, q: str | None = None, qi: str | None = None):
        pid = _page_id(page_id)
        query, key, _ = query_of(q, qi)
        if query is None:
            raise InvalidInputError("explain: no query (hint: add ?q=words)")
        with state.work("explaining the page") as eng:
            ex = state.explanation(eng, pid, query, key)
        out = {"page_id": pid, "path": ex.hit.path, "page": ex.hit.page, "kind": ex.kind, "score": ex.score,
               "summary": ex.summary(), "tokens": ex.tokens, "labels": [ex.label(i) for i in range(len(ex.tokens))],
               "meaningful": ex.meaningful.tolist(), "token_scores": [float(x) for x in ex.token_scores],
               "source": ex.source, "note": ex.note}
        if ex.kind == "text":
            return dict(out, matches=[ex.matches(i) if m else [] for i, m in enumerate(ex.meaningful)])
        return dict(out, grid=list(ex.grid), scale=list(ex.scale()), maps=ex.maps.round(5).tolist())

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)  # none: browsers ask anyway, and a 404 is an error in their console

    @app.get("/static/{name}")
    def static(name: str):
        if name not in pages.STATIC:
            raise HttpError(404, f"no such file: {name[:40]!r}")
        media, text, _ = pages.STATIC[name]
        return Response(text, media_type=media, headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/status")
    def api_status():
        return state.status()

    @app.get("/api/info")
    def api_info():
        return info()

    return app


def _page_id(text: str) -> int:
    """A page id from the URL: digits only (anything else, e.g. ``../x`` or ``/etc/passwd``, is no page)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise PageNotFoundError(f"page id {text[:40]!r}: no such page (hint: page ids come from search results)")
    return int(text)


def _png(image, cache: str = "no-store") -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)  # level 3: faster than the default, a little larger
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": cache})


def _key(query, qid: str | None):
    """The explanation cache key of a query (as query_of makes it)."""
    return ("text", query) if qid is None else ("image", qid)



