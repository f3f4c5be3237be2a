"""Reading documents and pages of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): records, hits by page id, a page's vectors and view.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np

from jevsearch.errors import CorruptIndexError, PageNotFoundError
from jevsearch.index.results import Hit
from jevsearch.index.state import IndexState
from jevsearch.store import validate
from jevsearch.store.visual import PageView

log = logging.getLogger(__name__)


def document(st: IndexState, doc_id: str) -> dict | None:
    """Index.document."""
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            doc = st.store.document(txn, validate.check_doc_id(doc_id))
    if doc is None:
        return None
    return {"doc_id": doc["doc_id"], "pages": doc["pages"], "tokens": doc["tokens"],
            "metadata": doc["metadata"]}


def page_hit(st: IndexState, page_id: int) -> Hit:
    """Index.page_hit."""
    page_id = validate.check_page_id(page_id)
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            rec = st.store.page(txn, page_id)
            doc = None if rec is None else st.store.document_by_key(txn, rec[0])
            if doc is None:
                raise PageNotFoundError(f"page id {page_id}: not in the index (deleted, or its document was "
                                        "re-added since) (hint: search again)")
            text = st.store.text(txn, page_id) if doc["text"] else None
    return Hit(doc["doc_id"], rec[1], 0.0, doc["metadata"], text, page_id=page_id)


def page_data(st: IndexState, hit: Hit, *, vectors: bool = True) -> tuple[np.ndarray | None, PageView | None]:
    """Index.page_data: (float32 tokens or None, PageView or None)."""
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            pid = _locate(st, txn, hit)
            multi = None
            if vectors:  # a copy: the transaction ends
                multi = st.layout.tokens(st.store, txn, pid, st.store.page(txn, pid)[2])
            try:
                return multi, st.store.view(txn, pid)
            except CorruptIndexError as e:  # ChecksumError included: name the page, say what to do
                raise CorruptIndexError(
                    f"{st.path}: {hit.doc_id} page {hit.page}: its thumbnail/grid record is damaged ({e}) "
                    "(hint: verify(repair=True) drops it, then pictures come from the source file; re-add the "
                    "document to restore it)", cli_hint=f"jevsearch verify --repair --index {st.path} drops "
                    f"it; `jevsearch index {hit.doc_id} --index {st.path}` after deleting it restores it") from e


def _locate(st: IndexState, txn, hit: Hit) -> int:
    """The page id of ``hit`` in ``txn``; PageNotFoundError if it is gone or stale."""
    doc = st.store.document(txn, validate.check_doc_id(hit.doc_id))
    gone = PageNotFoundError(f"{hit.doc_id}: page {hit.page} is no longer in the index (the document was "
                             "deleted or re-added since this hit was found) (hint: search again)")
    if doc is None or doc["metadata"] != hit.metadata:
        raise gone
    # Page numbers are 1..pages, or those recorded for a document whose unreadable pages were left out.
    numbers = doc.get("page_numbers") or range(1, doc["pages"] + 1)
    i = bisect.bisect_left(numbers, hit.page)
    if i == len(numbers) or numbers[i] != hit.page or hit.page_id not in (None, doc["first"] + i):
        raise gone
    return doc["first"] + i


def document_list(st: IndexState) -> list[dict]:
    """Index.document_list (damaged records left out, with a warning)."""
    damaged: list[bytes] = []
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            docs = [{"doc_id": d["doc_id"], "pages": d["pages"], "tokens": d["tokens"], "metadata": d["metadata"]}
                    for d in st.store.iter_documents(txn, damaged)]
    if damaged:
        log.warning("%s: %d document records are damaged (first key %s): left out of the list (hint: "
                    "verify(repair=True) removes them and their pages; index their files again)", st.path,
                    len(damaged), damaged[0].hex())
    return sorted(docs, key=lambda d: d["doc_id"])
