"""Upkeep of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): compaction (which also upgrades the on-disk format
and converts an index to another codec), verification with repair, and its sizes.

``compact`` rebuilds the HNSW from LMDB (every page reachable), drops tombstones and shrinks the
LMDB file; an index in an older format is rewritten in the current one
(:mod:`jevsearch.store.rewrite`). ``verify`` checks the index (:mod:`jevsearch.store.verify`),
deep or not, and with ``repair`` fixes what LMDB can rebuild.
"""

from __future__ import annotations

import logging
import os

from jevsearch.errors import CorruptIndexError
from jevsearch.index import fdes, text
from jevsearch.index.layout import conversion, new_layout
from jevsearch.index.state import IndexState, commit_state
from jevsearch.search.threads import torch_threads
from jevsearch.store import fde, fields, verify
from jevsearch.store.lmdbstore import EXACT
from jevsearch.store.rewrite import rewrite, upgrade

log = logging.getLogger(__name__)


def compact(st: IndexState, *, codec: str | None = None, keep_exact: bool | None = None,
            pool_factor: int | None = None, stage1: str | None = None) -> dict:
    """Index.compact: the HNSW rebuilt, tombstones dropped, the format or codec converted, FDEs
    added or dropped (``stage1``)."""
    with st.mutex, st.store.scanning():
        st.check_writable()
        stage1 = fdes.target(st.manifest, stage1)
        target = new_layout(st.manifest["multi_dim"], codec, keep_exact, pool_factor, current=st.layout,
                            single_dim=st.manifest["single_dim"])
        plan = None if target == st.layout else conversion(st.store, st.manifest, st.layout, target)
        old_format = not st.manifest.get("checksums")
        if old_format:
            damaged = [p for p in check(st, deep=True)[1] if not p.fixable]
        else:
            with st.store.read() as txn:
                damaged, views = verify.damaged_values(st.store, txn)
        if damaged and (old_format or plan is not None):  # sealing or re-encoding would certify them
            raise verify.describe(st.path, damaged, repairing=True)
        dropped = []
        if not old_format and views:
            with st.store.write() as txn:
                dropped = verify.drop_views(st.store, txn, views)
        with st.store.read() as txn:
            state = st.store.state(txn)
            graph = st.view.rebuilt(txn, st.manifest)
            fde_graph = st.fde_view.rebuilt(txn, st.manifest) if st.manifest.get("fde") else None
        epoch = state["epoch"] + 1
        # Files first, then LMDB: a crash in between leaves epochs that differ -> rebuilt at open.
        graph.save(st.path, epoch=epoch, next_page_id=state["next_page_id"])
        if fde_graph is not None:
            fde_graph.save(st.path, epoch=epoch, next_page_id=state["next_page_id"], file_name=fde.FILE_NAME)
        with st.store.write() as txn:
            state = st.store.state(txn)
            state.update(epoch=epoch, tombs=0)
            st.store.clear_tombstones(txn)
            commit_state(st.store, txn, state)
        st.view.replace(graph, epoch, state["gen"])
        if fde_graph is not None:
            st.fde_view.replace(fde_graph, epoch, state["gen"])
        st.fields.gen = -1  # reloaded at the next search, without the rows of deleted documents
        if plan is not None or old_format:
            with torch_threads(st.threads):  # encoding and pooling
                rewrite(st.store, plan or upgrade(st.manifest))
            with st.store.read() as txn:
                st.refresh(txn)  # the new manifest: scorers for the new layout
        else:
            st.store.compact_file()
        if stage1 is not None:  # after any rewrite: its plan kept the manifest's stage 1
            fdes.convert(st, stage1)
        text.after_compact(st)
    redo = sorted({p.doc for p in damaged if p.doc})
    if damaged:
        log.warning("%s: compacted, but %d damaged values could not be rebuilt (%s): delete and re-add %s",
                    st.path, len(damaged), "; ".join(p.text for p in damaged[:5]), ", ".join(redo[:10]))
    return {"dropped": dropped, "damaged": [p.text for p in damaged], "redo": redo}


def stats(st: IndexState) -> dict:
    """Index.stats: counts and bytes per part."""
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            state = st.store.state(txn)
            st.refresh(txn)
        hnsw = os.path.join(st.path, "hnsw.bin")
        sizes = {"lmdb_file": st.store.file_bytes(),
                 "hnsw_file": os.path.getsize(hnsw) if os.path.exists(hnsw) else 0,
                 "text_index": ti.bytes() if st.has_text_index and (ti := text.reader(st)) else 0}
        sizes.update(st.store.table_bytes())
        fde_file = os.path.join(st.path, fde.FILE_NAME)
        sizes["fde_file"] = os.path.getsize(fde_file) if st.manifest.get("fde") and os.path.exists(fde_file) else 0
        parts = {"multi_codes": sizes.get("multi", 0), "exact": sizes.get(EXACT, 0),
                 "singles": sizes.get("single", 0), "hnsw": sizes["hnsw_file"], "text_index": sizes["text_index"],
                 "fde": sizes.get(fde.TABLE, 0) + sizes["fde_file"]}
        parts["other"] = sizes["lmdb_file"] - parts["multi_codes"] - parts["exact"] - parts["singles"] \
            - sizes.get(fde.TABLE, 0)
        layout = st.layout
        return {"documents": state["docs"], "pages": state["pages"], "tokens": state["tokens"],
                "tombstones": state["tombs"], "hnsw_vectors": st.view.settle().ntotal,
                "damaged_pages": len(st.damage), "codec": layout.codec.name, "keep_exact": layout.keep_exact,
                "pool_factor": layout.pool_factor, "single_dtype": layout.single_dtype.name, "bytes": sizes,
                "bytes_per_page": {k: v / max(state["pages"], 1) for k, v in parts.items()}}


def verify_index(st: IndexState, *, deep: bool = False, repair: bool = False) -> dict:
    """Index.verify: check (deep), repair what LMDB can rebuild, raise what remains."""
    deep = deep or repair  # a repair must see every damaged value and unreachable page
    with st.mutex:
        (st.check_writable if repair else st.check_open)()
        report, problems = check(st, deep)
        if repair and any(p.fixable for p in problems):
            with st.store.write() as txn:
                done = verify.repair_records(st.store, txn)
                if fields.check_table(st.store, txn):
                    done.append(f"rebuilt the field index ({fields.fill_table(st.store, txn)} documents)")
            done += text.repair(st) if any(p.text.startswith("text index") for p in problems) else []
            done += compact(st)["dropped"]
            with st.store.read() as txn:
                st.damage.prune(st.store, txn)
            report, problems = check(st, deep)
            report["repaired"] = done + ["rebuilt the HNSW from LMDB and saved it"]
    if problems:
        raise verify.describe(st.path, problems, repairing=repair)
    return report


def check(st: IndexState, deep: bool):
    # One torch thread: the row checks are small ops, slowed ~10x by a thread team on busy cores.
    with st.store.scanning(), st.store.read() as txn, torch_threads(1):
        st.refresh(txn)
        scanned = {}
        for view in st.views():
            try:
                scanned[view.FILE] = view.lost()  # relinks what it can first
            except CorruptIndexError:
                scanned[view.FILE] = ()  # a damaged graph: the check below names it
        graphs = [fdes.graph_check(st, scanned[fde.FILE_NAME])] if st.manifest.get("fde") else []
        report, problems = verify.check_index(st.store, txn, st.manifest, st.view.settle(),
                                              st.view.tombs, parts=st.layout.parts() + fdes.parts(st.manifest),
                                              deep=deep, scanned=scanned[st.view.FILE], graphs=graphs)
        problems += [verify.Problem(t, fixable=True) for t in fields.check_table(st.store, txn)]
    if not deep:  # a deep check finds them itself
        problems += st.damage.problems()
        if st.manifest.get("fde"):
            problems += [verify.Problem(f"{name}: its FDE is damaged or missing (left out of the FDE graph; found "
                                        "by a search)", fixable=False, doc=name.rsplit(" page ", 1)[0])
                         for name in st.fde_view.left.values()]
    problems += text.problems(st, deep)
    for view in st.views():
        if view.repaired_in_memory:
            problems.append(verify.Problem(f"{view.FILE}: {view.repaired_in_memory} (rebuilt in memory only)",
                                           fixable=True))
    return report, problems
