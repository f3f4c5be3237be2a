"""The FAISS part of an index: an HNSW graph over truncated single vectors (stage 1).

The graph is a cache of what LMDB holds. It lives in memory and is saved to ``<index>/hnsw.bin``
on flush/close/compact and every few thousand added pages; the file is written atomically
(temp file, fsync, ``os.replace``) and starts with a JSON header saying which LMDB state it covers::

    b"JEVHNSW1" | u32 header length | JSON {epoch, next_page_id, dim, ntotal, xxh3} | faiss.serialize_index bytes

``xxh3``: the xxHash3-64 digest of the FAISS bytes. A file whose bytes fail it (e.g. a permuted id
map, which FAISS would load without complaint) is damaged and rebuilt; files written before it
existed have none and load as they are, except in an index whose values carry checksums.

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
import xxhash

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
        body = faiss.serialize_index(self.index)
        header = json.dumps({"epoch": epoch, "next_page_id": next_page_id, "dim": self.dim,
                             "ntotal": self.ntotal, "xxh3": xxhash.xxh3_64_intdigest(body)}).encode()
        write_atomic(os.path.join(index_dir, FILE_NAME), _MAGIC + _LEN.pack(len(header)) + header, memoryview(body))

    @staticmethod
    def remove_stale_temp(index_dir: str) -> None:
        """Delete temp files of saves that a crash interrupted (call with the writer lock held)."""
        for name in os.listdir(index_dir):
            if name.startswith(FILE_NAME + ".tmp."):
                os.unlink(os.path.join(index_dir, name))

    @classmethod
    def load(cls, index_dir: str, ef_search: int, require_digest: bool = False) -> tuple["HnswGraph", dict]:
        """Read ``hnsw.bin``; raises CorruptIndexError if it is missing or damaged (caller rebuilds),
        or has no digest when ``require_digest``."""
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
            body = raw[start + hlen:]
            if "xxh3" in header or require_digest:
                if header.get("xxh3") != xxhash.xxh3_64_intdigest(body):
                    raise CorruptIndexError(f"{path}: checksum mismatch (the graph is damaged)")
            index = faiss.deserialize_index(body)
        except (ValueError, RuntimeError, AttributeError) as e:
            raise CorruptIndexError(f"{path}: damaged ({e})") from e
        if not isinstance(index, faiss.IndexIDMap) or not isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) \
                or index.ntotal != header.get("ntotal") or index.d != header.get("dim"):
            raise CorruptIndexError(f"{path}: header does not match the graph")
        faiss.downcast_index(index.index).hnsw.efSearch = ef_search
        return cls(header["dim"], 0, 0, ef_search, index=index), header

    # -- graph structure (verify and repair) --------------------------------------------------

    def _level0(self):
        """(hnsw, neighbours [N, 2M] at level 0 with -1 for none, entry point) of the graph."""
        hnsw = faiss.downcast_index(self.index.index).hnsw
        n = self.ntotal
        offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
        nb = faiss.vector_to_array(hnsw.neighbors)
        cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
        slots = offsets[:n, None] + np.arange(cum[0], cum[1])  # level 0 of node i: offsets[i] + [cum0, cum1)
        if n and (len(offsets) < n + 1 or slots.max() >= len(nb)):
            raise CorruptIndexError("hnsw: neighbour lists out of range (the graph is damaged)")
        return hnsw, nb, slots, int(hnsw.entry_point)

    def unreachable(self) -> np.ndarray:
        """Page ids of the nodes no search can reach: no path of level-0 links from the entry point.

        HNSW inserts can leave a node without incoming links (measured with plain FAISS on
        near-duplicate vectors: 1 build order in 40); such a page is never a candidate.
        """
        n = self.ntotal
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        _, nb, slots, entry = self._level0()
        links = nb[slots]  # [N, 2M]
        # FAISS stops reading a list at its first -1: later entries do not count.
        links = np.where(np.cumprod(links >= 0, axis=1).astype(bool), links, -1)
        if links.max() >= n:
            raise CorruptIndexError("hnsw: a link names no node (the graph is damaged)")
        seen = np.zeros(n, dtype=bool)
        if 0 <= entry < n:
            seen[entry] = True
            frontier = np.array([entry])
            while len(frontier):
                nxt = links[frontier].ravel()
                nxt = np.unique(nxt[nxt >= 0])
                frontier = nxt[~seen[nxt]]
                seen[frontier] = True
        return self.ids()[~seen]

    def link_unreachable(self, rounds: int = 8) -> np.ndarray:
        """Link every unreachable node into the level-0 lists of its nearest reachable nodes (a free
        slot, else in place of the last, farthest-kept neighbour); returns the page ids still
        unreachable after ``rounds`` passes (empty when all were linked)."""
        for _ in range(rounds):
            lost = self.unreachable()
            if not len(lost):
                break
            hnsw, nb, slots, _ = self._level0()
            ids = self.ids()
            vecs = faiss.downcast_index(self.index.index).reconstruct_n(0, self.ntotal)
            row = {pid: i for i, pid in enumerate(ids.tolist())}
            reach = np.flatnonzero(~np.isin(ids, lost))
            if not len(reach):
                break
            for pid in lost.tolist():
                u = row[pid]
                near = reach[np.argsort(-(vecs[reach] @ vecs[u]), kind="stable")[:16]]
                lists = nb[slots[near]]  # [16, 2M]
                free = np.flatnonzero((lists < 0).any(axis=1))
                v = near[free[0]] if len(free) else near[0]
                own = nb[slots[v]]
                j = int(np.argmax(own < 0)) if (own < 0).any() else len(own) - 1
                nb[slots[v][j]] = u
            faiss.copy_array_to_vector(nb, hnsw.neighbors)
        return self.unreachable()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(page ids [N], the graph's own copies of their vectors float32 [N, dim])."""
        return self.ids(), faiss.downcast_index(self.index.index).reconstruct_n(0, self.ntotal)
