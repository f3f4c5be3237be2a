"""Rewriting an index's LMDB store into a fresh one: format upgrades and re-encodings.

:func:`rewrite` copies every record of the live ``store-<n>/`` into a new ``store-<n+1>/``, passing
the values of chosen tables through a transform, writes the new manifest, and swaps ``CURRENT``
atomically, exactly as compaction does (:meth:`PageStore.install`): a crash (even kill -9) at any
point leaves the old store live or the new one, never a mix, and the next writer's open removes
the leftover. The new store is written in several commits while it is still private, and its meta
records (manifest, state) last, so an interrupted copy never looks like a whole store
(:func:`~jevsearch.store.lmdbenv.restore_current` relies on it).

What a :class:`Rewrite` says:

* ``manifest``: the new store's manifest. Its ``"checksums"`` decides whether values are sealed
  (:mod:`jevsearch.store.checksum`): a version-1 store rewritten with ``checksums: true`` gets its
  digests (that is the upgrade :meth:`Index.compact` runs, :func:`upgrade`).
* ``transforms``: table -> ``fn(key, payload) -> new payload | None`` (None drops the record).
  Payloads arrive without their digest and verified; the result is sealed as the manifest says.
  E.g. re-encoding multi-vectors into another codec: ``{"multi": encode}`` plus a manifest naming
  the codec.
* ``new_tables`` and ``fill``: tables to create, and a function called with ``put(table, key,
  payload)`` after the copy, to fill them (or add records to any table), e.g. a codebook, or the
  re-encoded pages of a codec conversion that pools tokens (page and document records change too).
* ``state``: ``fn(state) -> state``, called after ``fill``, for counters a fill changes (tokens).

The ``meta`` table's manifest and state records are written by :func:`rewrite` itself (the plan's
manifest; the state with ``gen`` + 1); its other records (e.g. ingest failures) are copied like
any value.

Records of tables without a transform are copied as they are: when both stores carry checksums the
raw value, digest included, so a damaged value stays detectably damaged instead of being sealed as
good. A transformed value that fails its digest stops the rewrite with ChecksumError (nothing is
swapped, the copy is removed); its document must be re-added first. The state record's ``gen`` is bumped so that readers
in other processes re-read the manifest. Writer lock required; the caller settles its own views
(the HNSW is keyed by page ids, which a rewrite keeps).

>>> import numpy as np
>>> def checked(key, payload):                       # a transform: check, keep the bytes
...     assert np.isfinite(np.frombuffer(payload, np.float16)).all()
...     return payload
>>> plan = Rewrite(manifest={"format_version": 2, "checksums": True}, transforms={"multi": checked})
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import lmdb

from jevsearch.store import checksum
from jevsearch.store.lmdbenv import MAP_SIZE, MAX_DBS, lmdb_error
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.manifest import upgraded
from jevsearch.store.schema import MANIFEST_COPY, UNSEALED, dump_json, load_json

# Bytes written per commit of the (still private) new store: bounds LMDB's dirty pages in memory.
BATCH_BYTES = 256 << 20
_META_LAST = (b"manifest", MANIFEST_COPY, b"state")  # written by rewrite() itself, after everything else


@dataclass
class Rewrite:
    """What :func:`rewrite` changes (see the module docstring)."""

    manifest: dict
    transforms: Mapping[str, Callable[[bytes, memoryview], object]] = field(default_factory=dict)
    new_tables: Sequence[str] = ()
    fill: Callable[[Callable[[str, bytes, object], None]], None] | None = None
    state: Callable[[dict], dict] | None = None


def rewrite(store: PageStore, plan: Rewrite) -> None:
    """Copy ``store`` into a fresh LMDB directory as ``plan`` says and make it the live store."""
    new_dir = store.next_dir()
    sealed = bool(plan.manifest.get("checksums"))
    tables = store.tables() + [t for t in plan.new_tables if t not in store.tables()]
    try:
        _copy(store, plan, new_dir, sealed, tables)
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)  # never live: CURRENT still names the old store
        raise
    store.install(new_dir)


def _copy(store: PageStore, plan: Rewrite, new_dir: str, sealed: bool, tables: list[str]) -> None:
    try:
        env = lmdb.open(new_dir, map_size=MAP_SIZE, max_dbs=MAX_DBS, sync=False, metasync=False)
    except lmdb.Error as e:
        raise lmdb_error(new_dir, e) from e
    try:
        dbs = {t: env.open_db(t.encode()) for t in tables}
        out = _Writer(env, dbs, sealed)
        with store.read() as txn:
            for table in store.tables():
                _copy_table(store, txn, table, plan.transforms.get(table), out)
            state = load_json(store.get(txn, "meta", b"state"))
        if plan.fill is not None:
            plan.fill(out.put)
        if plan.state is not None:
            state = plan.state(state)
        state["gen"] += 1
        out.put("meta", MANIFEST_COPY, dump_json(plan.manifest))
        out.put("meta", b"manifest", dump_json(plan.manifest))  # last: a store without it is not whole
        out.put("meta", b"state", dump_json(state))
        out.commit()
        env.sync(True)
    except lmdb.Error as e:
        raise lmdb_error(new_dir, e) from e
    finally:
        env.close()


def upgrade(manifest: dict) -> Rewrite:
    """The rewrite that brings a version-1 store to the current format: every value gets its digest.

    Sealing damaged bytes would certify them: the caller checks the vectors first
    (``Index.compact`` runs a deep verify of a version-1 index before upgrading it).
    """
    return Rewrite(manifest=upgraded(manifest))


class _Writer:
    """Puts into the new store, committing every BATCH_BYTES (the store is private until installed)."""

    def __init__(self, env: lmdb.Environment, dbs: dict, sealed: bool):
        self.env, self.dbs, self.sealed = env, dbs, sealed
        self.sealer = checksum.Sealer()
        self.txn = env.begin(write=True)
        self.pending = 0

    def put(self, table: str, key: bytes, payload, append: bool = False) -> None:
        if self.sealed and table not in UNSEALED:
            payload = self.sealer.seal(table, key, payload)
        self.put_raw(table, key, payload, append)

    def put_raw(self, table: str, key: bytes, raw, append: bool = False) -> None:
        self.txn.put(key, raw, db=self.dbs[table], append=append)
        self.pending += memoryview(raw).nbytes + len(key)
        if self.pending >= BATCH_BYTES:
            self.commit()
            self.txn = self.env.begin(write=True)

    def commit(self) -> None:
        self.txn.commit()
        self.pending = 0


def _copy_table(store: PageStore, txn, table: str, transform, out: _Writer) -> None:
    verbatim = transform is None and (table in UNSEALED or store.checksums == out.sealed)
    if verbatim:
        for k, raw in store.items(txn, table, raw=True):
            if table != "meta" or bytes(k) not in _META_LAST:
                out.put_raw(table, bytes(k), raw, append=True)
        return
    for k, payload in store.items(txn, table):
        k = bytes(k)
        if table == "meta" and k in _META_LAST:
            continue
        if transform is not None:
            payload = transform(k, payload)
            if payload is None:
                continue
        out.put(table, k, payload, append=True)
