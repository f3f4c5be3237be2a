"""Deliberate torch thread counts around the engine's own tensor work.

On a small shared machine, torch's OpenMP team is the bottleneck for the engine's many small ops:
measured on the project's 2-core box under load, converting one 770 x 128 page to float16 took
73 us with 1 thread and 2.9 ms with 2; a 100-candidate rerank went from ~40 ms to ~120 ms.
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
