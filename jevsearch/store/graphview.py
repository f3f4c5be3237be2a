"""An Engine's in-memory HNSW, kept in step with LMDB snapshots.

LMDB is the truth; this view mirrors it into a :class:`~jevsearch.store.hnsw.HnswGraph`:

* at open it loads ``hnsw.bin`` and adds the pages LMDB has beyond the file (crash repair), or
  rebuilds from LMDB when the file is missing, damaged or from another epoch (compaction);
* a reader catches up the same way whenever LMDB's generation moved (another process wrote);
* the writer's own commits are queued (:meth:`committed`) and inserted in batches: HNSW insertion
  is memory-latency bound, so per-document inserts made ingest slower than its LMDB commits
  (benchmarks/RESULTS.md). Every BACKGROUND_PAGES queued
  pages go to a background thread, which inserts while the writer waits on its next fsync (FAISS
  releases the GIL); the rest goes in before the next search, save or check (:meth:`settle`), which
  first waits for the background batch. The graph is saved every SAVE_EVERY_PAGES pages and on
  flush/close;
* deleted pages stay in the graph as tombstones, skipped by a FAISS selector until compaction;
* a page whose stored single vector (or page record) fails its checksum is left out of the graph
  and noted in the index's :class:`~jevsearch.store.damage.DamageLog` (logged once, listed by verify);
  re-adding its document fixes it.

A read-only view that had to rebuild a damaged, missing or stale file keeps the repair in memory
and says once (``repaired_in_memory``) that a writer will persist it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

import faiss
import numpy as np

from jevsearch.errors import ChecksumError, CorruptIndexError
from jevsearch.store.damage import DamageLog
from jevsearch.store.hnsw import FILE_NAME, HnswGraph, truncate_normalize
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.manifest import stored_single_dim
from jevsearch.store.subset import exact_scores, search_subset

log = logging.getLogger(__name__)

# The HNSW file is rewritten after this many added pages (and on flush/close); a crash re-adds at
# most this many pages from LMDB at the next open.
SAVE_EVERY_PAGES = 10_000
_BULK = 4096  # pages per batch when (re)building from LMDB
# Queued pages handed to the background inserter at once, and its threads: the writer keeps a core
# for validating, converting and committing the next documents.
BACKGROUND_PAGES = 1024
BACKGROUND_THREADS = max(1, (os.cpu_count() or 1) - 1)


class GraphView:
    """The singles' graph (``hnsw.bin``); :class:`jevsearch.store.fde.FdeView` is the same machinery over
    another vector per page (:meth:`dim`, :meth:`vector`, :meth:`prepare` and ``FILE``)."""

    FILE = FILE_NAME
    WHAT, GRAPH = "single vector", "the HNSW"  # in messages: the vector a damaged page lost, and the graph

    def __init__(self, index_dir: str, store: PageStore, readonly: bool, damage: DamageLog | None = None):
        self.index_dir, self.store, self.readonly = index_dir, store, readonly
        self.damage = damage if damage is not None else DamageLog(index_dir)
        self.graph: HnswGraph | None = None
        self.epoch = -1
        self.next_page_id = 0  # every page with a smaller id that LMDB had is in the graph
        self.gen = -1  # LMDB generation mirrored
        self.tombs = np.zeros(0, dtype=np.int64)
        self.exclude = None  # FAISS selector skipping tombstones; kept alive here (FAISS holds a raw pointer)
        self.unsaved = 0
        self.clean = False  # the graph equals hnsw.bin (nothing to save)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # committed, not yet in the graph
        self._queued = 0  # pages in _pending
        self._pool: ThreadPoolExecutor | None = None  # the background inserter (writer only)
        self._job: Future | None = None  # its batch in flight
        self.repaired_in_memory: str | None = None  # why a read-only view rebuilt the file's graph

    def dim(self, manifest: dict) -> int:
        """The graph's vector size."""
        return manifest["single_dim"]

    def vector(self, txn, page_id: int, manifest: dict) -> np.ndarray | None:
        """A page's stored vector (float32), None when absent; ChecksumError when damaged."""
        return self.store.single(txn, page_id, stored_single_dim(manifest))

    def prepare(self, vecs: np.ndarray, manifest: dict) -> np.ndarray:
        """Stored vectors [N, D] as the graph holds them: truncated and renormalised singles."""
        return truncate_normalize(vecs, manifest["single_dim"])

    def new_graph(self, manifest: dict) -> HnswGraph:
        h = manifest["hnsw"]
        return HnswGraph(self.dim(manifest), h["M"], h["ef_construction"], h["ef_search"])

    def refresh(self, txn, state: dict, manifest: dict) -> None:
        """Mirror the LMDB snapshot ``txn`` (whose state record is ``state``)."""
        self._wait(quiet=True)  # the graph must be still while it changes; a failed batch: reload it
        if state["epoch"] != self.epoch:
            self.graph, self.next_page_id, self.clean, self._pending, self._queued = None, 0, False, [], 0
            problem = None
            try:
                graph, header = HnswGraph.load(self.index_dir, manifest["hnsw"]["ef_search"],
                                               require_digest=bool(manifest.get("checksums")), file_name=self.FILE)
                # A writer never sees a file ahead of LMDB unless something is off; a reader may
                # (its snapshot predates the writer's latest save): pages it cannot see are skipped.
                ahead = header["next_page_id"] > state["next_page_id"]
                if header["epoch"] == state["epoch"] and header["dim"] == self.dim(manifest) \
                        and (self.readonly or not ahead):
                    self.graph, self.next_page_id, self.clean = graph, header["next_page_id"], True
                    self.repaired_in_memory = None  # a writer saved a good file since
                else:
                    problem = "the HNSW file is from another state of the index"
            except CorruptIndexError as e:
                problem = str(e)
            if self.graph is None:
                self.graph = self.new_graph(manifest)
                self._rebuilding(problem)
            self.epoch = state["epoch"]
        if self.next_page_id < state["next_page_id"]:
            added = self.add_pages(txn, self.graph, self.next_page_id, manifest)
            if added:
                self.clean = False
                log.info("%s: added %d pages from LMDB to the HNSW", self.index_dir, added)
            self.next_page_id = state["next_page_id"]
        self._set_tombstones(self.store.tombstones(txn) if state["tombs"] else np.zeros(0, np.int64))
        self.gen = state["gen"]

    def _rebuilding(self, problem: str) -> None:
        if not self.readonly:
            log.warning("%s: %s; rebuilding %s from LMDB", self.index_dir, problem, self.GRAPH)
            return
        if self.repaired_in_memory is None:
            # Once per view: a reader rebuilds at every open until a writer saves the repair.
            log.warning("%s: %s; rebuilding %s from LMDB in memory only: a writer persists the repair "
                        "(compact the index: Index.compact())", self.index_dir, problem, self.GRAPH)
        self.repaired_in_memory = problem

    def add_pages(self, txn, graph: HnswGraph, start: int, manifest: dict) -> int:
        """Add every live page with id >= start from LMDB to ``graph``; returns how many. Pages whose
        vector (:meth:`vector`) or page record is damaged are left out (noted in ``damage``)."""
        with self.store.scanning():
            ids, vecs, n = [], [], 0
            bad: list[int] = []
            for pid, _, _, _ in self.store.iter_pages(txn, start, damaged=bad):
                try:
                    vec = self.vector(txn, pid, manifest)
                except ChecksumError:
                    bad.append(pid)
                    continue
                if vec is None:
                    bad.append(pid)
                    continue
                ids.append(pid)
                vecs.append(vec)
                if len(ids) == _BULK:
                    graph.add(np.array(ids), self.prepare(np.stack(vecs), manifest))
                    n += len(ids)
                    ids, vecs = [], []
            if ids:
                graph.add(np.array(ids), self.prepare(np.stack(vecs), manifest))
                n += len(ids)
        self.left_out(txn, bad)
        return n

    def left_out(self, txn, page_ids: list[int]) -> None:
        """Note pages :meth:`add_pages` left out: damaged, so skipped by searches too (the damage log)."""
        for pid in page_ids:
            self.damage.note(self.store, txn, pid, f"its {self.WHAT} or page record is damaged: left out of "
                             f"{self.GRAPH}")

    def rebuilt(self, txn, manifest: dict) -> HnswGraph:
        """A fresh graph of every live page of ``txn``'s snapshot, every node reachable (see
        :meth:`HnswGraph.link_unreachable`); the view itself is unchanged (see :meth:`replace`)."""
        graph = self.new_graph(manifest)
        self.add_pages(txn, graph, 0, manifest)
        lost = graph.link_unreachable()
        if len(lost):
            log.info("%s: %d HNSW nodes stay unreachable after relinking (first page id %d); stage 1 scores "
                     "them exactly", self.index_dir, len(lost), lost[0])
        return graph

    def committed(self, state: dict, removed: list[int], ids: np.ndarray | None = None,
                  vecs: np.ndarray | None = None) -> bool:
        """Mirror the writer's own commit (pages ``ids`` with truncated vectors ``vecs``, ``removed``
        page ids); returns True when the graph is due to be saved."""
        if self.epoch == -1:
            return False  # broken: the next refresh rebuilds the view from LMDB, this commit included
        if ids is not None:
            self._pending.append((ids, vecs))
            self._queued += len(ids)
            self.unsaved += len(ids)
            self.clean = False
            if self._queued >= BACKGROUND_PAGES and (self._job is None or self._job.done()):
                # The commit is durable: a failed batch must not fail it; the view is rebuilt instead.
                self._wait(quiet=True)
                if self.epoch == -1:
                    return False
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="jevsearch-hnsw")
                ids_, vecs_ = self._take()
                self._job = self._pool.submit(self.graph.add, ids_, vecs_, BACKGROUND_THREADS)
        self.next_page_id = state["next_page_id"]
        if removed:
            self._set_tombstones(np.concatenate([self.tombs, np.asarray(removed, dtype=np.int64)]))
        self.gen = state["gen"]
        return self.unsaved >= SAVE_EVERY_PAGES

    def settle(self) -> HnswGraph:
        """Wait for the background batch, insert the rest of the queue (one batch: FAISS parallelises
        it); returns the complete graph."""
        self._wait()
        if self._pending:
            try:
                self.graph.add(*self._take())
            except BaseException:
                self._broken()
                raise
        return self.graph

    def close(self) -> None:
        """Stop the background inserter (after its batch in flight); the view is unusable after."""
        self._wait(quiet=True)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        pending, self._pending, self._queued = self._pending, [], 0
        return np.concatenate([i for i, _ in pending]), np.concatenate([v for _, v in pending])

    def _wait(self, quiet: bool = False) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        try:
            job.result()
        except BaseException:
            self._broken()
            if not quiet:
                raise
            log.warning("%s: inserting into the HNSW failed; it will be rebuilt from LMDB", self.index_dir,
                        exc_info=True)

    def _broken(self) -> None:
        # LMDB is ahead of the graph: never save it; the next refresh reloads and repairs the view.
        self.epoch = self.gen = -1

    def replace(self, graph: HnswGraph, epoch: int, gen: int) -> None:
        """Adopt a graph rebuilt by compaction (already saved under ``epoch``), with no tombstones."""
        self._wait(quiet=True)
        self.graph, self.epoch, self.gen, self.unsaved, self.clean = graph, epoch, gen, 0, True
        self.repaired_in_memory = None
        self._pending, self._queued = [], 0
        self._set_tombstones(np.zeros(0, dtype=np.int64))

    def reset(self) -> None:
        """Forget the graph (its index dropped it): a later refresh loads or rebuilds it."""
        self._wait(quiet=True)
        self._pending, self._queued = [], 0
        self._broken()

    def save(self) -> None:
        graph = self.settle()
        if self.epoch == -1:
            return  # a broken view: the file on disk stays older, and open repairs it from LMDB
        if self.clean:
            return  # the file already holds this graph (a rerun that only skipped, deleted or renamed)
        graph.save(self.index_dir, epoch=self.epoch, next_page_id=self.next_page_id, file_name=self.FILE)
        self.unsaved, self.clean = 0, True

    def search(self, queries: np.ndarray, n: int, within: np.ndarray | None = None) -> np.ndarray:
        """Candidate page ids [Q, n] (-1 padded) for truncated, normalised queries [Q, single_dim];
        only among the live pages ``within`` when given (see jevsearch.store.subset). The pages no
        walk of the graph reaches (:meth:`lost`) are scored exactly and merged in by score."""
        graph = self.settle()
        if within is not None:
            ids, scores = search_subset(graph, queries, n, within, self.next_page_id)
        else:
            ids, scores = graph.search(queries, n, exclude=self.exclude)
        lost = self.lost()
        if within is not None and len(lost):
            lost = lost[np.isin(lost, within)]
        return _merged(ids, scores, lost, exact_scores(graph, queries, lost)) if len(lost) else ids

    def lost(self) -> np.ndarray:
        """Live page ids in the graph that no walk reaches, even after relinking (computed after each
        change of the graph; see :meth:`HnswGraph.lost_pages`)."""
        graph = self.settle()
        if graph.lost is None:
            graph.lost_pages()
            self.clean = False  # relinked, and the list is saved with the graph
        lost = graph.lost
        return lost[~np.isin(lost, self.tombs)] if len(lost) and len(self.tombs) else lost

    def _set_tombstones(self, tombs: np.ndarray) -> None:
        self.tombs = tombs
        self.exclude = faiss.IDSelectorNot(faiss.IDSelectorBatch(tombs)) if len(tombs) else None


def _merged(ids: np.ndarray, scores: np.ndarray, extra: np.ndarray, extra_scores: np.ndarray) -> np.ndarray:
    """The best ``ids.shape[1]`` per row of candidates ``ids`` [Q, n] (scores [Q, n], -1 ids unused)
    and ``extra`` [M] (scores [Q, M]), best first; an id in both counts once."""
    n = ids.shape[1]
    both = np.concatenate([ids, np.broadcast_to(extra, (len(ids), len(extra)))], axis=1)
    dup = np.stack([np.isin(extra, row) for row in ids]) if len(ids) else np.zeros((0, len(extra)), bool)
    s = np.concatenate([np.where(ids >= 0, scores, -np.inf), np.where(dup, -np.inf, extra_scores)], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :n]
    out = np.take_along_axis(both, order, axis=1)
    out[np.take_along_axis(s, order, axis=1) == -np.inf] = -1
    return out
