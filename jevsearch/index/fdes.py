"""The FDE stage 1 of an :class:`~jevsearch.index.Index` in upkeep: giving an index its FDEs (or
dropping them) at ``compact(stage1=...)``, and what ``verify`` checks of them.

An index made before FDEs existed (no ``"fde"`` and no ``"stage1"`` in its manifest) gains them at
its next compaction; one made with ``stage1="single"`` keeps its choice unless ``compact`` is told.
Adding them is crash-safe without copying the store: the encodings are written into the ``fde``
table and their graph saved to ``fde.bin`` first, and the manifest naming the encoder is committed
last. Until that commit every reader ignores the table (a search reads FDEs only when the manifest
names them); a crash before it leaves a table the next conversion clears and writes again.

The encodings come from each page's stored float tokens (the exact ones when kept, else its codes
decoded; pooled tokens in a pooled index), so an old index's FDEs are those of what it stores.
FDEs need no training: adds, deletes and compactions never make them stale.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.index.lifecycle import with_stage1
from jevsearch.index.state import IndexState
from jevsearch.search.fde import Fde
from jevsearch.store import fde, verify
from jevsearch.store.lmdbstore import page_key

log = logging.getLogger(__name__)

_BATCH = 1024  # pages encoded per write transaction


def target(manifest: dict, stage1: str | None) -> str | None:
    """The stage 1 a compaction converts to, None when it keeps the index's."""
    have = "union" if manifest.get("fde") else manifest.get("stage1")  # None: made before FDEs
    want = "union" if stage1 is None and have is None else stage1
    with_stage1(manifest, want or "single")  # InvalidInputError for a bad value
    return None if want in (None, have) else want


def convert(st: IndexState, stage1: str) -> None:
    """Give the index FDEs and their graph ("union"), or drop them ("single"); writer, mutex held."""
    manifest = with_stage1(st.manifest, stage1)
    with st.store.write() as txn:
        _clear(st, txn)
        if stage1 == "single":
            st.set_manifest(txn, manifest)
    if stage1 == "single":
        st.fde_view.reset()
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(st.path, fde.FILE_NAME))
        return
    enc = Fde.of(manifest["fde"])
    with st.store.read() as txn:
        pages = [(pid, tokens) for pid, _, _, tokens in st.store.iter_pages(txn, damaged=[])]
    for i in range(0, len(pages), _BATCH):
        with st.store.read() as txn:
            done = _encode(st, txn, enc, pages[i:i + _BATCH])
        with st.store.write() as txn:
            for pid, value in done:
                st.store.put(txn, fde.TABLE, page_key(pid), value)
    with st.store.read() as txn:
        state = st.store.state(txn)
        graph = st.fde_view.rebuilt(txn, manifest)
    graph.save(st.path, epoch=state["epoch"], next_page_id=state["next_page_id"], file_name=fde.FILE_NAME)
    with st.store.write() as txn:
        state = st.set_manifest(txn, manifest)  # last: from here on the index searches with its FDEs
    st.fde_view.replace(graph, state["epoch"], state["gen"])
    st.fde_view.next_page_id = state["next_page_id"]
    log.info("%s: wrote the FDEs of %d pages and their graph", st.path, len(pages))


def _encode(st: IndexState, txn, enc: Fde, pages: list[tuple[int, int]]) -> list[tuple[int, np.ndarray]]:
    """(page id, float16 FDE) of ``pages`` (id, tokens) from their stored tokens; a damaged page is
    left without one (noted: verify names it)."""
    out = []
    for pid, n in pages:
        try:
            tokens = st.layout.tokens(st.store, txn, pid, n)
        except CorruptIndexError:  # ChecksumError included
            st.damage.note(st.store, txn, pid, "its tokens are damaged: it got no FDE")
            continue
        out.append((pid, enc.pages([tokens])[0].astype(np.float16)))
    return out


def _clear(st: IndexState, txn) -> None:
    """Empty the fde table (a crashed conversion's leftovers, or the values being dropped)."""
    for pid in list(st.store.iter_keys(txn, fde.TABLE)):
        st.store.delete(txn, fde.TABLE, page_key(pid))


def parts(manifest: dict) -> list[verify.Part]:
    """What verify checks of each page's FDE (its size and checksum), for an index with FDEs."""
    record = manifest.get("fde")
    return [verify.Part(fde.TABLE, 2 * record["out"], None, per_page=True)] if record else []


def graph_check(st: IndexState, scanned) -> verify.GraphCheck:
    """The FDE graph, to be checked against the ``fde`` table."""
    dim = st.manifest["fde"]["out"]

    def expected(txn, pid: int) -> np.ndarray | None:
        return fde.get(st.store, txn, pid, dim)  # ChecksumError: named with its page
    return verify.GraphCheck(fde.FILE_NAME, st.fde_view.settle(), expected, tuple(np.asarray(scanned).tolist()))
