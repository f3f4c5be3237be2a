"""Weight-only int8 layers kept on disk, so an int8 model loads by mapping them instead of quantising.

Quantising the language model is minutes of CPU work at full size, and its result depends only on
the model's weights. The first int8 load writes it to ``<cache dir>/int8/<model fingerprint>.safetensors``
(a temporary file renamed into place, an xxh3 checksum per tensor in its header); later loads map
that file (no copy) after checking every shape and checksum, and quantise again when one fails.
Cache dir: ``$JEVSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/jevsearch``, else ``~/.cache/jevsearch``;
``JEVSEARCH_CACHE_DIR=off`` turns the cache off.

>>> import tempfile
>>> where = Path(tempfile.mkdtemp()) / "x.safetensors"
>>> save(where, {"lin.weight": (torch.ones(2, 3, dtype=torch.int8), torch.ones(2))})
>>> load(where, {"lin.weight": (2, 3)})["lin.weight"][0].shape
torch.Size([2, 3])
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import tempfile
from pathlib import Path

import torch
import xxhash

log = logging.getLogger(__name__)

_CODES = {torch.int8: "I8", torch.float32: "F32"}
_TYPES = {v: k for k, v in _CODES.items()}


def cache_file(fingerprint: str) -> Path | None:
    """Where the int8 layers of the model with ``fingerprint`` are kept (None: the cache is off)."""
    base = os.environ.get("JEVSEARCH_CACHE_DIR")
    if base is not None and base.strip().lower() in ("", "0", "off", "none"):
        return None
    if base is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jevsearch"
    return Path(base) / "int8" / f"{fingerprint}.safetensors"


def load(path: Path, shapes: dict[str, tuple]) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """{name: (int8 rows, float32 scales)} mapped from ``path``, or None if absent, stale or damaged."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            table = json.loads(f.read(n))
            sums = json.loads(table.pop("__metadata__", {}).get("xxh3", "{}"))
            data = torch.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), dtype=torch.uint8)
        out = {}
        for name, (rows, cols) in shapes.items():
            q, s = (_tensor(data, 8 + n, table, f"{name}.{part}", sums) for part in ("q", "scales"))
            if tuple(q.shape) != (rows, cols) or q.dtype != torch.int8 or tuple(s.shape) != (rows,):
                raise ValueError(f"{name}: shapes differ from the model's")
            out[name] = (q, s)
        return out
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as e:
        log.warning("%s: not used (%s); quantising again", path, e)
        return None


def _tensor(data: torch.Tensor, start: int, table: dict, key: str, sums: dict) -> torch.Tensor:
    info = table[key]
    begin, stop = (start + int(o) for o in info["data_offsets"])
    raw = data[begin:stop]
    if stop > data.numel() or xxhash.xxh3_64_hexdigest(raw.numpy()) != sums.get(key):
        raise ValueError(f"{key}: checksum mismatch (damaged or cut short)")
    return raw.view(_TYPES[info["dtype"]]).view(info["shape"])


def save(path: Path, layers: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write ``layers`` to ``path`` atomically (best effort: a failure is logged, never raised)."""
    # The float32 scales first and the int8 rows after: every tensor stays aligned to its element size.
    tensors = {f"{name}.scales": s.float().contiguous() for name, (_, s) in layers.items()}
    tensors |= {f"{name}.q": q.contiguous() for name, (q, _) in layers.items()}
    table, offset = {}, 0
    for key, t in tensors.items():
        table[key] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    sums = {key: xxhash.xxh3_64_hexdigest(t.view(-1).view(torch.uint8).numpy()) for key, t in tensors.items()}
    table["__metadata__"] = {"xxh3": json.dumps(sums)}
    head = json.dumps(table).encode()
    head += b" " * (-len(head) % 8)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for t in tensors.values():
                f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.warning("%s: int8 weights not cached (%s)", path, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
