"""The ``jevsearch`` command: parse, make one library call, translate errors into a one-line reason.

    jevsearch make-tiny-model models/tiny                    # random weights: smoke tests only
    jevsearch index papers/ scan.png --index indexes/papers --model models/tiny
    jevsearch index papers/ --index indexes/papers --prune   # follow renames, drop deleted files
    jevsearch index corpus/ --index indexes/big --shards 4 --ray auto --workers 8   # sharded, on Ray
    jevsearch search "quarterly revenue by region" --index indexes/papers -k 5
    jevsearch index reports/ --index indexes/papers --meta team=finance --meta year=2024
    jevsearch search "revenue" --index indexes/papers --where '{"year": {"$gte": 2023}}' --documents
    jevsearch list --index indexes/papers                    # documents, pages, present/changed/missing
    jevsearch info --index indexes/papers
    jevsearch delete papers/old.pdf --index indexes/papers
    jevsearch compact --index indexes/papers
    jevsearch verify --index indexes/papers --deep [--repair]
    jevsearch eval datasets/papers --index indexes/papers-eval --model models/tiny --out report/
    jevsearch explain "revenue by region" --index indexes/papers --hit 1 --out why.png
    jevsearch serve --index indexes/papers                   # http://127.0.0.1:8000
    jevsearch mcp --index indexes/papers                     # an MCP server for agents, on stdio

Exit status: 0 success; 1 an error (one line on stderr says why; ``verify`` lists the problems
first); 2 bad usage; 3 ``index`` finished but some documents failed or lost pages (each listed with
its reason); 130 interrupted (rerun ``index`` to resume). Never a traceback: an unexpected error is
one line too, and ``-v`` logs its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import textwrap

import jevsearch
from jevsearch import __version__
from jevsearch.errors import (
    ChecksumError,
    CorruptIndexError,
    IndexLockedError,
    InvalidInputError,
    JevsearchError,
    NotAnIndexError,
    ReadOnlyIndexError,
)

EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 3, 130, 141
DEFAULT_MODEL = "jinaai/jina-embeddings-v4"
log = logging.getLogger("jevsearch")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    restore = _logging(args)
    try:
        return args.run(args) or 0
    except JevsearchError as e:
        _fail(cli_message(e))
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our output went away (`jevsearch list | head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        hint = " (rerun the same command to resume)" if args.command == "index" else ""
        _fail(f"interrupted{hint}")
        return EXIT_INTERRUPTED
    except OSError as e:
        _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return EXIT_ERROR
    except Exception as e:
        log.info("traceback of the unexpected error:", exc_info=True)
        _fail(f"unexpected {type(e).__name__}: {e} (rerun with -v for details)")
        return EXIT_ERROR
    finally:
        restore()


def _logging(args):
    """The package's messages on stderr at the level -q/-v asks for; returns what puts the logger back
    (``main`` may run inside a program). Only ``jevsearch`` loggers: the libraries' INFO chatter (FAISS
    announces which build it loaded) stays out of -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("jevsearch: %(message)s"))
    before = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING)
    for name in ("faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]

    return restore


def _fail(message: str) -> None:
    print(f"jevsearch: error: {' '.join(message.split())}", file=sys.stderr)


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


# ----- commands ----------------------------------------------------------------------------------
def _cmd_index(args) -> int:
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
    storage = _storage_args(args)
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
        _fail(cli_message(full))
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
    from jevsearch.errors import NotAnIndexError

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


def _storage_args(args) -> dict:
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


def _cmd_search(args) -> int:
    where = _where(args.where)
    filters = {"where": where} if where is not None else {}
    if args.documents:
        filters["group_by"] = "document"
    if args.mode is not None:
        filters["mode"] = args.mode
    with _searcher(args) as eng:
        hits = eng.search(args.query, k=args.k, **filters)
    if args.json:  # index.results.to_json's rows, without importing the engine when a server answered
        print(json.dumps([{"rank": rank, **h.to_dict()} for rank, h in enumerate(hits, 1)], ensure_ascii=False,
                         indent=2))
        return 0
    if args.documents:
        hits = [h.pages[0] for h in hits]
    if not hits:
        print("no results (no page matches --where)" if where else
              "no results (no page holds all those words: try --mode hybrid or visual)" if args.mode == "lexical" else
              "no results (the index is empty)")
    else:
        print(_table(hits))
    return 0


def _cmd_info(args) -> int:
    with _reader(args.index) as eng:
        info = _info(eng)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value if not isinstance(value, dict) else json.dumps(value, sort_keys=True)}")
    return 0


def _cmd_list(args) -> int:
    from jevsearch.ingest.sources import file_status

    with _reader(args.index) as eng:
        docs, failures = eng.document_list(), eng.failures()
    rows = []
    for doc in docs:
        meta = doc["metadata"]
        status = file_status(doc["doc_id"], meta["sha256"], meta.get("size"), meta.get("mtime_ns")) \
            if "sha256" in meta else None  # added with add_embeddings: not a file
        rows.append({"path": doc["doc_id"], "pages": doc["pages"], "added": meta.get("added"), "status": status,
                     "missing_pages": [page for page, _ in meta.get("missing_pages", [])],
                     **({"partial": meta["partial"]} if "partial" in meta else {})})
    rows += [{"path": path, "pages": 0, "added": None, "status": "failed", "reason": f.get("reason")}
             for path, f in sorted(failures.items())]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no documents")
        return 0
    print(f"{'status':<8}  {'pages':>5}  {'added':<20}  path")
    for r in rows:
        note = (f"  (missing pages: {', '.join(map(str, r['missing_pages']))})" if r.get("missing_pages") else
                f"  ({r['reason']})" if r["status"] == "failed" else "")
        if "partial" in r:  # an interrupted ingest's: never shown as complete
            part = r["partial"]
            note += f"  (partial: pages 1-{part['through']} of {part['of']}; `jevsearch index` completes it)"
        print(f"{r['status'] or '-':<8}  {r['pages']:>5}  {r['added'] or '-':<20}  {_short_path(r['path'])}{note}")
    return 0


def _cmd_delete(args) -> int:
    with jevsearch.open(args.index) as eng:
        # As indexed (an absolute path), or a path relative to here.
        doc_id = args.doc if eng.document(args.doc) is not None else os.path.abspath(args.doc)
        if not eng.delete(doc_id):
            raise InvalidInputError(f"{args.doc}: not in the index (hint: `jevsearch list --index {args.index}` "
                                    "shows the indexed paths)")
    if not args.quiet:
        print(f"deleted {doc_id}")
    return 0


def _cmd_compact(args) -> int:
    with jevsearch.open(args.index) as eng:
        before = eng.stats()
        report = eng.compact(**_storage_args(args)) or {}
        stats = eng.stats()
    for done in report.get("dropped", []):
        print(f"repaired: {done}")
    if not args.quiet:
        size = lambda b: f"{(b['lmdb_file'] + b['hnsw_file']) / 1e6:.1f} MB"  # noqa: E731
        converted = f", {_storage(before)} -> {_storage(stats)}" if _storage(before) != _storage(stats) else ""
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


def _cmd_verify(args) -> int:
    from jevsearch.errors import CorruptIndexError

    try:
        # --repair: a writer (every shard's), which also restores a lost CURRENT file; no model is loaded.
        with jevsearch.open(args.index, read_only=not args.repair, repair=args.repair) as eng:
            summary = eng.verify(deep=args.deep, repair=args.repair)
    except CorruptIndexError as e:
        for problem in _problems(e.message):
            print(f"problem: {problem}")
        raise
    for done in summary.pop("repaired", []):
        print(f"repaired: {done}")
    if not args.quiet:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (summary or {}).items())
        print(f"{args.index}: ok" + (f" ({counts})" if counts else ""))
    return 0


def _reader(path: str, model=None):
    """The index at ``path`` (one index or a sharded one) opened read-only."""
    return jevsearch.open(path, read_only=True, model=model)


def _searcher(args):
    """The running `jevsearch serve` of ``args.index`` (no model load here) unless ``--local``, else the index."""
    from jevsearch.serve.client import find_server

    return (None if args.local else find_server(args.index, model=args.model)) or _reader(args.index, model=args.model)


def _problems(message: str) -> list[str]:
    """The problems of a verify message: "<index>: [N problems: ]p1; p2; ..."."""
    body = re.sub(r"^\d+ problems?: ", "", message.split(": ", 1)[-1])
    return [p.strip() for p in body.split("; ") if p.strip()]


def _cmd_eval(args) -> int:
    from jevsearch.eval.command import run

    return run(args.dataset, args.index, model=args.model, out=args.out, k=args.k, candidates=args.candidates,
               default_model=DEFAULT_MODEL, quiet=args.quiet)


def _cmd_explain(args) -> int:
    with _searcher(args) as eng:
        hits = eng.search(args.query, k=args.hit)
        if len(hits) < args.hit:
            raise InvalidInputError(f"--hit {args.hit}: the index has only {len(hits)} pages")
        hit = hits[args.hit - 1]
        ex = eng.explain(hit, args.query)
        if ex.kind == "page":
            _save_image(ex.overlay(token=args.token, alpha=args.alpha), args.out)
    if not args.quiet:
        where = f"passage {hit.page}" if ex.kind == "text" else f"page {hit.page}"
        print(f"{_short_path(hit.path)} {where}: {ex.summary()}" + (f" ({ex.note})" if ex.note else ""))
        for i in (i for i, m in enumerate(ex.meaningful) if m):
            matched = ""
            if ex.kind == "text":
                matched = "".join(f'  matched "{word}" ({sim:.3f})' for word, sim in ex.matches(i))
                matched += " (its score term: the Passage: prompt)" if ex.from_prompt(i) else ""
            print(f"  {ex.label(i)}{matched}")
        if ex.kind == "text":
            print(f"{args.out} not written: explain draws page images, and this hit is a text passage (the words "
                  "each query token matched are listed above)")
        else:
            print(f"wrote {args.out}")
    return 0


def _cmd_serve(args) -> int:
    from jevsearch.serve import run
    from jevsearch.serve.security import HostCheck

    HostCheck.for_bind(args.host, args.port, args.allowed_host or ())  # refused before the banner, not after
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"jevsearch: warning: serving on {args.host}: anyone who can reach this machine can search the "
              "index and read its documents", file=sys.stderr)
    if not args.quiet:
        print(f"serving {args.index} on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
    run(args.index, host=args.host, port=args.port, model=args.model,
        log_level="warning" if not args.verbose else "info", allowed_hosts=args.allowed_host or ())
    return 0


def _cmd_mcp(args) -> int:
    from jevsearch.integrations.mcp import run

    if args.http is not None and not args.quiet:
        print(f"serving {args.index} over MCP on http://127.0.0.1:{args.http}/mcp (Ctrl-C to stop)", file=sys.stderr)
    run(args.index, http=args.http, model=args.model)
    return 0


def _cmd_make_tiny_model(args) -> int:
    from jevsearch.model.tiny import write_full_size_checkpoint, write_tiny_checkpoint

    if args.full_size:
        write_full_size_checkpoint(args.dir, seed=args.seed)
        if not args.quiet:
            print(f"wrote a FULL-SIZE jina-embeddings-v4-format checkpoint (~7.5 GB, real shapes and sharded layout) "
                  f"to {args.dir}.\n*** ITS WEIGHTS ARE RANDOM ***: its embeddings mean nothing; it is for measuring "
                  "load time, memory and speed (python benchmarks/model.py --model DIR), never for search.")
        return 0
    write_tiny_checkpoint(args.dir, seed=args.seed)
    if not args.quiet:
        print(
            f"wrote a tiny jina-embeddings-v4-format checkpoint to {args.dir}. Its weights are RANDOM: "
            "search results are meaningless; use it only to smoke-test the pipeline offline."
        )
    return 0


# ----- output ------------------------------------------------------------------------------------
def _storage(stats: dict) -> str:
    """How an index stores its tokens, in words: "binary codes + exact tokens, pooled by 2"."""
    return (f"{stats['codec']} codes" + (" + exact tokens" if stats["keep_exact"] else "")
            + (f", pooled by {stats['pool_factor']}" if stats["pool_factor"] > 1 else ""))


def _info(eng) -> dict:
    """A flat summary for people: counts, dims, model, storage and bytes on disk (the model is not loaded)."""
    stats, m = eng.stats(), eng.manifest
    model = m.get("model") or {}
    docs = eng.document_list()
    partial = sum(1 for d in docs if d["metadata"].get("missing_pages"))
    return {"path": os.path.abspath(eng.path), "format_version": m["format_version"],
            "documents": stats["documents"], "pages": stats["pages"], "tokens": stats["tokens"],
            "documents_with_missing_pages": partial, "failed_files": len(eng.failures()),
            "partial_documents": sum(1 for d in docs if "partial" in d["metadata"]),
            "tombstones": stats["tombstones"], "model": model.get("source"),
            "model_fingerprint": model.get("identity", {}).get("fingerprint"),
            "max_pixels": model.get("max_pixels"), "single_dim": m["single_dim"],
            "single_full_dim": m["single_full_dim"],
            "single_stored_dim": m.get("single_stored_dim") or m["single_full_dim"],
            "single_dtype": stats["single_dtype"], "multi_dim": m["multi_dim"],
            "codec": stats["codec"], "keep_exact": stats["keep_exact"], "pool_factor": stats["pool_factor"],
            "bytes_on_disk": stats["bytes"]["lmdb_file"] + stats["bytes"]["hnsw_file"]
            + stats["bytes"].get("text_index", 0),
            **({k: v for k, v in eng.text_stats().items() if k != "text_bytes"} if hasattr(eng, "text_stats") else {}),
            "bytes_per_page": {k: round(v) for k, v in stats["bytes_per_page"].items()},
            **({"shards": stats["shards"]} if "shards" in stats else {})}


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


def _save_image(image, out: str) -> None:
    """Save ``image`` in the format its file name's extension names; PNG when it has none (/dev/null)."""
    from PIL import Image

    ext = os.path.splitext(out)[1].lower()
    if ext and ext not in Image.registered_extensions():
        raise InvalidInputError(f"--out {out}: unknown image extension {ext!r} (hint: .png, .jpg or .webp)")
    image.save(out, format=None if ext else "PNG")


def _short_path(path: str) -> str:
    """The path relative to here when under it, control characters escaped (a newline in a file name
    must not split a table row)."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], rel if not rel.startswith("..") else path)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ----- parsing -----------------------------------------------------------------------------------
def _storage_options(c, what: str) -> None:
    c.add_argument("--codec", choices=("binary", "int8", "fp16"),
                   help=f"{what}how token vectors are stored: binary (16 B/token, the default of a new index), int8 "
                   "(132 B) or fp16 (256 B, as indexes before codecs)")
    c.add_argument("--keep-exact", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what}also keep float16 tokens for the final exact scoring (default with binary and "
                   "int8; --no-keep-exact: smallest index, scores from the codes)")
    c.add_argument("--pool-factor", type=int, choices=(1, 2, 3), default=None,
                   help=f"{what}pool each page's tokens to about 1/N of them (default 1: no pooling)")


_LOCAL_HELP = ("load the model in this process even when a `jevsearch serve` of this index is running (by default "
               "the command asks that server: same output, no model load)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries; errors only")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log what happens (skipped files, moves, repairs; tracebacks of unexpected errors)")
    index_opt = argparse.ArgumentParser(add_help=False)
    index_opt.add_argument("--index", required=True, type=_index_dir, metavar="DIR",
                           help="index directory (e.g. indexes/papers)")

    p = argparse.ArgumentParser(
        prog="jevsearch",
        description="Search PDF corpora with jina-embeddings-v4 (visual page embeddings + late interaction).",
        epilog="exit status: 0 ok, 1 error, 2 usage, 3 some documents failed or lost pages, 130 interrupted",
    )
    p.add_argument("--version", action="version", version=f"jevsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("index", parents=[common, index_opt], help="add PDFs/images (files or folders) to an index",
                       description="Create the index if needed, then add documents. Unchanged files are "
                       "skipped, changed ones replaced, renamed or copied ones re-keyed without encoding; "
                       "rerun after an interruption to resume.")
    c.add_argument("paths", nargs="*", metavar="PATH", help="PDF, image, .txt or .md files, or folders (searched "
                   "recursively)")
    c.add_argument("--text-index", action="store_true", default=None,
                   help="keep a full-text index for lexical and hybrid search (a new index has one when tantivy is "
                   "installed); without PATHs: build it for an existing index from its stored text, no re-encoding")
    c.add_argument("--model", metavar="M", help=f"hub id or local snapshot path (new index: default {DEFAULT_MODEL}; "
                   "existing index: must be the recorded model)")
    c.add_argument("--meta", type=_meta, action="append", metavar="KEY=VALUE",
                   help="metadata for every document of this run, repeatable; VALUE is read as JSON when it is "
                   "(2024, true) else as text")
    c.add_argument("--prune", action="store_true",
                   help="also remove documents under PATHs whose files are gone (deleted or moved away)")
    c.add_argument("--retry-failed", action="store_true",
                   help="try again files that failed before and pages that could not be rendered, even if unchanged")
    c.add_argument("--ray", metavar="ADDRESS", help="render and encode on a Ray cluster: 'auto' (this machine's, "
                   "or a new local one) or HOST:PORT (needs pip install -e \".[ray]\")")
    c.add_argument("--workers", type=_positive_int, metavar="N", help="with --ray: encoder actors (default: "
                   "one per GPU, else one per CPU but one)")
    c.add_argument("--shards", type=_positive_int, metavar="N", help="new index: split it into N shards by "
                   "document (a sharded index; search/info/verify take it as they take any)")
    _storage_options(c, "new index: ")
    c.set_defaults(run=_cmd_index)

    c = sub.add_parser("search", parents=[common, index_opt], help="search an index with a text query")
    c.add_argument("query", help="the query text")
    c.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--where", metavar="JSON", help='metadata filter, e.g. \'{"year": {"$gte": 2023}}\' '
                   "(operators $eq $ne $in $nin $gt $gte $lt $lte $glob $exists $and $or)")
    c.add_argument("--documents", action="store_true", help="rank documents (by their best page) instead of pages")
    c.add_argument("--mode", choices=("hybrid", "lexical", "visual"), help="rank by words and look together "
                   "(hybrid: the default when the index has a text index), words only, or look only")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.add_argument("--local", action="store_true", help=_LOCAL_HELP)
    c.set_defaults(run=_cmd_search)

    c = sub.add_parser("list", parents=[common, index_opt],
                       help="list the documents: pages, date added, file present/changed/missing")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=_cmd_list)

    c = sub.add_parser("info", parents=[common, index_opt], help="show an index's model, sizes and counts")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=_cmd_info)

    c = sub.add_parser("delete", parents=[common, index_opt], help="remove one document from an index")
    c.add_argument("doc", metavar="DOC", help="the document's path (as indexed, or relative to here)")
    c.set_defaults(run=_cmd_delete)

    c = sub.add_parser("compact", parents=[common, index_opt],
                       help="drop deleted pages, rebuild the search graph and shrink the files",
                       description="Compact the index; with --codec, --keep-exact or --pool-factor also convert "
                       "it to that storage, in place and atomically (an interruption leaves the old index or "
                       "the new one).")
    _storage_options(c, "convert to: ")
    c.set_defaults(run=_cmd_compact)

    c = sub.add_parser("verify", parents=[common, index_opt], help="check an index's integrity")
    c.add_argument("--deep", action="store_true", help="also read every stored value (checksums, finite unit "
                   "vectors) and walk the search graph")
    c.add_argument("--repair", action="store_true", help="rebuild what the stored pages allow (search graph, "
                   "counters, a lost CURRENT file) and name the documents to re-add for the rest")
    c.set_defaults(run=_cmd_verify)

    c = sub.add_parser("eval", parents=[common, index_opt], help="measure quality and latency on a dataset",
                       description="Evaluate search settings on a dataset (BEIR-style folder or ViDoRe Parquet "
                       "download): nDCG@5/@k, recall@k/@100, MRR@k and p50/p95 search latency per setting. "
                       "Indexes the dataset's corpus first if the index is empty (exit status 3 if some of its "
                       "documents fail). Needs: pip install 'jevsearch[eval]'.")
    c.add_argument("dataset", metavar="DATASET", help="dataset folder")
    c.add_argument("--model", metavar="M", help=f"new index: default {DEFAULT_MODEL}; existing: the recorded one")
    c.add_argument("--out", default="report", metavar="DIR", help="where report.json and quality_vs_latency.png "
                   "go (default report/)")
    c.add_argument("-k", type=_positive_int, default=10, help="cutoff of nDCG@k, recall@k, MRR@k (default 10)")
    c.add_argument("--candidates", type=_int_list, metavar="N,N,...", help="two-stage candidates to compare "
                   "(default 20,50,100,200)")
    c.set_defaults(run=_cmd_eval)

    c = sub.add_parser("explain", parents=[common, index_opt], help="draw where a query matched on a result page",
                       description="Search, take the hit ranked --hit, and write its page with the heat-map of "
                       "the query's similarity per 28x28-px patch blended over it.")
    c.add_argument("query", help="the query text")
    c.add_argument("--hit", type=_positive_int, default=1, help="which result, 1 = the best (default 1)")
    c.add_argument("--out", required=True, metavar="PNG", help="image file to write (e.g. why.png)")
    c.add_argument("--token", help="one query token's map (its text, e.g. revenue) instead of all words")
    c.add_argument("--alpha", type=float, default=0.7, help="opacity of the hottest cells, 0..1 (default 0.7)")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.add_argument("--local", action="store_true", help=_LOCAL_HELP)
    c.set_defaults(run=_cmd_explain)

    c = sub.add_parser("serve", parents=[common, index_opt], help="search the index in a web browser",
                       description="A local web app: search box, result thumbnails, heat-maps, source documents; "
                       "and a JSON API (/api/search?q=...&k=...). Needs: pip install 'jevsearch[serve]'.")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    c.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name browsers use to reach the app, besides localhost and --host (repeat for "
                   "several; needed with --host 0.0.0.0). Requests naming any other host are refused (421)")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.set_defaults(run=_cmd_serve)

    c = sub.add_parser("mcp", parents=[common, index_opt], help="serve the index to agents (Model Context Protocol)",
                       description="An MCP server with the read-only tools search, get_page, list_documents and "
                       "explain, on stdio (an agent's client starts this command) or, with --http, streamable HTTP "
                       "on 127.0.0.1. Needs: pip install 'jevsearch[mcp]'.")
    c.add_argument("--http", type=_port, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.set_defaults(run=_cmd_mcp)

    c = sub.add_parser("make-tiny-model", parents=[common], help="write a tiny checkpoint with RANDOM weights "
                       "(offline smoke tests; results are meaningless)")
    c.add_argument("dir", metavar="DIR", help="where to write the checkpoint (must not exist or be empty)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--full-size", action="store_true", help="the real model's shapes and sharded layout, still RANDOM "
                   "weights (~7.5 GB; for benchmarks/model.py)")
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


def _index_dir(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (name the index folder, e.g. --index indexes/papers)")
    return text


def _int_list(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",")]


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
