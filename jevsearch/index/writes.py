"""The writes of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): documents added, replaced, extended, renamed, copied
and deleted, each in one LMDB commit, then the caches (HNSW view, field view, text index) told.
"""

from __future__ import annotations

import numpy as np

from jevsearch.errors import CorruptIndexError, InvalidInputError, StorageError
from jevsearch.index import text
from jevsearch.index.state import IndexState, commit_state, tally
from jevsearch.search.threads import torch_threads
from jevsearch.store import fde, fields, validate, verify
from jevsearch.store.lmdbenv import os_error
from jevsearch.store.lmdbstore import page_key


def flush(st: IndexState) -> None:
    """Index.flush: the HNSW saved, the text index committed."""
    with st.mutex:
        st.check_writable()
        try:
            for view in st.views():
                view.save()
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            raise os_error(st.path, e) from e
        text.commit(st)


def set_model_info(st: IndexState, model_info: dict) -> None:
    """Index.set_model_info."""
    model_info = validate.check_metadata(model_info)
    with st.mutex:
        st.check_writable()
        with st.store.write() as txn:
            st.set_manifest(txn, dict(st.store.manifest(txn), model=model_info))


def add_many(st: IndexState, docs, auto: tuple = ()) -> list[int]:
    """Index.add_embeddings_many; ``auto``: metadata keys recorded by the ingest."""
    with st.mutex:
        st.check_writable()
        with torch_threads(st.threads):  # torch converts to the stored dtype ~10x faster than numpy
            prepared = [encode(st, item) for item in validate.prepare_documents(docs, st.manifest)]
        return commit(st, prepared, auto)


def encode(st: IndexState, item: dict) -> dict:
    """A checked document in its stored form (``Layout.encode``), with ``fde``: its pages' FDEs
    [P, F] from their float tokens before pooling, when the index keeps FDEs (else None)."""
    enc = st.fde
    fdes = None if enc is None else enc.pages(item["multis"])
    return dict(st.layout.encode(item), fde=fdes)


def commit(st: IndexState, prepared: list[dict], auto: tuple = ()) -> list[int]:
    """Write documents in their stored form (:func:`encode`) in one commit; their page counts."""
    with st.mutex:
        if not prepared:
            return []
        full = prepared[0].get("single_full_dim", prepared[0]["singles"].shape[1])
        removed, ids, vecs, added, gone, fdes = [], [], [], [], [], []
        # The first document fixes the singles' full dimension.
        manifest = dict(st.manifest, single_full_dim=full) if st.manifest["single_full_dim"] is None else None
        with st.store.write() as txn:
            state = st.store.state(txn)
            for item in prepared:
                old = _remove(st, txn, state, item["doc_id"])
                removed += old
                gone += old[:1]
                pages, tokens = len(item["codes"]), sum(item["tokens"])
                doc = {"doc_id": item["doc_id"], "first": state["next_page_id"], "pages": pages,
                       "tokens": tokens, "metadata": item["metadata"], "text": item["texts"] is not None}
                if item["numbers"] is not None:
                    doc["page_numbers"] = item["numbers"]
                if auto:
                    doc["auto"] = [k for k in auto if k in item["metadata"]]
                st.store.put_document(txn, doc, item["singles"], item["codes"], item["texts"], item["tokens"],
                                         item["exact"])
                fdes.append(_put_fdes(st, txn, doc["first"], item))
                added.append((doc["first"], fields.record(doc["doc_id"], pages, item["metadata"])))
                st.store.put_fields(txn, *added[-1])
                if item["views"] is not None:
                    st.store.put_views(txn, doc["first"], item["views"])
                ids.append(np.arange(doc["first"], doc["first"] + pages))
                vecs.append(item["truncated"])
                state["next_page_id"] += pages
                tally(state, docs=1, pages=pages, tokens=tokens)
            commit_state(st.store, txn, state, manifest=manifest)
        st.manifest = manifest or st.manifest
        st.fields.committed(state, added, gone)
        after_commit(st, state, removed, np.concatenate(ids), np.concatenate(vecs), _joined_fdes(fdes))
        text.changed(st, gone, [item["doc_id"] for item in prepared])
        return [len(item["codes"]) for item in prepared]


def delete(st: IndexState, doc_id: str) -> bool:
    """Index.delete; False if the document was not there."""
    doc_id = validate.check_doc_id(doc_id)
    with st.mutex:
        st.check_writable()
        with st.store.write() as txn:
            state = st.store.state(txn)
            removed = _remove(st, txn, state, doc_id)
            if not removed:
                return False
            commit_state(st.store, txn, state)
        st.fields.committed(state, [], removed[:1])
        after_commit(st, state, removed, None, None)
        text.changed(st, removed[:1], [])
        return True


def _checked_move(src, dst, metadata) -> tuple[str, str, dict | None]:
    """The arguments of a rename or copy, checked: two document ids and optional new metadata."""
    return validate.check_doc_id(src), validate.check_doc_id(dst), \
        None if metadata is None else validate.check_metadata(metadata)


def rename_document(st: IndexState, old: str, new: str, *, metadata: dict | None = None) -> None:
    """Index.rename_document."""
    old, new, metadata = _checked_move(old, new, metadata)
    with st.mutex:
        st.check_writable()
        with st.store.write() as txn:
            doc = st.store.existing_document(txn, old)
            state = st.store.state(txn)
            removed = _remove(st, txn, state, new) if new != old else []
            meta = doc["metadata"] if metadata is None else metadata
            st.store.rekey_document(txn, doc, new, meta)
            rec = fields.record(new, doc["pages"], meta)
            st.store.put_fields(txn, doc["first"], rec)
            commit_state(st.store, txn, state, records_changed=True)
        st.fields.committed(state, [(doc["first"], rec)], removed[:1] + [doc["first"]])
        after_commit(st, state, removed, None, None)
        text.changed(st, removed[:1] + [doc["first"]], [new])


def copy_document(st: IndexState, src: str, dst: str, *, metadata: dict | None = None) -> int:
    """Index.copy_document: the stored values copied as they are."""
    src, dst, metadata = _checked_move(src, dst, metadata)
    with st.mutex:
        st.check_writable()
        with st.store.read() as txn:
            doc = st.store.existing_document(txn, src)
            item = st.layout.stored(st.store, txn, doc, st.manifest["single_dim"])
        return commit(st, [dict(item, doc_id=dst, metadata=doc["metadata"] if metadata is None else metadata)])[0]


def extend(st: IndexState, doc, auto: tuple = ()) -> None:
    """Index._extend: pages appended to a stored document (a long one committed in parts)."""
    with st.mutex:
        st.check_writable()
        with st.store.read() as txn:
            old = st.store.existing_document(txn, validate.check_doc_id(doc[0]))
            moved = old["first"] + old["pages"] != st.store.state(txn)["next_page_id"]
            stored = st.layout.stored(st.store, txn, old, st.manifest["single_dim"]) if moved else None
        if len(doc[1]) == 0:  # no page in this part (the rest missing): only the metadata changes
            with st.store.write() as txn:
                st.store.put_document_record(txn, dict(old, metadata=doc[3]))
                rec = fields.record(old["doc_id"], old["pages"], doc[3])
                st.store.put_fields(txn, old["first"], rec)
                state = commit_state(st.store, txn, st.store.state(txn), records_changed=True)
            st.fields.committed(state, [(old["first"], rec)], [old["first"]])
            text.changed(st, [old["first"]], [old["doc_id"]])  # its title may have changed
            return
        numbers = old.get("page_numbers") or list(range(1, old["pages"] + 1))
        if doc[5] is not None and numbers[-1] >= doc[5][0]:
            raise InvalidInputError(f"{old['doc_id']}: pages from {doc[5][0]} appended after page {numbers[-1]} "
                                    "(hint: parts come in page order)")
        with torch_threads(st.threads):
            (item,) = [encode(st, i) for i in validate.prepare_documents([doc], st.manifest)]
        new = item["numbers"] or range(numbers[-1] + 1, numbers[-1] + 1 + len(item["codes"]))
        item["numbers"] = numbers + list(new)
        if stored is not None:
            commit(st, [_joined(stored, item)], auto)
        else:
            _append(st, old, item, auto)


def _append(st: IndexState, old: dict, item: dict, auto: tuple) -> None:
    """Write the pages of ``item`` after those of document ``old``, whose ids end at the next page id."""
    n, tokens = len(item["codes"]), sum(item["tokens"])
    doc = dict(old, pages=old["pages"] + n, tokens=old["tokens"] + tokens, metadata=item["metadata"],
               page_numbers=item["numbers"])
    if auto:
        doc["auto"] = [k for k in auto if k in item["metadata"]]
    with st.store.write() as txn:
        state = st.store.state(txn)
        st.store.put_document(txn, doc, item["singles"], item["codes"], item["texts"], item["tokens"],
                                 item["exact"], offset=old["pages"])
        new_fdes = _put_fdes(st, txn, doc["first"] + old["pages"], item)
        rec = fields.record(doc["doc_id"], doc["pages"], doc["metadata"])
        st.store.put_fields(txn, doc["first"], rec)
        if item["views"] is not None:
            st.store.put_views(txn, doc["first"] + old["pages"], item["views"])
        ids = np.arange(state["next_page_id"], state["next_page_id"] + n)
        state["next_page_id"] += n
        tally(state, pages=n, tokens=tokens)
        commit_state(st.store, txn, state, records_changed=True)
    st.fields.committed(state, [(doc["first"], rec)], [doc["first"]])
    after_commit(st, state, [], ids, item["truncated"], _joined_fdes([new_fdes]))
    text.changed(st, [doc["first"]], [doc["doc_id"]])


def _remove(st: IndexState, txn, state: dict, doc_id: str) -> list[int]:
    """Remove a document (if there) in ``txn``, counted in ``state``; its page ids."""
    try:
        old = st.store.document(txn, doc_id)
    except CorruptIndexError:  # a damaged record: its pages are found by their records
        old = verify.salvage_document(st.store, txn, doc_id)
    if old is None:
        return []
    removed = st.store.remove_document(txn, old)
    st.store.delete_fields(txn, old["first"])
    tally(state, docs=-1, pages=-old["pages"], tokens=-old["tokens"], tombs=len(removed))
    return removed


def after_commit(st: IndexState, state: dict, removed: list[int], ids, vecs, fdes=None) -> None:
    """The caches after a commit: removed pages forgotten, new pages (``ids``, truncated ``vecs``) in the
    HNSW and, in an index with FDEs, ``fdes`` (page ids, encodings) in the FDE graph."""
    st.damage.forget(removed)
    due = st.view.committed(state, removed, ids, vecs)
    if st.manifest.get("fde"):
        fde_ids, fde_vecs = fdes if fdes is not None and len(fdes[0]) else (None, None)
        due = st.fde_view.committed(state, removed, fde_ids, fde_vecs) or due
    if due:
        flush(st)


def _put_fdes(st: IndexState, txn, first: int, item: dict):
    """Store a document's FDEs (pages ``first ...``) -> (page ids, FDEs float32) for the FDE graph;
    None when the index keeps none. A copied page without one (written before the index had FDEs)
    is left out of the FDE graph, as at a rebuild."""
    values = item.get("fde")
    if not st.manifest.get("fde") or values is None:
        return None
    if isinstance(values, np.ndarray):
        fde.put(st.store, txn, first, values)
        return np.arange(first, first + len(values)), values
    ids = [first + i for i, v in enumerate(values) if v is not None]  # stored values, copied as they are
    for pid in ids:
        st.store.put(txn, fde.TABLE, page_key(pid), values[pid - first], append=True)
    rows = [np.frombuffer(values[pid - first], np.float16).astype(np.float32) for pid in ids]
    return np.array(ids, dtype=np.int64), np.stack(rows) if rows else None


def _joined_fdes(parts: list) -> tuple | None:
    parts = [p for p in parts if p is not None and len(p[0])]
    if not parts:
        return None
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


def failures(st: IndexState) -> dict[str, dict]:
    """Index.failures."""
    with st.mutex:
        st.check_open()
        with st.store.read() as txn:
            return st.store.failures(txn)


def set_failures(st: IndexState, changes: dict[str, dict | None]) -> None:
    """Index.set_failures."""
    changes = validate.check_metadata(changes)
    with st.mutex:
        st.check_writable()
        with st.store.write() as txn:
            failures = st.store.failures(txn)
            for path, record in changes.items():
                if record is None:
                    failures.pop(path, None)
                else:
                    failures[path] = record
            st.store.put_failures(txn, failures)


def _joined(stored: dict, item: dict) -> dict:
    """A document's stored values (``Layout.stored``) followed by a new part's (``Layout.encode``)."""
    out = dict(item, singles=np.concatenate([stored["singles"], item["singles"]]),
               truncated=np.concatenate([stored["truncated"], item["truncated"]]))
    if item.get("fde") is not None:  # stored values (bytes) and the new part's encodings
        out["fde"] = list(stored.get("fde") or [None] * len(stored["codes"])) \
            + [np.asarray(v, np.float16).tobytes() for v in item["fde"]]
    for key in ("codes", "tokens", "views", "exact", "texts"):
        if item[key] is not None:
            out[key] = list(stored[key] or [None] * len(stored["codes"])) + list(item[key])
    return out
