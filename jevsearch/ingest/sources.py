"""Finding the documents to ingest: PDFs (recursively in folders), images as 1-page documents, and
plain-text files (.txt, .md) split into passages (jevsearch.ingest.text).

Discovery never raises for one bad path: it returns what it found plus ``(path, reason)`` pairs for
what it could not use, so a batch goes on past a broken symlink or an unreadable folder.

>>> sources, failed = discover(["papers/", "scan.png"])            # doctest: +SKIP
>>> sources[0].path, sources[0].kind
('/home/me/papers/a.pdf', 'pdf')
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

log = logging.getLogger(__name__)

PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})
TEXT_SUFFIXES = frozenset({".txt", ".md"})
SUPPORTED = "PDF, png/jpg/jpeg/tiff/webp images, or .txt/.md text"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Source:
    """One input document: its absolute path (the document id in an index) and its kind."""

    path: str
    kind: str  # "pdf" | "image" | "text"


def kind_of(path: str) -> str | None:
    """``"pdf"``, ``"image"``, ``"text"`` or None, from the file name's suffix (case-insensitive)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def discover(paths: PathLike | Iterable[PathLike]) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand files and folders into sources, in a stable order.

    Folders are walked recursively (symlinked folders followed, loops cut, dot-files skipped); inside
    folders only supported suffixes count, other files are ignored. A path named explicitly that cannot
    be used (missing, broken link, unsupported type, not a regular file) is reported in the second list.
    The same file reached twice (symlink, hard link, repeated argument) is kept once.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources: list[Source] = []
    failed: list[tuple[str, str]] = []
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def add_file(path: str, st: os.stat_result, explicit: bool) -> None:
        kind = kind_of(path)
        if kind is None:
            if explicit:
                suffix = os.path.splitext(path)[1] or "(none)"
                failed.append((path, f"unsupported file type {suffix} (hint: {SUPPORTED})"))
            else:
                log.info("%s: skipped (not a PDF, image or text file)", path)
            return
        if not stat.S_ISREG(st.st_mode):
            failed.append((path, "not a regular file"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_files:
            log.debug("%s: same file as one already listed, skipped", path)
            return
        seen_files.add(key)
        sources.append(Source(path, kind))

    def walk(folder: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            log.info("%s: folder already visited (symlink loop or repeat), not entered again", folder)
            return
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            failed.append((folder, f"cannot list folder: {e.strerror or e}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            try:
                est = os.stat(path)  # follows symlinks
            except OSError as e:
                if kind_of(path) is not None:  # a broken link to a document is worth reporting
                    failed.append((path, os_reason(e)))
                continue
            if stat.S_ISDIR(est.st_mode):
                walk(path, est)
            else:
                add_file(path, est, explicit=False)

    for raw in paths:
        path = os.path.abspath(os.fspath(raw))
        try:
            st = os.stat(path)
        except OSError as e:
            failed.append((path, os_reason(e)))
            continue
        if stat.S_ISDIR(st.st_mode):
            walk(path, st)
        else:
            add_file(path, st, explicit=True)
    return sources, failed


def describe_folder(folder: str, limit: int = 3) -> str:
    """What a folder without documents holds, for the message that says nothing was found.

    >>> describe_folder("notes/")                                    # doctest: +SKIP
    'no PDF, image or text files in it (found 2 .csv, 1 .docx)'
    """
    counts: dict[str, int] = {}
    hidden = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                hidden += 1
            else:
                suffix = os.path.splitext(name)[1].lower() or "without suffix"
                counts[suffix] = counts.get(suffix, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    found = [f"{n} {suffix}" for suffix, n in ranked[:limit]]
    if rest := sum(n for _, n in ranked[limit:]):
        found.append(f"{rest} other")
    if hidden:
        found.append(f"{hidden} hidden (skipped)")
    return "empty folder" if not found else f"no PDF, image or text files in it (found {', '.join(found)})"


def file_status(path: str, sha256: str | None, size: int | None = None, mtime_ns: int | None = None) -> str:
    """Whether a document's file still holds what was indexed: "present", "changed" or "missing".

    Cheap first: the same size and modification time as recorded at add means "present" without
    reading the file (as make and git do); otherwise the content's SHA-256 decides.
    """
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    if size is not None and st.st_size != size:
        return "changed"
    if size is not None and mtime_ns is not None and st.st_mtime_ns == mtime_ns:
        return "present"
    try:
        return "present" if file_sha256(path) == sha256 else "changed"
    except OSError:
        return "missing"


def os_reason(e: OSError) -> str:
    """A short lower-case reason for an OSError, for ``(path, reason)`` reports."""
    if isinstance(e, FileNotFoundError) and e.filename and os.path.islink(e.filename):
        return "broken symbolic link"
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e)


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks (never the whole file in memory).

    A file up to one chunk is read in one call: reruns hash every file, and for thousands of small
    ones a fresh 1 MiB buffer per file cost more than the hashing (benchmarks/RESULTS.md).
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= chunk_bytes:
            return hashlib.sha256(f.read()).hexdigest()
        h = hashlib.sha256()
        buf = bytearray(chunk_bytes)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
