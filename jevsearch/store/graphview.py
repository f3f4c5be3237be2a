"""An Engine's in-memory HNSW, kept in step with LMDB snapshots.

LMDB is the truth; this view mirrors it into a :class:`~jevsearch.store.hnsw.HnswGraph`:

* at open it loads ``hnsw.bin`` and adds the pages LMDB has beyond the file (crash repair), or
  rebuilds from LMDB when the file is missing, damaged or from another epoch (compaction);
* a reader catches up the same way whenever LMDB's generation moved (another process wrote);
* the writer's own commits are queued (:meth:`committed`) and inserted in one multi-threaded batch
  before the next search, save or check (:meth:`settle`): HNSW insertion is memory-latency bound
  (measured 2.2 ms per vector at 100k pages), so per-document inserts made ingest 3x slower than
  its LMDB commits; the graph is saved every SAVE_EVERY_PAGES pages and on flush/close;
* deleted pages stay in the graph as tombstones, skipped by a FAISS selector until compaction.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.store.hnsw import HnswGraph, truncate_normalize
from jevsearch.store.lmdbstore import PageStore

log = logging.getLogger(__name__)

# The HNSW file is rewritten after this many added pages (and on flush/close); a crash re-adds at
# most this many pages from LMDB at the next open.
SAVE_EVERY_PAGES = 10_000
_BULK = 4096  # pages per batch when (re)building from LMDB


class GraphView:
    def __init__(self, index_dir: str, store: PageStore, readonly: bool):
        self.index_dir, self.store, self.readonly = index_dir, store, readonly
        self.graph: HnswGraph | None = None
        self.epoch = -1
        self.next_page_id = 0  # every page with a smaller id that LMDB had is in the graph
        self.gen = -1  # LMDB generation mirrored
        self.tombs = np.zeros(0, dtype=np.int64)
        self.exclude = None  # FAISS selector skipping tombstones; kept alive here (FAISS holds a raw pointer)
        self.unsaved = 0
        self.clean = False  # the graph equals hnsw.bin (nothing to save)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # committed, not yet in the graph

    @staticmethod
    def new_graph(manifest: dict) -> HnswGraph:
        h = manifest["hnsw"]
        return HnswGraph(manifest["single_dim"], h["M"], h["ef_construction"], h["ef_search"])

    def refresh(self, txn, state: dict, manifest: dict) -> None:
        """Mirror the LMDB snapshot ``txn`` (whose state record is ``state``)."""
        if state["epoch"] != self.epoch:
            self.graph, self.next_page_id, self.clean, self._pending = None, 0, False, []
            try:
                graph, header = HnswGraph.load(self.index_dir, manifest["hnsw"]["ef_search"])
                # A writer never sees a file ahead of LMDB unless something is off; a reader may
                # (its snapshot predates the writer's latest save): pages it cannot see are skipped.
                ahead = header["next_page_id"] > state["next_page_id"]
                if header["epoch"] == state["epoch"] and header["dim"] == manifest["single_dim"] \
                        and (self.readonly or not ahead):
                    self.graph, self.next_page_id, self.clean = graph, header["next_page_id"], True
                else:
                    log.warning("%s: HNSW file is from another state of the index; rebuilding from LMDB",
                                self.index_dir)
            except CorruptIndexError as e:
                log.warning("%s: %s; rebuilding the HNSW from LMDB", self.index_dir, e)
            if self.graph is None:
                self.graph = self.new_graph(manifest)
            self.epoch = state["epoch"]
        if self.next_page_id < state["next_page_id"]:
            added = self.add_pages(txn, self.graph, self.next_page_id, manifest)
            if added:
                self.clean = False
                log.info("%s: added %d pages from LMDB to the HNSW", self.index_dir, added)
            self.next_page_id = state["next_page_id"]
        self._set_tombstones(self.store.tombstones(txn) if state["tombs"] else np.zeros(0, np.int64))
        self.gen = state["gen"]

    def add_pages(self, txn, graph: HnswGraph, start: int, manifest: dict) -> int:
        """Add every live page with id >= start from LMDB to ``graph``; returns how many."""
        dim, full = manifest["single_dim"], manifest["single_full_dim"]
        ids, vecs, n = [], [], 0
        for pid, _, _, _ in self.store.iter_pages(txn, start):
            ids.append(pid)
            vecs.append(np.frombuffer(self.store.single_raw(txn, pid), dtype=np.float32, count=full))
            if len(ids) == _BULK:
                graph.add(np.array(ids), truncate_normalize(np.stack(vecs), dim))
                n += len(ids)
                ids, vecs = [], []
        if ids:
            graph.add(np.array(ids), truncate_normalize(np.stack(vecs), dim))
            n += len(ids)
        return n

    def committed(self, state: dict, removed: list[int], ids: np.ndarray | None = None,
                  vecs: np.ndarray | None = None) -> bool:
        """Mirror the writer's own commit (pages ``ids`` with truncated vectors ``vecs``, ``removed``
        page ids); returns True when the graph is due to be saved."""
        if ids is not None:
            self._pending.append((ids, vecs))
            self.unsaved += len(ids)
            self.clean = False
        self.next_page_id = state["next_page_id"]
        if removed:
            self._set_tombstones(np.concatenate([self.tombs, np.asarray(removed, dtype=np.int64)]))
        self.gen = state["gen"]
        return self.unsaved >= SAVE_EVERY_PAGES

    def settle(self) -> HnswGraph:
        """Insert the queued pages (one batch: FAISS parallelises it); returns the complete graph."""
        if self._pending:
            pending, self._pending = self._pending, []
            try:
                self.graph.add(np.concatenate([i for i, _ in pending]), np.concatenate([v for _, v in pending]))
            except BaseException:
                self.epoch = -1  # LMDB is ahead of memory: rebuild the view at the next refresh
                raise
        return self.graph

    def replace(self, graph: HnswGraph, epoch: int, gen: int) -> None:
        """Adopt a graph rebuilt by compaction (already saved under ``epoch``), with no tombstones."""
        self.graph, self.epoch, self.gen, self.unsaved, self.clean = graph, epoch, gen, 0, True
        self._pending = []
        self._set_tombstones(np.zeros(0, dtype=np.int64))

    def save(self) -> None:
        self.settle().save(self.index_dir, epoch=self.epoch, next_page_id=self.next_page_id)
        self.unsaved, self.clean = 0, True

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Candidate page ids [Q, n] (-1 padded) for truncated, normalised queries [Q, single_dim]."""
        return self.settle().search(queries, n, exclude=self.exclude)[0]

    def _set_tombstones(self, tombs: np.ndarray) -> None:
        self.tombs = tombs
        self.exclude = faiss.IDSelectorNot(faiss.IDSelectorBatch(tombs)) if len(tombs) else None
