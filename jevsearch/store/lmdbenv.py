"""The files of an index's LMDB store: ``CURRENT``, the ``store-<n>/`` directories, and opening
them safely.

``<index>/CURRENT`` names the live LMDB directory; compaction and rewrites write a new directory and
replace CURRENT atomically (:func:`write_atomic`). Opening a directory (:func:`open_env`) checks its
data file against LMDB's own page count before anything reads the map (a truncated file would kill
the process with SIGBUS), and every LMDB error becomes a named jevsearch error (:func:`lmdb_error`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import lmdb

from jevsearch.errors import (
    CorruptIndexError,
    DiskFullError,
    JevsearchError,
    NotAnIndexError,
    ReadOnlyIndexError,
    StorageError,
)

CURRENT = "CURRENT"  # names the live LMDB directory; replaced atomically by compact()
ENV_PREFIX = "store-"  # <index>/store-<n>/{data.mdb, lock.mdb}
DATA_FILE = "data.mdb"
# Virtual address space only: LMDB on Linux grows the file as it fills, and a fixed large map means
# readers in other processes never hit MDB_MAP_RESIZED while a writer grows the store.
MAP_SIZE = 1 << 40
MAX_DBS = 32  # room for tables a rewrite adds (see jevsearch.store.rewrite)
# lmdb errors that mean the disk or the system refused (anything else LMDB reports is damage).
_REFUSED = (lmdb.MapFullError, lmdb.DiskError, lmdb.ReadersFullError, lmdb.TlsFullError, lmdb.LockError)
_REFUSED_TEXT = ("Permission denied", "Input/output error", "Read-only file system")
_FULL_TEXT = ("No space left", "Disk quota", "File too large")
_NEARLY_FULL = 1 << 20  # an LMDB I/O error with less free than this (a page, a B-tree split) is a full disk


def lmdb_error(path: str, e: lmdb.Error) -> JevsearchError:
    """The named jevsearch error for an LMDB error on ``path`` (raise it ``from e``).

    Measured on damaged copies: a flipped meta page gives MDB_INVALID, EINVAL or ENOMEM (a garbage
    map size or root page), so only the errors that name the disk or the system are not damage.
    """
    if "already open in this process" in str(e):  # py-lmdb refuses a second handle, e.g. via another path
        return StorageError(f"{path}: this LMDB store is already open in this process (under another path, or "
                            "by other code) (hint: open each index once per process and share that Engine)")
    if isinstance(e, lmdb.MemoryError):  # a garbage map size or root page in the header, not a lack of RAM
        return CorruptIndexError(f"{path}: the LMDB file's header is damaged (LMDB asks for an impossible memory "
                                 f"map: {e}) (hint: restore the index from a backup, or rebuild it from the sources)")
    if isinstance(e, lmdb.ReadonlyError):
        return ReadOnlyIndexError(f"{path}: the LMDB store is read-only here ({e}) "
                                  "(hint: open with readonly=True, or get write permission)")
    if isinstance(e, lmdb.MapFullError) or any(t in str(e) for t in _FULL_TEXT) or (
            "Input/output error" in str(e) and _no_room(path)):  # LMDB's EIO when a write found no room
        return disk_full(path)
    if isinstance(e, _REFUSED) or any(t in str(e) for t in _REFUSED_TEXT):
        return StorageError(f"{path}: LMDB failed ({type(e).__name__}: {e}) "
                            "(hint: check free disk space and permissions)")
    return CorruptIndexError(f"{path}: the LMDB file is damaged ({type(e).__name__}: {e}) "
                             "(hint: restore the index from a backup, or rebuild it from the sources)")


def disk_full(path: str) -> DiskFullError:
    """The error for a write of the index at ``path`` refused for lack of space."""
    limit = _file_limit()
    room = f"{free_bytes(path) // 1024} KiB free on its disk" + (f", files limited to {limit} bytes" if limit else "")
    return DiskFullError(f"{path}: no space left for the index ({room}) "
                         "(hint: free disk space, or Index.compact() to shrink the index; then retry)")


def _no_room(path: str) -> bool:
    """Whether the disk holding ``path`` is (nearly) full, or its data file reached the process's file
    size limit (RLIMIT_FSIZE): what an LMDB I/O error at commit then means."""
    limit = _file_limit()
    data = path if os.path.basename(path) == DATA_FILE else os.path.join(path, DATA_FILE)
    try:
        at_limit = limit is not None and os.path.getsize(data) + _NEARLY_FULL >= limit
    except OSError:
        at_limit = False
    return at_limit or free_bytes(path) < _NEARLY_FULL


def _file_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not a POSIX system: no such limit
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def os_error(path: str, e: OSError) -> StorageError:
    """The named error for an OSError writing the index at ``path`` (raise it ``from e``)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return disk_full(path)
    return StorageError(f"{path}: cannot write ({e.strerror or e}) (hint: check free disk space and permissions)")


def free_bytes(path: str) -> int:
    """Bytes free for this user on the file system holding ``path`` (or its nearest existing parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return 1 << 62  # unknown: never taken for a full disk
    return st.f_bavail * st.f_frsize


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
        stores = store_dirs(index_dir)
        if stores:
            raise CorruptIndexError(
                f"{index_dir}: the {CURRENT} file is missing though {', '.join(stores)}/ is there "
                f"(hint: Index.open(path, repair=True) restores it when one store directory holds a "
                f"valid LMDB file)", path=index_dir, repairable=True) from None
        raise NotAnIndexError(f"{index_dir}: not a jevsearch index (no {CURRENT} file) "
                              "(hint: create one with Engine.create)", path=index_dir, empty=True) from None
    env_dir = os.path.join(index_dir, name)
    if not name.startswith(ENV_PREFIX) or "/" in name or not os.path.isfile(os.path.join(env_dir, DATA_FILE)):
        raise NotAnIndexError(f"{index_dir}: {CURRENT} names no LMDB store ({name!r}) "
                              "(hint: this is not a jevsearch index)")
    return env_dir, ino


def store_dirs(index_dir: str) -> list[str]:
    """Names of the LMDB directories (``store-<n>``, holding a data file) in ``index_dir``, by n."""
    try:
        names = os.listdir(index_dir)
    except OSError:
        return []
    found = [n for n in names if n.startswith(ENV_PREFIX) and n[len(ENV_PREFIX):].isdigit()
             and os.path.isfile(os.path.join(index_dir, n, DATA_FILE))]
    return sorted(found, key=lambda n: int(n[len(ENV_PREFIX):]))


def restore_current(index_dir: str) -> str:
    """Write a lost CURRENT file naming the one store directory whose LMDB file is whole and holds a
    manifest; CorruptIndexError when none or several do. Returns the name. Writer lock required.

    A rewrite writes its manifest last, so a copy a crash interrupted never counts as whole.
    """
    whole = []
    for name in store_dirs(index_dir):
        try:
            env = open_env(os.path.join(index_dir, name), writable=False)
        except JevsearchError:
            continue
        try:
            with env.begin() as txn:
                meta = env.open_db(b"meta", txn=txn, create=False)
                if txn.get(b"manifest", db=meta) is not None:
                    whole.append(name)
        except lmdb.Error:
            pass
        finally:
            env.close()
    if len(whole) != 1:
        raise CorruptIndexError(f"{index_dir}: cannot restore {CURRENT}: {len(whole)} store directories hold a "
                                f"whole LMDB file ({', '.join(whole) or 'none'}) (hint: write the live one's "
                                f"name into {CURRENT}, or restore the index from a backup)")
    write_atomic(os.path.join(index_dir, CURRENT), f"{whole[0]}\n".encode())
    return whole[0]


def open_env(env_dir: str, writable: bool) -> lmdb.Environment:
    """Open an LMDB directory and check its data file is whole, before anything reads the map.

    A data file shorter than LMDB's own page count (a truncated copy) would kill the process with
    SIGBUS at the first read of a missing page: it is refused here with CorruptIndexError. Every
    LMDB error becomes a named jevsearch error. ``writable=False`` opens without the lock file
    (lock=False): a user who may read an index but not write it (or a read-only mount) can still
    search it; readers then get no protection from a writer's freed pages, which only a user with
    write access could be running.
    """
    data = os.path.join(env_dir, DATA_FILE)
    if os.path.isfile(data) and os.path.getsize(data) == 0:  # LMDB would write a new empty store into it
        raise CorruptIndexError(f"{data}: empty (0 bytes): the index's data was lost, e.g. by a full disk or an "
                                "interrupted copy (hint: restore the index from a backup, or rebuild it from the "
                                "sources)")
    try:
        # metasync=False: one fsync per commit instead of two (about half the commit time). LMDB
        # stays consistent; an OS crash (not a process crash) may undo the last
        # commit. readahead=False: the map is advised MADV_RANDOM, where scans can undo it (see scanning()).
        env = lmdb.open(env_dir, map_size=MAP_SIZE, max_dbs=MAX_DBS, create=False, readonly=not writable,
                        lock=writable, max_readers=256, metasync=False, readahead=not _ADVISABLE)
    except lmdb.Error as e:
        raise lmdb_error(data, e) from e
    try:
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.stat(data).st_size
    except (lmdb.Error, OSError) as e:
        env.close()
        raise CorruptIndexError(f"{data}: cannot read ({e}) (hint: restore the index from a backup)") from e
    if size < need:
        env.close()
        raise CorruptIndexError(f"{data}: truncated: {size} bytes but its LMDB pages need {need} "
                                "(hint: the file was cut short by a copy or a full disk; restore the index "
                                "from a backup, or rebuild it from the sources)")
    return env


def writable(env_dir: str) -> bool:
    lock = os.path.join(env_dir, "lock.mdb")
    return os.access(env_dir, os.W_OK) and (not os.path.exists(lock) or os.access(lock, os.W_OK))


# -- OS paging advice ---------------------------------------------------------------------------
#
# A search reads ~100 scattered values. py-lmdb's get() touches each 4 KB page of a value in turn
# (with the GIL released), so on a cold cache every page is one fault, and with the kernel's
# read-around each fault reads a read_ahead_kb window around it (megabytes), so a cold query reads
# many times the bytes of its values. Maps are therefore opened MADV_RANDOM (fault = the page), and
# scans in key order (exhaustive search, verify, compact, HNSW rebuilds), which read-around speeds up
# several times, switch the map to MADV_NORMAL while any of them runs (scanning()). Figures:
# benchmarks/RESULTS.md.

# Where the map's address cannot be found (no /proc: not Linux) or advised, maps keep the OS default.
_ADVISABLE = hasattr(mmap, "MADV_RANDOM") and os.path.exists("/proc/self/maps")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if _ADVISABLE else None
if _libc is not None:
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_scans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # env -> scans running in this process
_spans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # env -> its map's (start, length)s
_scans_lock = threading.Lock()


def _map_spans(env: lmdb.Environment) -> list[tuple[int, int]]:
    """(start, length) of ``env``'s map in this process, read once per environment: LMDB maps a fixed
    size at open and never moves it, and reading /proc/self/maps is slow in a process with torch.
    env.info()["map_addr"] is 0 unless the map is fixed, hence /proc (Linux; elsewhere no advice)."""
    path = env.path()  # lmdb.Error once closed: a closed environment's cached spans are not its map
    spans = _spans.get(env)
    if spans is None:
        data = os.path.realpath(os.path.join(path, DATA_FILE))
        with open("/proc/self/maps") as f:
            ranges = [line.split(None, 1)[0] for line in f if line.rstrip("\n").endswith(" " + data)]
        spans = [(int(a, 16), int(b, 16) - int(a, 16)) for a, b in (r.split("-") for r in ranges)]
        if spans:
            _spans[env] = spans
    return spans


def _advise(env: lmdb.Environment, advice: int) -> None:
    """madvise ``env``'s map; advice only: where it cannot be found or fails, no result changes."""
    if _libc is None:
        return
    try:
        spans = _map_spans(env)
    except (lmdb.Error, OSError):  # closed meanwhile, or no /proc
        return
    for start, length in spans:
        _libc.madvise(start, length, advice)


@contextmanager
def scanning(env: lmdb.Environment):
    """Reads in key order over much of ``env`` run inside the block: OS read-around on for its map
    while any such block runs in this process, MADV_RANDOM again after the last (see above).

    >>> with scanning(env):                  # doctest: +SKIP
    ...     for key, value in txn.cursor(): ...
    """
    with _scans_lock:
        running = _scans.get(env, 0)
        _scans[env] = running + 1
        if not running:
            _advise(env, mmap.MADV_NORMAL)
    try:
        yield
    finally:
        with _scans_lock:
            running = _scans.pop(env) - 1
            if running:
                _scans[env] = running
            else:
                _advise(env, mmap.MADV_RANDOM)


# -- reading ahead of a search ------------------------------------------------------------------
#
# Even MADV_RANDOM, a cold search waits on one fault at a time: py-lmdb's get() touches a value's
# pages in order, and the search gets its values in turn (100 candidates x 4 pages of binary codes,
# 20 x 48 pages of exact tokens: ~1,400 reads, each an SSD round trip). prefetch() has threads
# get the same values in their own read transactions so the faults run in parallel (the GIL is
# released while py-lmdb touches the pages); the search's own get() then finds them cached. A warm
# search never starts it (see Index._fetch).

PREFETCH_THREADS = 16  # reads in flight: SSDs serve many at once, and the threads mostly wait
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class Prefetch:
    """Values being read by background threads (:func:`prefetch`); :meth:`wait` before ``env`` may
    close."""

    def __init__(self, futures: list):
        self._futures = futures

    def wait(self) -> None:
        for f in self._futures:
            f.exception()  # advice only: an error (a closed or replaced store) changes no result


def prefetch(env: lmdb.Environment, items: list[tuple]) -> Prefetch:
    """Start reading ``items`` ((database handle, key) pairs, in the order they will be needed)
    in background threads, each thread in its own read transaction.

    >>> ahead = prefetch(env, [(db, key) for key in keys])   # doctest: +SKIP
    >>> ...; ahead.wait()
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="jevsearch-prefetch")
    threads = min(PREFETCH_THREADS, len(items))
    return Prefetch([_pool.submit(_read, env, items[t::threads]) for t in range(threads)])


def _read(env: lmdb.Environment, items: list[tuple]) -> None:
    with env.begin(buffers=True) as txn:
        for db, key in items:
            txn.get(key, db=db)  # touches the value's pages
