"""jevsearch where users already are: LangChain and LlamaIndex retrievers and an MCP server for agents.

Each is an optional extra, imported only by its own module (the core never imports these frameworks)::

    pip install 'jevsearch[langchain]'    # jevsearch.integrations.langchain.JevsearchRetriever
    pip install 'jevsearch[llamaindex]'   # jevsearch.integrations.llamaindex.JevsearchRetriever
    pip install 'jevsearch[mcp]'          # jevsearch.integrations.mcp / `jevsearch mcp --index I`

What they share (:class:`IndexHandle`): one engine per retriever or server, opened read-only once and
reused; engine calls made one at a time under a lock (the model and its caches are not for concurrent
threads), so a framework's thread pools and ``asyncio.gather`` get the hits sequential calls get; the web
app's bounds on queries, ``k`` and uploaded images (:class:`jevsearch.limits.Limits`); page images
sized for a vision model, from the stored thumbnail or rendered from the unchanged source
(:meth:`jevsearch.engine.Engine.thumbnail`'s rules).

>>> handle = IndexHandle("indexes/papers")                       # doctest: +SKIP
>>> hits = handle.search("revenue by region", k=5)               # doctest: +SKIP
>>> png = handle.page_png(hits[0], width=1024)                   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import importlib
import io
import logging
import os
import threading

from jevsearch.errors import InvalidInputError, JevsearchError
from jevsearch.limits import Limits

log = logging.getLogger(__name__)

#: Page images for a vision model: wide enough to read body text, within what vision APIs take whole.
DEFAULT_IMAGE_WIDTH = 1024
MAX_IMAGE_WIDTH = 2048
MIN_IMAGE_WIDTH = 64

__all__ = ["DEFAULT_IMAGE_WIDTH", "IndexHandle", "hit_record", "png", "require"]


def require(module: str, extra: str, what: str):
    """Import ``module`` (a framework the core never imports), or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise JevsearchError(f"{what}: {e.name or module} is not installed "
                             f"(hint: pip install 'jevsearch[{extra}]')") from None


def _open_index(index, model=None):
    """Open the index at ``index`` read-only (the one place the integrations open an index): one index or a
    sharded one, through the one search surface."""
    import jevsearch

    return jevsearch.open(index, read_only=True, model=model)


def hit_record(hit) -> dict:
    """A page hit as plain JSON values: the search JSON's fields (:meth:`Hit.to_dict`) and doc_id."""
    return dict(hit.to_dict(), doc_id=hit.doc_id, score=float(hit.score))


class IndexHandle:
    """One open index and the bounds on what may be asked of it (see the module docstring).

    ``index``: a path (opened read-only now, closed by :meth:`close`) or an open engine (used as it is,
    left open). ``model``: the recorded model's snapshot, if it moved. ``limits``: the web app's bounds.
    """

    def __init__(self, index, *, model=None, limits: Limits | None = None):
        if isinstance(index, (str, os.PathLike)):
            self.engine, self._owned = _open_index(index, model), True
        elif model is not None:
            raise InvalidInputError("model: only with an index path (hint: the open engine has its model)")
        else:
            self.engine, self._owned = index, False
        self.limits = limits or Limits()
        self._lock = threading.Lock()

    def check_width(self, width) -> int:
        if isinstance(width, bool) or not isinstance(width, int) or not MIN_IMAGE_WIDTH <= width <= MAX_IMAGE_WIDTH:
            raise InvalidInputError(f"width: {width!r} (hint: a whole number from {MIN_IMAGE_WIDTH} to "
                                    f"{MAX_IMAGE_WIDTH} pixels, e.g. {DEFAULT_IMAGE_WIDTH})")
        return width

    def search(self, query, k, where: dict | None = None, group_by: str | None = None):
        """Engine.search with a text (bounded as in the web app) or a PIL image; ``k`` from 1 to max_k."""
        if isinstance(query, str) or query is None:
            query = self.limits.check_query(query)
        k = self.limits.check_k(k)
        options = {"where": where} if where else {}
        if group_by:
            options["group_by"] = group_by
        with self._lock:
            return self.engine.search(query, k=k, **options)

    def image_query(self, data: str):
        """An image query sent as base64 text: the web app's upload bounds (bytes, pixels, format)."""
        if len(data) > (self.limits.max_upload_bytes + 2) // 3 * 4 + 4:
            raise InvalidInputError(f"image: more than {self.limits.max_upload_bytes} bytes "
                                    "(hint: a smaller image)")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise InvalidInputError("image: not base64 (hint: the image file's bytes, base64-encoded)") from None
        return self.limits.read_image(raw)

    def page(self, page_id):
        """The page ``page_id`` as a Hit; PageNotFoundError when the index has no such page."""
        with self._lock:
            return self.engine.page_hit(page_id)

    def page_png(self, hit, width: int = DEFAULT_IMAGE_WIDTH) -> bytes:
        """The page as PNG bytes, ``width`` px wide (Engine.thumbnail: stored, or from the unchanged source)."""
        width = self.check_width(width)
        with self._lock:
            image = self.engine.thumbnail(hit, width=width)
        return png(image)

    def explain(self, hit, query: str):
        """Engine.explain of the page for a text query."""
        query = self.limits.check_query(query)
        with self._lock:
            return self.engine.explain(hit, query)

    def documents(self, where: dict | None = None) -> list[dict]:
        """Every document (doc_id, pages, tokens, metadata), or those whose metadata matches ``where``."""
        with self._lock:
            docs = self.engine.document_list()
        if not where:
            return docs
        from jevsearch.engine import filter_documents

        return filter_documents(docs, where)

    def warm_up(self) -> None:
        """Load the model and run one search, so the first caller does not wait for either."""
        try:
            if (self.engine.manifest.get("model") or {}).get("identity") is not None:
                with self._lock:
                    self.engine.search("warm up", k=1)
        except JevsearchError as e:
            log.warning("warm-up: %s", e)

    def close(self) -> None:
        """Close the engine if this handle opened it."""
        if self._owned:
            with self._lock:
                self.engine.close()


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)  # level 3: much faster than the default, a little larger
    return buf.getvalue()
