"""Pages found damaged while an index serves queries or rebuilds its graph.

A page whose stored values fail their checksum (or, in an index without checksums, whose vectors
score impossibly) is skipped: never served, never silently. Each is logged once with its document
and page, counted (``Index.stats()["damaged_pages"]``) and listed by ``Index.verify``. Re-adding its
document replaces the page (its old id is forgotten here).
"""

from __future__ import annotations

import logging

from jevsearch.errors import ChecksumError, CorruptIndexError
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.verify import Problem

log = logging.getLogger(__name__)


class DamageLog:
    """Damaged live pages of one open index: page id -> (document id or None, page number or None, why).

    >>> d = DamageLog("idx")
    >>> d.pages[7] = ("a.pdf", 2, "multi-vectors fail their checksum")
    >>> d.describe(7), 7 in d, len(d)
    ('a.pdf page 2', True, 1)
    """

    def __init__(self, index_dir: str):
        self.index_dir = index_dir
        self.pages: dict[int, tuple[str | None, int | None, str]] = {}

    def __contains__(self, page_id: int) -> bool:
        return page_id in self.pages

    def __len__(self) -> int:
        return len(self.pages)

    def note(self, store: PageStore, txn, page_id: int, why: str) -> None:
        """Record a damaged page, with one warning naming its document and page."""
        if page_id in self.pages:
            return
        self.pages[page_id] = (*self._name(store, txn, page_id), why)
        log.warning("%s: %s is damaged (%s): skipped in results (hint: delete and re-add its document; "
                    "verify lists every damaged page)", self.index_dir, self.describe(page_id), why)

    def note_scored(self, store: PageStore, txn, page_ids: list[int], failed: list[int]) -> None:
        """Record pages a rerank dropped: their multi-vectors failed their checksum (``failed``) or
        scored beyond what unit vectors can."""
        for pid in page_ids:
            self.note(store, txn, pid, "its multi-vectors fail their checksum" if pid in failed
                      else "its multi-vectors score beyond what unit vectors can")

    def describe(self, page_id: int) -> str:
        doc, page, _ = self.pages[page_id]
        return f"{doc} page {page}" if doc is not None else f"page id {page_id}"

    def problems(self) -> list[Problem]:
        """The damaged pages as verify problems (not fixable by a repair: their documents are named)."""
        return [Problem(f"{self.describe(pid)}: {why} (found by a search)", fixable=False, doc=doc)
                for pid, (doc, _, why) in sorted(self.pages.items())]

    def forget(self, page_ids) -> None:
        """Drop pages that are gone (deleted or replaced)."""
        for pid in page_ids:
            self.pages.pop(int(pid), None)

    def prune(self, store: PageStore, txn) -> None:
        """Drop pages no longer live in ``txn``'s snapshot (another process replaced them)."""
        self.forget([pid for pid in self.pages if _live(store, txn, pid) is False])

    @staticmethod
    def _name(store: PageStore, txn, page_id: int) -> tuple[str | None, int | None]:
        try:
            rec = store.page(txn, page_id)
            doc = None if rec is None else store.document_by_key(txn, rec[0])
        except CorruptIndexError:  # the record that names it is damaged too
            return None, None
        return (doc["doc_id"], rec[1]) if doc is not None else (None, None)


def _live(store: PageStore, txn, page_id: int) -> bool | None:
    try:
        return store.page(txn, page_id) is not None
    except (ChecksumError, CorruptIndexError):
        return None
