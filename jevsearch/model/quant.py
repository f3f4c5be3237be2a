"""Weight-only int8 for the language model's linear layers, on torch's maintained int8 CPU kernel.

Each weight row (output channel) is stored as int8 with one scale, ``w ~= q * scale``; activations stay
in floating point and the kernel (``aten._weight_int8pack_mm``) dequantises as it streams the rows,
so a short query reads a quarter of float32's bytes. Opt-in: random test weights lack the outliers
of real ones, so its quality must be checked on real data (``jevsearch eval``).

>>> lin = torch.nn.Linear(64, 32)
>>> q = Int8Linear.from_float(lin.weight.detach(), lin.bias, torch.float32)
>>> q(torch.randn(3, 64)).shape
torch.Size([3, 32])
"""

from __future__ import annotations

import torch
from torch import nn


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [N, K], scales float32 [N]) with ``weight ~= q * scales[:, None]``."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A drop-in for ``nn.Linear`` (also as a peft LoRA ``base_layer``) holding int8 rows + scales."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, input_dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.input_dtype = input_dtype  # what the kernel is fastest with on this CPU (jevsearch.model.cpu)
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("scales", scales.to(input_dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias, input_dtype: torch.dtype) -> Int8Linear:
        q, scales = quantize_rows(weight)
        return cls(q, scales, bias, input_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.input_dtype)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"
