"""The metadata side of :class:`~jevsearch.index.Index`: update_metadata, and the field table of old indexes.

A mixin over the index's state (``_store``, ``_fields``, ``_mutex``); the field index itself is
:mod:`jevsearch.store.fields`, filters are :mod:`jevsearch.search.filters`.
"""

from __future__ import annotations

import logging

from jevsearch.store import fields, validate

log = logging.getLogger(__name__)


class IndexFields:
    """Index methods about documents' metadata (see :class:`jevsearch.index.Index`)."""

    def update_metadata(self, doc_id: str, metadata: dict, merge: bool = True) -> dict:
        """Change a document's metadata without re-encoding it; returns the new metadata.

        merge=True sets the keys of ``metadata`` and keeps the others; merge=False replaces the
        caller's metadata with ``metadata`` (what the ingest recorded, e.g. sha256, kind, title,
        stays). One atomic commit: readers, in other processes too, see the old metadata or the new,
        and their next search filters on it. The computed fields (doc_id, path, name, pages) and the
        ingest's cannot be set. Raises InvalidInputError if the document is not indexed.
        Example: ``eng.update_metadata("/data/q3.pdf", {"status": "final"})``.
        """
        doc_id = validate.check_doc_id(doc_id)
        metadata = validate.check_metadata(metadata)
        with self._mutex:
            self._check_writable()
            with self._store.write() as txn:
                doc, rec = fields.set_metadata(self._store, txn, doc_id, metadata, merge)
                state = self._store.state(txn)
                state["gen"] += 1
                state["frev"] = state.get("frev", 0) + 1  # tells readers to reload their field index
                self._store.put_state(txn, state)
            self._fields.committed(state, [(doc["first"], rec)], [doc["first"]])
            self._after_commit(state, [], None, None)
            self._text_changed([doc["first"]], [doc_id])  # its title may have changed
            return dict(doc["metadata"])

    def _build_field_table(self) -> None:
        """Fill the ``fields`` table of an index made before field records (writer, once, one commit)."""
        with self._store.write() as txn:
            state = self._store.state(txn)
            if state.get("fields"):
                return
            n = fields.fill_table(self._store, txn)
            state["fields"] = 1
            self._store.put_state(txn, state)
        log.info("%s: built the field index of %d documents", self.path, n)
