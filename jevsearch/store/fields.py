"""The field index: every document's filterable fields as numpy columns, kept in step with LMDB.

LMDB holds one small record per document in the ``fields`` table, keyed by the document's first
page id (ids only grow, so "documents added since X" is a cursor range, as for the HNSW)::

    u64be first page id -> {"d": doc_id, "p": pages, "f": {filterable metadata}}

Filterable metadata: top-level values that are strings, numbers, booleans, or lists of those (null,
objects and NaN are kept in the document's metadata but not here). Every document also has the
computed fields ``doc_id``, ``path`` (the same string: Hit.path), ``name`` (the last path component)
and ``pages`` (its page count), which win over metadata keys of those names; and the ingest's
``size``/``mtime_ns`` are also ``bytes`` and ``mtime`` (ISO 8601, UTC).

In memory (:class:`FieldView`) the records become columns (one row per document record, see
:class:`jevsearch.search.filters.FieldTable`): a filter is a few numpy operations over them, never a
JSON parse per page per query. The view mirrors LMDB like :class:`~jevsearch.store.graphview.GraphView`:

* at open, and whenever a compaction (epoch) or a metadata update (``state["frev"]``) happened in
  another process, it reloads every record (records are parsed 4096 at a
  time; cost per document in benchmarks/RESULTS.md);
* otherwise a reader adds the records of new documents (a cursor range from its ``next_page_id``) and
  drops the documents whose pages became tombstones;
* the writer mirrors its own commits (:meth:`FieldView.committed`) without reading LMDB.

A row is never removed in place: a deleted or updated document's row is marked dead (an update
appends a new row), so page ids and rows never shift; the rows are rebuilt when dead ones outnumber
live ones. An index made before this table existed has no ``fields`` table: a writer builds it at
open (one commit); a reader computes the records from the documents table in memory.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from jevsearch.errors import InvalidInputError
from jevsearch.store.lmdbstore import PageStore

log = logging.getLogger(__name__)

COMPUTED = ("doc_id", "path", "name", "pages")  # fields derived from the document itself
# Metadata keys Engine.add recorded before documents listed theirs under "auto".
_LEGACY_AUTO = ("sha256", "kind")
_STR, _NUM, _BOOL = 0, 1, 2


def filterable(metadata: dict) -> dict:
    """The part of ``metadata`` a filter can read (see the module docstring).

    >>> filterable({"team": "fin", "year": 2024, "tags": ["a", 1, None], "extra": {"x": 1}, "n": None})
    {'team': 'fin', 'year': 2024, 'tags': ['a', 1]}
    """
    out = {}
    for key, value in metadata.items():
        if isinstance(value, list):
            items = [v for v in value if _kind(v) is not None]
            if items:
                out[key] = items
        elif _kind(value) is not None:
            out[key] = value
    return out


def record(doc_id: str, pages: int, metadata: dict) -> dict:
    """The LMDB field record of a document.

    >>> record("/a.pdf", 2, {"size": 10, "mtime_ns": 1714555800 * 10**9, "t": [None]})
    {'d': '/a.pdf', 'p': 2, 'f': {'size': 10, 'mtime_ns': 1714555800000000000, 'bytes': 10, 'mtime': '2024-05-01T09:30:00Z'}}
    """
    f = filterable(metadata)
    # The ingest's file size and time (jevsearch.engine) under the names filters use.
    if type(f.get("size")) is int:
        f.setdefault("bytes", f["size"])
    if type(f.get("mtime_ns")) is int:
        f.setdefault("mtime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f["mtime_ns"] // 10**9)))
    return {"d": doc_id, "p": pages, "f": f}


def set_metadata(store: PageStore, txn, doc_id: str, metadata: dict, merge: bool) -> tuple[dict, dict]:
    """Rewrite a document's metadata and field record in write transaction ``txn`` (see
    Index.update_metadata) -> (document record, field record). The keys the ingest recorded (the
    document's ``auto`` list) and the computed fields cannot be set; merge=False keeps the former."""
    doc = store.existing_document(txn, doc_id)
    auto = doc.get("auto", [k for k in _LEGACY_AUTO if k in doc["metadata"]])
    fixed = sorted((set(COMPUTED) | set(auto)) & metadata.keys())
    if fixed:
        raise InvalidInputError(f"metadata: {', '.join(fixed)} recorded by jevsearch, not settable "
                                "(hint: pick other names for your own fields)")
    kept = doc["metadata"] if merge else {k: v for k, v in doc["metadata"].items() if k in auto}
    doc["metadata"] = {**kept, **metadata}
    rec = record(doc_id, doc["pages"], doc["metadata"])
    store.put_document_record(txn, doc)
    store.put_fields(txn, doc["first"], rec)
    return doc, rec


def check_table(store: PageStore, txn) -> list[str]:
    """Problems of the ``fields`` table against the documents table (for Index.verify): a record per
    document, at its first page id, equal to what the document's metadata gives. A repair refills the
    table from the documents (:func:`fill_table`)."""
    if not (store.state(txn).get("fields") and store.has_table("fields")):
        return []  # an index from before the table: computed from the documents, nothing to disagree
    want = {d["first"]: record(d["doc_id"], d["pages"], d["metadata"]) for d in store.iter_documents(txn, [])}
    problems, damaged = [], []  # damaged document records: the check of the documents names them
    for first, rec in store.iter_fields(txn, damaged=damaged):
        if want.pop(first, None) != rec:
            problems.append(f"fields: the record at page id {first} ({rec.get('d')!r}) is not its document's")
    for first in damaged:
        rec = want.pop(first, None)
        name = f"{rec['d']}" if rec else f"the document at page id {first} (none now)"
        problems.append(f"fields: the field record of {name} fails its checksum: repair rebuilds it from the "
                        "document's metadata")
    return problems + [f"fields: {rec['d']}: no field record" for rec in want.values()]


def fill_table(store: PageStore, txn) -> int:
    """Write the ``fields`` table afresh from the documents table (writer, write txn: an index made
    before the table, or a repair); -> documents."""
    for key, _ in list(store.items(txn, "fields", raw=True)):
        store.delete(txn, "fields", bytes(key))
    n = 0
    for d in store.iter_documents(txn):
        store.put_fields(txn, d["first"], record(d["doc_id"], d["pages"], d["metadata"]))
        n += 1
    return n


def _kind(value) -> int | None:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, str):
        return _STR
    if _number(value, type(value)):
        return _NUM
    return None


def _number(value, t) -> bool:
    """A finite number a float64 holds (JSON allows ints of any size; 10**400 is not filterable)."""
    return (t is float and math.isfinite(value)) or (t is int and -1e308 < value < 1e308)


class _Grow:
    """An append-only numpy array with amortised O(1) appends; ``a`` is the filled part (a view)."""

    __slots__ = ("buf", "n")

    def __init__(self, dtype):
        self.buf, self.n = np.empty(16, dtype=dtype), 0

    def extend(self, values) -> None:
        need = self.n + len(values)
        if need > len(self.buf):
            buf = np.empty(max(need, 2 * len(self.buf)), dtype=self.buf.dtype)
            buf[: self.n] = self.buf[: self.n]
            self.buf = buf
        self.buf[self.n:need] = values
        self.n = need

    @property
    def a(self) -> np.ndarray:
        return self.buf[: self.n]


class Column:
    """One field's values over the view's rows, in typed parts (the FieldColumn protocol of
    jevsearch.search.filters); strings are codes into an append-only vocabulary."""

    def __init__(self):
        self._rows = [_Grow(np.int64) for _ in range(3)]
        self._codes, self._nums, self._bools = _Grow(np.int32), _Grow(np.float64), _Grow(bool)
        self._vocab, self._index = _Grow(object), {}
        self.cache: dict = {}

    def extend(self, rows: list[list[int]], strs: list[str], nums: list[float], bools: list[bool]) -> None:
        """Append entries: ``rows[kind]`` are the rows of the string / number / boolean values."""
        codes = []
        for s in strs:
            c = self._index.get(s)
            if c is None:
                c = self._index[s] = len(self._index)
                self._vocab.extend([s])
            codes.append(c)
        for grow, r in zip(self._rows, rows):
            grow.extend(r)
        self._codes.extend(codes)
        self._nums.extend(nums)
        self._bools.extend(bools)

    def code(self, value: str) -> int | None:
        return self._index.get(value)

    str_rows = property(lambda self: self._rows[_STR].a)
    num_rows = property(lambda self: self._rows[_NUM].a)
    bool_rows = property(lambda self: self._rows[_BOOL].a)
    str_codes = property(lambda self: self._codes.a)
    num_vals = property(lambda self: self._nums.a)
    bool_vals = property(lambda self: self._bools.a)
    vocab = property(lambda self: self._vocab.a)


class FieldView:
    """The field index of one open index (see the module docstring); a FieldTable for filters."""

    def __init__(self, store: PageStore):
        self.store = store
        self.gen = -1  # LMDB generation mirrored
        self._clear()

    def _clear(self) -> None:
        self.epoch, self.frev, self.next_page_id, self.dead, self._tombs_seen = -1, -1, 0, 0, 0
        self._first, self._pages, self._alive = _Grow(np.int64), _Grow(np.int64), _Grow(bool)
        self._row_of: dict[int, int] = {}  # first page id -> live row
        self._columns: dict[str, Column] = {}

    # -- the FieldTable protocol ----------------------------------------------------------------

    @property
    def rows(self) -> int:
        return self._first.n

    def column(self, name: str) -> Column | None:
        return self._columns.get("doc_id" if name == "path" else name)

    # -- queries --------------------------------------------------------------------------------

    def pages(self, mask: np.ndarray) -> np.ndarray:
        """Page ids [M] (int64) of the live documents whose rows ``mask`` selects."""
        rows = np.flatnonzero(mask & self._alive.a)
        first, counts = self._first.a[rows], self._pages.a[rows]
        offsets = np.cumsum(counts) - counts
        return np.repeat(first - offsets, counts) + np.arange(int(counts.sum()), dtype=np.int64)

    # -- keeping in step with LMDB ------------------------------------------------------------

    def refresh(self, txn, state: dict, tombs: np.ndarray) -> None:
        """Mirror the LMDB snapshot ``txn`` (state record ``state``; ``tombs``: its tombstoned page ids)."""
        table = bool(state.get("fields")) and self.store.has_table("fields")
        if not table or state["epoch"] != self.epoch or state.get("frev", 0) != self.frev \
                or self.dead > max(1024, self.rows - self.dead):
            self._clear()
            if table:
                self._append(self._records(txn, 0))
            else:  # an index from before the field table, opened by a reader: computed in memory
                self._append(sorted((d["first"], record(d["doc_id"], d["pages"], d["metadata"]))
                                    for d in self.store.iter_documents(txn)))
            self.epoch, self.frev = state["epoch"], state.get("frev", 0)
        else:
            if self.next_page_id < state["next_page_id"]:
                self._append(self._records(txn, self.next_page_id))
            if len(tombs) != self._tombs_seen:  # documents deleted or replaced since
                rows = np.flatnonzero(self._alive.a)
                self._kill(self._first.a[rows[np.isin(self._first.a[rows], tombs)]].tolist())
        self._tombs_seen = len(tombs)
        self.next_page_id, self.gen = state["next_page_id"], state["gen"]

    def _records(self, txn, start: int) -> list[tuple[int, dict]]:
        """The field records from first page id ``start``; a damaged one is computed from its document's
        metadata (as repair rewrites it), with a warning naming the document, so filters still work."""
        damaged: list[int] = []
        records = list(self.store.iter_fields(txn, start, damaged))
        if damaged:
            docs = {d["first"]: d for d in self.store.iter_documents(txn, []) if d["first"] in set(damaged)}
            for first in damaged:
                d = docs.get(first)
                if d is not None:
                    records.append((first, record(d["doc_id"], d["pages"], d["metadata"])))
                    log.warning("%s: the field record of %s fails its checksum: computed from its metadata "
                                "(hint: Index.verify(repair=True) rewrites it)", self.store.index_dir, d["doc_id"])
            records.sort(key=lambda r: r[0])
        return records

    def committed(self, state: dict, added: list[tuple[int, dict]], removed: list[int]) -> None:
        """Mirror the writer's own commit: documents ``added`` as (first page id, record), documents
        ``removed`` by first page id (an updated document is removed and added under the same id)."""
        if self.gen == -1:
            return  # never loaded (or given up): the next refresh loads everything
        self._kill(removed)
        self._append(added)
        self.next_page_id, self.gen = state["next_page_id"], state["gen"]
        self.frev, self._tombs_seen = state.get("frev", 0), state["tombs"]
        if self.dead > max(1024, self.rows - self.dead):
            self.gen = -1  # mostly dead rows: reloaded from LMDB at the next search

    def _kill(self, firsts) -> None:
        alive = self._alive.a
        for first in firsts:
            row = self._row_of.pop(first, None)
            if row is not None:
                alive[row] = False
                self.dead += 1

    def _append(self, records: list[tuple[int, dict]]) -> None:
        """Add rows for ``records``: values gathered per field, typed per field, then one extend per
        column (a full load is dominated by this Python loop: keep it to a few operations a value)."""
        if not records:
            return
        base = self.rows
        gathered: dict[str, tuple[list, list]] = {}  # name -> (rows, values), values of any type
        for row, (first, rec) in enumerate(records, base):
            for name, value in rec["f"].items():
                g = gathered.get(name) or gathered.setdefault(name, ([], []))
                if type(value) is list:
                    g[0].extend([row] * len(value))
                    g[1].extend(value)
                else:
                    g[0].append(row)
                    g[1].append(value)
            self._row_of[first] = row
        rows = list(range(base, base + len(records)))
        doc_ids = [rec["d"] for _, rec in records]
        pages = [rec["p"] for _, rec in records]
        for name in COMPUTED:  # computed fields win over metadata keys of their names
            gathered.pop(name, None)
        gathered.update({"doc_id": (rows, doc_ids), "pages": (rows, pages),
                         "name": (rows, [os.path.basename(d.rstrip("/")) or d for d in doc_ids])})
        self._first.extend([first for first, _ in records])
        self._pages.extend(pages)
        self._alive.extend(np.ones(len(records), dtype=bool))
        for name, (rows, values) in gathered.items():
            (sr, nr, br), (sv, nv, bv) = typed = ([], [], []), ([], [], [])  # rows, values per kind
            for r, v in zip(rows, values):  # JSON values: str, bool, int, float, None, list, dict
                t = type(v)
                if t is str:
                    sr.append(r)
                    sv.append(v)
                elif t is bool:
                    br.append(r)
                    bv.append(v)
                elif _number(v, t):
                    nr.append(r)
                    nv.append(v)
            col = self._columns.get(name) or self._columns.setdefault(name, Column())
            col.extend(list(typed[0]), *typed[1])

