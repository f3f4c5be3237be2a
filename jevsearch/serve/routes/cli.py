"""What ``jevsearch search``/``explain`` ask a running ``jevsearch serve`` instead of loading the model
(the client: :mod:`jevsearch.serve.client`).

Only for holders of this run's token (:mod:`jevsearch.serve.discovery`: each request carries its
HMAC, each answer the server's); without a recorded token (an app made by ``create_app``) these routes
are not there (404). The browser-facing rules stay: the Host check and the headers of
:mod:`jevsearch.serve.security` apply to these routes too, and a web page cannot send the auth header
without a CORS preflight that this app never grants.

The answers are what the local command computes, on the same engine calls and without the web app's
limits (the caller may run the command locally anyway): the hits' JSON rows, the explanation's lines,
the overlay as PNG. An error is ``{"cli_error": ...}``: the exception's type and fields, paths spelled
as the CLI spelled the index, so the CLI raises the same error and prints what it prints locally::

    GET  /api/cli/hello                                    {"index", "identity", "pid"}
    POST /api/cli/search   {query, k, filters, index_as}   {"hits": rows of jevsearch search --json}
    POST /api/cli/explain  {query, page_id, index_as}      {"kind", "summary", "note", "meaningful", "labels", ...}
    POST /api/cli/overlay  {query, page_id, token, alpha, index_as}   image/png
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel

from jevsearch.errors import JevsearchError
from jevsearch.serve import discovery
from jevsearch.serve.routes.common import HttpError, State

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/cli")
#: The search options the CLI passes (as Engine.search takes them).
FILTERS = ("where", "group_by", "mode")


def _nonce(state: State, request: Request) -> str:
    if state.cli_token is None:
        raise HttpError(404, "no such page (hint: the CLI API is on only in `jevsearch serve`)")
    nonce = discovery.check_auth(state.cli_token, request.headers.get(discovery.AUTH_HEADER))
    if nonce is None:
        raise HttpError(403, "the CLI API needs this server's token (hint: jevsearch search finds it by itself)")
    return nonce


#: A route parameter typed ``Nonce`` is the authenticated request's nonce (403 without the token).
Nonce = Annotated[str, Depends(_nonce)]


class _Ask(BaseModel):
    query: str
    index_as: str | None = None  # the index as the CLI spelled it (error messages say it so)


class SearchAsk(_Ask):
    k: int = 10
    filters: dict = {}


class ExplainAsk(_Ask):
    page_id: int


class OverlayAsk(ExplainAsk):
    token: str | None = None
    alpha: float = 0.7


@router.get("/hello")
async def cli_hello(state: State, nonce: Nonce):
    """The index this server holds: its real path and the identity of the folder it opened (None until open)."""
    body = {"index": os.path.realpath(state.index_path), "identity": state.opened_identity, "pid": os.getpid()}
    return _signed(state, nonce, json.dumps(body).encode(), "application/json")


@router.post("/search")
async def cli_search(state: State, nonce: Nonce, ask: SearchAsk):
    unknown = set(ask.filters) - set(FILTERS)
    if unknown:
        raise HttpError(400, f"filters: unknown {sorted(unknown)} (hint: one of {FILTERS})")

    def work():
        from jevsearch.engine import to_json

        with state.work("searching (CLI)") as eng:
            return {"hits": to_json(eng.search(ask.query, k=ask.k, **ask.filters))}

    return await _answer(state, nonce, ask, work)


@router.post("/explain")
async def cli_explain(state: State, nonce: Nonce, ask: ExplainAsk):
    def work():
        ex = _explanation(state, ask, "explaining the page (CLI)")
        out = {"kind": ex.kind, "summary": ex.summary(), "note": ex.note, "meaningful": [bool(m) for m in ex.meaningful],
               "labels": [ex.label(i) for i in range(len(ex.tokens))]}
        if ex.kind == "text":
            out["matches"] = [ex.matches(i) if m else [] for i, m in enumerate(ex.meaningful)]
            out["from_prompt"] = [bool(m) and ex.from_prompt(i) for i, m in enumerate(ex.meaningful)]
        return out

    return await _answer(state, nonce, ask, work)


@router.post("/overlay")
async def cli_overlay(state: State, nonce: Nonce, ask: OverlayAsk):
    def work():
        ex = _explanation(state, ask, "drawing the heat-map (CLI)")
        buf = io.BytesIO()
        ex.overlay(token=ask.token, alpha=ask.alpha).save(buf, format="PNG", compress_level=1)  # lossless: the CLI re-encodes
        return buf.getvalue()

    return await _answer(state, nonce, ask, work)


def _explanation(state, ask, what: str):
    """The (cached) explanation of ``ask.page_id`` for the text ``ask.query``, with ``what`` as the app's status."""
    with state.work(what) as eng:
        return state.explanation(eng, ask.page_id, ask.query, ("text", ask.query))


async def _answer(state, nonce: str, ask: _Ask, work) -> Response:
    """``work()``'s result (a dict as JSON, bytes as PNG) or its error as ``cli_error``, signed."""
    try:
        result = await run_in_threadpool(work)
    except Exception as e:  # noqa: BLE001 - every error goes back to the CLI, which words it
        status, error = describe_error(e, state.index_path, ask.index_as)
        return _signed(state, nonce, json.dumps({"cli_error": error}).encode(), "application/json", status)
    if isinstance(result, bytes):
        return _signed(state, nonce, result, "image/png")
    return _signed(state, nonce, json.dumps(result, ensure_ascii=False).encode(), "application/json")


def _signed(state, nonce: str, body: bytes, media_type: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=media_type,
                    headers={discovery.PROOF_HEADER: discovery.sign(state.cli_token, nonce, "server"),
                             "Cache-Control": "no-store"})


def describe_error(e: BaseException, served_as: str, asked_as: str | None) -> tuple[int, dict]:
    """(HTTP status, the error as data the client raises again: type, message, hint, cli_hint and the
    plain fields), with the index path the server was given spelled as the CLI gave it."""
    def respell(value):
        return _respell(value, served_as, asked_as) if isinstance(value, str) and asked_as else value

    if isinstance(e, JevsearchError):
        fields = {k: respell(list(v) if isinstance(v, tuple) else v) for k, v in vars(e).items()
                  if k not in ("message", "hint", "cli_hint") and _plain(v)}
        return 400, {"type": type(e).__name__, "jevsearch": True, "message": respell(e.message),
                     "hint": respell(e.hint), "cli_hint": respell(e.cli_hint), "fields": fields}
    if isinstance(e, OSError):
        return 500, {"type": "OSError", "errno": e.errno, "strerror": e.strerror,
                     "filename": e.filename if isinstance(e.filename, str) else None, "text": str(e)}
    log.error("internal error answering the CLI", exc_info=e)
    return 500, {"type": type(e).__name__, "text": str(e)}


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(x, str) for x in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _respell(text: str, served_as: str, asked_as: str) -> str:
    """``text`` with the index path ``served_as`` (where it stands as a whole path) written ``asked_as``.

    >>> _respell("idx: not an index (hint: jevsearch verify --index idx)", "idx", "../data/idx")
    '../data/idx: not an index (hint: jevsearch verify --index ../data/idx)'
    >>> _respell("an index.", ".", "idx")
    'an index.'
    """
    if served_as == asked_as:
        return text
    return re.sub(rf"(?<![^\s'\"(`=]){re.escape(served_as)}(?=$|[\s'\":),;`]|/)", lambda _: asked_as, text)
