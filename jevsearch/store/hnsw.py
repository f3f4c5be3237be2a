"""The FAISS part of an index: an HNSW graph over truncated single vectors (stage 1).

The graph is a cache of what LMDB holds. It lives in memory and is saved to ``<index>/hnsw.bin``
on flush/close/compact and every few thousand added pages; the file is written atomically
(temp file, fsync, ``os.replace``) and starts with a JSON header saying which LMDB state it covers::

    b"JEVHNSW1" | u32 header length | JSON {epoch, next_page_id, dim, ntotal} | faiss.serialize_index bytes

``next_page_id``: every page with a smaller id that was live when the file was written is in the
graph, so opening adds only pages with ids >= it (a cursor range in LMDB). ``epoch`` changes on
compact; a file from another epoch is rebuilt from LMDB. FAISS's own serialisation holds no code
(no pickle), and a damaged file is rebuilt, never trusted.

>>> import numpy as np
>>> g = HnswGraph(dim=4, m=8, ef_construction=40, ef_search=16)
>>> g.add(np.array([7, 9]), truncate_normalize(np.eye(2, 8, dtype=np.float32), 4))
>>> g.search(truncate_normalize(np.eye(1, 8, dtype=np.float32), 4), 1)[0].tolist()
[[7]]
"""

from __future__ import annotations

import json
import logging
import os
import struct
from contextlib import contextmanager

import faiss
import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.store.lmdbstore import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "hnsw.bin"
EF_PER_RESULT = 4  # efSearch >= 4 x the number of candidates asked for
_MAGIC = b"JEVHNSW1"
_LEN = struct.Struct("<I")


def truncate_normalize(x: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka truncation: first ``dim`` columns of ``x`` [N, D], L2-renormalised -> float32 [N, dim]."""
    t = np.array(x[:, :dim], dtype=np.float32, order="C")  # always a copy: callers keep x
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    # A truncated unit vector can in principle be all zeros; leave it zero rather than NaN.
    np.divide(t, norms, out=t, where=norms > 0)
    return t


@contextmanager
def faiss_threads(n: int):
    """Run FAISS with ``n`` OpenMP threads inside the block.

    One thread for single queries and per-document adds: a FAISS OpenMP team left spinning after a
    tiny parallel region steals the cores torch's MaxSim needs next (measured: 13 ms -> 28-60 ms).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class HnswGraph:
    """``IndexIDMap(IndexHNSWSQ(dim, fp16, M, inner product))`` keyed by 64-bit page ids.

    The graph keeps its vectors in float16: measured at 100k pages (M=32, efConstruction=200, 128-d),
    inserts took 1.41 instead of 2.18 ms per vector on one thread and a 100-candidate search (efSearch
    400) 2.35 instead of 3.58 ms, at the same recall@100 (0.9452 vs 0.9455 for float32 storage):
    HNSW walks are bound by memory latency, and half the bytes miss the cache less. Graphs saved
    with float32 vectors (IndexHNSWFlat, jevsearch before this change) load and work as they are.
    """

    def __init__(self, dim: int, m: int, ef_construction: int, ef_search: int, index=None):
        self.dim = dim
        self.ef_search = ef_search
        if index is None:
            inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
            inner.hnsw.efSearch = ef_search
            index = faiss.IndexIDMap(inner)
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)

    def add(self, ids: np.ndarray, vecs: np.ndarray, threads: int | None = None) -> None:
        """Add float32 [N, dim] unit vectors under ``ids`` [N], on ``threads`` OpenMP threads (default:
        1 for small batches, every core for large ones)."""
        if len(ids):
            if threads is None:
                threads = 1 if len(ids) < 1000 else faiss.omp_get_max_threads()
            with faiss_threads(threads):
                self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, n: int, exclude: faiss.IDSelector | None = None, widen: float = 1.0):
        """Top ``n`` ids [Q, n] (-1 where fewer exist) and inner products [Q, n] for float32 [Q, dim].
        ``widen``: a wider beam (a selector that passes a fraction f of the vectors: 1/f)."""
        params = faiss.SearchParametersHNSW()
        # The beam must be well above n for the top n to be right: measured at 100k pages (M=32,
        # efConstruction=200), the 100 nearest were found with recall 0.905 at efSearch=128 and
        # 0.993 at 512, for 1.2 -> 3.7 ms per query (small next to the MaxSim rerank).
        params.efSearch = max(self.ef_search, int(EF_PER_RESULT * n * widen))
        if exclude is not None:
            params.sel = exclude
        with faiss_threads(1 if len(queries) < 16 else faiss.omp_get_max_threads()):
            scores, ids = self.index.search(queries, n, params=params)
        return ids, scores

    def save(self, index_dir: str, *, epoch: int, next_page_id: int) -> None:
        """Write ``hnsw.bin`` atomically: a crash leaves the old file or the new one, never half."""
        header = json.dumps({"epoch": epoch, "next_page_id": next_page_id, "dim": self.dim,
                             "ntotal": self.ntotal}).encode()
        body = faiss.serialize_index(self.index)
        write_atomic(os.path.join(index_dir, FILE_NAME), _MAGIC + _LEN.pack(len(header)) + header, memoryview(body))

    @staticmethod
    def remove_stale_temp(index_dir: str) -> None:
        """Delete temp files of saves that a crash interrupted (call with the writer lock held)."""
        for name in os.listdir(index_dir):
            if name.startswith(FILE_NAME + ".tmp."):
                os.unlink(os.path.join(index_dir, name))

    @classmethod
    def load(cls, index_dir: str, ef_search: int) -> tuple["HnswGraph", dict]:
        """Read ``hnsw.bin``; raises CorruptIndexError if it is missing or damaged (caller rebuilds)."""
        path = os.path.join(index_dir, FILE_NAME)
        try:
            raw = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise CorruptIndexError(f"{path}: cannot read ({e})") from e
        head = raw[: len(_MAGIC) + _LEN.size].tobytes()
        if len(head) < len(_MAGIC) + _LEN.size or not head.startswith(_MAGIC):
            raise CorruptIndexError(f"{path}: not a jevsearch HNSW file")
        (hlen,) = _LEN.unpack(head[len(_MAGIC):])
        start = len(_MAGIC) + _LEN.size
        try:
            header = json.loads(raw[start:start + hlen].tobytes())
            index = faiss.deserialize_index(raw[start + hlen:])
        except (ValueError, RuntimeError) as e:
            raise CorruptIndexError(f"{path}: damaged ({e})") from e
        if not isinstance(index, faiss.IndexIDMap) or not isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) \
                or index.ntotal != header.get("ntotal") or index.d != header.get("dim"):
            raise CorruptIndexError(f"{path}: header does not match the graph")
        faiss.downcast_index(index.index).hnsw.efSearch = ef_search
        return cls(header["dim"], 0, 0, ef_search, index=index), header
