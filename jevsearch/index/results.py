"""Search results: Hit (a page), DocHit (``group_by="document"``), their JSON rows, and the stage-1
widening that fills k documents.

The ranking rule itself is pure: :func:`jevsearch.search.grouping.group_by_document`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jevsearch.search import grouping


@dataclass
class Hit:
    """One search result: a page of a document.

    ``page`` is 1-based; ``metadata`` is the document's metadata; ``text`` the page text given to
    ``add_embeddings(page_texts=...)``, or None when none was stored; ``snippet`` (set by
    :meth:`Engine.search`) a short window of it around the query's words; ``path`` the document's file;
    ``page_id`` the page's id in the index (ids are never reused: a re-added document's pages get new ones);
    ``scores`` (hybrid and lexical search) each side's score: {"visual": MaxSim, "lexical": BM25}, None
    for a side that did not find the page.
    """

    doc_id: str
    page: int
    score: float
    metadata: dict = field(default_factory=dict)
    text: str | None = None
    snippet: str = ""
    page_id: int | None = None
    scores: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The document's file: a document added by :meth:`Engine.add` has its absolute path as id."""
        return self.doc_id

    def to_dict(self) -> dict:
        """The hit as JSON-ready data (``jevsearch search --json``, the web app's API): score, path,
        page, snippet, metadata, page_id, and ``scores`` (each side's) after a hybrid or lexical search.

        >>> Hit("/d/a.pdf", 2, 0.5, {"kind": "pdf"}, page_id=7).to_dict()["page"]
        2
        """
        return {"score": self.score, "path": self.path, "page": self.page, "snippet": self.snippet,
                "metadata": self.metadata, "page_id": self.page_id, **({"scores": self.scores} if self.scores else {})}


@dataclass
class DocHit:
    """One document-level result: ``score`` is its best page's score (documents rank by it, ties by
    doc_id) and ``pages`` its best pages as Hits, best first (at most ``pages_per_document``)."""

    doc_id: str
    score: float
    metadata: dict = field(default_factory=dict)
    pages: list = field(default_factory=list)  # list[Hit]

    @property
    def path(self) -> str:
        """The document's file (its id), as Hit.path."""
        return self.doc_id

    def to_dict(self) -> dict:
        """The document as JSON-ready data: score, path, metadata and its ``pages`` (page, score,
        snippet, page_id each)."""
        return {"score": self.score, "path": self.path, "metadata": self.metadata,
                "pages": [{"page": h.page, "score": h.score, "snippet": h.snippet, "page_id": h.page_id}
                          for h in self.pages]}


def to_json(results: list) -> list[dict]:
    """Search results (Hits, or DocHits of ``group_by="document"``) as JSON-ready rows, ranked from 1:
    the one shape the CLI's ``--json`` and the web app's API share.

    >>> from jevsearch.index.search import Hit
    >>> to_json([Hit("/d/a.pdf", 1, 0.75)])[0]["rank"]
    1
    """
    return [{"rank": rank, **r.to_dict()} for rank, r in enumerate(results, 1)]


def group(hits: list, k: int, per_doc: int) -> list[DocHit]:
    """The k best documents of ``hits`` (sorted best first, ties by doc_id and page, so a hit's
    position breaks ties as they do)."""
    groups = grouping.group_by_document(range(len(hits)), [h.score for h in hits], [h.doc_id for h in hits],
                                        k, per_doc)
    return [DocHit(doc_id, score, hits[pages[0][0]].metadata, [hits[i] for i, _ in pages])
            for doc_id, score, pages in groups]


def document_candidates(store, view, txn, qsingle: np.ndarray, cand: np.ndarray, k: int, candidates: int,
                        scope: np.ndarray | None, per_doc: int) -> np.ndarray:
    """Stage-1 candidates for k documents: widened 4x at a time until every query's cover k
    documents (or every page), then at most ``cap`` kept per document, best first, so that one long
    document cannot fill the rerank (cap = max(pages_per_document, candidates / k)).

    store / view / txn: the index's PageStore, GraphView and read transaction; scope: the page ids a
    filter allows (None: all); cand: the first stage-1 answer [Q, candidates].
    """
    avail = store.state(txn)["pages"] if scope is None else len(scope)
    while True:
        docs = [[rec[0] if p >= 0 and (rec := store.page(txn, p)) else None for p in row] for row in cand.tolist()]
        if cand.shape[1] >= avail or min(len(set(d) - {None}) for d in docs) >= k:
            break
        cand = view.search(qsingle, min(avail, 4 * cand.shape[1]), within=scope)
    cap = max(per_doc, -(-candidates // k))
    return grouping.cut_per_document(cand, docs, cap, k * cap)
