"""Small helpers shared by the benchmarks: timers, percentiles, peak RSS, a plain-text table."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def repeat_ms(fn: Callable, n: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``n`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def print_table(title: str, rows: list[tuple]) -> None:
    """rows: (metric, value, unit/notes); values formatted to 4 significant digits."""
    print(f"\n== {title}")
    width = max(len(str(r[0])) for r in rows)
    for metric, value, note in rows:
        v = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {metric:<{width}}  {v:>12}  {note}")


def print_grid(title: str, columns: list[str], rows: list[tuple]) -> None:
    """rows: (metric, [one cell per column], note); a float cell is formatted to 4 significant digits."""
    print(f"\n== {title}")
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r[1]] for r in rows]
    width = max(len(str(r[0])) for r in rows)
    col_w = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print(f"  {'':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, col_w)))
    for (metric, _, note), line in zip(rows, cells):
        print(f"  {metric:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(line, col_w)) + (f"  {note}" if note else ""))
