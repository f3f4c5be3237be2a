"""Stage 1 restricted to a subset of pages (a filter's matches): HNSW with an ID selector, or an exact scan.

Two ways, picked by how many pages match (:func:`search_subset`):

* broad filters: the HNSW walk with a FAISS search-time selector (``SearchParametersHNSW.sel``), so
  non-matching pages steer the walk but are never returned. ``IDSelectorBitmap`` (one bit per page
  id: 12.5 kB at 100k pages; a membership test is a shift and a mask) rather than ``IDSelectorBatch``
  (a hash set plus a Bloom filter, built per query from the ids);
* selective filters: the walk must visit ~1/selectivity nodes to meet enough matches (and recall
  drops as the matches lose their graph neighbours), while an exact scan of the matching pages'
  stored vectors costs ~their number. Below EXACT_SCAN_FRACTION of the graph's vectors the matching
  pages' vectors are read from the graph's own storage (float16, or float32 for older graphs) and
  scored exactly: the same scores the walk would give, without the walk. Measured with
  benchmarks/filters.py (see EXACT_SCAN_FRACTION).

An HNSW walk that returns fewer than the pages asked for although more match (a selective filter
the walk could not cover) is redone as an exact scan, so a filter never starves the results.
"""

from __future__ import annotations

import faiss
import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.store.hnsw import HnswGraph

# Matching pages, as a fraction of the graph's vectors, below which stage 1 scans them exactly.
# benchmarks/filters.py at 100k pages (M=32, 100 candidates, one thread; see the README table):
# the exact scan costs ~0.05 ms per 1000 pages, the filtered walk ~2.5 ms at 50% and grows as the
# selectivity falls (recall@100 of the walk drops below 0.9 around 2%).
EXACT_SCAN_FRACTION = 0.10


def search_subset(graph: HnswGraph, queries: np.ndarray, n: int, page_ids: np.ndarray, next_id: int,
                  exact: bool | None = None) -> np.ndarray:
    """The ``n`` nearest of ``page_ids`` (ids live in the graph) for float32 queries [Q, dim]
    -> candidate ids [Q, n], -1 padded when fewer match. ``next_id``: above every page id.
    ``exact``: force the exact scan (True) or the selector walk (False); None picks by size."""
    if len(page_ids) == 0:
        return np.full((len(queries), n), -1, dtype=np.int64)
    if exact is None:
        exact = len(page_ids) <= max(n, EXACT_SCAN_FRACTION * graph.ntotal)
    if not exact:
        bits = np.zeros(next_id, dtype=bool)
        bits[page_ids] = True
        cand = graph.search(queries, n, exclude=faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little")))[0]
        if (cand >= 0).sum(axis=1).min() >= min(n, len(page_ids)):
            return cand
    return exact_scan(graph, queries, n, page_ids)


def exact_scan(graph: HnswGraph, queries: np.ndarray, n: int, page_ids: np.ndarray) -> np.ndarray:
    """Exact inner products of queries [Q, dim] with the graph's stored vectors of ``page_ids``
    -> the top ``n`` ids per query [Q, n] (-1 padded)."""
    ids, vecs = stored_vectors(graph)
    rows = _rows_of(ids, page_ids)
    scores = queries @ vecs[rows].astype(np.float32, copy=False).T  # [Q, M]
    out = np.full((len(queries), n), -1, dtype=np.int64)
    if len(rows) <= n:
        order = np.argsort(-scores, axis=1)
        out[:, : len(rows)] = page_ids[order]
        return out
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    # Best first, as the HNSW returns them (callers may cut the list per document).
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    out[:] = page_ids[top]
    return out


def stored_vectors(graph: HnswGraph) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views of the graph's ids [N] and stored vectors [N, dim] (float16 for IndexHNSWSQ
    fp16, float32 for IndexHNSWFlat). Valid until the graph changes: use them at once."""
    index = graph.index
    n = index.ntotal
    ids = faiss.rev_swig_ptr(index.id_map.data(), n) if n else np.zeros(0, np.int64)
    storage = faiss.downcast_index(faiss.downcast_index(index.index).storage)
    if isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        dtype = np.float16
    elif isinstance(storage, faiss.IndexFlat):
        dtype = np.float32
    else:  # a storage we cannot read as raw floats: decode (a copy)
        return ids, storage.reconstruct_n(0, n)
    codes = faiss.rev_swig_ptr(storage.codes.data(), n * storage.code_size) if n else np.zeros(0, np.uint8)
    return ids, codes.view(dtype).reshape(n, graph.dim)


def _rows_of(ids: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
    """Storage rows of ``page_ids``. Pages are inserted in id order, so ``ids`` is normally sorted
    (checked: ~50 us at 100k) and a binary search finds them; otherwise through an argsort."""
    order = None if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.argsort(ids, kind="stable")
    rows = np.searchsorted(ids, page_ids, sorter=order)
    rows = np.minimum(rows, len(ids) - 1) if order is None else order[np.minimum(rows, len(ids) - 1)]
    if len(ids) == 0 or not np.array_equal(ids[rows], page_ids):
        raise CorruptIndexError("HNSW: live pages missing from the graph (hint: reopen the index; the "
                                "graph is rebuilt from LMDB)")
    return rows
