"""One index's LMDB environment: handles shared per process, transactions, checked values.

:class:`TableStore` is what every table has in common (open, follow a compaction's CURRENT, seal and
check values, iterate keys, copy the file); the records of each table are
:class:`jevsearch.store.lmdbstore.PageStore`'s.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import lmdb
import numpy as np

from jevsearch.errors import ChecksumError, CorruptIndexError, JevsearchError, NotAnIndexError
from jevsearch.store import checksum
from jevsearch.store.lmdbenv import (
    CURRENT,
    DATA_FILE,
    ENV_PREFIX,
    MAP_SIZE,
    MAX_DBS,
    current_env,
    fsync_dir,
    lmdb_error,
    open_env,
    prefetch,
    scanning,
    writable,
    write_atomic,
)
from jevsearch.store.schema import (
    DB_NAMES,
    MANIFEST_COPY,
    OPTIONAL_DB_NAMES,
    PAGE_KEY,
    UNSEALED,
    dump_json,
    load_json,
    manifest_of,
    page_key,
)

log = logging.getLogger(__name__)


class _EnvRegistry:
    """One ``lmdb.Environment`` per LMDB directory per process.

    LMDB forbids opening the same environment twice in a process (py-lmdb raises), yet a program
    may hold a writer and a reader ``Engine`` on the same index. They share the handle here.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._envs: dict[str, list] = {}  # realpath -> [env, dbs, refcount]

    def acquire(self, env_dir: str) -> tuple[lmdb.Environment, dict]:
        real = os.path.realpath(env_dir)
        with self._lock:
            entry = self._envs.get(real)
            if entry is None:
                # Opened writable whenever possible so a later writer in this process can share it;
                # read-only Engines never start a write transaction.
                env = open_env(real, writable(real))
                try:
                    entry = [env, self._open_dbs(env, real), 0]
                except lmdb.Error as e:
                    env.close()
                    raise lmdb_error(real, e) from e
                except BaseException:
                    env.close()
                    raise
                self._envs[real] = entry
            entry[2] += 1
            return entry[0], entry[1]

    @staticmethod
    def _open_dbs(env: lmdb.Environment, env_dir: str) -> dict:
        with env.begin() as txn:
            names = [bytes(k).decode("utf-8", "replace") for k in txn.cursor().iternext(values=False)]
        missing = [n for n in DB_NAMES if n not in names]
        if missing:
            raise NotAnIndexError(f"{env_dir}: LMDB has no {', '.join(missing)} tables "
                                  "(hint: this is not a jevsearch index)")
        # Every named table, also those a rewrite added; an optional table the index lacks is None.
        # py-lmdb opens named tables in a short write transaction of its own (a read transaction's
        # handles die with it), so this can wait a moment for another process's commit.
        dbs = {n: env.open_db(n.encode(), create=False) for n in names}
        dbs.update({n: None for n in OPTIONAL_DB_NAMES if n not in dbs})
        return dbs

    def release(self, env_dir: str) -> None:
        real = os.path.realpath(env_dir)
        with self._lock:
            entry = self._envs[real]
            entry[2] -= 1
            if entry[2] == 0:
                del self._envs[real]
                entry[0].close()


_REGISTRY = _EnvRegistry()

class TableStore:
    """The LMDB environment of one index: open (following CURRENT), transactions, checked values of
    any table, the manifest, and the files on disk. :class:`jevsearch.store.lmdbstore.PageStore` adds
    the typed records on top.

    ``checksums``: whether this store's values carry digests (format version 2), read from its
    manifest at open. Accessors of sealed values raise ChecksumError (a CorruptIndexError) when one
    fails; ``None`` still means absent.
    """

    def __init__(self, index_dir: str):
        self.index_dir = index_dir
        self.env = None
        self._warned_manifest = False
        self._sealer = checksum.Sealer()
        self._open()

    @property
    def single_dtype(self) -> np.dtype:
        """How this store keeps single vectors (float32; float16 in format version 3)."""
        return np.dtype(self._manifest.get("single_dtype", "float32"))

    def _open(self) -> None:
        for _ in range(5):
            before = current_env(self.index_dir)[1]
            try:
                env_dir, ino = current_env(self.index_dir)
                self.env, self._db = _REGISTRY.acquire(env_dir)
            except (lmdb.Error, OSError, JevsearchError):
                # A compaction in another process may have swapped stores and deleted the old one
                # between reading CURRENT and opening it: follow CURRENT again.
                if current_env(self.index_dir)[1] != before:
                    continue
                raise
            self.env_dir, self._current_ino = env_dir, ino
            try:
                with self.read() as txn:
                    self.checksums, self._manifest = self._read_manifest(txn)
            except BaseException:
                self.close()
                raise
            return
        raise CorruptIndexError(f"{self.index_dir}: {CURRENT} keeps changing (hint: retry; is a compaction looping?)")

    def _read_manifest(self, txn) -> tuple[bool, dict]:
        """(checksums, manifest): a sealed manifest is JSON + digest, a version-1 one plain JSON. A
        damaged one is read from its copy (``manifest_damaged`` then says so, for a writer to rewrite)."""
        raw = txn.get(b"manifest", db=self._db["meta"])
        if raw is None:
            raise NotAnIndexError(f"{self.env_dir}: no manifest (hint: this is not a jevsearch index)")
        found = manifest_of(raw)
        copy = txn.get(MANIFEST_COPY, db=self._db["meta"])
        self.manifest_damaged = found is None
        self.manifest_copied = copy is not None
        if found is None and copy is not None and checksum.intact("meta", MANIFEST_COPY, copy):
            found = True, load_json(copy[:-checksum.SIZE])
            if not self._warned_manifest:
                self._warned_manifest = True
                log.warning("%s: the manifest record is damaged: read from its copy (a writer rewrites it)",
                            self.env_dir)
        if found is None:
            lost = "its copy too" if copy is not None else \
                "this index has no copy of it (made before jevsearch kept one)"
            raise CorruptIndexError(
                f"{self.env_dir}: the manifest record is damaged (checksum mismatch) and {lost}: the index's format version, vector sizes, codec and model identity are lost, so none of its "
                "values can be read (hint: restore the index from a backup, or index the files again into a new "
                "index)")
        return found

    def repair_manifest(self) -> None:
        """Writer: rewrite a damaged manifest from its copy, or give an index from before the copy one."""
        if self.checksums and (self.manifest_damaged or not self.manifest_copied):
            with self.write() as txn:
                self.put_manifest(txn, self._manifest)
            if self.manifest_damaged:
                log.warning("%s: rewrote the damaged manifest record from its copy", self.env_dir)
            self.manifest_damaged, self.manifest_copied = False, True

    @staticmethod
    def initialise(index_dir: str, manifest: dict, state: dict) -> None:
        """Create the environment and its tables under ``index_dir`` (a fresh, private directory)."""
        env_dir = os.path.join(index_dir, ENV_PREFIX + "0")
        os.makedirs(env_dir)
        env = lmdb.open(env_dir, map_size=MAP_SIZE, max_dbs=MAX_DBS)
        try:
            dbs = {n: env.open_db(n.encode()) for n in DB_NAMES + OPTIONAL_DB_NAMES}
            sealed = bool(manifest.get("checksums"))
            with env.begin(write=True) as txn:
                for key, obj in ((b"manifest", manifest), (MANIFEST_COPY, manifest), (b"state", state)):
                    raw = dump_json(obj)
                    txn.put(key, checksum.seal("meta", key, raw) if sealed else raw, db=dbs["meta"])
            env.sync(True)
        finally:
            env.close()
        write_atomic(os.path.join(index_dir, CURRENT), (ENV_PREFIX + "0\n").encode())

    def remove_stale(self) -> None:
        """Clean up after crashed processes (call with the writer lock held): LMDB directories other
        than the live one (an interrupted compaction's leftovers), and reader slots of killed
        readers, whose old snapshots would otherwise keep LMDB from reusing freed pages."""
        self.env.reader_check()
        live = os.path.basename(self.env_dir)
        for name in os.listdir(self.index_dir):
            if name.startswith(ENV_PREFIX) and name != live:
                shutil.rmtree(os.path.join(self.index_dir, name), ignore_errors=True)
            elif name.startswith(CURRENT + ".tmp."):
                os.unlink(os.path.join(self.index_dir, name))

    def create_missing_tables(self) -> None:
        """Add the optional tables an older index lacks (writer lock required). The handles are
        shared with every PageStore of this process on the same environment."""
        for name in OPTIONAL_DB_NAMES:
            if self._db[name] is None:
                self._db[name] = self.env.open_db(name.encode(), create=True)

    def close(self) -> None:
        if self.env is not None:
            _REGISTRY.release(self.env_dir)
            self.env = None

    def reopen_if_replaced(self) -> bool:
        """Switch to the LMDB directory a compaction (maybe in another process) made current.

        One ``stat`` per call: CURRENT gets a new inode each time it is replaced.
        """
        try:
            if os.stat(os.path.join(self.index_dir, CURRENT)).st_ino == self._current_ino:
                return False
        except FileNotFoundError as e:
            raise CorruptIndexError(f"{self.index_dir}: {CURRENT} vanished (hint: restore the index)") from e
        self.close()
        self._open()
        return True

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read snapshot; values are zero-copy memoryviews valid only inside the block."""
        try:
            with self.env.begin(buffers=True) as txn:
                yield txn
        except lmdb.Error as e:
            raise lmdb_error(self.env_dir, e) from e

    def prefetch(self, tables: tuple[str, ...], page_ids: list[int]):
        """Start reading ``tables``' values of ``page_ids`` in background threads (see
        :func:`jevsearch.store.lmdbenv.prefetch`) -> a Prefetch to ``wait()`` on before the store closes."""
        dbs = [self._db[t] for t in tables if self._db[t] is not None]
        return prefetch(self.env, [(db, page_key(pid)) for pid in page_ids for db in dbs])

    def scanning(self):
        """Context manager around reads in key order over much of the store (see
        :func:`jevsearch.store.lmdbenv.scanning`): the OS reads ahead while it runs."""
        return scanning(self.env)

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction: committed (and fsynced by LMDB) on success, aborted on any error."""
        try:
            with self.env.begin(write=True, buffers=True) as txn:
                yield txn
        except lmdb.Error as e:
            raise lmdb_error(self.env_dir, e) from e

    # -- any table ------------------------------------------------------------------------------

    def get(self, txn, table: str, key: bytes, raw: bool = False):
        """The payload stored under ``key`` in ``table`` (a zero-copy view valid inside ``txn``), None
        if absent; ChecksumError if its digest fails. ``raw=True``: the stored value as it is."""
        db = self._db[table]
        value = None if db is None else txn.get(key, db=db)  # None: an optional table this index lacks
        if value is None or raw:
            return value
        return self.unseal(table, key, value)

    def unseal(self, table: str, key: bytes, value):
        """The payload of a ``value`` of ``table`` read with ``raw=True``: checked and without its digest
        (a zero-copy slice) when the store has checksums; ChecksumError if it fails."""
        if not self.checksums or table in UNSEALED:
            return value
        try:
            return checksum.unseal(table, key, value)
        except ChecksumError:
            raise self.checksum_error(table, key) from None

    def page_check(self, failed: list[int], table: str = "multi"):
        """``check(page id, raw value) -> payload | None`` for a scorer to run as it packs each page
        (see ``Scorer.score``; ``table``: "multi" or "exact"): the checked payload, or None with the
        page id appended to ``failed``. None when the store has no checksums (raw values are then the
        payload)."""
        if not self.checksums:
            return None

        def check(page_id: int, raw):
            try:
                return checksum.unseal(table, page_key(page_id), raw)
            except ChecksumError:
                failed.append(page_id)
                return None
        return check

    def checksum_error(self, table: str, key: bytes) -> ChecksumError:
        """The error for a damaged value of this index, saying how to find what it affects."""
        what = f"page id {PAGE_KEY.unpack(key)[0]}" if len(key) == PAGE_KEY.size else f"key {bytes(key).hex()}"
        if table == "fields":  # keyed by the document's first page id
            what = f"the document whose first page is page id {PAGE_KEY.unpack(key)[0]}"
        return ChecksumError(table, bytes(key), f"{self.index_dir}: the {table} value of {what}",
                             hint="Index.verify(deep=True) names the documents it affects", path=self.index_dir)

    def payload_size(self, stored) -> int:
        """Bytes of the payload of a stored (``raw``) value: without its digest, if it has one."""
        return len(stored) - (checksum.SIZE if self.checksums else 0)

    def delete(self, txn, table: str, key: bytes) -> None:
        if self._db[table] is not None:
            txn.delete(key, db=self._db[table])

    def last_page_key(self, txn, table: str) -> int | None:
        """The largest page id with an entry in ``table`` (a page-keyed table), None if empty."""
        if self._db[table] is None:
            return None
        cur = txn.cursor(db=self._db[table])
        return PAGE_KEY.unpack(cur.key())[0] if cur.last() else None

    def put(self, txn, table: str, key: bytes, payload, append: bool = False) -> None:
        """Store ``payload`` (bytes or a C-contiguous array) under ``key``, sealed when the store has
        checksums (one copy of the payload into a reused buffer)."""
        if self.checksums and table not in UNSEALED:
            payload = self._sealer.seal(table, key, payload)
        txn.put(key, payload, db=self._db[table], append=append)

    def items(self, txn, table: str, start: bytes | None = None, raw: bool = False) -> Iterator[tuple[bytes, object]]:
        """(key, payload) of ``table`` in key order from ``start``; ChecksumError at a damaged value.
        ``raw=True``: the stored values as they are (digest included, unchecked)."""
        if self._db[table] is None:  # an optional table this index lacks: empty
            return
        cur = txn.cursor(db=self._db[table])
        if start is not None and not cur.set_range(start):
            return
        sealed = self.checksums and table not in UNSEALED and not raw
        for k, v in (cur if start is not None else cur.iternext()):
            if sealed and not checksum.intact(table, k, v):
                raise self.checksum_error(table, k)
            yield k, (v[:-checksum.SIZE] if sealed else v)

    def tables(self) -> list[str]:
        return list(self._db)

    def has_table(self, name: str) -> bool:
        """Whether this process has a handle on the optional table ``name`` (see OPTIONAL_DB_NAMES)."""
        return self._db.get(name) is not None

    # -- the manifest --------------------------------------------------------------------------------

    def manifest(self, txn) -> dict:
        return self._read_manifest(txn)[1]

    def put_manifest(self, txn, manifest: dict) -> None:
        """Write the manifest and its copy (one transaction: they never disagree)."""
        self.put(txn, "meta", b"manifest", dump_json(manifest))
        if self.checksums:
            self.put(txn, "meta", MANIFEST_COPY, dump_json(manifest))

    # -- disk ---------------------------------------------------------------------------------

    def table_bytes(self) -> dict[str, int]:
        """Bytes of LMDB pages used by each table (B-tree + overflow pages)."""
        out = {}
        with self.read() as txn:
            for name, db in self._db.items():
                if db is None:
                    continue
                st = txn.stat(db)
                out[name] = st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])
        return out

    def file_bytes(self) -> int:
        return os.stat(os.path.join(self.env_dir, DATA_FILE)).st_size

    def next_dir(self) -> str:
        """A fresh, empty ``store-<n+1>/`` beside the live store (a leftover of a crash is removed)."""
        n = int(os.path.basename(self.env_dir)[len(ENV_PREFIX):]) + 1
        new_dir = os.path.join(self.index_dir, f"{ENV_PREFIX}{n}")
        shutil.rmtree(new_dir, ignore_errors=True)
        os.makedirs(new_dir)
        return new_dir

    def install(self, new_dir: str) -> None:
        """Make the complete LMDB directory ``new_dir`` (from :meth:`next_dir`) the live store.

        Its data file is fsynced, then CURRENT is replaced atomically: a crash at any point leaves
        the old store or the new one live, never a mix (a leftover is removed at the next writer's
        open). Readers in other processes switch at their next call (:meth:`reopen_if_replaced`);
        the old directory is deleted (open handles keep its files alive until they close).
        """
        with open(os.path.join(new_dir, DATA_FILE), "rb") as f:
            os.fsync(f.fileno())
        fsync_dir(new_dir)
        old_dir = self.env_dir
        write_atomic(os.path.join(self.index_dir, CURRENT), f"{os.path.basename(new_dir)}\n".encode())
        self.reopen_if_replaced()
        shutil.rmtree(old_dir, ignore_errors=True)

    def compact_file(self) -> None:
        """Copy the store without its free pages into a new LMDB directory and make it current.

        The copy gets its own lock file: LMDB's lock file records the last transaction id, so a data
        file must never be swapped under a live one. Writer lock required. To change values on the
        way (format upgrades, re-encodings): :func:`jevsearch.store.rewrite.rewrite`.
        """
        new_dir = self.next_dir()
        self.env.copy(new_dir, compact=True)
        self.install(new_dir)
