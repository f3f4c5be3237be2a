"""The text index of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): kept in step with LMDB, caught up, rebuilt, checked.

An index whose manifest says ``"text_index": true`` keeps a Tantivy index of its pages' text layers
and titles (:mod:`jevsearch.store.textindex`) in step with LMDB: every write that changes documents
tells it (:func:`changed`); its changes are committed at most every COMMIT_EVERY_S seconds during a
run of writes, at flush/close and before the writer's own search, so a kill -9 can leave it behind
LMDB: the next writer's open catches it up from LMDB (or rebuilds a missing or damaged one). Readers
follow the writer's commits; a lexical hit whose page LMDB no longer holds is dropped, so they never
serve a deleted page. Searching it: :mod:`jevsearch.index.hybrid`.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from jevsearch.errors import CorruptIndexError
from jevsearch.index.state import IndexState
from jevsearch.store import textindex
from jevsearch.store.verify import Problem

log = logging.getLogger(__name__)

# Tantivy commits cost ~0.1 s (fsyncs, a new segment): a run of writes commits at most this often.
COMMIT_EVERY_S = 5.0


def open_text(st: IndexState) -> None:
    """At open: the text index, caught up with LMDB (writer) or as it is (reader)."""
    st.text, st.text_problem = None, None
    if not st.has_text_index:
        return
    if not textindex.available():
        st.text_problem = "tantivy is not installed: lexical search is off (pip install -e \".[text]\")"
        log.warning("%s: %s", st.path, st.text_problem)
        return
    try:
        ti = textindex.TextIndex.open(st.path, st.readonly)
    except (ValueError, OSError) as e:
        ti, problem = None, f"the text index is missing or damaged ({e})"
    if st.readonly:
        st.text = ti
        if ti is None and not _writable(st.path):
            # Tantivy takes a lock file even to read: a folder this user may not write is searched
            # visually (nothing is wrong with the index).
            log.info("%s: not writable by this user: lexical search is off", st.path)
            return
        if ti is None:
            st.text_problem = problem
            log.warning("%s: %s; searching visually only until a writer rebuilds it", st.path, problem)
        return
    textindex.TextIndex.remove_stale(st.path)
    if ti is None:
        log.warning("%s: %s; rebuilding it from LMDB", st.path, problem)
        rebuild(st)
        return
    st.text = ti
    with st.store.read() as txn:
        behind = st.store.state(txn)["gen"] != ti.gen
    if behind:
        catch_up(st)


def build(st: IndexState) -> int:
    """Index.build_text_index: (re)build the text index from LMDB; the pages indexed."""
    textindex.tantivy()  # MissingDependencyError with the install command
    with st.mutex:
        st.check_writable()
        if not st.has_text_index:
            with st.store.write() as txn:
                st.set_manifest(txn, dict(st.store.manifest(txn), text_index=True))
        return rebuild(st)


def rebuild(st: IndexState) -> int:
    if st.text is not None:
        st.text.close()
    with st.store.read() as txn:
        state = st.store.state(txn)
        st.text = textindex.TextIndex.create(st.path, -1, state["epoch"])
    st.text_problem = None
    return catch_up(st)


def catch_up(st: IndexState) -> int:
    """Re-index the documents whose marker differs from LMDB, drop those LMDB no longer has, and
    commit at LMDB's generation; returns the pages (re)indexed."""
    ti, pages = st.text, 0
    with st.store.read() as txn, st.store.scanning():
        state = st.store.state(txn)
        markers = ti.markers()
        docs = {d["first"]: d for d in st.store.iter_documents(txn)}
        sigs = {f: textindex.document_sig(d, textindex.meta_text(d)) for f, d in docs.items()}
        ti.remove([f for f, sig in markers.items() if sigs.get(f) != sig])
        for first, doc in docs.items():
            if markers.get(first) != sigs[first]:
                ti.add(doc, page_texts(st, txn, doc))
                pages += doc["pages"]
        ti.commit(state["gen"], state["epoch"])
    if pages or len(markers) != len(docs):
        log.info("%s: text index caught up with LMDB (%d pages indexed)", st.path, pages)
    return pages


def page_texts(st: IndexState, txn, doc: dict) -> list[str] | None:
    if not doc.get("text"):
        return None
    texts = []
    for pid in range(doc["first"], doc["first"] + doc["pages"]):
        try:
            texts.append(st.store.text(txn, pid) or "")
        except CorruptIndexError:
            texts.append("")  # a damaged text: verify names the page
    return texts


def changed(st: IndexState, gone: list[int], doc_ids: list[str]) -> None:
    """After a writer's LMDB commit: documents (first page ids) ``gone`` and ``doc_ids`` (re)written."""
    ti = st.text
    if ti is None:
        return
    try:
        ti.remove(gone)
        if doc_ids:
            with st.store.read() as txn:
                for doc_id in doc_ids:
                    doc = st.store.document(txn, doc_id)
                    if doc is not None:
                        ti.add(doc, page_texts(st, txn, doc))
        if time.monotonic() - ti.last_commit > COMMIT_EVERY_S:
            commit(st)
    except Exception as e:  # noqa: BLE001 - LMDB's commit stands; the text index is rebuilt from it
        failed(st, e)


def commit(st: IndexState) -> None:
    ti = st.text
    if ti is None or not ti.pending:
        return
    try:
        with st.store.read() as txn:
            state = st.store.state(txn)
        ti.commit(state["gen"], state["epoch"])
    except Exception as e:  # noqa: BLE001
        failed(st, e)


def failed(st: IndexState, e: Exception) -> None:
    log.warning("%s: updating the text index failed (%s); it is rebuilt from LMDB at the next open",
                st.path, e)
    st.text.close()
    st.text, st.text_problem = None, f"the text index failed an update ({e})"


def after_compact(st: IndexState) -> None:
    """Compaction: an index without a text index gets one (tantivy installed); one that has it
    records the new generation."""
    if not st.has_text_index:
        if textindex.available():
            build(st)
    elif st.text is None:
        rebuild(st)
    else:
        st.text.pending += 1
        commit(st)


def close(st: IndexState) -> None:
    if st.text is not None:
        st.text.close()
        st.text = None


def reader(st: IndexState):
    """The text index at its latest commit (a reader follows a rebuild to its new folder)."""
    ti = st.text
    if not st.has_text_index or (st.readonly and ti is None and not _writable(st.path)):
        return None
    if not st.readonly:
        if ti is not None and ti.pending:
            commit(st)
        return st.text
    try:
        pointer = textindex.TextIndex.read_pointer(st.path)
        if ti is None or pointer is None or pointer["dir"] != ti.pointer["dir"]:
            st.text = ti = textindex.TextIndex.open(st.path, readonly=True)
        else:
            ti.reload()
        st.text_problem = None
    except (ValueError, OSError) as e:
        st.text, st.text_problem = None, f"the text index is missing or damaged ({e})"
        log.warning("%s: %s; searching visually only", st.path, st.text_problem)
    return st.text


def problems(st: IndexState, deep: bool) -> list[Problem]:
    """verify's findings about the text index (all fixable: it is rebuilt from LMDB)."""
    if not st.has_text_index or not textindex.available() or (st.readonly and not _writable(st.path)):
        return []  # a folder we may not write: Tantivy cannot open it to check
    ti = reader(st)
    if ti is None:
        return [Problem(f"text index: {st.text_problem}", fixable=True)]
    try:
        with st.store.read() as txn:
            if st.readonly and st.store.state(txn)["gen"] != ti.gen:
                return []  # behind the writer, which commits it in batches: not a fault a reader can judge
            docs = {d["first"]: d for d in st.store.iter_documents(txn)}
            markers = ti.markers()
            stale = [f for f, s in markers.items()
                     if f not in docs or s != textindex.document_sig(docs[f], textindex.meta_text(docs[f]))]
            missing = [f for f in docs if f not in markers]
            out = []
            if stale or missing:
                out.append(Problem(f"text index: {len(missing)} documents missing, {len(stale)} stale "
                                   "(it disagrees with LMDB)", fixable=True))
            if deep and not out:
                want = [doc["first"] + i for doc in docs.values() for i, t in
                        enumerate(page_texts(st, txn, doc) or [""] * doc["pages"])
                        if t.strip() or textindex.meta_text(doc)]
                if not np.array_equal(np.sort(np.array(want, np.int64)), ti.page_ids()):
                    out.append(Problem("text index: its pages differ from LMDB's", fixable=True))
    except Exception as e:  # noqa: BLE001 - whatever Tantivy raises on a damaged file
        return [Problem(f"text index: unreadable ({e})", fixable=True)]
    return out


def repair(st: IndexState) -> list[str]:
    if not st.has_text_index or not textindex.available():
        return []
    pages = rebuild(st)
    return [f"rebuilt the text index from LMDB ({pages} pages)"]


def stats(st: IndexState) -> dict:
    """Index.text_stats."""
    with st.mutex:
        st.check_open()
        ti = reader(st) if st.has_text_index else None
        empty = 0
        with st.store.read() as txn, st.store.scanning():
            for doc in st.store.iter_documents(txn, damaged=[]):  # damaged records: verify names them
                texts = page_texts(st, txn, doc)
                empty += doc["pages"] if texts is None else sum(not t.strip() for t in texts)
    return {"text_index": st.has_text_index, "text_bytes": ti.bytes() if ti is not None else 0,
            "pages_without_text": empty}


def _writable(path: str) -> bool:
    pointer = textindex.TextIndex.read_pointer_quiet(path)
    return os.access(os.path.join(path, pointer["dir"]) if pointer else path, os.W_OK)
