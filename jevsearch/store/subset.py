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

import weakref

import faiss
import numpy as np
import torch

from jevsearch.errors import CorruptIndexError
from jevsearch.store.hnsw import HnswGraph

_ORDER: "weakref.WeakKeyDictionary[HnswGraph, tuple]" = weakref.WeakKeyDictionary()  # see _rows_of

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
        # The beam widened by 1/selectivity keeps ~as many matching pages in it as an unfiltered walk
        # has (without: recall@10 0.86 instead of ~0.95 at 50 % in benchmarks/filters.py).
        cand = graph.search(queries, n, exclude=faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little")),
                            widen=graph.ntotal / len(page_ids))[0]
        if (cand >= 0).sum(axis=1).min() >= min(n, len(page_ids)):
            return cand
    return exact_scan(graph, queries, n, page_ids)


def exact_scan(graph: HnswGraph, queries: np.ndarray, n: int, page_ids: np.ndarray) -> np.ndarray:
    """Exact inner products of queries [Q, dim] with the graph's stored vectors of ``page_ids``
    -> the top ``n`` ids per query [Q, n], best first (-1 padded).

    In torch: its float16 -> float32 conversion and matmul are vectorised (numpy's conversion took
    5 ms for 10k x 128 values, torch's 1.4 ms; the caller runs with one torch thread)."""
    ids, vecs = stored_vectors(graph)
    rows = torch.from_numpy(_rows_of(graph, ids, page_ids))
    sub = torch.from_numpy(vecs).index_select(0, rows).float()  # [M, dim]
    scores = torch.mm(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)), sub.T)  # [Q, M]
    top = torch.topk(scores, min(n, len(page_ids)), dim=1).indices.numpy()  # sorted, best first
    out = np.full((len(queries), n), -1, dtype=np.int64)
    out[:, : top.shape[1]] = page_ids[top]
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


def _rows_of(graph: HnswGraph, ids: np.ndarray, page_ids: np.ndarray) -> np.ndarray:
    """Storage rows of ``page_ids``. Pages are inserted in id order, so ``ids`` is normally sorted and
    a binary search finds them; otherwise through an argsort. Whether it is sorted is remembered per
    graph and size (checking took ~1 ms per query at 20k pages on a busy machine)."""
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
