"""The exact merge of per-part results (the shards of a sharded index) into one ranking. No I/O.

Each part returns its own best results, ranked by the rule a single index uses; a document lives in
one part only. The global top k is then among the parts' top k, and sorting their union by the same
rule gives exactly what one index holding every part's documents returns (same order, same ties):

- pages: score descending, then document id, then page number;
- documents (``group_by="document"``): best page's score descending, then document id.

>>> from types import SimpleNamespace as P
>>> a = [P(score=0.9, doc_id="a", page=2), P(score=0.5, doc_id="a", page=1)]
>>> b = [P(score=0.9, doc_id="b", page=1)]
>>> [(h.doc_id, h.page) for h in merge_pages([a, b], k=2)]
[('a', 2), ('b', 1)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def merge_pages(parts: Iterable[Sequence], k: int) -> list:
    """The k best page hits (``score``, ``doc_id``, ``page``) of several parts' top-k lists."""
    hits = [h for part in parts for h in part]
    hits.sort(key=lambda h: (-h.score, h.doc_id, h.page))
    return hits[:k]


def merge_documents(parts: Iterable[Sequence], k: int) -> list:
    """The k best document hits (``score``: their best page's, ``doc_id``) of several parts' top-k lists."""
    docs = [d for part in parts for d in part]
    docs.sort(key=lambda d: (-d.score, d.doc_id))
    return docs[:k]
