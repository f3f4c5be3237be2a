"""The shard manifest of a sharded index (``shards.json``) and the routing of documents to shards.

A document goes to the shard ``route(doc_id)``: the first 8 bytes of SHA-256 of its id (UTF-8), as a
big-endian integer, modulo the shard count. The same id always lands on the same shard, in every
process and on every machine (Python's ``hash()`` is salted per process, so it would not do).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from jevsearch.errors import CorruptIndexError, FormatVersionError, NotAnIndexError
from jevsearch.surface import SHARD_MANIFEST

MANIFEST = SHARD_MANIFEST
FORMAT = "jevsearch-sharded"
VERSION = 1
ROUTING = {"key": "doc_id", "hash": "sha256", "bytes": 8, "order": "big", "then": "mod shards"}
MAX_SHARDS = 4096


def route(doc_id: str, shards: int) -> int:
    """The shard (0-based) a document id belongs to among ``shards``: stable across processes and machines.

    >>> route("/data/a.pdf", 4), route("/data/a.pdf", 4) == route("/data/a.pdf", 4)
    (0, True)
    """
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[: ROUTING["bytes"]], ROUTING["order"]) % shards


def read_manifest(path: str) -> dict:
    """The shard manifest at ``path``, checked."""
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        hint = "open it with Engine.open" if os.path.exists(os.path.join(path, "CURRENT")) else \
            "create one with ShardedEngine.create"
        raise NotAnIndexError(f"{path}: no {MANIFEST}, not a sharded index (hint: {hint})") from None
    except (OSError, ValueError) as e:
        raise CorruptIndexError(f"{file}: unreadable ({e}) (hint: restore it from a backup)") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptIndexError(f"{file}: not a jevsearch shard manifest (hint: restore it from a backup)")
    if manifest.get("version") != VERSION:
        raise FormatVersionError(f"{file}: shard manifest version {manifest.get('version')!r}; this jevsearch "
                                 f"reads version {VERSION} (hint: upgrade jevsearch)")
    names = manifest.get("shards")
    if not isinstance(names, list) or not names or manifest.get("routing") != ROUTING or \
            not all(isinstance(n, str) and n and os.path.basename(n) == n and not n.startswith(".") for n in names):
        raise CorruptIndexError(f"{file}: bad shard list or routing (hint: restore it from a backup)")
    return manifest


def write_manifest(path: str, manifest: dict) -> None:
    """Write the shard manifest atomically: a temporary file, fsync, rename over, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=".shards-", suffix=".json", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MANIFEST))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path)


def fsync_dir(path: str) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
