"""Packing stored pages (codec values, zero-copy LMDB views) into reused tensors for scoring.

Two layouts, one per device (see :mod:`jevsearch.search.maxsim`):

* :class:`ConcatPacker` (CPU): pages laid end to end, no padding to write or to score;
* :class:`PagePacker` (GPU): pages padded to one length, [C, T, d], for one big batched kernel.

Both own buffers that only grow: the hot path (about 100 candidate pages of ~770 x 128 per query)
reuses them instead of faulting in fresh memory per query.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from jevsearch.search import codecs


def _grown(buf: torch.Tensor, need: int) -> torch.Tensor:
    # Grow by 1.5x so a slowly growing block does not reallocate every query.
    if buf.numel() >= need:
        return buf
    return torch.empty(max(need, int(buf.numel() * 1.5)), dtype=buf.dtype)


def _starts(lengths: list[int]) -> np.ndarray:
    """First row of each page when pages of ``lengths`` tokens lie end to end."""
    starts = np.zeros(len(lengths), dtype=np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


class ConcatPacker:
    """Unpack pages end to end into a reused [N, d] buffer (float32, or int8 for the ``binary``
    codec: ``codec.block_dtype``), from their stored values (``codec``: a
    :mod:`~jevsearch.search.codecs` codec or its name).

    Also holds the reused similarity buffer of the block it packed (see ``sim``), and ``scales``: the
    per-token scales of that block (float32 [N], ``int8`` pages) or None.

    >>> import numpy as np
    >>> p = ConcatPacker(dim=2, codec="fp16")
    >>> a = np.array([[1, 0], [0, 1]], np.float16).tobytes(); b = np.array([[0.5, 0.5]], np.float16).tobytes()
    >>> tokens, starts = p.pack([a, b], [2, 1])
    >>> tokens.tolist(), starts.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [0, 2])
    """

    def __init__(self, dim: int, codec):
        self.dim = dim
        self.codec = codecs.get(codec, dim)
        self._bufs: dict[str, torch.Tensor] = {}
        self.scales: torch.Tensor | None = None

    def buffer(self, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """A reused 1-d scratch tensor of at least ``numel`` elements, one per (name, dtype)."""
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype:
            buf = torch.empty(0, dtype=dtype)
        self._bufs[name] = buf = _grown(buf, numel)
        return buf

    def array(self, name: str, dtype, shape: tuple) -> np.ndarray:
        """A reused numpy scratch array (a view of a buffer of ``buffer``)."""
        dtype = np.dtype(dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        return self.buffer(name, torch.uint8, need)[:need].numpy().view(dtype).reshape(shape)

    def pack(self, raws: Iterable, lengths: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Pages ``raws[c]`` of ``lengths[c]`` tokens -> (tokens [N, d], starts [C]: first row of each).

        ``raws`` is read once, in order (it may be a generator that fetches each page as it is
        reached). The tokens are a view of the reused buffer: valid until the next ``pack`` call.
        """
        d, starts = self.dim, _starts(lengths)
        n = int(starts[-1]) + lengths[-1]
        tokens = self.buffer("tokens", self.codec.block_dtype, n * d)[: n * d].view(n, d)
        self.scales = self.codec.unpack_block(raws, lengths, starts, tokens, self.buffer)
        return tokens, starts

    def pack_signs(self, raws: Iterable, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``binary`` pages -> (their sign bits end to end, uint8 [N, d/8]; starts [C]), not unpacked."""
        starts = _starts(lengths)
        return self.codec.stage_block(raws, lengths, starts, self.buffer).numpy(), starts

    def sim(self, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reused [rows, cols] buffer for the block's similarity matrix."""
        return self.buffer("sim", dtype, rows * cols)[: rows * cols].view(rows, cols)


class PagePacker:
    """Copy pages' stored parts into reused padded [C, T, ...] host buffers, padded with copies of each
    page's own first token, and unpack them on the scoring device (torch ops: on a GPU the small
    codes cross the bus, not float tokens).

    >>> import numpy as np, torch
    >>> p = PagePacker(dim=2, codec="fp16", device=torch.device("cpu"), dtype=torch.float32)
    >>> a = np.array([[1, 0], [0, 1]], np.float16).tobytes(); b = np.array([[0.5, 0.5]], np.float16).tobytes()
    >>> p.pack([a, b], [2, 1])[1].tolist()     # page 2 padded with a copy of its own token
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, dim: int, codec, device: torch.device, dtype: torch.dtype):
        self.dim = dim
        self.codec = codecs.get(codec, dim)
        self.device = device
        self.dtype = dtype
        self._host: list[np.ndarray] = []  # one flat buffer per part, grown like _grown

    def pack(self, raws: list, lengths: list[int]) -> torch.Tensor:
        """Pages ``raws[c]`` of ``lengths[c]`` tokens -> [C, max length, d] in ``dtype`` on the device."""
        c, t = len(raws), max(lengths)
        parts = [self.codec.split(raw, n) for raw, n in zip(raws, lengths)]
        out = []
        for i, first in enumerate(parts[0]):
            shape = (c, t) + first.shape[1:]
            need = int(np.prod(shape))
            if len(self._host) <= i:
                self._host.append(np.empty(0, dtype=first.dtype))
            if self._host[i].size < need:
                self._host[i] = np.empty(max(need, int(self._host[i].size * 1.5)), dtype=first.dtype)
            host = self._host[i][:need].reshape(shape)  # [C, T, ...]
            for page, (p, n) in enumerate(zip(parts, lengths)):
                host[page, :n] = p[i]
                host[page, n:] = p[i][0]  # a duplicate token never changes a max
            out.append(torch.from_numpy(host).to(self.device))
        return self.codec.unpack(tuple(out), self.dtype)
