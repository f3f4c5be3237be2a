"""Packing stored pages (raw fp16 bytes, zero-copy LMDB views) into reused tensors for scoring.

Two layouts, one per device (see :mod:`jevsearch.search.maxsim`):

* :class:`ConcatPacker` (CPU): pages laid end to end, no padding to write or to score;
* :class:`PagePacker` (GPU): pages padded to one length, [C, T, d], for one big batched kernel.

Both own buffers that only grow: the hot path (about 100 candidate pages of ~770 x 128 per query)
reuses them instead of faulting in fresh memory per query.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import torch

# torch warns that a read-only buffer (an LMDB view) is not writable, though the packers only read
# it. The warning is emitted once per process, so emit it here, silenced, instead of filtering
# warnings on the hot path: warnings.catch_warnings is not thread-safe, and packers run on workers.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    torch.frombuffer(b"\0\0", dtype=torch.float16)


def _grown(buf: torch.Tensor, need: int) -> torch.Tensor:
    # Grow by 1.5x so a slowly growing block does not reallocate every query.
    if buf.numel() >= need:
        return buf
    return torch.empty(max(need, int(buf.numel() * 1.5)), dtype=buf.dtype)


class ConcatPacker:
    """Copy pages end to end into a reused float32 [N, d] buffer, converting from the stored dtype.

    Also holds the reused similarity buffer of the block it packed (see ``sim``).

    >>> import numpy as np
    >>> p = ConcatPacker(dim=2, stored=np.float16)
    >>> a = np.array([[1, 0], [0, 1]], np.float16).tobytes(); b = np.array([[0.5, 0.5]], np.float16).tobytes()
    >>> tokens, starts = p.pack([a, b], [2, 1])
    >>> tokens.tolist(), starts.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [0, 2])
    """

    def __init__(self, dim: int, stored: np.dtype):
        self.dim = dim
        self.stored = torch.from_numpy(np.zeros(0, dtype=stored)).dtype
        self._buf = torch.empty(0, dtype=torch.float32)
        self._sim = torch.empty(0, dtype=torch.float32)

    def pack(self, raws: Iterable, lengths: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Pages ``raws[c]`` of ``lengths[c]`` tokens -> (tokens [N, d], starts [C]: first row of each).

        ``raws`` is read once, in order (it may be a generator that fetches each page as it is
        reached). The tokens are a view of the reused buffer: valid until the next ``pack`` call.
        """
        d = self.dim
        starts = np.zeros(len(lengths), dtype=np.intp)
        np.cumsum(lengths[:-1], out=starts[1:])
        n = int(starts[-1]) + lengths[-1]
        self._buf = _grown(self._buf, n * d)
        for raw, s, k in zip(raws, starts.tolist(), lengths):
            self._buf[s * d:(s + k) * d].copy_(torch.frombuffer(raw, dtype=self.stored))  # converts dtype
        return self._buf[: n * d].view(n, d), starts

    def sim(self, rows: int, cols: int) -> torch.Tensor:
        """A reused float32 [rows, cols] buffer for the block's similarity matrix."""
        self._sim = _grown(self._sim, rows * cols)
        return self._sim[: rows * cols].view(rows, cols)


class PagePacker:
    """Copy pages into a reused [C, T, d] tensor, padded with copies of each page's own first token.

    >>> import numpy as np, torch
    >>> p = PagePacker(dim=2, stored=np.float16, device=torch.device("cpu"), dtype=torch.float32)
    >>> a = np.array([[1, 0], [0, 1]], np.float16).tobytes(); b = np.array([[0.5, 0.5]], np.float16).tobytes()
    >>> p.pack([a, b], [2, 1])[1].tolist()     # page 2 padded with a copy of its own token
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, dim: int, stored: np.dtype, device: torch.device, dtype: torch.dtype):
        self.dim = dim
        self.stored = torch.from_numpy(np.zeros(0, dtype=stored)).dtype
        self.device = device
        self.dtype = dtype
        # Converted on the host when scoring on the CPU; on a GPU the stored dtype is shipped as is.
        self._buf = torch.empty(0, dtype=dtype if device.type == "cpu" else self.stored)

    def pack(self, raws: list, lengths: list[int]) -> torch.Tensor:
        """Pages ``raws[c]`` of ``lengths[c]`` tokens -> [C, max length, d] on the scoring device.

        The result is a view of the reused buffer (on the CPU): valid until the next ``pack`` call.
        """
        c, t, d = len(raws), max(lengths), self.dim
        self._buf = _grown(self._buf, c * t * d)
        out = self._buf[: c * t * d].view(c, t, d)  # [C, T, d]
        for i, (raw, n) in enumerate(zip(raws, lengths)):
            out[i, :n].copy_(torch.frombuffer(raw, dtype=self.stored).view(n, d))  # converts dtype
            if n < t:
                out[i, n:] = out[i, 0]
        if self.device.type != "cpu":
            return out.to(self.device, dtype=self.dtype)
        return out
