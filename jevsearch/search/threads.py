"""Deliberate torch thread counts around the engine's own tensor work.

On a small shared machine, torch's OpenMP team is the bottleneck for the engine's many small ops: its
threads wait for cores, so one thread is faster than two there (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int):
    """Run torch intra-op work with ``n`` threads inside the block, then restore the caller's setting.

    Process-global (torch has no per-thread setting): do not run other torch work in parallel
    threads while an Engine call is in flight. Switching costs well under a microsecond.
    """
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
