"""The FastAPI app: HTML pages, page pictures, source documents and a JSON API over one read-only index.

This module builds the app and answers its errors; the routes live in :mod:`jevsearch.serve.routes`
(one router per area: ``html``, ``api``, ``assets``), sharing the app's AppState as ``app.state.jev``.

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
    /api/cli/...                 what `jevsearch search`/`explain` ask (this run's token only: routes/cli.py)

Errors are a message on the page (HTML) or ``{"error": message}`` (API and pictures) with a 4xx
status: 400 bad input, 404 no such page / no index, 410 source file gone or changed, 413 upload too
large, 411 upload without a length. Anything unexpected is logged and answered 500 "internal error",
never with a stack trace. Documents are served only for page ids in the index and only while the file
on disk has the SHA-256 recorded at indexing (read from the handle that is then streamed), so no request
can reach any other file (``../``, absolute paths and symlinks are never even looked at).
"""

from __future__ import annotations

import contextlib
import logging
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from jevsearch.errors import (
    DocumentError,
    InvalidInputError,
    JevsearchError,
    NotAnIndexError,
    PageNotFoundError,
)
from jevsearch.limits import Limits, UploadError
from jevsearch.serve import pages
from jevsearch.serve.routes import api, assets, cli, html
from jevsearch.serve.routes.common import HttpError
from jevsearch.serve.security import Guard, HostCheck, scrub_paths
from jevsearch.serve.state import AppState

log = logging.getLogger(__name__)


def build_app(index_path, *, model=None, limits: Limits | None = None, warm_up: bool = True,
              hosts: HostCheck | None = None, dtype=None) -> FastAPI:
    """See :func:`jevsearch.serve.create_app`."""
    state = AppState(index_path, model=model, limits=limits, dtype=dtype)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm_up:
            state.start_warm_up()
        yield
        state.close()

    app = FastAPI(title="jevsearch", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.jev = state
    _answer_errors(app, state)
    app.add_middleware(Guard, hosts=hosts or HostCheck.for_bind())  # last: outermost, its headers on every answer
    for router in (html.router, api.router, cli.router, assets.router):
        app.include_router(router)
    return app


def _answer_errors(app: FastAPI, state: AppState) -> None:
    """Every error as a message on the page (HTML) or ``{"error": ...}`` (API, pictures), never a trace."""

    def error_response(request: Request, status: int, message: str, paths=()) -> Response:
        message = scrub_paths(message, (os.path.abspath(state.index_path), state.index_path, *paths))
        if wants_json(request):
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


def wants_json(request: Request) -> bool:
    """Whether errors on this path are answered as JSON (the API and everything that is not a page)."""
    return request.url.path.startswith(("/api/", "/heatmap/", "/page-image/", "/thumb/", "/static/"))
