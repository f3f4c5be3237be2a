"""What this CPU does well, measured once per process: the default dtype and the int8 kernel's input dtype.

bfloat16 halves the bytes a short query streams, but it is fast only where the CPU computes in bf16
natively (AVX-512 BF16 or AMX); elsewhere it is emulated and slower than float32. So the CPU default
is bfloat16 only where the flags say native *and* a timed matmul of a query's shape agrees.

>>> default_cpu_dtype() in (torch.float32, torch.bfloat16)
True
>>> choose_dtype(frozenset({"avx2"}), time_matmul=None)   # no native bf16: nothing to time
torch.float32
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from jevsearch.model.kernels import _best, onednn_faster

#: /proc/cpuinfo flags of native bf16 arithmetic.
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
#: The matmul timed: a short query's rows through one square layer of the real model.
_PROBE = (12, 2048, 2048)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def choose_dtype(flags: frozenset[str], time_matmul: Callable[[torch.dtype], float] | None) -> torch.dtype:
    """bfloat16 if ``flags`` show native bf16 and ``time_matmul(bf16) < time_matmul(float32)``, else float32."""
    if not NATIVE_BF16 & flags or time_matmul is None:
        return torch.float32
    return torch.bfloat16 if time_matmul(torch.bfloat16) < time_matmul(torch.float32) else torch.float32


@functools.cache
def default_cpu_dtype() -> torch.dtype:
    """The CPU default dtype of this machine (measured on the first call)."""
    return choose_dtype(cpu_flags(), time_linear)


def time_linear(dtype: torch.dtype, shape: tuple[int, int, int] = _PROBE, reps: int = 5) -> float:
    """Best-of-``reps`` seconds of ``F.linear`` with ``shape`` = (rows, in, out) in ``dtype``."""
    m, k, n = shape
    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    return _best(lambda: torch.nn.functional.linear(x, w), reps)


@functools.cache
def int8_input_dtype() -> torch.dtype:
    """The activation dtype torch's weight-only int8 matmul runs fastest with here (bf16 or float32)."""
    m, k, n = _PROBE
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    times = {}
    for dtype in (torch.bfloat16, torch.float32):
        x, s = torch.randn(m, k).to(dtype), torch.rand(n).to(dtype)
        times[dtype] = _best(lambda: torch.ops.aten._weight_int8pack_mm(x, w, s), 5)
    return min(times, key=times.get)


def kernel_report() -> dict:
    """What ran, for benchmark tables: CPU capability torch dispatches to, oneDNN/MKL, native bf16/AMX."""
    flags = cpu_flags()
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags, "avx2": "avx2" in flags,
        "default_dtype": str(default_cpu_dtype()).removeprefix("torch."),
        "onednn_linear": onednn_faster(default_cpu_dtype()),
        "int8_input_dtype": str(int8_input_dtype()).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
