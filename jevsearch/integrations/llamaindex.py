"""A LlamaIndex retriever over a jevsearch index (``pip install 'jevsearch[llamaindex]'``).

A ``llama_index.core`` :class:`~llama_index.core.retrievers.BaseRetriever`: ``retrieve``/``aretrieve``,
callbacks, instrumentation and query engines work as for any retriever. Each page hit becomes a
``NodeWithScore`` (best first, ``score`` the page's MaxSim score) around a ``TextNode`` whose text is the
page's text (a scanned page without a text layer: its snippet, often empty), whose ``id_`` is
``jevsearch-page-<page_id>`` and whose source (``ref_doc_id``) is the document; its ``metadata`` is the
document's metadata plus ``path``, ``doc_id``, ``page``, ``page_id`` (these win over metadata keys of the
same names). ``include_image=True`` gives ``ImageNode`` s instead, with the page as a base64 PNG
(``image_width`` px wide, for a vision model). A ``QueryBundle`` with an ``image_path`` and no text
searches with that image.

>>> from jevsearch.integrations.llamaindex import JevsearchRetriever                   # doctest: +SKIP
>>> nodes = JevsearchRetriever(index="indexes/papers", k=5).retrieve("revenue by region")  # doctest: +SKIP
>>> nodes[0].score, nodes[0].node.metadata["page"], nodes[0].node.ref_doc_id            # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64

from jevsearch.integrations import DEFAULT_IMAGE_WIDTH, IndexHandle, require

require("llama_index.core", "llamaindex", "jevsearch.integrations.llamaindex")

from llama_index.core.callbacks import CallbackManager  # noqa: E402 - after require() names the extra
from llama_index.core.retrievers import BaseRetriever  # noqa: E402 - after require() names the extra
from llama_index.core.schema import (  # noqa: E402 - after require() names the extra
    ImageNode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

__all__ = ["JevsearchRetriever"]

#: Bookkeeping fields of the ingest: kept in the metadata, not shown to the LLM or embedded.
_HIDDEN = ["sha256", "size", "mtime_ns", "added", "page_id", "doc_id"]


class JevsearchRetriever(BaseRetriever):
    """Pages of a jevsearch index for a query, best first (see the module docstring).

    index: the index's path (opened read-only once, here) or an open Engine. k: pages per query (1 to
    100). where: a metadata filter as in Engine.search. include_image / image_width: ImageNodes with
    the page as a PNG. model: the recorded model's local snapshot, if it moved.
    """

    def __init__(self, index, k: int = 5, *, where: dict | None = None, include_image: bool = False,
                 image_width: int = DEFAULT_IMAGE_WIDTH, model: str | None = None,
                 callback_manager: CallbackManager | None = None, verbose: bool = False):
        handle = IndexHandle(index, model=model)
        try:
            self.k = handle.limits.check_k(k)
            self.image_width = handle.check_width(image_width) if include_image else image_width
        except BaseException:
            handle.close()
            raise
        self._handle, self.where, self.include_image = handle, where, include_image
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not query and query_bundle.image_path:
            from PIL import Image

            with Image.open(query_bundle.image_path) as img:
                query = img.convert("RGB")
        hits = self._handle.search(query, self.k, self.where)
        return [NodeWithScore(node=self._node(hit), score=float(hit.score)) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # In a worker thread, so the event loop runs on while the engine searches.
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def _node(self, hit) -> TextNode:
        metadata = {**hit.metadata, "path": hit.path, "doc_id": hit.doc_id, "page": hit.page,
                    "page_id": hit.page_id}
        fields = {"id_": f"jevsearch-page-{hit.page_id}", "text": hit.text or hit.snippet or "", "metadata": metadata,
                  "excluded_llm_metadata_keys": list(_HIDDEN), "excluded_embed_metadata_keys": list(_HIDDEN),
                  "relationships": {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)}}
        if not self.include_image:
            return TextNode(**fields)
        png = self._handle.page_png(hit, self.image_width)
        return ImageNode(image=base64.b64encode(png).decode("ascii"), image_mimetype="image/png", **fields)

    def close(self) -> None:
        """Close the index (when this retriever opened it)."""
        self._handle.close()
