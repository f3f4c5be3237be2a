"""Document-level results: scored pages grouped by document. No I/O.

The rule: a document's score is the score of its best page (max, not a sum or mean: a long document
is not favoured for having many pages, and a short one that answers the query on one page is not
diluted). Documents are ranked by that score, ties broken by document id; each keeps its best pages,
best first (ties by page id), up to ``pages_per_document``.

>>> group_by_document([10, 11, 20, 30], [0.9, 0.7, 0.8, 0.95], ["a", "a", "b", "c"], k=2, pages_per_document=2)
[('c', 0.95, [(30, 0.95)]), ('a', 0.9, [(10, 0.9), (11, 0.7)])]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def group_by_document(page_ids: Sequence[int], scores: Sequence[float], docs: Sequence[Hashable], k: int,
                      pages_per_document: int) -> list[tuple[Hashable, float, list[tuple[int, float]]]]:
    """The ``k`` best documents among scored pages: ``(doc, score, [(page id, score), ...])`` each.

    ``docs[i]`` names the document of page ``page_ids[i]`` (orderable: it breaks score ties).
    """
    by_doc: dict = {}
    for pid, score, doc in zip(page_ids, scores, docs):
        by_doc.setdefault(doc, []).append((float(score), int(pid)))
    groups = []
    for doc, pages in by_doc.items():
        pages.sort(key=lambda p: (-p[0], p[1]))
        groups.append((doc, pages[0][0], [(pid, s) for s, pid in pages[:pages_per_document]]))
    groups.sort(key=lambda g: (-g[1], g[0]))
    return groups[:k]



def cut_per_document(cand: np.ndarray, docs: Sequence[Sequence[Hashable]], cap: int, budget: int) -> np.ndarray:
    """Per query row of candidate page ids [Q, n] (best first, -1 = none; ``docs[q][i]`` the document
    of ``cand[q, i]``): at most ``cap`` per document and ``budget`` in all, in order -> [Q, w], -1 padded.
    With ``budget >= k * cap`` the kept pages cover k documents whenever the row does.

    >>> cut_per_document(np.array([[5, 6, 7, 8, -1]]), [["a", "a", "a", "b", None]], cap=2, budget=4).tolist()
    [[5, 6, 8]]
    """
    rows = []
    for ids, ds in zip(cand.tolist(), docs):
        seen: dict = {}
        kept = []
        for pid, d in zip(ids, ds):
            if pid < 0 or seen.get(d, 0) >= cap:
                continue
            seen[d] = seen.get(d, 0) + 1
            kept.append(pid)
            if len(kept) == budget:
                break
        rows.append(kept)
    out = np.full((len(rows), max(1, max(map(len, rows)))), -1, dtype=np.int64)
    for q, kept in enumerate(rows):
        out[q, : len(kept)] = kept
    return out
