"""A LangChain retriever over a jevsearch index (``pip install 'jevsearch[langchain]'``).

A ``langchain_core`` :class:`~langchain_core.retrievers.BaseRetriever`: ``invoke``/``ainvoke``/``batch``,
callbacks and chains work as for any retriever. Each page hit becomes a ``Document`` whose
``page_content`` is the page's text (a scanned page without a text layer: its snippet, often empty) and
whose ``metadata`` is the document's metadata plus ``source`` and ``path`` (the file), ``doc_id``,
``page``, ``page_id``, ``score`` (these win over metadata keys of the same names); ``Document.id`` is
the page id. ``include_image=True`` adds ``image_b64`` (a PNG of the page, ``image_width`` px wide, for
a vision model) and ``image_mime_type``.

>>> from jevsearch.integrations.langchain import JevsearchRetriever          # doctest: +SKIP
>>> retriever = JevsearchRetriever(index="indexes/papers", k=5, where={"team": "finance"})  # doctest: +SKIP
>>> docs = retriever.invoke("revenue by region")                            # doctest: +SKIP
>>> docs[0].metadata["path"], docs[0].metadata["page"], docs[0].metadata["score"]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
from typing import Any

from jevsearch.integrations import DEFAULT_IMAGE_WIDTH, IndexHandle, require

require("langchain_core", "langchain", "jevsearch.integrations.langchain")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402 - after require() names the extra
from langchain_core.documents import Document  # noqa: E402 - after require() names the extra
from langchain_core.retrievers import BaseRetriever  # noqa: E402 - after require() names the extra
from pydantic import PrivateAttr  # noqa: E402 - after require() names the extra

__all__ = ["JevsearchRetriever"]


class JevsearchRetriever(BaseRetriever):
    """Pages of a jevsearch index for a text query, best first (see the module docstring).

    index: the index's path (opened read-only once, at construction) or an open Engine. k: pages per
    query (1 to 100). where: a metadata filter as in Engine.search. include_image / image_width: a PNG
    of each page in the metadata. model: the recorded model's local snapshot, if it moved.
    ``invoke(query, k=..., where=...)`` overrides ``k``/``where`` for one call.
    """

    index: Any
    k: int = 5
    where: dict | None = None
    include_image: bool = False
    image_width: int = DEFAULT_IMAGE_WIDTH
    model: str | None = None
    _handle: IndexHandle = PrivateAttr()

    def __init__(self, **fields: Any):
        super().__init__(**fields)  # pydantic checks the fields' types (ValidationError) ...
        handle = IndexHandle(self.index, model=self.model)  # ... and jevsearch their values
        try:
            handle.limits.check_k(self.k)
            if self.include_image:
                handle.check_width(self.image_width)
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, where: dict | None = None) -> list[Document]:
        handle = self._handle
        hits = handle.search(query, self.k if k is None else k, self.where if where is None else where)
        return [self._document(hit) for hit in hits]

    def _document(self, hit) -> Document:
        metadata = {**hit.metadata, "source": hit.path, "path": hit.path, "doc_id": hit.doc_id, "page": hit.page,
                    "page_id": hit.page_id, "score": float(hit.score)}
        if self.include_image:
            png = self._handle.page_png(hit, self.image_width)
            metadata.update(image_b64=base64.b64encode(png).decode("ascii"), image_mime_type="image/png")
        return Document(page_content=hit.text or hit.snippet or "", metadata=metadata, id=str(hit.page_id))

    def close(self) -> None:
        """Close the index (when this retriever opened it)."""
        self._handle.close()
