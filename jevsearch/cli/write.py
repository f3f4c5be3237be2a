"""Commands that change an index: ``index``, ``delete``, ``compact``."""

from __future__ import annotations

import os
import sys

import jevsearch
from jevsearch.cli.advice import cli_message
from jevsearch.cli.common import DEFAULT_MODEL, EXIT_PARTIAL, fail, storage_words
from jevsearch.errors import (
    InvalidInputError,
    NotAnIndexError,
)


def cmd_index(args) -> int:
    from jevsearch.ingest import discover

    if not args.paths:
        return _build_text_index(args)
    # The inputs first: a typo must neither load a model nor leave an empty index behind.
    sources, failed = discover(args.paths)
    new = _new_index_dir(args.index)
    if not sources and (new or not args.prune):
        for path, reason in failed:
            print(f"failed: {path}: {reason}", file=sys.stderr)
        raise InvalidInputError(f"nothing to index: {_nothing_found(args.paths, failed)} (hint: index takes "
                                "PDF or png/jpg/jpeg/tiff/webp files, or folders holding them)")
    from jevsearch.errors import DiskFullError

    if args.workers is not None and args.ray is None:
        raise InvalidInputError("--workers: only with --ray (hint: --ray auto --workers N)")
    if args.ray is not None:
        import jevsearch.scale  # noqa: F401 - registers the Ray ingest backend Engine.add(ray=...) uses
    storage = storage_args(args)
    eng = _create(args, storage) if new else _open_writer(args, storage)
    full = None
    try:
        with eng:
            report = eng.add(args.paths, metadata=dict(args.meta or ()) or None, prune=args.prune,
                             retry_failed=args.retry_failed, progress=not args.quiet, found=(sources, failed),
                             ray=args.ray, workers=args.workers)
            if args.text_index and not getattr(eng, "has_text_index", True):
                eng.build_text_index()
    except DiskFullError as e:  # a partial run like any other: what was done, then why it stopped (exit 3)
        if e.report is None:
            raise
        report, full = e.report, e
    for path, reason in report.failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    for path, reason in report.not_retried:
        print(f"failed: {path}: {reason} (unchanged since it failed; --retry-failed tries again)", file=sys.stderr)
    for path, page, reason in report.missing_pages:
        print(f"missing page: {path}: page {page}: {reason}", file=sys.stderr)
    if full is not None:
        fail(cli_message(full))
        return EXIT_PARTIAL
    if not args.quiet:
        print(f"{args.index}: {report}")
    return EXIT_PARTIAL if report.failed or report.not_retried or report.missing_pages else 0


def _create(args, storage: dict):
    """A new index at --index: sharded with --shards N, else one index."""
    model = args.model or DEFAULT_MODEL
    if args.shards is not None:
        from jevsearch.scale import ShardedEngine

        return ShardedEngine.create(args.index, shards=args.shards, model=model, **storage)
    from jevsearch.engine import Engine

    return Engine.create(args.index, model=model, text_index=args.text_index, **storage)


def _open_writer(args, storage: dict):
    """The existing index at --index, opened for `index`: its storage and shard count as asked."""

    try:
        eng = jevsearch.open(args.index, model=args.model)
    except NotAnIndexError as e:
        e.cli_hint = "pick a new or empty folder for --index"
        raise
    try:
        shards = eng.stats().get("shards")
        if args.shards is not None and args.shards != shards:
            has = f"{shards} shards" if shards else "no shards (it is one index)"
            raise InvalidInputError(f"--shards {args.shards}: {args.index} has {has}",
                                    hint="omit --shards for an existing index")
        _check_storage(eng, storage, args.index)
    except BaseException:
        eng.close()
        raise
    return eng


def _build_text_index(args) -> int:
    """`index --text-index` without paths: the text index from the stored text layers (no model needed)."""
    from jevsearch.engine import Engine

    if not args.text_index:
        raise InvalidInputError("no PATH given (hint: name files or folders to index, or --text-index to build "
                                "the text index of the index's stored pages)")
    if _new_index_dir(args.index):
        raise InvalidInputError(f"--text-index: {args.index} is not an index yet (hint: index documents first)")
    with Engine.open(args.index) as eng:
        pages = eng.build_text_index()
    if not args.quiet:
        print(f"{args.index}: text index built ({pages} pages)")
    return 0


def storage_args(args) -> dict:
    """--codec / --keep-exact / --pool-factor as given (None: not given)."""
    return {"codec": args.codec, "keep_exact": args.keep_exact, "pool_factor": args.pool_factor}


def _check_storage(eng, storage: dict, index: str) -> None:
    """An existing index keeps its storage: a different --codec (etc.) is refused, not ignored."""
    stats = eng.stats()
    for name, value in storage.items():
        if value is not None and value != stats[name]:
            flag = "--" + name.replace("_", "-")
            raise InvalidInputError(f"{flag}: the index stores {name} {stats[name]!r}, not {value!r} (hint: "
                                    f"`jevsearch compact --index {index} {flag} ...` converts it)")


def _new_index_dir(index: str) -> bool:
    """True when ``index`` does not exist or is an empty folder: `index` creates it there."""
    try:
        return not os.listdir(index)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False  # Engine.open says what it is


def _nothing_found(paths, failed) -> str:
    from jevsearch.ingest.sources import describe_folder

    reasons = dict(failed)
    said = []
    for raw in paths:
        path = os.path.abspath(raw)
        said.append(f"{raw}: {reasons[path]}" if path in reasons else
                    f"{raw}: {describe_folder(path)}" if os.path.isdir(path) else f"{raw}: not a document")
    return "; ".join(said)


def cmd_delete(args) -> int:
    with jevsearch.open(args.index) as eng:
        # As indexed (an absolute path), or a path relative to here.
        doc_id = args.doc if eng.document(args.doc) is not None else os.path.abspath(args.doc)
        if not eng.delete(doc_id):
            raise InvalidInputError(f"{args.doc}: not in the index (hint: `jevsearch list --index {args.index}` "
                                    "shows the indexed paths)")
    if not args.quiet:
        print(f"deleted {doc_id}")
    return 0


def cmd_compact(args) -> int:
    with jevsearch.open(args.index) as eng:
        before = eng.stats()
        report = eng.compact(**storage_args(args)) or {}
        stats = eng.stats()
    for done in report.get("dropped", []):
        print(f"repaired: {done}")
    if not args.quiet:
        size = lambda b: f"{(b['lmdb_file'] + b['hnsw_file']) / 1e6:.1f} MB"  # noqa: E731
        converted = f", {storage_words(before)} -> {storage_words(stats)}" if storage_words(before) != storage_words(stats) else ""
        print(f"{args.index}: compacted: {stats['documents']} documents, {stats['pages']} pages, "
              f"{size(before['bytes'])} -> {size(stats['bytes'])}{converted}")
    if report.get("damaged"):
        from jevsearch.errors import CorruptIndexError

        for problem in report["damaged"]:
            print(f"problem: {problem}")
        docs = ", ".join(report["redo"][:10]) + (" and more" if len(report["redo"]) > 10 else "")
        raise CorruptIndexError(f"{args.index}: {len(report['damaged'])} damaged values could not be carried over "
                                f"intact (hint: delete and re-add {docs})",
                                cli_hint=f"`jevsearch delete DOC --index {args.index}`, then `jevsearch index DOC "
                                         f"--index {args.index}` for each of {docs}")
    return 0
