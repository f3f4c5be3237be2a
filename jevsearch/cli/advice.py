"""The one place that turns the library's errors (types and fields) into ``jevsearch`` command advice."""

from __future__ import annotations

from jevsearch.errors import (
    ChecksumError,
    CorruptIndexError,
    IndexLockedError,
    JevsearchError,
    NotAnIndexError,
    ReadOnlyIndexError,
)


def cli_hint(e: JevsearchError) -> str | None:
    """What to do about ``e``, said as ``jevsearch`` commands: the one place that turns the library's
    errors (their types and fields; the library's own hints speak Python) into CLI advice. An error
    raised with a ``cli_hint`` keeps it; one with nothing for the CLI keeps its Python hint.

    >>> cli_hint(NotAnIndexError("docs: not a jevsearch index", path="docs", empty=True))
    '`jevsearch index FILES --index docs` creates one'
    >>> cli_hint(CorruptIndexError("idx: 1 problem", hint="re-add a.pdf", path="idx", redo_documents=["a.pdf"]))
    'a repair cannot restore damaged pages of a.pdf: `jevsearch delete DOC --index idx`, then `jevsearch index DOC --index idx` for each'
    """
    if e.cli_hint:
        return e.cli_hint
    path = getattr(e, "path", None)
    if isinstance(e, ChecksumError) and path:
        return f"jevsearch verify --deep --index {path} names the documents it affects"
    if isinstance(e, CorruptIndexError) and path and (e.repairable or e.redo_documents):
        from jevsearch.store.verify import some  # lazily: the store imports torch

        advice = [f"jevsearch verify --repair --index {path} repairs what LMDB can rebuild"] if e.repairable else []
        if e.redo_documents:
            advice.append(f"a repair cannot restore damaged pages of {some(list(e.redo_documents))}: "
                          f"`jevsearch delete DOC --index {path}`, then `jevsearch index DOC --index {path}` for each")
        return "; ".join(advice)
    if isinstance(e, NotAnIndexError) and e.empty and path:
        return f"`jevsearch index FILES --index {path}` creates one"
    if isinstance(e, IndexLockedError):
        return "another jevsearch command is writing to it: wait for it to finish and rerun"
    if isinstance(e, ReadOnlyIndexError) and e.cannot_write:
        return "you may only read this index: search, list, info and verify work; writing needs write permission"
    return e.hint


def cli_message(e: JevsearchError) -> str:
    """``e``'s message with :func:`cli_hint` as its hint: what the CLI prints."""
    hint = cli_hint(e)
    return e.message if hint is None else f"{e.message} (hint: {hint})"
