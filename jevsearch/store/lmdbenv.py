"""The files of an index's LMDB store: ``CURRENT``, the ``store-<n>/`` directories, and opening
them safely.

``<index>/CURRENT`` names the live LMDB directory; compaction and rewrites write a new directory and
replace CURRENT atomically (:func:`write_atomic`). Opening a directory (:func:`open_env`) checks its
data file against LMDB's own page count before anything reads the map (a truncated file would kill
the process with SIGBUS), and every LMDB error becomes a named jevsearch error (:func:`lmdb_error`).
"""

from __future__ import annotations

import os

import lmdb

from jevsearch.errors import (
    CorruptIndexError,
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
_REFUSED_TEXT = ("No space left", "Permission denied", "Input/output error", "Read-only file system",
                 "Disk quota")


def lmdb_error(path: str, e: lmdb.Error) -> JevsearchError:
    """The named jevsearch error for an LMDB error on ``path`` (raise it ``from e``).

    Measured on damaged copies: a flipped meta page gives MDB_INVALID, EINVAL or ENOMEM (a garbage
    map size or root page), so only the errors that name the disk or the system are not damage.
    """
    if isinstance(e, lmdb.ReadonlyError):
        return ReadOnlyIndexError(f"{path}: the LMDB store is read-only here ({e}) "
                                  "(hint: open with readonly=True, or get write permission)")
    if isinstance(e, _REFUSED) or any(t in str(e) for t in _REFUSED_TEXT):
        return StorageError(f"{path}: LMDB failed ({type(e).__name__}: {e}) "
                            "(hint: check free disk space and permissions)")
    return CorruptIndexError(f"{path}: the LMDB file is damaged ({type(e).__name__}: {e}) "
                             "(hint: restore the index from a backup, or rebuild it from the sources)")


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
                f"valid LMDB file)", cli_hint=f"jevsearch verify --repair --index {index_dir}") from None
        raise NotAnIndexError(f"{index_dir}: not a jevsearch index (no {CURRENT} file) "
                              "(hint: create one with Engine.create)",
                              cli_hint=f"`jevsearch index FILES --index {index_dir}` creates one") from None
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
    try:
        # metasync=False: one fsync per commit instead of two (measured here: 17 -> 9 ms per 2 MB
        # document). LMDB stays consistent; an OS crash (not a process crash) may undo the last
        # commit. OS readahead stays on: a page's ~200 KB of multi-vectors are contiguous overflow
        # pages, read whole.
        env = lmdb.open(env_dir, map_size=MAP_SIZE, max_dbs=MAX_DBS, create=False, readonly=not writable,
                        lock=writable, max_readers=256, metasync=False)
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
