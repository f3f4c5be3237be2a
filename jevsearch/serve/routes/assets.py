"""Pictures (page images, heat-maps, thumbnails, the legend, uploaded query images), the source documents
and the app's static files. Errors here are JSON (see :func:`jevsearch.serve.app.wants_json`)."""

from __future__ import annotations

import mimetypes
import os
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from jevsearch.engine import ALPHA, THUMBNAIL_WIDTH, heatmap_legend, image_mime_type
from jevsearch.errors import InvalidInputError
from jevsearch.serve import pages
from jevsearch.serve.routes.common import (
    HttpError,
    State,
    parse_page_id,
    png,
    query_of,
    token_of,
)

router = APIRouter()


@router.get("/query-image/{name}")
def query_image(state: State, name: str):
    return png(state.query_image(name.removesuffix(".png")))


@router.get("/legend.png")
def legend(alpha: float = ALPHA):
    _check_alpha(alpha)
    return png(heatmap_legend(alpha), cache="max-age=86400")


@router.get("/heatmap/{name}")
def heatmap(state: State, name: str, q: str | None = None, qi: str | None = None, token: str | None = None,
            alpha: float = ALPHA):
    pid = parse_page_id(name.removesuffix(".png"))
    query, key, _ = query_of(state, q, qi)
    if query is None:
        raise InvalidInputError("heat-map: no query (hint: add ?q=words)")
    _check_alpha(alpha)
    with state.work("drawing the heat-map") as eng:
        ex = state.explanation(eng, pid, query, key)
        image = ex.overlay(token_of(ex, token), alpha)
    return png(image)


@router.get("/page-image/{name}")
def page_image(state: State, name: str):
    pid = parse_page_id(name.removesuffix(".png"))
    with state.work("rendering the page") as eng:
        image, _ = eng.display_image(eng.page_hit(pid))
    return png(image)


@router.get("/thumb/{page_id}")
def thumbnail(state: State, page_id: str, w: int | None = None):
    pid = parse_page_id(page_id)
    with state.work("reading a thumbnail") as eng:
        hit = eng.page_hit(pid)
        view = eng.page_data(hit, vectors=False)[1]
        if w is None and view is not None and view.thumbnail:
            data = view.thumbnail  # as stored: no re-encoding
            return Response(data, media_type=image_mime_type(data), headers={"Cache-Control": "max-age=3600"})
        image = eng.thumbnail(hit, width=w if w is not None else THUMBNAIL_WIDTH)
    return png(image)


@router.get("/doc/{page_id}")
def document(state: State, page_id: str):
    pid = parse_page_id(page_id)
    with state.work("opening the document") as eng:
        hit = eng.page_hit(pid)
    f = eng.open_source(hit)  # outside the engine lock (hashing a file); checked: the very file indexed (same SHA-256), else DocumentError
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


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204)  # none: browsers ask anyway, and a 404 is an error in their console


@router.get("/static/{name}")
def static(name: str):
    if name not in pages.STATIC:
        raise HttpError(404, f"no such file: {name[:40]!r}")
    media, text, _ = pages.STATIC[name]
    return Response(text, media_type=media, headers={"Cache-Control": "max-age=86400"})


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise InvalidInputError(f"alpha: {alpha} (hint: a number from 0 to 1)")
