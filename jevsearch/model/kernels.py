"""The language model's linear layers on the matmul kernel this CPU runs fastest, chosen by measurement.

A short query multiplies a few rows by every weight matrix of the 3B language model. torch's
``F.linear`` hands that to MKL's sgemm, which on some CPUs runs such small-M products far below the
speed of merely reading the weights; oneDNN's inner product (``mkldnn._linear_pointwise``, the kernel
``torch.compile`` uses for frozen CPU linears) keeps the same dense weights and is often several times
faster there. Which one wins depends on the CPU, so it is timed once per process and dtype on a
query-shaped product, and oneDNN is used only where it is both exact and faster.

>>> lin = torch.nn.Linear(64, 32)
>>> fast = OneDnnLinear.wrap(lin)
>>> fast(torch.randn(3, 64)).shape
torch.Size([3, 32])
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)

#: A short query's rows through one MLP matrix of the real model (rows, in, out).
_PROBE = (12, 2048, 11008)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose forward runs oneDNN's inner product on the same (dense) weights."""

    @classmethod
    def wrap(cls, linear: nn.Linear) -> OneDnnLinear:
        """Turn ``linear`` into this class in place (no copy of its weights); returns it."""
        linear.__class__ = cls
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return super().forward(x)
        return _onednn(x, self.weight, self.bias)


@functools.cache
def onednn_faster(dtype: torch.dtype) -> bool:
    """Whether oneDNN's inner product is exact and faster than ``F.linear`` here for ``dtype``."""
    if not torch.backends.mkldnn.is_available():
        return False
    m, k, n = _PROBE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    with torch.no_grad():
        try:
            got = _onednn(x, w, b)
        except RuntimeError:  # no oneDNN kernel for this dtype on this CPU
            return False
        want = torch.nn.functional.linear(x, w, b)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if not torch.allclose(got.float(), want.float(), atol=tol, rtol=tol):
            return False
        plain = _best(lambda: torch.nn.functional.linear(x, w, b), 3)
        fast = _best(lambda: _onednn(x, w, b), 3)
    log.debug("linear %s: F.linear %.2f ms, oneDNN %.2f ms", dtype, plain * 1e3, fast * 1e3)
    return fast < 0.9 * plain


def use_fast_linears(module: nn.Module, dtype: torch.dtype) -> int:
    """Switch every plain ``nn.Linear`` in ``module`` to oneDNN where :func:`onednn_faster`; returns how many."""
    if not onednn_faster(dtype):
        return 0
    n = 0
    for sub in module.modules():
        if type(sub) is nn.Linear and sub.weight.dtype == dtype and sub.weight.device.type == "cpu":
            OneDnnLinear.wrap(sub)
            n += 1
    return n


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
