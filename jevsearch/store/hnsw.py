"""The FAISS part of an index: an HNSW graph over truncated single vectors (stage 1).

The graph is a cache of what LMDB holds. It lives in memory and is saved to ``<index>/hnsw.bin``
on flush/close/compact and every few thousand added pages; the file is written atomically
(temp file, fsync, ``os.replace``) and starts with a JSON header saying which LMDB state it covers::

    b"JEVHNSW1" | u32 header length | JSON {epoch, next_page_id, dim, ntotal, xxh3, lost, lost_xxh3}
    | faiss.serialize_index bytes

``lost`` (with its digest ``lost_xxh3``): the page ids no walk of the graph reaches even after
relinking, which stage 1 scans exactly (see :meth:`HnswGraph.lost_pages`); absent in older files.

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
from jevsearch.store.lmdbenv import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "hnsw.bin"
LINKS_IN = 8  # incoming links given to a relinked node: one is easily pruned again, or missed by the beam
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
    tiny parallel region steals the cores torch's MaxSim needs next (benchmarks/RESULTS.md).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _digest_ids(ids: list) -> int:
    try:
        return xxhash.xxh3_64_intdigest(np.array(ids, dtype=np.int64).tobytes())
    except (TypeError, ValueError, OverflowError):
        return -1


class HnswGraph:
    """``IndexIDMap(IndexHNSWSQ(dim, fp16, M, inner product))`` keyed by 64-bit page ids.

    The graph keeps its vectors in float16: faster inserts and searches than float32 storage at the
    same recall (benchmarks/RESULTS.md): HNSW walks are bound by memory latency, and half the bytes miss the cache less. Graphs saved
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
        # Page ids unreachable after relinking, None until computed (see lost_pages); any add resets it.
        self.lost: np.ndarray | None = np.zeros(0, dtype=np.int64) if index.ntotal == 0 else None

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
            self.lost = None
            with faiss_threads(threads):
                self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, n: int, exclude: faiss.IDSelector | None = None, widen: float = 1.0):
        """Top ``n`` ids [Q, n] (-1 where fewer exist) and inner products [Q, n] for float32 [Q, dim].
        ``widen``: a wider beam (a selector that passes a fraction f of the vectors: 1/f)."""
        params = faiss.SearchParametersHNSW()
        # The beam must be well above n for the top n to be right; its cost stays small next to the
        # MaxSim rerank (benchmarks/RESULTS.md).
        params.efSearch = max(self.ef_search, int(EF_PER_RESULT * n * widen))
        if exclude is not None:
            params.sel = exclude
        with faiss_threads(1 if len(queries) < 16 else faiss.omp_get_max_threads()):
            scores, ids = self.index.search(queries, n, params=params)
        return ids, scores

    def save(self, index_dir: str, *, epoch: int, next_page_id: int, file_name: str = FILE_NAME) -> None:
        """Write ``hnsw.bin`` atomically: a crash leaves the old file or the new one, never half."""
        lost = self.lost_pages().tolist()  # first: relinking changes the graph
        body = faiss.serialize_index(self.index)
        header = json.dumps({"epoch": epoch, "next_page_id": next_page_id, "dim": self.dim,
                             "ntotal": self.ntotal, "xxh3": xxhash.xxh3_64_intdigest(body),
                             "lost": lost, "lost_xxh3": _digest_ids(lost)}).encode()
        write_atomic(os.path.join(index_dir, file_name), _MAGIC + _LEN.pack(len(header)) + header, memoryview(body))

    @staticmethod
    def remove_stale_temp(index_dir: str, file_names: tuple[str, ...] = (FILE_NAME,)) -> None:
        """Delete temp files of saves that a crash interrupted (call with the writer lock held)."""
        for name in os.listdir(index_dir):
            if name.startswith(tuple(f + ".tmp." for f in file_names)):
                os.unlink(os.path.join(index_dir, name))

    @classmethod
    def load(cls, index_dir: str, ef_search: int, require_digest: bool = False,
             file_name: str = FILE_NAME) -> tuple[HnswGraph, dict]:
        """Read ``hnsw.bin`` (or ``file_name``); raises CorruptIndexError if it is missing or damaged
        (caller rebuilds), or has no digest when ``require_digest``."""
        path = os.path.join(index_dir, file_name)
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
        graph = cls(header["dim"], 0, 0, ef_search, index=index)
        lost = header.get("lost")  # absent in files of older jevsearch: computed at the first search
        if lost is not None:
            if not isinstance(lost, list) or header.get("lost_xxh3") != _digest_ids(lost):
                raise CorruptIndexError(f"{path}: the list of unreachable pages is damaged")
            graph.lost = np.array(lost, dtype=np.int64)
        return graph, header

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

    def _unreached_rows(self, links: np.ndarray, entry: int) -> np.ndarray:
        """Rows no level-0 path from ``entry`` reaches, for level-0 lists ``links`` [N, 2M] (-1: none)."""
        n = self.ntotal
        seen = np.zeros(n, dtype=bool)
        if 0 <= entry < n:
            seen[entry] = True
            frontier = np.array([entry])
            while len(frontier):  # breadth first; only the newly seen rows are sorted (deduplicated)
                nxt = links[frontier].ravel()
                nxt = nxt[nxt >= 0]
                nxt = nxt[~seen[nxt]]
                seen[nxt] = True
                frontier = np.unique(nxt)
        return np.flatnonzero(~seen)

    def _links(self):
        """(hnsw, neighbours, level-0 slots [N, 2M], links [N, 2M] as FAISS reads them, entry point)."""
        hnsw, nb, slots, entry = self._level0()
        links = nb[slots]
        # FAISS stops reading a list at its first -1: later entries do not count.
        ends = np.where((links < 0).any(axis=1), np.argmax(links < 0, axis=1), links.shape[1])
        links[np.arange(links.shape[1]) >= ends[:, None]] = -1
        if links.size and links.max() >= self.ntotal:
            raise CorruptIndexError("hnsw: a link names no node (the graph is damaged)")
        return hnsw, nb, slots, links, entry

    def unreachable(self) -> np.ndarray:
        """Page ids of the nodes no search can reach: no path of level-0 links from the entry point.

        HNSW inserts can leave a node without incoming links (near-duplicate vectors are the known weak
        spot: a new node's links prune the only link to an older twin); such a page is never a candidate.
        """
        if self.ntotal == 0:
            return np.zeros(0, dtype=np.int64)
        _, _, _, links, entry = self._links()
        return self.ids()[self._unreached_rows(links, entry)]

    def link_unreachable(self, rounds: int = 4) -> np.ndarray:
        """Give every unreachable node incoming level-0 links from up to LINKS_IN of its nearest reachable nodes
        (found by searching the graph with the node's own vector): a free slot, else the slot of a
        neighbour that keeps another incoming link, so no other node is cut off. Returns the page ids
        still unreachable after ``rounds`` passes (also kept as :attr:`lost`)."""
        self.lost = np.zeros(0, dtype=np.int64)
        if self.ntotal == 0:
            return self.lost
        inner = faiss.downcast_index(self.index.index)
        rows = None
        for _ in range(rounds):
            hnsw, nb, slots, links, entry = self._links()
            rows = self._unreached_rows(links, entry)
            if not len(rows) or len(rows) == self.ntotal:
                break
            indeg = np.bincount(links[links >= 0], minlength=self.ntotal)
            vecs = np.stack([inner.reconstruct(int(r)) for r in rows])
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(64, inner.hnsw.efSearch)
            with faiss_threads(1 if len(rows) < 16 else faiss.omp_get_max_threads()):
                _, near = inner.search(vecs, 32, params=params)  # reachable rows only: searches start at entry
            for u, cands in zip(rows.tolist(), near.tolist()):
                made = 0
                for v in cands:
                    if v < 0 or v == u or made == LINKS_IN:
                        continue
                    own = links[v]
                    free = np.flatnonzero(own < 0)
                    spare = np.flatnonzero((own >= 0) & (indeg[np.maximum(own, 0)] >= 2))
                    j = free[0] if len(free) else spare[-1] if len(spare) else -1
                    if j < 0:
                        continue
                    if own[j] >= 0:
                        indeg[own[j]] -= 1
                    own[j] = u
                    nb[slots[v][j]] = u
                    indeg[u] += 1
                    made += 1
            faiss.copy_array_to_vector(nb, hnsw.neighbors)
            rows = None  # relinked: walk again
        if rows is None:
            rows = self._unreached_rows(*self._links()[3:])
        self.lost = self.ids()[rows]
        return self.lost

    def lost_pages(self) -> np.ndarray:
        """Page ids no walk of the graph reaches even after relinking (:meth:`link_unreachable`, run
        once after each change): stage 1 scores them exactly, so no page hides in the graph."""
        if self.lost is None:
            self.link_unreachable()
        return self.lost

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(page ids [N], the graph's own copies of their vectors float32 [N, dim])."""
        return self.ids(), faiss.downcast_index(self.index.index).reconstruct_n(0, self.ntotal)
