"""The metadata side of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): update_metadata, and the field table of old indexes.

The field index itself is
:mod:`jevsearch.store.fields`, filters are :mod:`jevsearch.search.filters`.
"""

from __future__ import annotations

import logging

from jevsearch.index import text, writes
from jevsearch.index.state import IndexState, commit_state
from jevsearch.store import fields, validate

log = logging.getLogger(__name__)


def update_metadata(st: IndexState, doc_id: str, metadata: dict, merge: bool = True) -> dict:
    """Index.update_metadata: one commit; returns the new metadata."""
    doc_id = validate.check_doc_id(doc_id)
    metadata = validate.check_metadata(metadata)
    with st.mutex:
        st.check_writable()
        with st.store.write() as txn:
            doc, rec = fields.set_metadata(st.store, txn, doc_id, metadata, merge)
            state = commit_state(st.store, txn, st.store.state(txn), records_changed=True)
        st.fields.committed(state, [(doc["first"], rec)], [doc["first"]])
        writes.after_commit(st, state, [], None, None)
        text.changed(st, [doc["first"]], [doc_id])  # its title may have changed
        return dict(doc["metadata"])


def build_field_table(st: IndexState) -> None:
    """Fill the ``fields`` table of an index made before field records (writer, once, one commit)."""
    with st.store.write() as txn:
        state = st.store.state(txn)
        if state.get("fields"):
            return
        n = fields.fill_table(st.store, txn)
        state["fields"] = 1
        st.store.put_state(txn, state)
    log.info("%s: built the field index of %d documents", st.path, n)
