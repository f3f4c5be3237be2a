"""The embedding-level index: a persistent store of page embeddings and its two-stage search.

No model and no PDFs here (that is :class:`jevsearch.engine.Engine`, which adds them on top): callers
bring their own embeddings.

An index is a directory::

    <index>/CURRENT      names the live LMDB directory (replaced atomically by compact)
    <index>/store-<n>/   LMDB: the truth (vectors, pages, documents, manifest) -- jevsearch.store.lmdbstore
    <index>/hnsw.bin     FAISS HNSW over truncated single vectors, a rebuildable cache -- jevsearch.store.hnsw
    <index>/writer.lock  flock held by the one writer -- jevsearch.store.lock

>>> import numpy as np, tempfile, os
>>> rng = np.random.default_rng(0)
>>> unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.standard_normal(s))
>>> path = os.path.join(tempfile.mkdtemp(), "demo")
>>> with Index.create(path, single_dim=64) as eng:
...     eng.add_embeddings("a.pdf", unit(2, 256), [unit(5, 128), unit(7, 128)], metadata={"title": "A"})
...     eng.add_embeddings("b.pdf", unit(1, 256), [unit(4, 128)], page_texts=["hello"])
...     hits = eng.search_embeddings(unit(256), unit(3, 128), k=2)
2
1
>>> len(hits), hits[0].page >= 1
(2, True)
"""

from __future__ import annotations

import errno
import bisect
import json
import logging
import os
import secrets
import shutil
import threading
from types import MappingProxyType
from typing import Iterator

import numpy as np

from jevsearch.errors import (
    CorruptIndexError,
    IndexExistsError,
    InvalidInputError,
    JevsearchError,
    PageNotFoundError,
    ReadOnlyIndexError,
    StorageError,
)
from jevsearch.index_codec import Layout, new_layout
from jevsearch.index_fields import IndexFields
from jevsearch.index_maintenance import IndexMaintenance
from jevsearch.index_search import Hit, IndexSearch
from jevsearch.index_text import IndexText
from jevsearch.search.maxsim import scoring_device
from jevsearch.search.threads import torch_threads
from jevsearch.store import fields, textindex, validate, verify
from jevsearch.store.damage import DamageLog
from jevsearch.store.graphview import GraphView
from jevsearch.store.hnsw import HnswGraph
from jevsearch.store.lmdbenv import (
    CURRENT,
    ENV_PREFIX,
    current_env,
    fsync_dir,
    os_error,
    restore_current,
    store_dirs,
)
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.lock import WriterLock
from jevsearch.store.manifest import check_manifest, new_manifest
from jevsearch.store.visual import PageView

log = logging.getLogger(__name__)

__all__ = ["Hit", "Index"]

log = logging.getLogger(__name__)


class Index(IndexSearch, IndexMaintenance, IndexFields, IndexText):
    """A persistent page index with two-stage search (HNSW candidates, MaxSim rerank).

    Create with :meth:`create`, reopen with :meth:`open`. One writer per index (another raises
    IndexLockedError); any number of ``readonly=True`` readers, in this or other processes, see
    whole documents only and pick up the writer's commits at their next search.
    Not for concurrent use from several threads beyond what its internal lock serialises.
    """

    def __init__(self, path: str, store: PageStore, lock: WriterLock | None, threads: int):
        # Private: use Index.create / Index.open (or Engine's).
        self.path = path
        self.threads = threads
        self.readonly = lock is None
        self._store = store
        self._writer_lock = lock
        self._mutex = threading.RLock()
        self._damage = DamageLog(path)  # pages found damaged (skipped, counted, listed by verify)
        self._view = GraphView(path, store, readonly=lock is None, damage=self._damage)
        self._fields = fields.FieldView(store)  # filterable fields as columns (jevsearch.store.fields)
        self._device, self._dtype = scoring_device()
        self._layout, self._scorers = None, {}
        with store.read() as txn:
            manifest = store.manifest(txn)
            check_manifest(manifest)
            self._use_layout(manifest)
            self._manifest = manifest
            old = not self._refresh(txn).get("fields")
        if old and not self.readonly:
            self._build_field_table()
        self._open_text()
        if not self.readonly and not self._view.clean:
            self.flush()  # repaired at open: persist so the next open is fast

    @property
    def threads(self) -> int:
        """CPU threads for the engine's tensor work (see :meth:`open`); settable, e.g. ``eng.threads = 2``."""
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._threads = validate.check_k(n, "threads")

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, single_dim: int = 128, single_full_dim: int | None = None, multi_dim: int = 128,
               codec: str | None = None, keep_exact: bool | None = None, pool_factor: int | None = None,
               multi_dtype: str | None = None, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
               model_info: dict | None = None, threads: int = 1, text_index: bool | None = None):
        """Create an empty index at ``path`` (which must not exist or be an empty directory).

        single_dim: truncation of the single vectors indexed in the HNSW (Matryoshka); the full
        vectors are kept in LMDB (only their first single_dim dims when keeping codes alone: codec
        int8 or binary without keep_exact). single_full_dim: their D (>= single_dim), or None to take
        it from the first document; later documents must match it. multi_dim: per-token vector size.
        codec: how the per-token vectors are stored: "binary" (the default: 16 B per 128-d token),
        "int8" (132 B) or "fp16" (256 B, the storage of indexes before codecs); keep_exact: also keep
        each page's float16 tokens for the final exact MaxSim (default True for int8 and binary: hits
        and scores as with fp16); pool_factor: 1 (default), 2 or 3 pools each page's tokens at ingest to
        ~1/f of them. The index remembers them (``compact(codec=...)`` converts it); see
        :mod:`jevsearch.index_codec`. multi_dtype: "float16" or "float32" instead of a codec, the
        layout of indexes before codecs.
        hnsw_m / ef_construction / ef_search: HNSW parameters (the search beam is raised to 4x the
        number of candidates asked for, see jevsearch.store.hnsw). model_info: JSON object describing
        the encoder, kept in the manifest. threads: CPU threads for the index's own tensor work (see
        :meth:`open`). text_index: keep a full-text index of the pages' text for lexical and hybrid
        search (:mod:`jevsearch.index_text`); default: when tantivy is installed (the ``text`` extra).
        The index is built in a temporary directory and moved into place, so a crash never leaves a
        half-created index. A new directory gets the mode the umask gives; an empty directory the user
        made is filled in place and keeps its mode and owner. Returns the index opened for writing.
        """
        path = _index_path(path)
        existing = os.path.isdir(path)
        # Another create's work folder (or a crashed one's) does not make the folder taken.
        if os.path.exists(path) and (not existing or any(not n.startswith(_TMP_PREFIX) for n in os.listdir(path))):
            raise IndexExistsError(f"{path}: already exists and is not empty "
                                   "(hint: open it, or pick a new path)",
                                   cli_hint="pick a new or empty folder for --index")
        layout = new_layout(validate.check_k(multi_dim, "multi_dim"), codec, keep_exact, pool_factor, multi_dtype,
                            single_dim=single_dim)
        manifest = layout.manifest(new_manifest(
            single_dim=single_dim, single_full_dim=single_full_dim, multi_dim=multi_dim, multi_dtype="float16",
            hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, model_info=model_info))
        if text_index or (text_index is None and textindex.available()):
            textindex.tantivy()  # MissingDependencyError with the install command
            manifest["text_index"] = True
        parent = os.path.dirname(os.path.abspath(path))
        if not existing:
            os.makedirs(parent, exist_ok=True)
        state = {"next_page_id": 0, "gen": 0, "epoch": 0, "docs": 0, "pages": 0, "tokens": 0, "tombs": 0,
                 "fields": 1}
        tmp = _new_dir(path if existing else parent)
        try:
            PageStore.initialise(tmp, manifest, state)
            HnswGraph(single_dim, hnsw_m, ef_construction, ef_search).save(tmp, epoch=0, next_page_id=0)
            if manifest.get("text_index"):
                textindex.TextIndex.create(tmp, gen=0, epoch=0).close()
            if existing:
                # The store first: a create racing into the same folder fails there, before moving
                # anything of its own; CURRENT, which makes the folder an index, last.
                for name in sorted(os.listdir(tmp), key=lambda n: (n == CURRENT, not n.startswith(ENV_PREFIX))):
                    os.rename(os.path.join(tmp, name), os.path.join(path, name))
                os.rmdir(tmp)
            else:
                os.rename(tmp, path)  # fails if another process got there first
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise IndexExistsError(f"{path}: another process is creating an index here ({e.strerror}) "
                                       "(hint: wait for it to finish, then open it)",
                                       cli_hint="another jevsearch command is creating it: wait for it to "
                                       "finish and rerun") from e
            raise
        fsync_dir(path if existing else parent)
        return cls.open(path, threads=threads)

    @classmethod
    def open(cls, path, *, readonly: bool = False, threads: int = 1, repair: bool = False):
        """Open an existing index; ``readonly=True`` for readers (no lock, writes raise ReadOnlyIndexError).

        threads: CPU threads for the index's own tensor work: worker threads sharing a search's MaxSim
        blocks, and torch intra-op threads while add_embeddings converts (restored after each call).
        1 by default: on a small shared machine the other cores may be busy (torch's OpenMP team on 2
        busy cores once made reranks 3x slower). Set it to the cores you can spare for searching.
        FAISS uses 1 thread per query.

        A writer repairs the HNSW from LMDB when they disagree (after a crash). ``repair=True`` (a
        writer): also restore a lost CURRENT file when exactly one store directory holds a whole LMDB
        file (then :meth:`verify` with ``repair=True``). Raises NotAnIndexError, FormatVersionError,
        IndexLockedError (another writer), CorruptIndexError (a damaged index: see its message).
        """
        path = _index_path(path)
        threads = validate.check_k(threads, "threads")
        try:
            current_env(path)  # NotAnIndexError before touching anything (no lock file in a random dir)
        except CorruptIndexError:
            if not (repair and not readonly and store_dirs(path)):
                raise
        lock = None if readonly else WriterLock(path)
        store = None
        try:
            if repair and lock is not None and not os.path.exists(os.path.join(path, "CURRENT")):
                restore_current(path)
            store = PageStore(path)
            if lock is not None:
                HnswGraph.remove_stale_temp(path)
                store.remove_stale()
                store.create_missing_tables()
                store.repair_manifest()
            return cls(path, store, lock, threads)
        except BaseException:
            if store is not None:
                store.close()
            if lock is not None:
                lock.release()
            raise

    def close(self) -> None:
        """Persist the HNSW (writer), release the lock and the LMDB handle. Idempotent."""
        with self._mutex:
            if self._store is None:
                return
            try:
                if not self.readonly:
                    self.flush()
            finally:
                for scorer in self._scorers.values():
                    scorer.close()
                self._close_text()
                self._view.close()
                self._store.close()
                self._store = None
                if self._writer_lock is not None:
                    self._writer_lock.release()
                self._view = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
            return
        try:  # the error in flight says what happened; one from saving the HNSW must not hide it
            self.close()
        except StorageError:
            log.warning("%s: the HNSW file could not be saved; it is rebuilt from LMDB at the next open", self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, readonly={self.readonly})"

    def flush(self) -> None:
        """Write the in-memory HNSW to disk (atomically) and commit the text index. LMDB commits are
        already durable."""
        with self._mutex:
            self._check_writable()
            try:
                self._view.save()
            except OSError as e:
                if isinstance(e, StorageError):
                    raise
                raise os_error(self.path, e) from e
            self._commit_text()

    # -- manifest -------------------------------------------------------------------------------

    @property
    def manifest(self) -> MappingProxyType:
        """Read-only view of the manifest: format_version, single_dim, single_full_dim, single_dtype,
        multi_dim, codec / keep_exact / pool_factor (format version 3; before: multi_dtype), hnsw {M,
        ef_construction, ef_search}, model (the encoder identity or None)."""
        return MappingProxyType(json.loads(json.dumps(self._manifest)))

    def set_model_info(self, model_info: dict) -> None:
        """Record the encoder identity (a JSON object) in the manifest."""
        model_info = validate.check_metadata(model_info)
        with self._mutex:
            self._check_writable()
            with self._store.write() as txn:
                manifest, state = self._store.manifest(txn), self._store.state(txn)
                manifest["model"] = model_info
                state["gen"] += 1
                self._store.put_manifest(txn, manifest)
                self._store.put_state(txn, state)
            self._manifest, self._view.gen = manifest, state["gen"]

    # -- writes ---------------------------------------------------------------------------------

    def add_embeddings(self, doc_id: str, singles, multis, metadata: dict | None = None,
                       page_texts: list[str] | None = None, page_numbers: list[int] | None = None,
                       page_views: list | None = None) -> int:
        """Add (or atomically replace) a document; returns its page count.

        singles: float [P, D], one L2-normalised vector per page; D >= single_dim, and the same D for
            every document of the index (fixed by the first one).
        multis: P float arrays [T_i, multi_dim] (or one [P, T, multi_dim] array), L2-normalised rows.
        metadata: JSON object returned on hits. page_texts: optional P strings, returned as Hit.text.
        page_numbers: optional P increasing 1-based numbers, returned as Hit.page (default 1..P), for a
        document whose unreadable pages were left out.
        page_views: optional P :class:`~jevsearch.store.visual.PageView` (or None): where each page's
            multi-vector rows sit on the page (for :meth:`page_data` / heat-maps) and its thumbnail.
        Vectors within validate.NORM_TOLERANCE of unit norm are renormalised; anything else invalid
        raises InvalidInputError and writes nothing. One LMDB commit per call (the document is durable
        and visible to readers when this returns); the in-memory HNSW takes the new pages in one batch
        before the next search/flush, and its file is saved every SAVE_EVERY_PAGES pages and on
        flush()/close() (a crash is repaired from LMDB at open). Many small documents commit faster
        together: :meth:`add_embeddings_many`.
        Example: ``eng.add_embeddings("report.pdf", singles, multis, metadata={"title": "Q3"})``.
        """
        return self.add_embeddings_many([(doc_id, singles, multis, metadata, page_texts, page_numbers,
                                          page_views)])[0]

    def add_embeddings_many(self, docs) -> list[int]:
        """Add (or replace) several documents in ONE commit; returns their page counts.

        docs: iterable of ``(doc_id, singles, multis[, metadata[, page_texts[, page_numbers[, page_views]]]])``
        tuples, each as in
        :meth:`add_embeddings`, with distinct doc ids. Every document is validated before anything is
        written, and the commit is all or nothing: a bad document (or a crash) leaves none of the batch
        in the index. One fsync for the batch instead of one per document, so small documents are
        written faster (measured 1.1-1.7x at 10 pages x 770 tokens per document: benchmarks/search.py).
        Example: ``eng.add_embeddings_many([("a.pdf", s_a, m_a), ("b.pdf", s_b, m_b, {"title": "B"})])``.
        """
        return self._add_many(docs)

    def _add_many(self, docs, auto: tuple = ()) -> list[int]:
        """add_embeddings_many; ``auto``: metadata keys recorded by the ingest (not the caller's to
        change with update_metadata)."""
        with self._mutex:
            self._check_writable()
            with torch_threads(self.threads):  # torch converts to the stored dtype ~10x faster than numpy
                prepared = [self._layout.encode(item) for item in validate.prepare_documents(docs, self._manifest)]
            return self._commit(prepared, auto)

    def _commit(self, prepared: list[dict], auto: tuple = ()) -> list[int]:
        """Write documents in their stored form (``Layout.encode``) in one commit; their page counts."""
        with self._mutex:
            if not prepared:
                return []
            full = prepared[0].get("single_full_dim", prepared[0]["singles"].shape[1])
            manifest, removed, ids, vecs, added, gone = self._manifest, [], [], [], [], []
            with self._store.write() as txn:
                state = self._store.state(txn)
                if manifest["single_full_dim"] is None:
                    manifest = dict(manifest, single_full_dim=full)
                    self._store.put_manifest(txn, manifest)
                for item in prepared:
                    old = self._remove(txn, state, item["doc_id"])
                    removed += old
                    gone += old[:1]
                    pages, tokens = len(item["codes"]), sum(item["tokens"])
                    doc = {"doc_id": item["doc_id"], "first": state["next_page_id"], "pages": pages,
                           "tokens": tokens, "metadata": item["metadata"], "text": item["texts"] is not None}
                    if item["numbers"] is not None:
                        doc["page_numbers"] = item["numbers"]
                    if auto:
                        doc["auto"] = [k for k in auto if k in item["metadata"]]
                    self._store.put_document(txn, doc, item["singles"], item["codes"], item["texts"], item["tokens"],
                                             item["exact"])
                    added.append((doc["first"], fields.record(doc["doc_id"], pages, item["metadata"])))
                    self._store.put_fields(txn, *added[-1])
                    if item["views"] is not None:
                        self._store.put_views(txn, doc["first"], item["views"])
                    ids.append(np.arange(doc["first"], doc["first"] + pages))
                    vecs.append(item["truncated"])
                    state["next_page_id"] += pages
                    state["docs"] += 1
                    state["pages"] += pages
                    state["tokens"] += tokens
                state["gen"] += 1
                self._store.put_state(txn, state)
            self._manifest = manifest
            self._fields.committed(state, added, gone)
            self._after_commit(state, removed, np.concatenate(ids), np.concatenate(vecs))
            self._text_changed(gone, [item["doc_id"] for item in prepared])
            return [len(item["codes"]) for item in prepared]

    def delete(self, doc_id: str) -> bool:
        """Delete a document; returns False if it was not there. Its pages become tombstones that
        search skips until :meth:`compact`."""
        doc_id = validate.check_doc_id(doc_id)
        with self._mutex:
            self._check_writable()
            with self._store.write() as txn:
                state = self._store.state(txn)
                removed = self._remove(txn, state, doc_id)
                if not removed:
                    return False
                state["gen"] += 1
                self._store.put_state(txn, state)
            self._fields.committed(state, [], removed[:1])
            self._after_commit(state, removed, None, None)
            self._text_changed(removed[:1], [])
            return True

    def rename_document(self, old: str, new: str, *, metadata: dict | None = None) -> None:
        """Give document ``old`` the id ``new`` (its file was renamed or moved), keeping its pages and
        vectors: nothing is re-encoded, and its pages keep their ids and HNSW entries. A document
        already at ``new`` is replaced. ``metadata`` replaces the document's (default: kept). One commit.

        >>> eng.rename_document("/docs/a.pdf", "/docs/2024/a.pdf")      # doctest: +SKIP
        """
        old, new = validate.check_doc_id(old), validate.check_doc_id(new)
        metadata = None if metadata is None else validate.check_metadata(metadata)
        with self._mutex:
            self._check_writable()
            with self._store.write() as txn:
                doc = self._store.existing_document(txn, old)
                state = self._store.state(txn)
                removed = self._remove(txn, state, new) if new != old else []
                meta = doc["metadata"] if metadata is None else metadata
                self._store.rekey_document(txn, doc, new, meta)
                rec = fields.record(new, doc["pages"], meta)
                self._store.put_fields(txn, doc["first"], rec)
                state["gen"] += 1
                state["frev"] = state.get("frev", 0) + 1  # a record changed in place: readers reload
                self._store.put_state(txn, state)
            self._fields.committed(state, [(doc["first"], rec)], removed[:1] + [doc["first"]])
            self._after_commit(state, removed, None, None)
            self._text_changed(removed[:1] + [doc["first"]], [new])

    def copy_document(self, src: str, dst: str, *, metadata: dict | None = None) -> int:
        """Add document ``dst`` with the stored vectors, texts and page numbers of ``src`` (a copy of
        its file: no encoding needed); ``metadata`` default: src's. Returns the page count. The stored
        values are copied as they are (codes, exact tokens, pooled pages: nothing is encoded again).

        >>> eng.copy_document("/docs/a.pdf", "/backup/a.pdf")             # doctest: +SKIP
        """
        src, dst = validate.check_doc_id(src), validate.check_doc_id(dst)
        metadata = None if metadata is None else validate.check_metadata(metadata)
        with self._mutex:
            self._check_writable()
            with self._store.read() as txn:
                doc = self._store.existing_document(txn, src)
                item = self._layout.stored(self._store, txn, doc, self._manifest["single_dim"])
            return self._commit([dict(item, doc_id=dst, metadata=doc["metadata"] if metadata is None else metadata)])[0]

    def _extend(self, doc, auto: tuple = ()) -> None:
        """Append pages to a stored document (a long one committed in parts, jevsearch.ingest.pipeline)
        and replace its metadata; ``doc``: as an add_embeddings_many tuple. Its pages keep their ids when
        none were added after them, else it is rewritten whole from its stored values (no re-encoding)."""
        with self._mutex:
            self._check_writable()
            with self._store.read() as txn:
                old = self._store.existing_document(txn, validate.check_doc_id(doc[0]))
                moved = old["first"] + old["pages"] != self._store.state(txn)["next_page_id"]
                stored = self._layout.stored(self._store, txn, old, self._manifest["single_dim"]) if moved else None
            if len(doc[1]) == 0:  # no page in this part (the rest missing): only the metadata changes
                with self._store.write() as txn:
                    self._store.put_document_record(txn, dict(old, metadata=doc[3]))
                    rec = fields.record(old["doc_id"], old["pages"], doc[3])
                    self._store.put_fields(txn, old["first"], rec)
                    state = self._store.state(txn)
                    state["gen"] += 1
                    state["frev"] = state.get("frev", 0) + 1  # a record changed in place: readers reload
                    self._store.put_state(txn, state)
                self._fields.committed(state, [(old["first"], rec)], [old["first"]])
                return
            numbers = old.get("page_numbers") or list(range(1, old["pages"] + 1))
            if doc[5] is not None and numbers[-1] >= doc[5][0]:
                raise InvalidInputError(f"{old['doc_id']}: pages from {doc[5][0]} appended after page {numbers[-1]} "
                                        "(hint: parts come in page order)")
            with torch_threads(self.threads):
                (item,) = [self._layout.encode(i) for i in validate.prepare_documents([doc], self._manifest)]
            new = item["numbers"] or range(numbers[-1] + 1, numbers[-1] + 1 + len(item["codes"]))
            item["numbers"] = numbers + list(new)
            if stored is not None:
                self._commit([_joined(stored, item)], auto)
            else:
                self._append(old, item, auto)

    def _append(self, old: dict, item: dict, auto: tuple) -> None:
        """Write the pages of ``item`` after those of document ``old``, whose ids end at the next page id."""
        n, tokens = len(item["codes"]), sum(item["tokens"])
        doc = dict(old, pages=old["pages"] + n, tokens=old["tokens"] + tokens, metadata=item["metadata"],
                   page_numbers=item["numbers"])
        if auto:
            doc["auto"] = [k for k in auto if k in item["metadata"]]
        with self._store.write() as txn:
            state = self._store.state(txn)
            self._store.put_document(txn, doc, item["singles"], item["codes"], item["texts"], item["tokens"],
                                     item["exact"], offset=old["pages"])
            rec = fields.record(doc["doc_id"], doc["pages"], doc["metadata"])
            self._store.put_fields(txn, doc["first"], rec)
            if item["views"] is not None:
                self._store.put_views(txn, doc["first"] + old["pages"], item["views"])
            ids = np.arange(state["next_page_id"], state["next_page_id"] + n)
            state["next_page_id"] += n
            state["pages"] += n
            state["tokens"] += tokens
            state["gen"] += 1
            state["frev"] = state.get("frev", 0) + 1  # a record changed in place: readers reload
            self._store.put_state(txn, state)
        self._fields.committed(state, [(doc["first"], rec)], [doc["first"]])
        self._after_commit(state, [], ids, item["truncated"])

    def failures(self) -> dict[str, dict]:
        """Files :meth:`Engine.add` could not index, as recorded: {path: {"sha256", "reason"}}."""
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                return self._store.failures(txn)

    def set_failures(self, changes: dict[str, dict | None]) -> None:
        """Record failed files ({path: {"sha256", "reason"}}), or forget them (value None); one commit."""
        changes = validate.check_metadata(changes)
        with self._mutex:
            self._check_writable()
            with self._store.write() as txn:
                failures = self._store.failures(txn)
                for path, record in changes.items():
                    if record is None:
                        failures.pop(path, None)
                    else:
                        failures[path] = record
                self._store.put_failures(txn, failures)

    def _remove(self, txn, state: dict, doc_id: str) -> list[int]:
        try:
            old = self._store.document(txn, doc_id)
        except CorruptIndexError:  # a damaged record: its pages are found by their records
            old = verify.salvage_document(self._store, txn, doc_id)
        if old is None:
            return []
        removed = self._store.remove_document(txn, old)
        self._store.delete_fields(txn, old["first"])
        state["docs"] -= 1
        state["pages"] -= old["pages"]
        state["tokens"] -= old["tokens"]
        state["tombs"] += len(removed)
        return removed

    def _after_commit(self, state: dict, removed: list[int], ids, vecs) -> None:
        self._damage.forget(removed)
        if self._view.committed(state, removed, ids, vecs):
            self.flush()

    def _use_layout(self, manifest: dict) -> None:
        """Score and store as ``manifest`` says: at open, and after a conversion (maybe by another
        process: compact(codec=...)) the scorers are rebuilt for the new layout."""
        layout = Layout.of(manifest)
        if layout != self._layout:
            for scorer in self._scorers.values():
                scorer.close()
            self._layout, self._scorers = layout, layout.scorers(self._device, self._dtype)

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.path}: opened with readonly=True "
                                     "(hint: open it without readonly=True to write; one writer at a time)")

    def _check_open(self) -> None:
        """Refuse a closed engine; follow a compaction (maybe by another process) to the new store."""
        if self._store is None:
            raise JevsearchError(f"{self.path}: index is closed (hint: open it again)")
        self._store.reopen_if_replaced()

    def _refresh(self, txn) -> dict:
        """Bring the manifest, the HNSW view and the field index up to the LMDB snapshot ``txn``;
        returns its state."""
        state = self._store.state(txn)
        if state["gen"] != self._view.gen:
            self._manifest = self._store.manifest(txn)
            self._use_layout(self._manifest)
            self._view.refresh(txn, state, self._manifest)
            if len(self._damage):
                self._damage.prune(self._store, txn)
        if state["gen"] != self._fields.gen:
            self._fields.refresh(txn, state, self._view.tombs)
        return state

    # -- inspection -----------------------------------------------------------------------------

    def document(self, doc_id: str) -> dict | None:
        """{"doc_id", "pages", "tokens", "metadata"} of a document, or None if it is not indexed."""
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                doc = self._store.document(txn, validate.check_doc_id(doc_id))
        if doc is None:
            return None
        return {"doc_id": doc["doc_id"], "pages": doc["pages"], "tokens": doc["tokens"],
                "metadata": doc["metadata"]}

    def page_hit(self, page_id: int) -> Hit:
        """The live page ``page_id`` (e.g. from ``Hit.page_id``) as a Hit with score 0.

        Raises PageNotFoundError if no such page is indexed (page ids are never reused, so an id from
        before a document was deleted or re-added finds nothing rather than another page).
        """
        page_id = validate.check_page_id(page_id)
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                rec = self._store.page(txn, page_id)
                doc = None if rec is None else self._store.document_by_key(txn, rec[0])
                if doc is None:
                    raise PageNotFoundError(f"page id {page_id}: not in the index (deleted, or its document was "
                                            "re-added since) (hint: search again)")
                text = self._store.text(txn, page_id) if doc["text"] else None
        return Hit(doc["doc_id"], rec[1], 0.0, doc["metadata"], text, page_id=page_id)

    def page_data(self, hit: Hit, *, vectors: bool = True) -> tuple[np.ndarray | None, PageView | None]:
        """The page of ``hit`` as the index scores it: (its multi-vectors as float32 [T, multi_dim]: the
        exact tokens when the index keeps them, else its codes decoded (binary: +-1/sqrt(d) signs),
        or None if not ``vectors``; its
        :class:`~jevsearch.store.visual.PageView` (grid layout, thumbnail), or None if the page has
        none, e.g. it was indexed before views were recorded).

        Raises PageNotFoundError if the page is no longer indexed, or its document was re-added since
        the hit was found (the hit's metadata no longer matches).
        """
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                pid = self._locate(txn, hit)
                multi = None
                if vectors:  # a copy: the transaction ends
                    multi = self._layout.tokens(self._store, txn, pid, self._store.page(txn, pid)[2])
                try:
                    return multi, self._store.view(txn, pid)
                except CorruptIndexError as e:  # ChecksumError included: name the page, say what to do
                    raise CorruptIndexError(
                        f"{self.path}: {hit.doc_id} page {hit.page}: its thumbnail/grid record is damaged ({e}) "
                        "(hint: verify(repair=True) drops it, then pictures come from the source file; re-add the "
                        "document to restore it)", cli_hint=f"jevsearch verify --repair --index {self.path} drops "
                        f"it; `jevsearch index {hit.doc_id} --index {self.path}` after deleting it restores it") from e

    def _locate(self, txn, hit: Hit) -> int:
        """The page id of ``hit`` in ``txn``; PageNotFoundError if it is gone or stale."""
        doc = self._store.document(txn, validate.check_doc_id(hit.doc_id))
        gone = PageNotFoundError(f"{hit.doc_id}: page {hit.page} is no longer in the index (the document was "
                                 "deleted or re-added since this hit was found) (hint: search again)")
        if doc is None or doc["metadata"] != hit.metadata:
            raise gone
        # Page numbers are 1..pages, or those recorded for a document whose unreadable pages were left out.
        numbers = doc.get("page_numbers") or range(1, doc["pages"] + 1)
        i = bisect.bisect_left(numbers, hit.page)
        if i == len(numbers) or numbers[i] != hit.page or hit.page_id not in (None, doc["first"] + i):
            raise gone
        return doc["first"] + i

    def documents(self) -> Iterator[str]:
        """The indexed document ids, sorted (damaged document records left out, with a warning)."""
        return iter([d["doc_id"] for d in self.document_list()])

    def document_list(self) -> list[dict]:
        """Every document as :meth:`document` gives it, sorted by id, read in one snapshot. A damaged
        document record is left out with a warning (:meth:`verify` names it; a repair removes it)."""
        damaged: list[bytes] = []
        with self._mutex:
            self._check_open()
            with self._store.read() as txn:
                docs = [{"doc_id": d["doc_id"], "pages": d["pages"], "tokens": d["tokens"], "metadata": d["metadata"]}
                        for d in self._store.iter_documents(txn, damaged)]
        if damaged:
            log.warning("%s: %d document records are damaged (first key %s): left out of the list (hint: "
                        "verify(repair=True) removes them and their pages; index their files again)", self.path,
                        len(damaged), damaged[0].hex())
        return sorted(docs, key=lambda d: d["doc_id"])


def _joined(stored: dict, item: dict) -> dict:
    """A document's stored values (``Layout.stored``) followed by a new part's (``Layout.encode``)."""
    out = dict(item, singles=np.concatenate([stored["singles"], item["singles"]]),
               truncated=np.concatenate([stored["truncated"], item["truncated"]]))
    for key in ("codes", "tokens", "views", "exact", "texts"):
        if item[key] is not None:
            out[key] = list(stored[key] or [None] * len(stored["codes"])) + list(item[key])
    return out


_TMP_PREFIX = ".jevsearch-create-"


def _index_path(path) -> str:
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"index path: {path!r} is empty (hint: name a folder, e.g. indexes/papers)")
    return path


def _new_dir(parent: str) -> str:
    """A new uniquely named directory in ``parent`` with the umask's mode (mkdtemp forces 0700, which
    the index folder would keep)."""
    while True:
        tmp = os.path.join(parent, f"{_TMP_PREFIX}{secrets.token_hex(6)}")
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue
