"""Packing stored pages into one padded tensor for :func:`jevsearch.search.maxsim.maxsim`.

The packer owns a buffer that only grows: the hot path (about 100 candidate pages of ~770 x 128
per query) reuses it instead of faulting in ~40 MB of fresh memory per query.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


class PagePacker:
    """Copy raw per-page token matrices (bytes / zero-copy LMDB views) into a reused [C, T, d] tensor.

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
        self._host_dtype = dtype if device.type == "cpu" else self.stored
        self._buf = torch.empty(0, dtype=self._host_dtype)

    def pack(self, raws: list, lengths: list[int]) -> torch.Tensor:
        """Pages ``raws[c]`` of ``lengths[c]`` tokens -> [C, max length, d] on the scoring device.

        Shorter pages are padded with copies of their first token (never changes a max). The result
        is a view of the reused buffer: valid until the next ``pack`` call.
        """
        c, t, d = len(raws), max(lengths), self.dim
        if self._buf.numel() < c * t * d:
            # Grow by 1.5x so a slowly growing candidate set does not reallocate every query.
            self._buf = torch.empty(max(c * t * d, int(self._buf.numel() * 1.5)), dtype=self._host_dtype)
        out = self._buf[: c * t * d].view(c, t, d)  # [C, T, d]
        with warnings.catch_warnings():
            # LMDB views are read-only; torch warns about that even though it only reads them here.
            warnings.simplefilter("ignore", UserWarning)
            for i, (raw, n) in enumerate(zip(raws, lengths)):
                out[i, :n].copy_(torch.frombuffer(raw, dtype=self.stored).view(n, d))  # converts dtype
                if n < t:
                    out[i, n:] = out[i, 0]
        if self.device.type != "cpu":
            return out.to(self.device, dtype=self.dtype)
        return out
