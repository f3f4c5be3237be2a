"""What the commands share: exit statuses, the default model, opening an index to read, printing."""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap

import jevsearch
from jevsearch.errors import InvalidInputError

EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 3, 130, 141
DEFAULT_MODEL = "jinaai/jina-embeddings-v4"


def fail(message: str) -> None:
    print(f"jevsearch: error: {' '.join(message.split())}", file=sys.stderr)


def reader(path: str, model=None):
    """The index at ``path`` (one index or a sharded one) opened read-only."""
    return jevsearch.open(path, read_only=True, model=model)


def searcher(args):
    """The running `jevsearch serve` of ``args.index`` (no model load here) unless ``--local``, else the index."""
    from jevsearch.serve.client import find_server

    return (None if args.local else find_server(args.index, model=args.model)) or reader(args.index, model=args.model)


def problems(message: str) -> list[str]:
    """The problems of a verify message: "<index>: [N problems: ]p1; p2; ..."."""
    body = re.sub(r"^\d+ problems?: ", "", message.split(": ", 1)[-1])
    return [p.strip() for p in body.split("; ") if p.strip()]


def storage_words(stats: dict) -> str:
    """How an index stores its tokens, in words: "binary codes + exact tokens, pooled by 2"."""
    return (f"{stats['codec']} codes" + (" + exact tokens" if stats["keep_exact"] else "")
            + (f", pooled by {stats['pool_factor']}" if stats["pool_factor"] > 1 else ""))


def info_summary(eng) -> dict:
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


def table(hits) -> str:
    """rank, score, file, page, snippet; fitted to the terminal (the snippet takes what is left)."""
    cols = shutil.get_terminal_size((120, 24)).columns
    files = [short_path(h.path) for h in hits]
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


def save_image(image, out: str) -> None:
    """Save ``image`` in the format its file name's extension names; PNG when it has none (/dev/null)."""
    from PIL import Image

    ext = os.path.splitext(out)[1].lower()
    if ext and ext not in Image.registered_extensions():
        raise InvalidInputError(f"--out {out}: unknown image extension {ext!r} (hint: .png, .jpg or .webp)")
    image.save(out, format=None if ext else "PNG")


def short_path(path: str) -> str:
    """The path relative to here when under it, control characters escaped (a newline in a file name
    must not split a table row)."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], rel if not rel.startswith("..") else path)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
