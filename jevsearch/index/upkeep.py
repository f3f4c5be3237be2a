"""Upkeep of an :class:`~jevsearch.index.Index`: compaction (which also upgrades the on-disk format
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
from jevsearch.index_codec import conversion, new_layout
from jevsearch.search.threads import torch_threads
from jevsearch.store import fields, verify
from jevsearch.store.lmdbstore import EXACT
from jevsearch.store.rewrite import rewrite, upgrade

log = logging.getLogger(__name__)


class IndexMaintenance:
    """The upkeep methods of :class:`~jevsearch.index.Index` (a mixin: it uses the index's store,
    graph view and damage log)."""

    def compact(self, *, codec: str | None = None, keep_exact: bool | None = None,
                pool_factor: int | None = None) -> dict:
        """Rebuild the HNSW from live pages (dropping tombstones, every page reachable) and shrink
        the LMDB file; an older format is rewritten with checksums (1 -> 2) after a deep check
        (CorruptIndexError naming the documents to re-add, nothing changed, when vectors are damaged).

        ``codec`` / ``keep_exact`` / ``pool_factor`` (each None: as it is; a new codec's keep_exact
        defaults as at create): convert the index to that storage, re-encoding every page from its
        float tokens (fp16 codes or kept exact tokens; InvalidInputError when the index has none, or
        to pool tokens pooled already). Crash-safe: a kill at any point leaves the old index or the
        new one, never a mix; readers switch at their next call.

        Every stored value's digest is checked on the way: damaged thumbnail/grid records are dropped
        (the pages show pictures from their source files until their documents are re-added); other
        damaged values cannot be rebuilt and are carried over as they are (still skipped by searches).
        Returns ``{"dropped": [what was dropped], "damaged": [each value left damaged, by document and
        page], "redo": [the documents to delete and re-add]}``; a conversion refuses damaged values
        (CorruptIndexError naming their documents, nothing changed).

        >>> eng.compact(codec="binary", keep_exact=True)                # doctest: +SKIP
        {'dropped': [], 'damaged': [], 'redo': []}
        """
        with self._mutex, self._store.scanning():
            self._check_writable()
            target = new_layout(self._manifest["multi_dim"], codec, keep_exact, pool_factor, current=self._layout,
                                single_dim=self._manifest["single_dim"])
            plan = None if target == self._layout else conversion(self._store, self._manifest, self._layout, target)
            old_format = not self._manifest.get("checksums")
            if old_format:
                damaged = [p for p in self._check(deep=True)[1] if not p.fixable]
            else:
                with self._store.read() as txn:
                    damaged, views = verify.damaged_values(self._store, txn)
            if damaged and (old_format or plan is not None):  # sealing or re-encoding would certify them
                raise verify.describe(self.path, damaged, repairing=True)
            dropped = []
            if not old_format and views:
                with self._store.write() as txn:
                    dropped = verify.drop_views(self._store, txn, views)
            with self._store.read() as txn:
                state = self._store.state(txn)
                graph = self._view.rebuilt(txn, self._manifest)
            epoch = state["epoch"] + 1
            # File first, then LMDB: a crash in between leaves epochs that differ -> rebuilt at open.
            graph.save(self.path, epoch=epoch, next_page_id=state["next_page_id"])
            with self._store.write() as txn:
                state = self._store.state(txn)
                state.update(epoch=epoch, tombs=0, gen=state["gen"] + 1)
                self._store.clear_tombstones(txn)
                self._store.put_state(txn, state)
            self._view.replace(graph, epoch, state["gen"])
            self._fields.gen = -1  # reloaded at the next search, without the rows of deleted documents
            if plan is not None or old_format:
                with torch_threads(self.threads):  # encoding and pooling
                    rewrite(self._store, plan or upgrade(self._manifest))
                with self._store.read() as txn:
                    self._refresh(txn)  # the new manifest: scorers for the new layout
            else:
                self._store.compact_file()
            self._text_after_compact()
        redo = sorted({p.doc for p in damaged if p.doc})
        if damaged:
            log.warning("%s: compacted, but %d damaged values could not be rebuilt (%s): delete and re-add %s",
                        self.path, len(damaged), "; ".join(p.text for p in damaged[:5]), ", ".join(redo[:10]))
        return {"dropped": dropped, "damaged": [p.text for p in damaged], "redo": redo}

    def stats(self) -> dict:
        """Counts and bytes on disk: documents, pages, tokens, tombstones, hnsw_vectors, damaged_pages
        (found damaged and skipped by this process: see :meth:`verify`), the storage (codec,
        keep_exact, pool_factor, single_dtype), bytes {"lmdb_file", "hnsw_file", plus LMDB pages used
        per table: multi, exact, single, ...} and bytes_per_page (live page) of each part: multi_codes,
        exact, singles, hnsw, other (the rest of the LMDB file: records, texts, free pages).

        >>> eng.stats()["bytes_per_page"]      # doctest: +SKIP
        {'multi_codes': 12368.0, 'exact': 197140.0, 'singles': 4104.0, 'hnsw': 1004.0, 'other': 1372.0}
        """
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                state = self._store.state(txn)
                self._refresh(txn)
            hnsw = os.path.join(self.path, "hnsw.bin")
            sizes = {"lmdb_file": self._store.file_bytes(),
                     "hnsw_file": os.path.getsize(hnsw) if os.path.exists(hnsw) else 0,
                     "text_index": text.bytes() if self.has_text_index and (text := self._text_reader()) else 0}
            sizes.update(self._store.table_bytes())
            parts = {"multi_codes": sizes.get("multi", 0), "exact": sizes.get(EXACT, 0),
                     "singles": sizes.get("single", 0), "hnsw": sizes["hnsw_file"], "text_index": sizes["text_index"]}
            parts["other"] = sizes["lmdb_file"] - parts["multi_codes"] - parts["exact"] - parts["singles"]
            layout = self._layout
            return {"documents": state["docs"], "pages": state["pages"], "tokens": state["tokens"],
                    "tombstones": state["tombs"], "hnsw_vectors": self._view.settle().ntotal,
                    "damaged_pages": len(self._damage), "codec": layout.codec.name, "keep_exact": layout.keep_exact,
                    "pool_factor": layout.pool_factor, "single_dtype": layout.single_dtype.name, "bytes": sizes,
                    "bytes_per_page": {k: v / max(state["pages"], 1) for k, v in parts.items()}}

    def verify(self, *, deep: bool = False, repair: bool = False) -> dict:
        """Check the index is consistent; raises CorruptIndexError listing the problems.

        Checks every document's pages, vector sizes, counters, orphans, that the HNSW holds every live
        page, and the pages searches found damaged. ``deep=True`` also reads every value: checksums,
        finite unit vectors, and the graph (every node reachable from its entry point, every node's
        vector the one LMDB holds for its id). ``repair=True`` (a writer) first fixes what LMDB can
        rebuild (:func:`jevsearch.store.verify.repair_records`, then :meth:`compact`) and checks again;
        what remains (damaged pages: re-add their documents) is raised, its ``cli_hint`` giving the
        commands. ``repair`` implies ``deep``. Returns the counts checked (and ``repaired``: what was done).
        """
        deep = deep or repair  # a repair must see every damaged value and unreachable page
        with self._mutex:
            (self._check_writable if repair else self._check_open)()
            report, problems = self._check(deep)
            if repair and any(p.fixable for p in problems):
                with self._store.write() as txn:
                    done = verify.repair_records(self._store, txn)
                    if fields.check_table(self._store, txn):
                        done.append(f"rebuilt the field index ({fields.fill_table(self._store, txn)} documents)")
                done += self._repair_text() if any(p.text.startswith("text index") for p in problems) else []
                done += self.compact()["dropped"]
                with self._store.read() as txn:
                    self._damage.prune(self._store, txn)
                report, problems = self._check(deep)
                report["repaired"] = done + ["rebuilt the HNSW from LMDB and saved it"]
        if problems:
            raise verify.describe(self.path, problems, repairing=repair)
        return report

    def _check(self, deep: bool):
        # One torch thread: the row checks are small ops, slowed ~10x by a thread team on busy cores.
        with self._store.scanning(), self._store.read() as txn, torch_threads(1):
            self._refresh(txn)
            try:
                scanned = self._view.lost()  # relinks what it can first
            except CorruptIndexError:
                scanned = ()  # a damaged graph: the check below names it
            report, problems = verify.check_index(self._store, txn, self._manifest, self._view.settle(),
                                                  self._view.tombs, parts=self._layout.parts(), deep=deep,
                                                  scanned=scanned)
            problems += [verify.Problem(text, fixable=True) for text in fields.check_table(self._store, txn)]
        if not deep:  # a deep check finds them itself
            problems += self._damage.problems()
        problems += self._text_problems(deep)
        if self._view.repaired_in_memory:
            problems.append(verify.Problem(f"hnsw.bin: {self._view.repaired_in_memory} (rebuilt in memory only)",
                                           fixable=True))
        return report, problems
