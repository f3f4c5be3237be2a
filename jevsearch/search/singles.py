"""Single-vector scoring: inner products of queries with stored single vectors, top-k per query. No I/O.

Stage 1 of a two-stage search is an HNSW over truncated singles (jevsearch.store.hnsw); this module is
an exact scan over the full stored singles, to measure what the truncation and the HNSW cost
(``Index.search_singles(..., exact=True)``).

>>> import numpy as np
>>> pages = [(7, np.array([1, 0, 0], np.float32).tobytes()), (9, np.array([0.6, 0.8, 0], np.float32).tobytes())]
>>> [(ids.tolist(), [round(float(x), 2) for x in s]) for ids, s in exact_top(pages, np.array([[0.0, 1.0, 0.0]]), 3, 1)]
[([9], [0.8])]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from jevsearch.search.maxsim import top_with_ties

CHUNK_PAGES = 4096  # 4096 x 2048 float32 = 32 MiB: one reused buffer, however large the index


def exact_top(pages: Iterable[tuple[int, object]], queries: np.ndarray, stored_dim: int,
              k: int, stored_dtype=np.float32, normalize: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top ``k`` (with ties) of every page for each query, by inner product of single vectors.

    pages: (page id, raw buffer of ``stored_dim`` values of ``stored_dtype``: float32, or float16 in
    format version 3) pairs, streamed in chunks of CHUNK_PAGES into one reused float32 buffer;
    queries: float32 [Q, stored_dim]. ``normalize``: scale each stored vector to unit length first
    (stored prefixes of unit vectors, format version 4).
    -> Q pairs (page ids int64, scores float32), unordered (the caller sorts with its tie-break).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))  # [Q, D]
    buf = np.empty((CHUNK_PAGES, stored_dim), dtype=np.float32)
    ids: list[int] = []
    all_ids, all_scores = [], []

    def score_chunk() -> None:
        if normalize:
            buf[: len(ids)] /= np.linalg.norm(buf[: len(ids)], axis=1, keepdims=True)
        all_scores.append((q @ torch.from_numpy(buf[: len(ids)]).T).numpy())  # [Q, n]
        all_ids.append(np.array(ids, dtype=np.int64))
        ids.clear()

    for pid, raw in pages:
        buf[len(ids)] = np.frombuffer(raw, dtype=stored_dtype, count=stored_dim)
        ids.append(pid)
        if len(ids) == CHUNK_PAGES:
            score_chunk()
    if ids:
        score_chunk()
    if not all_ids:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(q))]
    page_ids, scores = np.concatenate(all_ids), np.concatenate(all_scores, axis=1)
    out = []
    for row in scores:
        sel = top_with_ties(row, k)
        out.append((page_ids[sel], row[sel]))
    return out
