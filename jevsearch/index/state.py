"""The state one open :class:`~jevsearch.index.Index` shares with its collaborators (search, writes,
metadata, upkeep, text): every handle and cache, held once, passed explicitly.

The manifest is held here only (refreshed from LMDB when another process commits); the scorers
follow the layout the manifest names. :func:`commit_state` is the one place a write bumps the
generation that tells readers (and this index's caches) to reload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from jevsearch.errors import JevsearchError, ReadOnlyIndexError
from jevsearch.index.layout import Layout
from jevsearch.search.fde import Fde
from jevsearch.search.maxsim import scoring_device
from jevsearch.store import fields
from jevsearch.store.damage import DamageLog
from jevsearch.store.fde import FdeView
from jevsearch.store.graphview import GraphView
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.lock import WriterLock


@dataclass(eq=False)
class IndexState:
    """Handles and caches of one open index (see the module docstring); ``store`` None once closed.

    path / store / writer_lock (None: a reader) / threads (CPU threads for its tensor work) are given;
    the rest is derived at open: damage (pages found damaged), view (the HNSW, jevsearch.store.graphview),
    fde_view (the FDE graph, jevsearch.store.fde: used when the manifest has an "fde" record), fields (the filter columns), layout and scorers (from the manifest), device and dtype (scoring),
    text and text_problem (the Tantivy handle, or why there is none: jevsearch.index.text).
    """

    path: str
    store: PageStore | None
    writer_lock: WriterLock | None
    threads: int
    mutex: threading.RLock = field(default_factory=threading.RLock)
    manifest: dict = field(default_factory=dict)
    layout: Layout | None = None
    scorers: dict = field(default_factory=dict)
    text: object = None
    text_problem: str | None = None

    def __post_init__(self) -> None:
        self.damage = DamageLog(self.path)
        self.view = GraphView(self.path, self.store, readonly=self.readonly, damage=self.damage)
        self.fde_view = FdeView(self.path, self.store, readonly=self.readonly, damage=self.damage)
        self.fields = fields.FieldView(self.store)
        self.device, self.dtype = scoring_device()

    @property
    def readonly(self) -> bool:
        return self.writer_lock is None

    @property
    def fde(self) -> Fde | None:
        """The index's FDE encoder (jevsearch.search.fde), None when it keeps no FDEs."""
        record = self.manifest.get("fde")
        return None if record is None else Fde.of(record)

    def views(self) -> list[GraphView]:
        """The graphs this index keeps: the singles' HNSW, and the FDE graph when it has FDEs."""
        return [self.view, self.fde_view] if self.manifest.get("fde") else [self.view]

    @property
    def has_text_index(self) -> bool:
        return bool(self.manifest.get("text_index"))

    def check_open(self) -> None:
        """Refuse a closed index; follow a compaction (maybe by another process) to the new store."""
        if self.store is None:
            raise JevsearchError(f"{self.path}: index is closed (hint: open it again)")
        self.store.reopen_if_replaced()

    def check_writable(self) -> None:
        self.check_open()
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.path}: opened with readonly=True "
                                     "(hint: open it without readonly=True to write; one writer at a time)")

    def use_layout(self, manifest: dict) -> None:
        """Score and store as ``manifest`` says: at open, and after a conversion (maybe by another
        process: compact(codec=...)) the scorers are rebuilt for the new layout."""
        layout = Layout.of(manifest)
        if layout != self.layout:
            for scorer in self.scorers.values():
                scorer.close()
            self.layout, self.scorers = layout, layout.scorers(self.device, self.dtype)

    def refresh(self, txn) -> dict:
        """Bring the manifest, the HNSW view and the field index up to the LMDB snapshot ``txn``;
        returns its state."""
        state = self.store.state(txn)
        if state["gen"] != self.view.gen:
            self.manifest = self.store.manifest(txn)
            self.use_layout(self.manifest)
            self.view.refresh(txn, state, self.manifest)
            if len(self.damage):
                self.damage.prune(self.store, txn)
        if self.manifest.get("fde") and state["gen"] != self.fde_view.gen:
            self.fde_view.refresh(txn, state, self.manifest)
        if state["gen"] != self.fields.gen:
            self.fields.refresh(txn, state, self.view.tombs)
        return state

    def set_manifest(self, txn, manifest: dict) -> dict:
        """Commit a changed manifest (nothing else changed): returns the new state."""
        state = commit_state(self.store, txn, self.store.state(txn), manifest=manifest)
        self.manifest, self.view.gen = manifest, state["gen"]
        return state


def tally(state: dict, *, docs: int = 0, pages: int = 0, tokens: int = 0, tombs: int = 0) -> None:
    """Add to the index's counters in ``state`` (a write in progress)."""
    state["docs"] += docs
    state["pages"] += pages
    state["tokens"] += tokens
    state["tombs"] += tombs


def commit_state(store: PageStore, txn, state: dict, *, records_changed: bool = False,
                 manifest: dict | None = None) -> dict:
    """End a write in ``txn``: the manifest (if given), then ``state`` with its generation bumped, so
    readers reload. ``records_changed``: a field record changed in place, so readers reload their
    field index too. Returns ``state``."""
    if manifest is not None:
        store.put_manifest(txn, manifest)
    state["gen"] += 1
    if records_changed:
        state["frev"] = state.get("frev", 0) + 1
    store.put_state(txn, state)
    return state
