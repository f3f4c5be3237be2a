"""The exceptions jevsearch raises.

Every error is a :class:`JevsearchError`; the subclasses name what went wrong so callers can
catch precisely. Messages read ``what: why (hint: what to change)``.

>>> try:
...     raise InvalidInputError("singles: shape (3, 64) but 4 pages (hint: one vector per page)")
... except ValueError as e:
...     print(e)
singles: shape (3, 64) but 4 pages (hint: one vector per page)
"""

from __future__ import annotations


class JevsearchError(Exception):
    """Base class of every error raised by jevsearch.

    Fields: ``message`` (what went wrong), ``hint`` (what to do, said in Python) and ``cli_hint`` (what
    to do, said as ``jevsearch`` commands, where the Python hint would mislead a command-line user).
    ``str(e)`` is ``"message (hint: hint)"``; a message written in that form is split into the fields.

    >>> e = JevsearchError("idx: not an index", hint="Engine.create it", cli_hint="jevsearch index FILES --index idx")
    >>> e.message, e.hint, str(e)
    ('idx: not an index', 'Engine.create it', 'idx: not an index (hint: Engine.create it)')
    >>> e.cli_message()
    'idx: not an index (hint: jevsearch index FILES --index idx)'
    >>> JevsearchError("a.pdf: damaged (hint: re-export it)").hint
    're-export it'
    """

    def __init__(self, message: str = "", *args, hint: str | None = None, cli_hint: str | None = None):
        message = str(message)
        if hint is None:
            message, hint = split_hint(message)
        super().__init__(message if hint is None else f"{message} (hint: {hint})", *args)
        self.message, self.hint, self.cli_hint = message, hint, cli_hint

    def cli_message(self) -> str:
        """The message for a command-line user: the CLI hint in place of the Python one when there is one."""
        hint = self.cli_hint or self.hint
        return self.message if hint is None else f"{self.message} (hint: {hint})"


def split_hint(text: str) -> tuple[str, str | None]:
    """``("what", "hint")`` of a message written as ``"what (hint: hint)"``; ``(text, None)`` otherwise.

    >>> split_hint("x: bad (hint: fix it)")
    ('x: bad', 'fix it')
    """
    cut = text.rfind(" (hint: ")
    if cut < 0 or not text.endswith(")"):
        return text, None
    return text[:cut], text[cut + 8:-1]


class InvalidInputError(JevsearchError, ValueError):
    """A caller passed something unusable (wrong shape, NaN, unknown task, ...). Nothing was written."""


class IndexExistsError(JevsearchError, FileExistsError):
    """Creating an index where a non-empty directory already is."""


class NotAnIndexError(JevsearchError, ValueError):
    """Opening a path that holds no jevsearch index. ``path``: that path (None where not known);
    ``empty``: nothing of an index is there, so one can be created at ``path``."""

    def __init__(self, message: str = "", *args, path: str | None = None, empty: bool = False, **hints):
        super().__init__(message, *args, **hints)
        self.path, self.empty = path, empty


class FormatVersionError(JevsearchError, ValueError):
    """The index was written by a newer (or unknown) on-disk format version."""


class IndexLockedError(JevsearchError):
    """Another writer holds the index (``holder``: its process id as it wrote it, where known)."""

    def __init__(self, message: str = "", *args, holder: str | None = None, **hints):
        super().__init__(message, *args, **hints)
        self.holder = holder


class ReadOnlyIndexError(JevsearchError):
    """A write was attempted on an index opened with ``readonly=True``, or (``cannot_write``) on one
    whose folder this process may not write to."""

    def __init__(self, message: str = "", *args, cannot_write: bool = False, **hints):
        super().__init__(message, *args, **hints)
        self.cannot_write = cannot_write


class CorruptIndexError(JevsearchError):
    """The index on disk is damaged beyond what open-time repair can fix.

    Fields for whoever advises the user (the CLI turns them into commands): ``path``, the index;
    ``repairable``, whether a repair (``verify(repair=True)``) fixes some of it; ``redo_documents``,
    the documents whose damaged pages only deleting and re-adding them restores.

    >>> e = CorruptIndexError("idx: 1 problem: ... (hint: re-add a.pdf)", path="idx", redo_documents=["a.pdf"])
    >>> e.hint, e.repairable, e.redo_documents
    ('re-add a.pdf', False, ('a.pdf',))
    """

    def __init__(self, message: str = "", *args, path: str | None = None, repairable: bool = False,
                 redo_documents=(), **hints):
        super().__init__(message, *args, **hints)
        self.path, self.repairable, self.redo_documents = path, repairable, tuple(redo_documents)


class ChecksumError(CorruptIndexError):
    """A stored value does not match its checksum (see :mod:`jevsearch.store.checksum`).

    ``table`` and ``key`` say which value; callers on the search path skip the page it belongs to.
    ``path``: the index it belongs to, where known.
    """

    def __init__(self, table: str, key: bytes, where: str | None = None, *, hint: str = "the value is damaged",
                 cli_hint: str | None = None, path: str | None = None):
        super().__init__(f"{where or f'{table} value {key.hex()}'}: checksum mismatch (hint: {hint})",
                         cli_hint=cli_hint, path=path)
        self.table, self.key = table, key


class StorageError(JevsearchError, OSError):
    """The disk or the operating system refused a read or write of the index (full disk, I/O error,
    permissions). What was committed before is intact."""


class DiskFullError(StorageError):
    """The disk holding the index is full (or a quota or file size limit was reached). Every commit
    before it is intact; :meth:`Engine.add` raises it with ``path`` (the file it was storing, or None)
    and ``report`` (the IngestReport of what the run had committed)."""

    def __init__(self, *args, path: str | None = None, report=None, cli_hint: str | None = None):
        super().__init__(*args, cli_hint=cli_hint)
        self.path, self.report = path, report


class PageNotFoundError(JevsearchError, LookupError):
    """A page asked for by id or hit is not in the index (its document was deleted or re-added since)."""


class CheckpointError(JevsearchError, ValueError):
    """A model checkpoint is missing files or tensors, or has tensors of the wrong shape."""


class ModelMismatchError(JevsearchError, ValueError):
    """The model (or its truncation) differs from the one recorded in the index."""


class ShardError(JevsearchError):
    """A shard of a sharded index is missing, damaged or did not answer (see ``allow_partial``)."""


class ClusterError(JevsearchError):
    """A Ray cluster cannot be reached or used, or its workers keep failing."""


class DatasetError(JevsearchError, ValueError):
    """An evaluation dataset (jevsearch.eval) is missing files or names ids it does not define."""


class MissingDependencyError(JevsearchError, ImportError):
    """An optional feature needs a package that is not installed (the message says which extra)."""


class DocumentError(JevsearchError):
    """One input document, or one page of it (``page``, 1-based), could not be read (corrupt,
    encrypted, empty, ...).

    Ingest reports these per file (and per page: a document's other pages are still indexed) and
    goes on with the rest of the batch.

    >>> str(DocumentError("a.pdf", "damaged PDF: premature end of data", page=3))
    'a.pdf: page 3: damaged PDF: premature end of data'
    """

    def __init__(self, path: str, reason: str, *, page: int | None = None):
        super().__init__(f"{path}: {'' if page is None else f'page {page}: '}{reason}")
        self.path = path
        self.reason = reason
        self.page = page
