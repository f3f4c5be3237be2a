"""The LMDB part of an index: the truth every other part can be rebuilt from.

One LMDB environment (``<index>/store-<n>/``, named by the file ``<index>/CURRENT``; n grows with
each compaction) with these named databases::

    meta    b"manifest" -> JSON (format version, dims, dtypes, HNSW parameters, model identity)
            b"manifest.copy" -> the same JSON, written in the same transactions: a damaged manifest is
                        read from its copy (and rewritten by the next writer); indexes from before it
                        get the copy when a writer opens them
            b"state"    -> JSON (next page id, generation, epoch, counters)
            b"failures" -> JSON {path: {sha256, reason}}: files ingest could not read (may be absent)
    docs    blake2b-128(doc_id) -> JSON {doc_id, first, pages, tokens, metadata, text}
    pages   u64be page id -> PAGE_REC (doc key, 1-based page number, token count)
    single  u64be page id -> single_dtype [D]     full single vector (HNSW can be rebuilt from it); its
                                                  first single_dim dims in format version 4 (codes only)
    multi   u64be page id -> codes of [T, dm]     per-token multi-vectors, T from the page record:
                                                  multi_dtype floats, or the manifest's codec
                                                  (jevsearch.search.codecs; format version 3)
    exact   u64be page id -> float16 [T, dm]      the same tokens as floats, when the manifest says
                                                  keep_exact (optional table, format version 3)
    text    u64be page id -> UTF-8 page text      (only when the caller gave texts)
    tomb    u64be page id -> b""                  deleted pages still present in the HNSW file
    visual  u64be page id -> grid layout + thumbnail (optional table: jevsearch.store.visual)
    fde     u64be page id -> float16 [F]          the page's MUVERA encoding (optional: jevsearch.store.fde)
    fields  u64be first page id -> JSON           a document's filterable fields (jevsearch.store.fields);
                                                  optional: indexes made before it lack it until a writer
                                                  opens them (state["fields"] says it is complete)

Format version 2 (``"checksums": true`` in the manifest): every value except the empty tombstone
markers ends with an 8-byte xxHash3 digest seeded by table and key (:mod:`jevsearch.store.checksum`);
the accessors below return the payload without it (a zero-copy slice) and raise ChecksumError when
it does not match. Version-1 stores carry no digests and are read as they are.

A document and all its pages are written in one write transaction, so readers (other processes
included) see all of it or nothing, and a crash loses at most the document being written. Page ids
come from a monotonic counter and a document's pages get consecutive ids, so "pages added since X"
is a cursor range. Values are raw little-endian arrays and JSON: nothing here can run code.

LMDB is used only inside ``with store.read() as txn`` / ``with store.write() as txn`` blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import lmdb
import numpy as np

from jevsearch.errors import ChecksumError, CorruptIndexError, InvalidInputError, JevsearchError, NotAnIndexError
from jevsearch.store import checksum, visual
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

log = logging.getLogger(__name__)

DB_NAMES = ("meta", "docs", "pages", "single", "multi", "text", "tomb")
# Tables added after format version 1: an index without them still opens (its handle is None
# until a writer creates the table; readers treat the table as empty).
EXACT = "exact"
FDE = "fde"  # one float16 MUVERA encoding per page, when the manifest has an "fde" record (jevsearch.store.fde)
OPTIONAL_DB_NAMES = (visual.TABLE, "fields", EXACT, FDE)
PAGE_VALUE_TABLES = ("pages", "single", "multi", EXACT, "text", visual.TABLE, FDE)  # keyed by page id
UNSEALED = frozenset({"tomb"})  # empty markers: their keys are the data, so they carry no digest

MANIFEST_COPY = b"manifest.copy"
PAGE_KEY = struct.Struct(">Q")  # big-endian so LMDB key order == page id order
PAGE_REC = struct.Struct("<16sII")  # doc key, page number (1-based), token count


def _manifest_of(raw) -> tuple[bool, dict] | None:
    """(checksums, manifest) of a stored manifest value, None when damaged."""
    if checksum.intact("meta", b"manifest", raw):
        manifest = load_json(raw[:-checksum.SIZE])
        if manifest.get("checksums") is True:
            return True, manifest
        return None
    try:
        manifest = load_json(raw)
    except ValueError:
        return None
    return (False, manifest) if isinstance(manifest, dict) and not manifest.get("checksums") else None


def doc_key(doc_id: str) -> bytes:
    """Fixed-size LMDB key of a document (doc ids are paths and may exceed LMDB's 511-byte keys)."""
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).digest()


def page_key(page_id: int) -> bytes:
    return PAGE_KEY.pack(page_id)


def page_numbers(doc: dict) -> list[int]:
    """The 1-based page numbers of a document record's pages (in page id order)."""
    return doc.get("page_numbers") or list(range(1, doc["pages"] + 1))


def dump_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def load_json(buf) -> dict:
    return json.loads(bytes(buf))


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


class PageStore:
    """Typed access to the LMDB environment of one index (see the module docstring for the layout).

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
        found = _manifest_of(raw)
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

    # -- records --------------------------------------------------------------------------------

    def manifest(self, txn) -> dict:
        return self._read_manifest(txn)[1]

    def put_manifest(self, txn, manifest: dict) -> None:
        """Write the manifest and its copy (one transaction: they never disagree)."""
        self.put(txn, "meta", b"manifest", dump_json(manifest))
        if self.checksums:
            self.put(txn, "meta", MANIFEST_COPY, dump_json(manifest))

    def state(self, txn) -> dict:
        raw = self.get(txn, "meta", b"state")
        if raw is None:
            raise CorruptIndexError(f"{self.env_dir}: no state record (hint: restore the index)")
        return load_json(raw)

    def put_state(self, txn, state: dict) -> None:
        self.put(txn, "meta", b"state", dump_json(state))

    def document(self, txn, doc_id: str) -> dict | None:
        return self.document_by_key(txn, doc_key(doc_id))

    def existing_document(self, txn, doc_id: str) -> dict:
        """Document ``doc_id``'s record; InvalidInputError when the index has none."""
        doc = self.document(txn, doc_id)
        if doc is None:
            raise InvalidInputError(f"{doc_id}: not in the index (hint: documents() lists the indexed ids)")
        return doc

    def document_by_key(self, txn, key: bytes) -> dict | None:
        raw = self.get(txn, "docs", key)
        return None if raw is None else load_json(raw)

    def iter_documents(self, txn, damaged: list | None = None) -> Iterator[dict]:
        """Every document record; a damaged one (digest or JSON) raises ChecksumError, or, given a
        ``damaged`` list, is skipped and its key appended to it."""
        if damaged is None:
            for _, raw in self.items(txn, "docs"):
                yield load_json(raw)
            return
        for key, raw in self.items(txn, "docs", raw=True):
            try:
                doc = load_json(self.unseal("docs", key, raw))
            except (ChecksumError, ValueError):
                damaged.append(bytes(key))
                continue
            yield doc

    def page(self, txn, page_id: int) -> tuple[bytes, int, int] | None:
        """(doc key, 1-based page number, token count) of a live page, None if absent."""
        raw = self.get(txn, "pages", page_key(page_id))
        if raw is None:
            return None
        if len(raw) != PAGE_REC.size:
            raise CorruptIndexError(f"{self.env_dir}: page record of page id {page_id} has {len(raw)} bytes "
                                    "(hint: the store is damaged)")
        return PAGE_REC.unpack(raw)

    def text(self, txn, page_id: int) -> str | None:
        raw = self.get(txn, "text", page_key(page_id))
        return None if raw is None else bytes(raw).decode("utf-8", "replace")

    def multi_raw(self, txn, page_id: int):
        """A page's multi-vector bytes, checked (zero-copy, valid inside ``txn`` only). The search path
        reads them unchecked and checks them as it packs them (:meth:`page_check`)."""
        return self.get(txn, "multi", page_key(page_id))

    def single_raw(self, txn, page_id: int):
        """A page's stored single vector (``single_dtype`` values), checked; None if absent."""
        return self.get(txn, "single", page_key(page_id))

    def single(self, txn, page_id: int, dim: int | None) -> np.ndarray | None:
        """A page's single vector as float32 [dim] (a copy), None if absent or not ``dim`` values
        (None: any length); ChecksumError if it fails its checksum."""
        raw = self.single_raw(txn, page_id)
        dtype = self.single_dtype
        if raw is None or dim is not None and len(raw) != dim * dtype.itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype).astype(np.float32)

    def iter_pages(self, txn, start: int = 0, damaged: list | None = None) -> Iterator[tuple[int, bytes, int, int]]:
        """Live pages with id >= ``start`` in id order: (page id, doc key, page number, tokens).

        A page record that fails its checksum raises ChecksumError, or, given a ``damaged`` list, is
        skipped and its page id appended to it.
        """
        sealed = self.checksums
        for k, v in self.items(txn, "pages", page_key(start), raw=True):
            pid = PAGE_KEY.unpack(k)[0]
            if sealed:
                if not checksum.intact("pages", k, v):
                    if damaged is None:
                        raise self.checksum_error("pages", bytes(k))
                    damaged.append(pid)
                    continue
                v = v[:-checksum.SIZE]
            if len(v) != PAGE_REC.size:
                if damaged is None:
                    raise CorruptIndexError(f"{self.env_dir}: page record of page id {pid} has {len(v)} bytes "
                                            "(hint: the store is damaged)")
                damaged.append(pid)
                continue
            key, no, tokens = PAGE_REC.unpack(v)
            yield pid, key, no, tokens

    def view(self, txn, page_id: int) -> visual.PageView | None:
        """The page's visual record (grid layout, thumbnail), None if it has none."""
        raw = self.get(txn, visual.TABLE, page_key(page_id))
        return None if raw is None else visual.PageView.decode(raw)

    def iter_keys(self, txn, table: str) -> Iterator[int]:
        if self._db[table] is None:  # an optional table this index does not have
            return
        for k in txn.cursor(db=self._db[table]).iternext(keys=True, values=False):
            yield PAGE_KEY.unpack(k)[0]

    def tombstones(self, txn) -> np.ndarray:
        return np.fromiter(self.iter_keys(txn, "tomb"), dtype=np.int64)

    # -- writes (caller holds the writer lock and a write transaction) --------------------------

    def remove_document(self, txn, doc: dict) -> list[int]:
        """Delete a document's record and pages; their ids become tombstones. Returns the ids."""
        ids = list(range(doc["first"], doc["first"] + doc["pages"]))
        for pid in ids:
            k = page_key(pid)
            for table in PAGE_VALUE_TABLES:
                if self._db[table] is not None:
                    txn.delete(k, db=self._db[table])
            txn.put(k, b"", db=self._db["tomb"])
        txn.delete(doc_key(doc["doc_id"]), db=self._db["docs"])
        return ids

    def put_document(self, txn, doc: dict, singles, multis: list, texts: list[str] | None,
                     tokens: list[int] | None = None, exact: list | None = None, offset: int = 0) -> None:
        """Write one document whose pages get ids ``doc["first"] ...`` (all above existing ids); their
        page numbers are ``doc["page_numbers"]`` when the document has one (pages left out), else 1..P.

        ``singles`` [P, D] and ``multis`` (P arrays or buffers) in their stored form; ``tokens``: each
        page's token count (default: ``len`` of each multi, for [T, dm] arrays); ``exact``: P float16
        [T, dm] arrays for the ``exact`` table, or None. ``offset``: these are the document's pages from
        its ``offset``-th on (a long document stored in parts; the earlier ones are stored)."""
        dkey = doc_key(doc["doc_id"])
        numbers = page_numbers(doc)[offset:]
        tokens = [len(m) for m in multis] if tokens is None else tokens
        for i, m in enumerate(multis):
            k = page_key(doc["first"] + offset + i)
            # append=True: ids only grow, so each put lands at the B-tree's right edge.
            self.put(txn, "pages", k, PAGE_REC.pack(dkey, numbers[i], tokens[i]), append=True)
            self.put(txn, "single", k, np.ascontiguousarray(singles[i]), append=True)  # a buffer: no bytes copy
            self.put(txn, "multi", k, np.ascontiguousarray(m), append=True)
            if exact is not None:
                self.put(txn, EXACT, k, np.ascontiguousarray(exact[i]), append=True)
            if texts is not None:
                self.put(txn, "text", k, texts[i].encode("utf-8"), append=True)
        self.put(txn, "docs", dkey, dump_json(doc))

    def put_document_record(self, txn, doc: dict) -> None:
        """Rewrite a document's record (e.g. its metadata); its pages stay as they are."""
        self.put(txn, "docs", doc_key(doc["doc_id"]), dump_json(doc))

    # -- field records (see jevsearch.store.fields) -------------------------------------------

    def has_table(self, name: str) -> bool:
        """Whether this process has a handle on the optional table ``name`` (see OPTIONAL_DB_NAMES)."""
        return self._db.get(name) is not None

    def put_fields(self, txn, first: int, record: dict) -> None:
        self.put(txn, "fields", page_key(first), dump_json(record))

    def delete_fields(self, txn, first: int) -> None:
        self.delete(txn, "fields", page_key(first))

    def iter_fields(self, txn, start: int = 0, damaged: list | None = None) -> Iterator[tuple[int, dict]]:
        """(first page id, field record) of documents whose first page id is >= ``start``, in id order.
        A record failing its digest raises ChecksumError, or, given a ``damaged`` list, is skipped and
        its first page id appended to it."""
        keys, raws = [], []
        sealed = self.checksums
        for k, v in self.items(txn, "fields", page_key(start), raw=True):  # parsed 4096 at a time as one
            if sealed:                                                      # JSON array: ~2x faster than
                if not checksum.intact("fields", k, v):                     # a loads each
                    if damaged is None:
                        raise self.checksum_error("fields", bytes(k))
                    damaged.append(PAGE_KEY.unpack(k)[0])
                    continue
                v = v[:-checksum.SIZE]
            keys.append(PAGE_KEY.unpack(k)[0])
            raws.append(bytes(v))
            if len(raws) == 4096:
                yield from zip(keys, json.loads(b"[" + b",".join(raws) + b"]"))
                keys, raws = [], []
        if raws:
            yield from zip(keys, json.loads(b"[" + b",".join(raws) + b"]"))

    def put_views(self, txn, first: int, views: list[visual.PageView]) -> None:
        """Write the visual records of a document's pages (ids ``first ...``) just put by put_document."""
        for i, v in enumerate(views):
            if v.rows * v.cols or v.thumbnail:  # an empty view is no record: the page reads as having none
                self.put(txn, visual.TABLE, page_key(first + i), v.encode(), append=True)

    def rekey_document(self, txn, doc: dict, new_id: str, metadata: dict) -> None:
        """Move a document's record to ``new_id`` and point its page records at it; the vectors and page
        ids stay as they are. The caller has removed any document at ``new_id``."""
        new_key = doc_key(new_id)
        for pid in range(doc["first"], doc["first"] + doc["pages"]):
            rec = self.page(txn, pid)  # ChecksumError when damaged: a rename never certifies damage
            if rec is None:
                raise CorruptIndexError(f"{self.index_dir}: {doc['doc_id']}: page id {pid} missing "
                                        "(hint: Index.verify(deep=True) lists what is damaged)")
            self.put(txn, "pages", page_key(pid), PAGE_REC.pack(new_key, rec[1], rec[2]))
        self.delete(txn, "docs", doc_key(doc["doc_id"]))
        self.put(txn, "docs", new_key, dump_json(dict(doc, doc_id=new_id, metadata=metadata)))

    def failures(self, txn) -> dict:
        """Files that failed to ingest: {path: {"sha256", "reason"}} (none recorded: {})."""
        raw = self.get(txn, "meta", b"failures")
        return {} if raw is None else load_json(raw)

    def put_failures(self, txn, failures: dict) -> None:
        self.put(txn, "meta", b"failures", dump_json(failures))

    def clear_tombstones(self, txn) -> None:
        txn.drop(self._db["tomb"], delete=False)

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
