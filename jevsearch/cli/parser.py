"""The ``jevsearch`` argument parser: every command, its options and their checks (a route table)."""

from __future__ import annotations

import argparse
import json

from jevsearch import __version__
from jevsearch.cli import apps, read, write
from jevsearch.cli.common import DEFAULT_MODEL

_LOCAL_HELP = ("load the model in this process even when a `jevsearch serve` of this index is running (by default "
               "the command asks that server: same output, no model load)")


def build_parser() -> argparse.ArgumentParser:
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
    c.set_defaults(run=write.cmd_index)

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
    c.set_defaults(run=read.cmd_search)

    c = sub.add_parser("list", parents=[common, index_opt],
                       help="list the documents: pages, date added, file present/changed/missing")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=read.cmd_list)

    c = sub.add_parser("info", parents=[common, index_opt], help="show an index's model, sizes and counts")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=read.cmd_info)

    c = sub.add_parser("delete", parents=[common, index_opt], help="remove one document from an index")
    c.add_argument("doc", metavar="DOC", help="the document's path (as indexed, or relative to here)")
    c.set_defaults(run=write.cmd_delete)

    c = sub.add_parser("compact", parents=[common, index_opt],
                       help="drop deleted pages, rebuild the search graph and shrink the files",
                       description="Compact the index; with --codec, --keep-exact or --pool-factor also convert "
                       "it to that storage, in place and atomically (an interruption leaves the old index or "
                       "the new one).")
    _storage_options(c, "convert to: ")
    c.set_defaults(run=write.cmd_compact)

    c = sub.add_parser("verify", parents=[common, index_opt], help="check an index's integrity")
    c.add_argument("--deep", action="store_true", help="also read every stored value (checksums, finite unit "
                   "vectors) and walk the search graph")
    c.add_argument("--repair", action="store_true", help="rebuild what the stored pages allow (search graph, "
                   "counters, a lost CURRENT file) and name the documents to re-add for the rest")
    c.set_defaults(run=read.cmd_verify)

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
    c.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), help="what the model computes in (default: "
                   "measured for this CPU; int8: weight-only, check its quality here before relying on it)")
    c.set_defaults(run=apps.cmd_eval)

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
    c.set_defaults(run=read.cmd_explain)

    c = sub.add_parser("serve", parents=[common, index_opt], help="search the index in a web browser",
                       description="A local web app: search box, result thumbnails, heat-maps, source documents; "
                       "and a JSON API (/api/search?q=...&k=...). Needs: pip install 'jevsearch[serve]'.")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    c.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name browsers use to reach the app, besides localhost and --host (repeat for "
                   "several; needed with --host 0.0.0.0). Requests naming any other host are refused (421)")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), help="what the model computes in (default: "
                   "measured for this CPU; int8: weight-only, smaller and often faster, check its quality first)")
    c.set_defaults(run=apps.cmd_serve)

    c = sub.add_parser("mcp", parents=[common, index_opt], help="serve the index to agents (Model Context Protocol)",
                       description="An MCP server with the read-only tools search, get_page, list_documents and "
                       "explain, on stdio (an agent's client starts this command) or, with --http, streamable HTTP "
                       "on 127.0.0.1. Needs: pip install 'jevsearch[mcp]'.")
    c.add_argument("--http", type=_port, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead")
    c.add_argument("--model", metavar="M", help="local snapshot of the recorded model, if it moved")
    c.set_defaults(run=apps.cmd_mcp)

    c = sub.add_parser("make-tiny-model", parents=[common], help="write a tiny checkpoint with RANDOM weights "
                       "(offline smoke tests; results are meaningless)")
    c.add_argument("dir", metavar="DIR", help="where to write the checkpoint (must not exist or be empty)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--full-size", action="store_true", help="the real model's shapes and sharded layout, still RANDOM "
                   "weights (~7.5 GB; for benchmarks/model.py)")
    c.set_defaults(run=apps.cmd_make_tiny_model)
    return p


def _storage_options(c, what: str) -> None:
    c.add_argument("--codec", choices=("binary", "int8", "fp16"),
                   help=f"{what}how token vectors are stored: binary (16 B/token, the default of a new index), int8 "
                   "(132 B) or fp16 (256 B, as indexes before codecs)")
    c.add_argument("--keep-exact", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what}also keep float16 tokens for the final exact scoring (default with binary and "
                   "int8; --no-keep-exact: smallest index, scores from the codes)")
    c.add_argument("--pool-factor", type=int, choices=(1, 2, 3), default=None,
                   help=f"{what}pool each page's tokens to about 1/N of them (default 1: no pooling)")


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
