"""The HTML views: the search box and its results grid (``/``), one page with its heat-map (``/page/{id}``)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from jevsearch.engine import ALPHA
from jevsearch.serve import pages
from jevsearch.serve.routes.common import (
    State,
    image_search,
    info,
    parse_page_id,
    query_of,
    search,
    token_of,
)
from jevsearch.serve.state import AppState

router = APIRouter()


def _results_page(state: AppState, result: dict, link: dict, title: str, q: str = "",
                  mode: str | None = None) -> str:
    link = dict(link, k=result["k"], **({"mode": mode} if mode else {}))
    body = pages.results(result["hits"], link, result["passage_marks"])
    return pages.layout(title, body, info(state), q=q, k=result["k"], max_k=state.limits.max_k, mode=mode)


@router.get("/", response_class=HTMLResponse)
def home(state: State, q: str | None = None, k: str | None = None, qi: str | None = None,
         mode: str | None = None):
    if q is None and qi is None:
        return pages.layout("Search", "", info(state), max_k=state.limits.max_k)
    query, _, link = query_of(state, q, qi)  # ?qi=: the results of an uploaded image again (the page's way back)
    result = search(state, query, state.limits.check_k(k), qi, marks=True, mode=mode)
    return _results_page(state, result, link, q if q is not None else "Image search", q or "", mode)


@router.post("/", response_class=HTMLResponse)
async def home_image(state: State, request: Request, k: str | None = None):
    result = await image_search(state, request, k, marks=True)
    return HTMLResponse(await run_in_threadpool(
        lambda: _results_page(state, result, {"qi": result["query"]["image"]}, "Image search")))


@router.get("/page/{page_id}", response_class=HTMLResponse)
def page(state: State, page_id: str, q: str | None = None, qi: str | None = None, token: str | None = None,
         k: str | None = None):
    pid = parse_page_id(page_id)
    query, key, link = query_of(state, q, qi)
    kept_k = state.limits.check_k(k) if k else None
    with state.work("explaining the page") as eng:
        hit = eng.page_hit(pid)
        ex = state.explanation(eng, pid, query, key) if query is not None else None
    chosen = token_of(ex, token) if ex is not None else None
    body = pages.page_view(hit, ex, dict(link, **({"k": kept_k} if kept_k else {})), chosen,
                           eng.source_problem(hit), ALPHA)
    return pages.layout(f"{os.path.basename(hit.path)} p. {hit.page}", body, info(state), q=q or "", k=kept_k,
                        max_k=state.limits.max_k)
