"""The LMDB part of an index: the truth every other part can be rebuilt from.

One LMDB environment (``<index>/store-<n>/``, named by the file ``<index>/CURRENT``; n grows with
each compaction) with these named databases::

    meta    b"manifest" -> JSON (format version, dims, dtypes, HNSW parameters, model identity)
            b"state"    -> JSON (next page id, generation, epoch, counters)
            b"failures" -> JSON {path: {sha256, reason}}: files ingest could not read (may be absent)
    docs    blake2b-128(doc_id) -> JSON {doc_id, first, pages, tokens, metadata, text}
    pages   u64be page id -> PAGE_REC (doc key, 1-based page number, token count)
    single  u64be page id -> float32 [D]          full single vector (HNSW can be rebuilt from it)
    multi   u64be page id -> multi_dtype [T, dm]  per-token multi-vectors, T from the page record
    text    u64be page id -> UTF-8 page text      (only when the caller gave texts)
    tomb    u64be page id -> b""                  deleted pages still present in the HNSW file
    visual  u64be page id -> grid layout + thumbnail (optional table: jevsearch.store.visual)
    fields  u64be first page id -> JSON           a document's filterable fields (jevsearch.store.fields);
                                                  optional: indexes made before it lack it until a writer
                                                  opens them (state["fields"] says it is complete)

A document and all its pages are written in one write transaction, so readers (other processes
included) see all of it or nothing, and a crash loses at most the document being written. Page ids
come from a monotonic counter and a document's pages get consecutive ids, so "pages added since X"
is a cursor range. Values are raw little-endian arrays and JSON: nothing here can run code.

LMDB is used only inside ``with store.read() as txn`` / ``with store.write() as txn`` blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
from contextlib import contextmanager
from typing import Iterator

import lmdb
import numpy as np

from jevsearch.errors import CorruptIndexError, NotAnIndexError
from jevsearch.store import visual

CURRENT = "CURRENT"  # names the live LMDB directory; replaced atomically by compact()
ENV_PREFIX = "store-"  # <index>/store-<n>/{data.mdb, lock.mdb}
DATA_FILE = "data.mdb"
# Virtual address space only: LMDB on Linux grows the file as it fills, and a fixed large map means
# readers in other processes never hit MDB_MAP_RESIZED while a writer grows the store.
MAP_SIZE = 1 << 40
DB_NAMES = ("meta", "docs", "pages", "single", "multi", "text", "tomb")
# Tables added after format version 1: an index without them still opens (its handle is None
# until a writer creates the table; readers treat the table as empty).
OPTIONAL_DB_NAMES = (visual.TABLE, "fields")

PAGE_KEY = struct.Struct(">Q")  # big-endian so LMDB key order == page id order
PAGE_REC = struct.Struct("<16sII")  # doc key, page number (1-based), token count


def doc_key(doc_id: str) -> bytes:
    """Fixed-size LMDB key of a document (doc ids are paths and may exceed LMDB's 511-byte keys)."""
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).digest()


def page_key(page_id: int) -> bytes:
    return PAGE_KEY.pack(page_id)


def page_numbers(doc: dict) -> list[int]:
    """The 1-based page numbers of a document record's pages (in page id order)."""
    return doc.get("page_numbers") or list(range(1, doc["pages"] + 1))


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _loads(buf) -> dict:
    return json.loads(bytes(buf))


def write_atomic(path: str, *chunks) -> None:
    """Replace ``path`` with the concatenated ``chunks`` (bytes-like): temp file, fsync, ``os.replace``,
    fsync of the directory. A crash leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_env(index_dir: str) -> tuple[str, int]:
    """(live LMDB directory, inode of CURRENT) of an index; NotAnIndexError if there is none."""
    path = os.path.join(index_dir, CURRENT)
    try:
        with open(path, "rb") as f:
            name = f.read(64).decode("ascii", "replace").strip()
            ino = os.fstat(f.fileno()).st_ino
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise NotAnIndexError(f"{index_dir}: not a jevsearch index (no {CURRENT} file) "
                              "(hint: create one with Engine.create)",
                              cli_hint=f"`jevsearch index FILES --index {index_dir}` creates one") from None
    env_dir = os.path.join(index_dir, name)
    if not name.startswith(ENV_PREFIX) or "/" in name or not os.path.isfile(os.path.join(env_dir, DATA_FILE)):
        raise NotAnIndexError(f"{index_dir}: {CURRENT} names no LMDB store ({name!r}) "
                              "(hint: this is not a jevsearch index)")
    return env_dir, ino


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
                # metasync=False: one fsync per commit instead of two (measured here: 17 -> 9 ms per
                # 2 MB document). LMDB stays consistent; an OS crash (not a process crash) may undo
                # the last commit. OS readahead stays on: a page's ~200 KB of multi-vectors are
                # contiguous overflow pages, read whole.
                env = lmdb.open(real, map_size=MAP_SIZE, max_dbs=len(DB_NAMES) + len(OPTIONAL_DB_NAMES),
                                create=False, readonly=not os.access(real, os.W_OK), max_readers=256,
                                metasync=False)
                try:
                    entry = [env, self._open_dbs(env, real), 0]
                except BaseException:
                    env.close()
                    raise
                self._envs[real] = entry
            entry[2] += 1
            return entry[0], entry[1]

    @staticmethod
    def _open_dbs(env: lmdb.Environment, env_dir: str) -> dict:
        with env.begin() as txn:
            missing = [n for n in DB_NAMES if txn.get(n.encode()) is None]
        if missing:
            raise NotAnIndexError(f"{env_dir}: LMDB has no {', '.join(missing)} tables "
                                  "(hint: this is not a jevsearch index)")
        # py-lmdb opens named tables in a short write transaction of its own (a read transaction's
        # handles die with it), so this can wait a moment for another process's commit.
        dbs = {n: env.open_db(n.encode(), create=False) for n in DB_NAMES}
        with env.begin() as txn:
            present = [n for n in OPTIONAL_DB_NAMES if txn.get(n.encode()) is not None]
        dbs.update({n: env.open_db(n.encode(), create=False) if n in present else None for n in OPTIONAL_DB_NAMES})
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
    """Typed access to the LMDB environment of one index (see the module docstring for the layout)."""

    def __init__(self, index_dir: str):
        self.index_dir = index_dir
        self.env = None
        self._open()

    def _open(self) -> None:
        for _ in range(5):
            before = current_env(self.index_dir)[1]
            try:
                env_dir, ino = current_env(self.index_dir)
                self.env, self._db = _REGISTRY.acquire(env_dir)
            except (lmdb.Error, OSError, NotAnIndexError):
                # A compaction in another process may have swapped stores and deleted the old one
                # between reading CURRENT and opening it: follow CURRENT again.
                if current_env(self.index_dir)[1] != before:
                    continue
                raise
            self.env_dir, self._current_ino = env_dir, ino
            return
        raise CorruptIndexError(f"{self.index_dir}: {CURRENT} keeps changing (hint: retry; is a compaction looping?)")

    @staticmethod
    def initialise(index_dir: str, manifest: dict, state: dict) -> None:
        """Create the environment and its tables under ``index_dir`` (a fresh, private directory)."""
        env_dir = os.path.join(index_dir, ENV_PREFIX + "0")
        os.makedirs(env_dir)
        env = lmdb.open(env_dir, map_size=MAP_SIZE, max_dbs=len(DB_NAMES) + len(OPTIONAL_DB_NAMES))
        try:
            dbs = {n: env.open_db(n.encode()) for n in DB_NAMES + OPTIONAL_DB_NAMES}
            with env.begin(write=True) as txn:
                txn.put(b"manifest", _dumps(manifest), db=dbs["meta"])
                txn.put(b"state", _dumps(state), db=dbs["meta"])
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
        with self.env.begin(buffers=True) as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction: committed (and fsynced by LMDB) on success, aborted on any error."""
        with self.env.begin(write=True, buffers=True) as txn:
            yield txn

    # -- small records --------------------------------------------------------------------------

    def manifest(self, txn) -> dict:
        raw = txn.get(b"manifest", db=self._db["meta"])
        if raw is None:
            raise NotAnIndexError(f"{self.env_dir}: no manifest (hint: this is not a jevsearch index)")
        return _loads(raw)

    def put_manifest(self, txn, manifest: dict) -> None:
        txn.put(b"manifest", _dumps(manifest), db=self._db["meta"])

    def state(self, txn) -> dict:
        raw = txn.get(b"state", db=self._db["meta"])
        if raw is None:
            raise CorruptIndexError(f"{self.env_dir}: no state record (hint: restore the index)")
        return _loads(raw)

    def put_state(self, txn, state: dict) -> None:
        txn.put(b"state", _dumps(state), db=self._db["meta"])

    def document(self, txn, doc_id: str) -> dict | None:
        raw = txn.get(doc_key(doc_id), db=self._db["docs"])
        return None if raw is None else _loads(raw)

    def document_by_key(self, txn, key: bytes) -> dict | None:
        raw = txn.get(key, db=self._db["docs"])
        return None if raw is None else _loads(raw)

    def iter_documents(self, txn) -> Iterator[dict]:
        for _, raw in txn.cursor(db=self._db["docs"]):
            yield _loads(raw)

    def page(self, txn, page_id: int) -> tuple[bytes, int, int] | None:
        """(doc key, 1-based page number, token count) of a live page, None if absent."""
        raw = txn.get(page_key(page_id), db=self._db["pages"])
        return None if raw is None else PAGE_REC.unpack(raw)

    def text(self, txn, page_id: int) -> str | None:
        raw = txn.get(page_key(page_id), db=self._db["text"])
        return None if raw is None else bytes(raw).decode("utf-8")

    def multi_raw(self, txn, page_id: int):
        """Zero-copy view of a page's multi-vector bytes (valid inside ``txn`` only)."""
        return txn.get(page_key(page_id), db=self._db["multi"])

    def single_raw(self, txn, page_id: int):
        return txn.get(page_key(page_id), db=self._db["single"])

    def iter_pages(self, txn, start: int = 0) -> Iterator[tuple[int, bytes, int, int]]:
        """Live pages with id >= ``start`` in id order: (page id, doc key, page number, tokens)."""
        cur = txn.cursor(db=self._db["pages"])
        if not cur.set_range(page_key(start)):
            return
        for k, v in cur:
            key, no, tokens = PAGE_REC.unpack(v)
            yield PAGE_KEY.unpack(k)[0], key, no, tokens

    def view(self, txn, page_id: int) -> visual.PageView | None:
        """The page's visual record (grid layout, thumbnail), None if it has none."""
        db = self._db[visual.TABLE]
        raw = None if db is None else txn.get(page_key(page_id), db=db)
        return None if raw is None else visual.PageView.decode(raw)

    def iter_keys(self, txn, table: str) -> Iterator[int]:
        if self._db[table] is None:  # an optional table this index does not have
            return
        for k in txn.cursor(db=self._db[table]).iternext(keys=True, values=False):
            yield PAGE_KEY.unpack(k)[0]

    def iter_lengths(self, txn, table: str) -> Iterator[tuple[int, int]]:
        for k, v in txn.cursor(db=self._db[table]):
            yield PAGE_KEY.unpack(k)[0], len(v)

    def tombstones(self, txn) -> np.ndarray:
        return np.fromiter(self.iter_keys(txn, "tomb"), dtype=np.int64)

    # -- writes (caller holds the writer lock and a write transaction) --------------------------

    def remove_document(self, txn, doc: dict) -> list[int]:
        """Delete a document's record and pages; their ids become tombstones. Returns the ids."""
        ids = list(range(doc["first"], doc["first"] + doc["pages"]))
        for pid in ids:
            k = page_key(pid)
            for table in ("pages", "single", "multi", "text", visual.TABLE):
                if self._db[table] is not None:
                    txn.delete(k, db=self._db[table])
            txn.put(k, b"", db=self._db["tomb"])
        txn.delete(doc_key(doc["doc_id"]), db=self._db["docs"])
        return ids

    def put_document(self, txn, doc: dict, singles: np.ndarray, multis: list[np.ndarray],
                     texts: list[str] | None) -> None:
        """Write one document whose pages get ids ``doc["first"] ...`` (all above existing ids); their
        page numbers are ``doc["page_numbers"]`` when the document has one (pages left out), else 1..P."""
        dkey = doc_key(doc["doc_id"])
        numbers = page_numbers(doc)
        pages, single, multi, text = (self._db[n] for n in ("pages", "single", "multi", "text"))
        for i, m in enumerate(multis):
            k = page_key(doc["first"] + i)
            # append=True: ids only grow, so each put lands at the B-tree's right edge.
            txn.put(k, PAGE_REC.pack(dkey, numbers[i], m.shape[0]), db=pages, append=True)
            txn.put(k, np.ascontiguousarray(singles[i]), db=single, append=True)  # a buffer: no bytes copy
            txn.put(k, np.ascontiguousarray(m), db=multi, append=True)
            if texts is not None:
                txn.put(k, texts[i].encode("utf-8"), db=text, append=True)
        txn.put(dkey, _dumps(doc), db=self._db["docs"])

    def put_document_record(self, txn, doc: dict) -> None:
        """Rewrite a document's record (e.g. its metadata); its pages stay as they are."""
        txn.put(doc_key(doc["doc_id"]), _dumps(doc), db=self._db["docs"])

    # -- field records (see jevsearch.store.fields) -------------------------------------------

    def has_table(self, name: str) -> bool:
        """Whether this process has a handle on the optional table ``name`` (see OPTIONAL_DB_NAMES)."""
        return self._db.get(name) is not None

    def put_fields(self, txn, first: int, record: dict) -> None:
        txn.put(page_key(first), _dumps(record), db=self._db["fields"])

    def delete_fields(self, txn, first: int) -> None:
        txn.delete(page_key(first), db=self._db["fields"])

    def iter_fields(self, txn, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(first page id, field record) of documents whose first page id is >= ``start``, in id order."""
        cur = txn.cursor(db=self._db["fields"])
        if not cur.set_range(page_key(start)):
            return
        keys, raws = [], []
        for k, v in cur:  # parsed 4096 at a time as one JSON array: ~2x faster than one loads each
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
                txn.put(page_key(first + i), v.encode(), db=self._db[visual.TABLE], append=True)

    def rekey_document(self, txn, doc: dict, new_id: str, metadata: dict) -> None:
        """Move a document's record to ``new_id`` and point its page records at it; the vectors and page
        ids stay as they are. The caller has removed any document at ``new_id``."""
        new_key = doc_key(new_id)
        for pid in range(doc["first"], doc["first"] + doc["pages"]):
            k = page_key(pid)
            _, no, tokens = PAGE_REC.unpack(txn.get(k, db=self._db["pages"]))
            txn.put(k, PAGE_REC.pack(new_key, no, tokens), db=self._db["pages"])
        txn.delete(doc_key(doc["doc_id"]), db=self._db["docs"])
        txn.put(new_key, _dumps(dict(doc, doc_id=new_id, metadata=metadata)), db=self._db["docs"])

    def failures(self, txn) -> dict:
        """Files that failed to ingest: {path: {"sha256", "reason"}} (none recorded: {})."""
        raw = txn.get(b"failures", db=self._db["meta"])
        return {} if raw is None else _loads(raw)

    def put_failures(self, txn, failures: dict) -> None:
        txn.put(b"failures", _dumps(failures), db=self._db["meta"])

    def clear_tombstones(self, txn) -> None:
        txn.drop(self._db["tomb"], delete=False)

    # -- disk ---------------------------------------------------------------------------------

    def table_bytes(self) -> dict[str, int]:
        """Bytes of LMDB pages used by each table (B-tree + overflow pages)."""
        out = {}
        with self.env.begin() as txn:
            for name, db in self._db.items():
                if db is None:
                    continue
                st = txn.stat(db)
                out[name] = st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])
        return out

    def file_bytes(self) -> int:
        return os.stat(os.path.join(self.env_dir, DATA_FILE)).st_size

    def compact_file(self) -> None:
        """Copy the store without its free pages into a new LMDB directory and make it current.

        The copy gets its own lock file: LMDB's lock file records the last transaction id, so a data
        file must never be swapped under a live one. CURRENT is replaced atomically; readers in other
        processes switch at their next call (:meth:`reopen_if_replaced`) and the old directory is
        deleted (open handles keep its files alive until they close). Writer lock required.
        """
        n = int(os.path.basename(self.env_dir)[len(ENV_PREFIX):]) + 1
        new_dir = os.path.join(self.index_dir, f"{ENV_PREFIX}{n}")
        shutil.rmtree(new_dir, ignore_errors=True)
        os.makedirs(new_dir)
        self.env.copy(new_dir, compact=True)
        with open(os.path.join(new_dir, DATA_FILE), "rb") as f:
            os.fsync(f.fileno())
        fsync_dir(new_dir)
        old_dir = self.env_dir
        write_atomic(os.path.join(self.index_dir, CURRENT), f"{ENV_PREFIX}{n}\n".encode())
        self.reopen_if_replaced()
        shutil.rmtree(old_dir, ignore_errors=True)
