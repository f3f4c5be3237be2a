"""The stored side of the FDE stage 1 (:mod:`jevsearch.search.fde`): the ``fde`` table and its graph.

An index whose manifest has an ``"fde"`` record (the encoder's parameters) keeps one float16 MUVERA
encoding per page in the LMDB table ``fde`` (checksummed like every value), written in the same
commit as the page, and a second FAISS HNSW over them in ``<index>/fde.bin``: the same machinery as
the singles' graph (:class:`~jevsearch.store.graphview.GraphView`: loaded or rebuilt from LMDB at
open, the writer's commits queued, tombstones, filters through ``search_subset``, unreachable nodes
relinked or scanned exactly). A page whose encoding is missing or fails its checksum is left out of
this graph, never served from it, and named (:attr:`FdeView.left`, listed by ``Index.verify``); the
page itself is sound, so searches still find it through the singles' graph.
"""

from __future__ import annotations

import logging

import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.store.graphview import GraphView
from jevsearch.store.hnsw import HnswGraph
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.schema import FDE, page_key

log = logging.getLogger(__name__)

FILE_NAME = "fde.bin"
TABLE = FDE


def put(store: PageStore, txn, first: int, fdes: np.ndarray) -> None:
    """Write the encodings [P, F] of pages ``first ...`` (just written by ``put_document``) as float16."""
    values = np.ascontiguousarray(fdes, dtype=np.float16)
    for i, row in enumerate(values):
        store.put(txn, TABLE, page_key(first + i), row, append=True)


def get(store: PageStore, txn, page_id: int, dim: int) -> np.ndarray | None:
    """A page's encoding as float32 [dim] (a copy), None if absent or of another size; ChecksumError
    when damaged."""
    raw = store.get(txn, TABLE, page_key(page_id))
    if raw is None or len(raw) != 2 * dim:
        return None
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)


class FdeView(GraphView):
    """The FDE graph of an index, in step with LMDB (see :class:`GraphView`)."""

    FILE = FILE_NAME
    WHAT, GRAPH = "FDE", "the FDE graph"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.left: dict[int, str] = {}  # page id -> "doc pN" of pages left out for a damaged or missing FDE

    def left_out(self, txn, page_ids: list[int]) -> None:
        """Name the pages whose FDE is damaged or missing (not their other values: they stay searchable)."""
        for pid in page_ids:
            if pid in self.left:
                continue
            rec = None
            try:
                rec = self.store.page(txn, pid)
                doc = None if rec is None else self.store.document_by_key(txn, rec[0])
            except CorruptIndexError:
                doc = None
            self.left[pid] = f"{doc['doc_id']} page {rec[1]}" if doc else f"page id {pid}"
            log.warning("%s: %s: its FDE is damaged or missing: left out of the FDE graph (the singles' HNSW "
                        "still finds it; re-add its document to restore it)", self.index_dir, self.left[pid])

    def rebuilt(self, txn, manifest: dict) -> HnswGraph:
        self.left = {}  # a rebuild names its own
        return super().rebuilt(txn, manifest)

    def dim(self, manifest: dict) -> int:
        return manifest["fde"]["out"]

    def vector(self, txn, page_id: int, manifest: dict) -> np.ndarray | None:
        return get(self.store, txn, page_id, self.dim(manifest))

    def prepare(self, vecs: np.ndarray, manifest: dict) -> np.ndarray:
        return np.ascontiguousarray(vecs, dtype=np.float32)  # inner products of encodings, not cosines

    def new_graph(self, manifest: dict) -> HnswGraph:
        h = manifest["hnsw"]
        # A shallower build than the singles' graph: a 2,560-d insert costs ~20x a 128-d one, and a
        # build depth of 32 still found 0.999 of the exact FDE top 100 (benchmarks/RESULTS.md).
        return HnswGraph(self.dim(manifest), h["M"], min(h["ef_construction"], EF_CONSTRUCTION), h["ef_search"])


EF_CONSTRUCTION = 32
