"""The JSON API: search (text or an uploaded image), one page's explanation, the status and the index's info."""

from __future__ import annotations

from fastapi import APIRouter, Request

from jevsearch.errors import InvalidInputError
from jevsearch.serve.routes.common import (
    State,
    image_search,
    info,
    parse_page_id,
    query_of,
    search,
)

router = APIRouter(prefix="/api")


@router.get("/search")
def api_search(state: State, q: str | None = None, k: str | None = None, mode: str | None = None):
    return search(state, state.limits.check_query(q), state.limits.check_k(k), mode=mode)


@router.post("/search")
async def api_search_image(state: State, request: Request, k: str | None = None):
    return await image_search(state, request, k)


@router.get("/explain/{page_id}")
def api_explain(state: State, page_id: str, q: str | None = None, qi: str | None = None):
    pid = parse_page_id(page_id)
    query, key, _ = query_of(state, q, qi)
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


@router.get("/status")
def api_status(state: State):
    return state.status()


@router.get("/info")
def api_info(state: State):
    return info(state)
