"""The single-writer lock of an index: an exclusive ``flock`` on ``<index>/writer.lock``.

``flock`` locks belong to the open file description, so a second writer is refused whether it is in
another process or in this one, and the kernel drops the lock when the holder dies (kill -9
included): no stale lock files to clean up. Readers never take it.
"""

from __future__ import annotations

import fcntl
import os

from jevsearch.errors import IndexLockedError, ReadOnlyIndexError

FILE_NAME = "writer.lock"


class WriterLock:
    """Held from construction until :meth:`release`; raises IndexLockedError if another writer holds it."""

    def __init__(self, index_dir: str):
        path = os.path.join(index_dir, FILE_NAME)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the other files
        except PermissionError as e:
            raise ReadOnlyIndexError(f"{index_dir}: cannot write here ({e.strerror}), so cannot open it to write "
                                     "(hint: open it with readonly=True to search it)", cannot_write=True) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise IndexLockedError(f"{index_dir}: another writer holds the index (pid {holder}) "
                                   "(hint: close it first, or open with readonly=True)", holder=holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
