"""Weights from the safetensors files into parameters: read once, in the target dtype, part by part.

:class:`LazyWeights` holds a module built with empty (meta) parameters and the plan of where each
parameter is in the files (:func:`jevsearch.model.checkpoint.plan_strict`); :meth:`LazyWeights.load`
reads one part (the language side with the model, the vision tower at the first image).

Weights already in the target dtype are not read at all: the parameters are the files' pages,
memory-mapped (:func:`read_tensors`). Others are converted straight from the mapped pages.

>>> from jevsearch.model import checkpoint
>>> snap = checkpoint.resolve_snapshot("tests/fixtures/jina-v4-tiny/ckpt")
>>> module, config, weights = checkpoint.load_module(snap, "cpu", torch.bfloat16, vision=False)
>>> weights.vision_loaded
False
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from jevsearch.errors import CheckpointError

#: Parameter-name prefix of the vision tower: loaded only when an image is encoded.
VISION = "model.visual."
#: Parameters that weight-only int8 quantises: the language model's linear layers (LoRA-wrapped or not).
_INT8 = re.compile(r"^model\.language_model\.layers\.\d+\.\w+\.\w+_proj\.(base_layer\.)?weight$")
#: The token embedding table: only a query's rows are read, so it stays in the files' dtype (mapped).
EMBED = "model.language_model.embed_tokens.weight"
_STAGE = 1 << 25  # bytes staged per read when a tensor changes dtype: bounds the loader's extra memory
REDOWNLOAD = "download the model snapshot again, e.g. `hf download jinaai/jina-embeddings-v4 --local-dir DIR`"


def _nbytes(shape: tuple, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * dtype.itemsize


def read_tensors(plan: dict, dtype: torch.dtype, device="cpu", scratch: bool = False) -> Iterator:
    """Yield (name, tensor in ``dtype`` on ``device``) for every entry of ``plan``, file by file.

    The files are memory-mapped copy-on-write. A tensor stored in ``dtype`` is the file's own bytes
    (on the CPU no copy at all: the page cache holds the weights once, for every process that maps
    them); any other is converted from the mapping into its own memory, a bounded chunk at a time,
    each chunk's file pages let go of once converted (so they never add up in the process's memory).
    ``scratch``: each tensor is only valid until the next one (one reused buffer, for callers that
    convert and drop it).
    """
    cpu = torch.device(device).type == "cpu"
    reused = None
    if scratch:
        reused = torch.empty(max((_nbytes(e[3], dtype) for e in plan.values()), default=0), dtype=torch.uint8)
    stage = None
    by_file: dict[Path, list] = {}
    for name, entry in plan.items():
        by_file.setdefault(entry[0], []).append((name, entry))
    for path, items in by_file.items():
        with open(path, "rb", buffering=0) as f:
            mm, data = _map(f)
            for name, (_, key, src, shape, begin, stop) in sorted(items, key=lambda it: it[1][4]):
                if stop > _size(f) or stop - begin != _nbytes(shape, src):
                    raise CheckpointError(f"{path}: {key} cut short (hint: {REDOWNLOAD})")
                aligned = data is not None and begin % src.itemsize == 0
                if aligned and src == dtype and not scratch:
                    view = data[begin:stop].view(dtype).view(shape)
                    yield name, view if cpu else view.to(device)
                    continue
                out = (reused[:_nbytes(shape, dtype)].view(dtype).view(shape) if reused is not None
                       else torch.empty(shape, dtype=dtype))
                if aligned:
                    _convert_mapped(mm, data, out.view(-1), src, begin)
                else:  # not mappable (or misaligned): read through a staging buffer
                    if stage is None or stage.dtype != src:
                        stage = torch.empty(_STAGE // src.itemsize, dtype=src)
                    f.seek(begin)
                    _read_converted(f, out.view(-1), stage, path, key)
                yield name, out if cpu else out.to(device)


def _map(f) -> tuple[mmap.mmap | None, torch.Tensor | None]:
    """The whole file mapped copy-on-write, and as a byte tensor ((None, None) if it cannot be, e.g. empty)."""
    try:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None, None
    return mm, torch.frombuffer(mm, dtype=torch.uint8)


def _size(f) -> int:
    return os.fstat(f.fileno()).st_size


def _convert_mapped(mm: mmap.mmap, data: torch.Tensor, out: torch.Tensor, src: torch.dtype, begin: int) -> None:
    """``out`` (flat) := the ``src`` values at ``begin`` of the mapping, a chunk at a time; each chunk's
    whole pages are dropped from this process's mapping after (the page cache keeps them)."""
    step = _STAGE // src.itemsize
    for i in range(0, out.numel(), step):
        n = min(step, out.numel() - i)
        lo, hi = begin + i * src.itemsize, begin + (i + n) * src.itemsize
        out[i:i + n].copy_(data[lo:hi].view(src))
        lo, hi = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE, hi // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo and hasattr(mmap, "MADV_DONTNEED"):  # only pages wholly inside: neighbours may be parameters
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _read_converted(f, out: torch.Tensor, stage: torch.Tensor, path: Path, key: str) -> None:
    item, done = stage.element_size(), 0
    while done < out.numel():
        n = min(stage.numel(), out.numel() - done)
        view = stage[:n]
        if f.readinto(view.view(torch.uint8).numpy()) != n * item:
            raise CheckpointError(f"{path}: {key} cut short (hint: {REDOWNLOAD})")
        out[done:done + n].copy_(view)
        done += n


def assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` the parameter ``name`` of ``module`` (no copy; replaces a meta placeholder)."""
    owner, _, attr = name.rpartition(".")
    setattr(module.get_submodule(owner), attr, nn.Parameter(tensor, requires_grad=False))


class LazyWeights:
    """A module built with empty (meta) parameters and the plan of where each one is in the files.

    :meth:`load` reads a part's tensors straight into new parameters (one copy, in the target dtype);
    the language side loads with the model, the vision tower on the first image (:meth:`load_vision`).
    ``int8``: the language model's linear layers become :class:`~jevsearch.model.quant.Int8Linear`,
    quantised once and then mapped from ``int8_cache``.
    """

    def __init__(self, module: nn.Module, plan: dict, device, dtype: torch.dtype, int8: bool,
                 int8_cache: Path | None = None):
        self.module, self.device, self.dtype, self.int8 = module, torch.device(device), dtype, int8
        self.int8_cache = int8_cache  # where the quantised layers are kept (jevsearch.model.int8cache)
        self._pending = dict(plan)  # real parameter name -> where it is
        self._lock = threading.Lock()

    @property
    def vision_loaded(self) -> bool:
        return not any(n.startswith(VISION) for n in self._pending)

    def load_vision(self) -> None:
        """Load the vision tower if it is not yet (thread-safe; a no-op after the first call)."""
        self.load(lambda n: n.startswith(VISION))

    def load(self, part: Callable[[str], bool]) -> int:
        """Load every pending parameter whose name satisfies ``part``; returns how many."""
        with self._lock:
            names = [n for n in self._pending if part(n)]
            if not names:
                return 0
            quantised = {n for n in names if self.int8 and _INT8.match(n)}
            mapped = {n for n in names if n == EMBED and self._upcast(self._pending[n][2])}
            plain = {n: self._pending[n] for n in names if n not in quantised | mapped}
            with torch.no_grad():
                for name, tensor in read_tensors(plain, self.dtype, self.device):
                    assign(self.module, name, tensor)
                for name in mapped:  # rows converted as they are looked up: exact, and no float32 copy
                    ((_, tensor),) = read_tensors({name: self._pending[name]}, self._pending[name][2])
                    assign(self.module, name, tensor)
                    CastEmbedding.wrap(self.module.get_submodule(name.rpartition(".")[0]), self.dtype)
                self._quantise({n: self._pending[n] for n in names if n in quantised})
            for n in names:
                del self._pending[n]
            return len(names)

    def _upcast(self, src: torch.dtype) -> bool:
        """Whether ``src`` values become this load's dtype exactly, and bigger (bf16 -> float32, CPU)."""
        return self.device.type == "cpu" and self.dtype == torch.float32 and src in (torch.bfloat16, torch.float16)

    def _quantise(self, plan: dict) -> None:
        from jevsearch.model import int8cache
        from jevsearch.model.cpu import int8_input_dtype
        from jevsearch.model.quant import Int8Linear, quantize_rows

        if not plan:
            return
        path = self.int8_cache
        layers = int8cache.load(path, {n: e[3] for n, e in plan.items()}) if path else None
        if layers is None:
            layers = {name: quantize_rows(w) for name, w in read_tensors(plan, torch.float32, scratch=True)}
            if path:
                int8cache.save(path, layers)
        for name, (q, scales) in layers.items():  # biases are loaded by now
            owner_name = name.rpartition(".")[0]
            owner = self.module.get_submodule(owner_name)
            parent_name, _, attr = owner_name.rpartition(".")
            bias = owner.bias if owner.bias is not None and owner.bias.device.type != "meta" else None
            setattr(self.module.get_submodule(parent_name), attr, Int8Linear(q, scales, bias, int8_input_dtype()))


class CastEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table stays in the files' dtype; looked-up rows come out in ``out_dtype``."""

    out_dtype: torch.dtype = torch.float32

    @classmethod
    def wrap(cls, emb: nn.Embedding, out_dtype: torch.dtype) -> CastEmbedding:
        emb.__class__, emb.out_dtype = cls, out_dtype
        return emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.out_dtype)
