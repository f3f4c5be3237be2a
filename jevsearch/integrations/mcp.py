"""An MCP server over a jevsearch index, for agents (``pip install 'jevsearch[mcp]'``; the official ``mcp`` SDK).

``jevsearch mcp --index indexes/papers`` serves it on stdio (an agent's client starts it as a
subprocess); ``--http PORT`` serves streamable HTTP on 127.0.0.1:PORT/mcp instead. Tools, all read-only:

``search(query, k=10, where=None, mode="pages", image=None)``
    The best pages (``mode="documents"``: documents, each with its best pages) as JSON: page_id, path,
    page, score, snippet, metadata. ``image``: search with a base64-encoded image instead of a text.
``get_page(page_id, width=1024)``
    The page as an image (MCP image content, PNG ``width`` px wide) plus its path, page and text layer.
``list_documents(where=None)``
    The indexed documents (doc_id, pages, metadata), those matching ``where`` when given.
``explain(page_id, query)``
    The page with the heat-map of where ``query`` matched, plus each query token's score.

The same bounds as the web app (:class:`jevsearch.serve.state.Limits`: query length, ``k`` from 1 to
100, image bytes and pixels); a page is named only by the page id a search returned, and its picture
comes from the stored thumbnail or the unchanged source file (Engine.thumbnail's rules). Refusals
(bad arguments, a page id not in the index, a source file gone) are MCP tool errors with the message.

>>> from jevsearch.integrations.mcp import build_server    # doctest: +SKIP
>>> build_server("indexes/papers").run()                    # stdio, as `jevsearch mcp --index indexes/papers`
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from typing import Any, Literal

from jevsearch.errors import InvalidInputError, JevsearchError
from jevsearch.integrations import (
    DEFAULT_IMAGE_WIDTH,
    IndexHandle,
    hit_record,
    png,
    require,
)

__all__ = ["build_server", "run"]

_INSTRUCTIONS = ("Search a jevsearch index of document pages (PDF pages, images, text passages). `search` "
                 "finds pages for a question and returns page ids; `get_page` shows a page as an image with "
                 "its text; `explain` shows where a query matched on a page; `list_documents` lists documents.")


def build_server(index, *, model=None, limits=None, warm_up: bool = True):
    """An ``mcp.server.MCPServer`` serving the index at ``index`` (opened read-only now, so a bad path
    fails here). ``model``: the recorded model's snapshot if it moved; ``limits``: the web app's bounds;
    ``warm_up``: load the model in the background now, so the first search does not wait for it."""
    require("mcp", "mcp", "jevsearch mcp")
    from mcp.server import MCPServer
    from mcp.types import ImageContent, TextContent, ToolAnnotations

    handle = IndexHandle(index, model=model, limits=limits)
    server = MCPServer(name="jevsearch", instructions=_INSTRUCTIONS, log_level="WARNING")
    reading = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                              open_world_hint=False)

    @server.tool(annotations=reading)
    def search(query: str | None = None, k: int = 10, where: dict[str, Any] | None = None,
               mode: Literal["pages", "documents"] = "pages", image: str | None = None) -> dict[str, Any]:
        """Search the index's pages with a text query (or a base64-encoded image), best first. `where`
        filters on document metadata, e.g. {"team": "finance", "year": {"$gte": 2023}}; mode "documents"
        ranks documents with their best pages. Each hit's page_id names the page for get_page/explain."""
        with _refusals():
            if image is not None and query is not None:
                raise InvalidInputError("search: give query or image, not both")
            q = handle.image_query(image) if image is not None else query
            results = handle.search(q, k, where, group_by="document" if mode == "documents" else None)
            if mode == "documents":
                return {"documents": [{"doc_id": d.doc_id, "path": d.path, "score": float(d.score),
                                       "metadata": d.metadata, "pages": [_brief(p) for p in d.pages]}
                                      for d in results]}
            return {"hits": [_brief(h) for h in results]}

    @server.tool(annotations=reading, structured_output=False)
    def get_page(page_id: int, width: int = DEFAULT_IMAGE_WIDTH) -> list:
        """The page `page_id` (from search) as a PNG image `width` px wide (64-2048), with its document
        path, page number and text layer."""
        with _refusals():
            hit = handle.page(page_id)
            data = handle.page_png(hit, width)
        about = {"page_id": hit.page_id, "path": hit.path, "page": hit.page, "metadata": hit.metadata,
                 "text": hit.text or ""}
        return [ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type="image/png"),
                TextContent(text=json.dumps(about, ensure_ascii=False))]

    @server.tool(annotations=reading)
    def list_documents(where: dict[str, Any] | None = None) -> dict[str, Any]:
        """The indexed documents (doc_id, pages, metadata), or those whose metadata matches `where`."""
        with _refusals():
            docs = handle.documents(where)
        return {"documents": [{"doc_id": d["doc_id"], "pages": d["pages"], "metadata": d["metadata"]} for d in docs]}

    @server.tool(annotations=reading, structured_output=False)
    def explain(page_id: int, query: str) -> list:
        """Where `query` matched on page `page_id`: the page with a heat-map (PNG; bright = similar)
        and each query token's score (the page's score is their sum)."""
        with _refusals():
            ex = handle.explain(handle.page(page_id), query)
            data = png(ex.overlay())
        tokens = [{"token": t, "score": float(s)} for t, s, m in zip(ex.tokens, ex.token_scores, ex.meaningful) if m]
        about = {"page_id": page_id, "path": ex.hit.path, "page": ex.hit.page, "score": float(ex.score),
                 "tokens": tokens, "note": ex.note or None}
        return [ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type="image/png"),
                TextContent(text=json.dumps(about, ensure_ascii=False))]

    if warm_up:
        threading.Thread(target=handle.warm_up, name="jevsearch-warm-up", daemon=True).start()
    server.jevsearch = handle  # the open index, for the caller to close
    return server


def run(index, *, http: int | None = None, model=None) -> None:
    """Serve the index until the client disconnects (stdio) or until interrupted (``http``: a port on
    127.0.0.1, streamable HTTP at /mcp)."""
    server = build_server(index, model=model)
    try:
        if http is None:
            server.run()
        else:
            server.run("streamable-http", host="127.0.0.1", port=http)
    finally:
        server.jevsearch.close()


def _brief(hit) -> dict:
    record = hit_record(hit)
    del record["doc_id"]  # the path, again
    return record


@contextlib.contextmanager
def _refusals():
    """A jevsearch error becomes an MCP tool error with its message (the SDK logs it without a trace)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except JevsearchError as e:
        raise ToolError(str(e)) from None
