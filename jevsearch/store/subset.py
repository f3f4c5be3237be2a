"""Stage 1 restricted to a subset of pages (a filter's matches): HNSW with an ID selector, or an exact scan.

Two ways, picked by cost (:func:`search_subset`):

* broad filters: the HNSW walk with a FAISS search-time selector (``SearchParametersHNSW.sel``), so
  non-matching pages steer the walk but are never returned. ``IDSelectorBitmap`` (one bit per page
  id: 12.5 kB at 100k pages; a membership test is a shift and a mask) rather than ``IDSelectorBatch``
  (a hash set plus a Bloom filter): no slower, and simpler. The beam is widened by 1/selectivity, so
  it holds about as many matching pages as an unfiltered walk's: the plain beam lost recall as the
  filter narrowed, the widened one did not (benchmarks/filters.py, benchmarks/RESULTS.md);
* selective filters: the widened walk costs ~1/selectivity, while an exact scan of the matching
  pages' vectors, read from the graph's own storage (float16, or float32 for older graphs), costs
  their number. With M matching pages of N, n candidates: the walk's beam is EF_PER_RESULT * n * N / M
  and the scan reads M vectors, so the scan is cheaper while M^2 < WALK_SLOT_PAGES * EF_PER_RESULT * n * N
  (about 28 % of the pages at 100k and 100 candidates, 9 % at 1M).

An HNSW walk that returns fewer than the pages asked for although more match (a selective filter
the walk could not cover) is redone as an exact scan, so a filter never starves the results.
"""

from __future__ import annotations

import weakref

import faiss
import numpy as np
import torch

from jevsearch.errors import CorruptIndexError
from jevsearch.store.hnsw import EF_PER_RESULT, HnswGraph

_ORDER: weakref.WeakKeyDictionary[HnswGraph, tuple] = weakref.WeakKeyDictionary()  # see _rows_of

# What one slot of a walk's beam costs, in pages of exact scan (benchmarks/filters.py; the ratio is
# derived in benchmarks/RESULTS.md).
WALK_SLOT_PAGES = 20.0
MAX_WIDEN = 16.0  # beyond, the exact scan is far cheaper anyway (only a forced walk gets there)


def search_subset(graph: HnswGraph, queries: np.ndarray, n: int, page_ids: np.ndarray, next_id: int,
                  exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest of ``page_ids`` (ids live in the graph) for float32 queries [Q, dim]
    -> (candidate ids [Q, n], -1 padded when fewer match; their inner products [Q, n]). ``next_id``:
    above every page id. ``exact``: force the exact scan (True) or the selector walk (False); None
    picks by cost."""
    if len(page_ids) == 0:
        return np.full((len(queries), n), -1, dtype=np.int64), np.full((len(queries), n), -np.inf, np.float32)
    m = len(page_ids)
    if exact is None:
        exact = m <= n or m * m < WALK_SLOT_PAGES * EF_PER_RESULT * n * graph.ntotal
    if not exact:
        bits = np.zeros(next_id, dtype=bool)
        bits[page_ids] = True
        cand, scores = graph.search(queries, n, exclude=faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little")),
                                    widen=min(MAX_WIDEN, graph.ntotal / m))
        if (cand >= 0).sum(axis=1).min() >= min(n, m):
            return cand, scores
    return exact_scan(graph, queries, n, page_ids)


def exact_scan(graph: HnswGraph, queries: np.ndarray, n: int, page_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of queries [Q, dim] with the graph's stored vectors of ``page_ids``
    -> (the top ``n`` ids per query [Q, n], best first, -1 padded; their scores [Q, n], -inf padded)."""
    top = torch.topk(torch.from_numpy(exact_scores(graph, queries, page_ids)), min(n, len(page_ids)), dim=1)
    out = np.full((len(queries), n), -1, dtype=np.int64)
    scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
    out[:, : top.indices.shape[1]] = page_ids[top.indices.numpy()]  # sorted, best first
    scores[:, : top.indices.shape[1]] = top.values.numpy()
    return out, scores


def exact_scores(graph: HnswGraph, queries: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
    """Inner products [Q, M] of queries [Q, dim] with the graph's stored vectors of ``page_ids`` [M].

    In torch: its float16 -> float32 conversion and matmul are vectorised, faster than numpy's (the
    caller runs with one torch thread)."""
    ids, vecs = stored_vectors(graph)
    rows = torch.from_numpy(_rows_of(graph, ids, page_ids))
    sub = torch.from_numpy(vecs).index_select(0, rows).float()  # [M, dim]
    return torch.mm(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)), sub.T).numpy()  # [Q, M]


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


def _rows_of(graph: HnswGraph, ids: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
    """Storage rows of ``page_ids``. Pages are inserted in id order, so ``ids`` is normally sorted and
    a binary search finds them; otherwise through an argsort. Whether it is sorted is remembered per
    graph and size (checking it on every query costs a pass over the ids)."""
    known = _ORDER.get(graph)
    if known is None or known[0] != len(ids):
        sorted_ = len(ids) < 2 or bool((ids[1:] > ids[:-1]).all())
        known = _ORDER[graph] = (len(ids), None if sorted_ else np.argsort(ids, kind="stable"))
    order = known[1]
    rows = np.minimum(np.searchsorted(ids, page_ids, sorter=order), max(0, len(ids) - 1))
    if order is not None:
        rows = order[rows]
    if len(ids) == 0 or not np.array_equal(ids[rows], page_ids):
        raise CorruptIndexError("HNSW: live pages missing from the graph (hint: reopen the index; the "
                                "graph is rebuilt from LMDB)")
    return rows
