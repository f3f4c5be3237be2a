"""The ``jevsearch`` command: parse, make one library call, translate errors into a one-line reason.

    jevsearch make-tiny-model models/tiny                    # random weights: smoke tests only
    jevsearch index papers/ scan.png --index indexes/papers --model models/tiny
    jevsearch search "quarterly revenue by region" --index indexes/papers -k 5
    jevsearch index reports/ --index indexes/papers --meta team=finance --meta year=2024
    jevsearch search "revenue" --index indexes/papers --where '{"year": {"$gte": 2023}}' --documents
    jevsearch info --index indexes/papers
    jevsearch delete papers/old.pdf --index indexes/papers
    jevsearch verify --index indexes/papers

Exit status: 0 success; 1 an error (one line on stderr says why); 2 bad usage; 3 ``index`` finished but
some documents failed (each listed with its reason); 130 interrupted (rerun ``index`` to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap

from jevsearch.errors import InvalidInputError, JevsearchError

EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 1, 2, 3, 130
DEFAULT_MODEL = "jinaai/jina-embeddings-v4"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="jevsearch: %(message)s")
    try:
        return args.run(args) or 0
    except JevsearchError as e:
        _fail(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = " (rerun the same command to resume)" if args.command == "index" else ""
        _fail(f"interrupted{hint}")
        return EXIT_INTERRUPTED
    except OSError as e:
        _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return EXIT_ERROR


def _fail(message: str) -> None:
    print(f"jevsearch: error: {' '.join(message.split())}", file=sys.stderr)


# ----- commands ----------------------------------------------------------------------------------
def _cmd_index(args) -> int:
    from jevsearch.engine import Engine
    from jevsearch.errors import NotAnIndexError

    try:
        eng = Engine.open(args.index, model=args.model)
    except NotAnIndexError:
        eng = Engine.create(args.index, model=args.model or DEFAULT_MODEL)
    with eng:
        report = eng.add(args.paths, metadata=dict(args.meta or ()) or None, progress=not args.quiet)
    for path, reason in report.failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if not args.quiet:
        print(f"{args.index}: {report}")
    return EXIT_PARTIAL if report.failed else 0


def _cmd_search(args) -> int:
    from jevsearch.engine import Engine

    where = _where(args.where)
    with Engine.open(args.index, readonly=True, model=args.model) as eng:
        hits = eng.search(args.query, k=args.k, where=where, group_by="document" if args.documents else None)
    if args.documents:
        hits = [h.pages[0] for h in hits] if not args.json else hits
    if args.json and args.documents:
        rows = [{"rank": r, "score": d.score, "path": d.path, "metadata": d.metadata,
                 "pages": [{"page": h.page, "score": h.score, "snippet": h.snippet} for h in d.pages]}
                for r, d in enumerate(hits, 1)]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif args.json:
        rows = [
            {"rank": r, "score": h.score, "path": h.path, "page": h.page, "snippet": h.snippet, "metadata": h.metadata}
            for r, h in enumerate(hits, 1)
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif not hits:
        print("no results (no page matches --where)" if where else "no results (the index is empty)")
    else:
        print(_table(hits))
    return 0


def _cmd_info(args) -> int:
    from jevsearch.engine import Engine

    with Engine.open(args.index, readonly=True) as eng:
        info = _info(eng)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value if not isinstance(value, dict) else json.dumps(value, sort_keys=True)}")
    return 0


def _cmd_delete(args) -> int:
    from jevsearch.engine import Engine

    with Engine.open(args.index) as eng:
        # As indexed (an absolute path), or a path relative to here.
        doc_id = args.doc if eng.document(args.doc) is not None else os.path.abspath(args.doc)
        if not eng.delete(doc_id):
            raise InvalidInputError(f"{args.doc}: not in the index (hint: `jevsearch search` shows indexed paths)")
    if not args.quiet:
        print(f"deleted {doc_id}")
    return 0


def _cmd_verify(args) -> int:
    from jevsearch.engine import Engine

    with Engine.open(args.index, readonly=True) as eng:
        summary = eng.verify()
    if not args.quiet:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (summary or {}).items())
        print(f"{args.index}: ok" + (f" ({counts})" if counts else ""))
    return 0


def _cmd_make_tiny_model(args) -> int:
    from jevsearch.model.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(args.dir, seed=args.seed)
    if not args.quiet:
        print(
            f"wrote a tiny jina-embeddings-v4-format checkpoint to {args.dir}. Its weights are RANDOM: "
            "search results are meaningless; use it only to smoke-test the pipeline offline."
        )
    return 0


# ----- output ------------------------------------------------------------------------------------
def _info(eng) -> dict:
    """A flat summary for people: counts, dims, model and bytes on disk (the model is not loaded)."""
    stats, m = eng.stats(), eng.manifest
    model = m.get("model") or {}
    return {"path": os.path.abspath(eng.path), "format_version": m["format_version"],
            "documents": stats["documents"], "pages": stats["pages"], "tokens": stats["tokens"],
            "tombstones": stats["tombstones"], "model": model.get("source"),
            "model_fingerprint": model.get("identity", {}).get("fingerprint"),
            "max_pixels": model.get("max_pixels"), "single_dim": m["single_dim"],
            "single_full_dim": m["single_full_dim"], "multi_dim": m["multi_dim"], "multi_dtype": m["multi_dtype"],
            "bytes_on_disk": stats["bytes"]["lmdb_file"] + stats["bytes"]["hnsw_file"]}


def _table(hits) -> str:
    """rank, score, file, page, snippet; fitted to the terminal (the snippet takes what is left)."""
    cols = shutil.get_terminal_size((120, 24)).columns
    files = [_short_path(h.path) for h in hits]
    file_w = min(max(len("file"), *(len(f) for f in files)), max(20, cols // 3))
    head = f"{'rank':>4}  {'score':>7}  {'file':<{file_w}}  {'page':>4}  snippet"
    lines = [head]
    snippet_w = max(20, cols - (4 + 2 + 7 + 2 + file_w + 2 + 4 + 2))
    for rank, (h, f) in enumerate(zip(hits, files), 1):
        if len(f) > file_w:
            f = "…" + f[-(file_w - 1):]
        snip = textwrap.shorten(h.snippet, snippet_w, placeholder=" …") if h.snippet else ""
        lines.append(f"{rank:>4}  {h.score:>7.4f}  {f:<{file_w}}  {h.page:>4}  {snip}")
    return "\n".join(lines)


def _short_path(path: str) -> str:
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return rel if not rel.startswith("..") else path


# ----- parsing -----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries; errors only")
    common.add_argument("-v", "--verbose", action="store_true", help="log what happens (skipped files, repairs)")
    index_opt = argparse.ArgumentParser(add_help=False)
    index_opt.add_argument("--index", required=True, metavar="DIR", help="index directory (e.g. indexes/papers)")

    p = argparse.ArgumentParser(
        prog="jevsearch",
        description="Search PDF corpora with jina-embeddings-v4 (visual page embeddings + late interaction).",
        epilog="exit status: 0 ok, 1 error, 2 usage, 3 some documents failed to index, 130 interrupted",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("index", parents=[common, index_opt], help="add PDFs/images (files or folders) to an index",
                       description="Create the index if needed, then add documents. Unchanged files are "
                       "skipped, changed ones replaced; rerun after an interruption to resume.")
    c.add_argument("paths", nargs="+", metavar="PATH", help="PDF or image files, or folders (searched recursively)")
    c.add_argument("--model", metavar="M", help=f"hub id or local snapshot path (new index: default {DEFAULT_MODEL}; "
                   "existing index: must be the recorded model)")
    c.add_argument("--meta", type=_meta, action="append", metavar="KEY=VALUE",
                   help="metadata for every document of this run, repeatable; VALUE is read as JSON when it is "
                   "(2024, true) else as text")
    c.set_defaults(run=_cmd_index)

    c = sub.add_parser("search", parents=[common, index_opt], help="search an index with a text query")
    c.add_argument("query", help="the query text")
    c.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--where", metavar="JSON", help='metadata filter, e.g. \'{"year": {"$gte": 2023}}\' '
                   "(operators $eq $ne $in $nin $gt $gte $lt $lte $glob $exists $and $or)")
    c.add_argument("--documents", action="store_true", help="rank documents (by their best page) instead of pages")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.set_defaults(run=_cmd_search)

    c = sub.add_parser("info", parents=[common, index_opt], help="show an index's model, sizes and counts")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=_cmd_info)

    c = sub.add_parser("delete", parents=[common, index_opt], help="remove one document from an index")
    c.add_argument("doc", metavar="DOC", help="the document's path (as indexed, or relative to here)")
    c.set_defaults(run=_cmd_delete)

    c = sub.add_parser("verify", parents=[common, index_opt], help="check an index's integrity")
    c.set_defaults(run=_cmd_verify)

    c = sub.add_parser("make-tiny-model", parents=[common], help="write a tiny checkpoint with RANDOM weights "
                       "(offline smoke tests; results are meaningless)")
    c.add_argument("dir", metavar="DIR", help="where to write the checkpoint (must not exist or be empty)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.set_defaults(run=_cmd_make_tiny_model)
    return p


def _where(text: str | None) -> dict | None:
    """``--where``: a JSON object (checked by the library when it searches)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"--where: not valid JSON ({e}) (hint: quote it for the shell, e.g. "
                                """--where '{"year": {"$gte": 2023}}')""") from None


def _meta(text: str) -> tuple[str, object]:
    """``--meta key=value``: the value as JSON when it is (2024, true, "x"), else as text."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (hint: --meta team=finance)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
