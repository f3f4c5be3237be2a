"""The codec comparison of ``benchmarks/search.py``: the same corpus stored as fp16 (today's storage,
the baseline) and in the compact layouts of issue 13, measured in the same run.

Configurations (``--codecs``): ``fp16``; ``binary+exact`` (binary codes, exact float16 tokens kept for
the final rescoring); ``binary`` (codes only); ``int8`` (codes only); ``binary/2`` (binary, tokens
pooled by 2 at ingest). The machine is shared and loaded, so the configurations alternate query by
query (and document by document while building), and the tables give ratios to fp16 of the same run.

* hot bytes: the stored bytes (codes, plus exact tokens) a 100-candidate query fetches, summed from
  the values the search path reads (checksums included);
* bytes on disk per page: the LMDB file and the HNSW file, per live page, and per part;
* recall@10 against fp16 two-stage at the same candidates, and against exhaustive fp16 MaxSim
  at candidates 100 / 200 / 400 / 1000 (each layout's default rescore);
* warm p50: every value the timed queries read was read before (each setting run once per query first),
  so it is mapped and in the page cache;
* cold p50: before each timed query the index is closed (LMDB unmapped), its data file dropped from
  the page cache with ``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` on ``data.mdb``, and the
  index reopened (the HNSW, loaded into memory at open, stays warm: only LMDB is cold). Ratios are
  given against fp16 on this code's I/O path (maps advised MADV_RANDOM, a cold fetch read ahead by
  threads) and against fp16 on the path before it, "today's" of the issue (:func:`todays_io`: OS
  read-around on, values read one page fault at a time), timed in the same loop;
* resident: the data file's pages mapped in this process after the warm queries (/proc/self/smaps).
"""

from __future__ import annotations

import contextlib
import os
import time

import lmdb
import numpy as np

from benchmarks._util import pct, print_grid
from jevsearch import Engine
from jevsearch.index import search
from jevsearch.store import fetch as store_fetch
from jevsearch.store import lmdbenv
from jevsearch.store.lmdbenv import DATA_FILE, current_env

CONFIGS = {
    "fp16": {"codec": "fp16"},
    "binary+exact": {"codec": "binary", "keep_exact": True},
    "binary": {"codec": "binary", "keep_exact": False},
    "int8": {"codec": "int8", "keep_exact": False},
    "binary/2": {"codec": "binary", "keep_exact": False, "pool_factor": 2},
}
CANDIDATES = (100, 200, 400, 1000)


def data_file(path: str) -> str:
    return os.path.join(current_env(path)[0], DATA_FILE)


def drop_cache(path: str) -> None:
    """Evict the index's LMDB data file from the page cache (nothing may map it: close it first)."""
    fd = os.open(data_file(path), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def todays_io():
    """Indexes opened inside read as before the cold-read work of issue 13: LMDB maps with OS
    read-around (readahead=True), and no reading ahead of a cold fetch (benchmark instrumentation)."""
    real_open, threshold = lmdb.open, store_fetch.COLD_FETCH_S
    lmdbenv.lmdb.open = lambda *a, **k: real_open(*a, **dict(k, readahead=True))
    store_fetch.COLD_FETCH_S = float("inf")
    try:
        yield
    finally:
        lmdbenv.lmdb.open, store_fetch.COLD_FETCH_S = real_open, threshold


def resident_mb(path: str) -> float:
    """MB of the index's data file resident in this process's mapping."""
    target, total, inside = os.path.realpath(data_file(path)), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 6 and "-" in head[0]:
                inside = os.path.realpath(head[-1]) == target if head[-1].startswith("/") else False
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


class Counted:
    """Counts the stored bytes an index's search path fetches, per table (benchmark instrumentation
    of a private function, wrapped once for every engine: the values the scorer then reads)."""

    by_state: dict = {}

    def __init__(self, eng: Engine):
        self.bytes = {"multi": 0, "exact": 0}
        if not Counted.by_state:
            fetch = search._fetch

            def counted(st, txn, page_ids, table="multi"):
                out = fetch(st, txn, page_ids, table)
                if st in Counted.by_state:
                    Counted.by_state[st].bytes[table] += sum(len(r) for r in out[1])
                return out
            search._fetch = counted
        Counted.by_state[eng._state] = self


def compare(paths: dict[str, str], build: dict, queries: list, ex_sets: list[set], k: int, n_cold: int) -> None:
    names = list(paths)
    base = names[0]
    engs = {n: Engine.open(p, readonly=True) for n, p in paths.items()}
    try:
        stats = {n: e.stats() for n, e in engs.items()}
        counters = {n: Counted(e) for n, e in engs.items()}
        hits = lambda n, qs, qm, c: {(h.doc_id, h.page) for h in engs[n].search_embeddings(qs, qm, k=k, candidates=c)}  # noqa: E731
        for qs, qm, _ in queries:  # warm: every value read below mapped and cached (the exact pages
            for n in names:        # rescored differ with the candidates: each setting runs once)
                for c in CANDIDATES:
                    hits(n, qs, qm, c)
            if "binary+exact" in engs:
                for c, r in SWEEP:
                    engs["binary+exact"].search_embeddings(qs, qm, k=k, candidates=c, rescore=r)
        lat = {(n, c): [] for n in names for c in CANDIDATES}
        sets = {(n, c): [] for n in names for c in CANDIDATES}
        for c in CANDIDATES:
            for n in names:
                counters[n].bytes = {"multi": 0, "exact": 0}
            for i, (qs, qm, _) in enumerate(queries):
                for n in _rotated(names, i):  # alternating: a load spike hits every configuration alike
                    t = time.perf_counter()
                    s = hits(n, qs, qm, c)
                    lat[n, c].append((time.perf_counter() - t) * 1e3)
                    sets[n, c].append(s)
            if c == 100:
                hot = {n: {t: b / len(queries) for t, b in counters[n].bytes.items()} for n in names}
        resident = {n: resident_mb(paths[n]) for n in names}
        sweep = _rescore_sweep(engs, queries, ex_sets, k, {c: sets["fp16", c] for c in CANDIDATES}) \
            if {"binary+exact", "fp16"} <= set(engs) else []
        cold = {n: [] for n in names}
        today = []  # the baseline on the I/O path before this (see todays_io)
        for qs, qm, _ in queries[:n_cold]:
            for n in [*names, None]:
                name = n or base
                engs[name].close()
                drop_cache(paths[name])
                with todays_io() if n is None else contextlib.nullcontext():
                    engs[name] = Engine.open(paths[name], readonly=True)
                    t = time.perf_counter()
                    hits(name, qs, qm, 100)
                    (today if n is None else cold[n]).append((time.perf_counter() - t) * 1e3)
            engs[base].close()
            engs[base] = Engine.open(paths[base], readonly=True)  # on this code's I/O path again
    finally:
        for e in engs.values():
            e.close()

    def ratio(values: dict, against: float | None = None) -> list[str]:
        against = values[base] if against is None else against
        return [f"{values[n]:.4g} ({values[n] / against:.3g}x)" if against else f"{values[n]:.4g}" for n in names]

    def recall(a: list[set], b: list[set]) -> float:
        return float(np.mean([len(x & y) / max(1, len(y)) for x, y in zip(a, b)]))

    pages = {n: stats[n]["pages"] for n in names}
    disk = {n: (stats[n]["bytes"]["lmdb_file"] + stats[n]["bytes"]["hnsw_file"]) / pages[n] for n in names}
    hot_codes = {n: hot[n]["multi"] for n in names}
    hot_all = {n: hot[n]["multi"] + hot[n]["exact"] for n in names}
    p50 = {(n, c): pct(lat[n, c], 50) for n in names for c in CANDIDATES}
    rows = [
        ("hot bytes / 100-cand query, codes", ratio(hot_codes), "B (multi table values fetched)"),
        ("  codes + exact rescored", ratio(hot_all), "B"),
        ("bytes on disk / page, all parts", ratio(disk), "B (LMDB file + HNSW file)"),
    ]
    for part in ("multi_codes", "exact", "singles", "hnsw", "other"):
        rows.append((f"  {part}", [f"{stats[n]['bytes_per_page'][part]:.0f}" for n in names], "B/page"))
    rows += [
        ("recall@10 vs fp16 two-stage, c=100", [recall(sets[n, 100], sets[base, 100]) for n in names], ""),
        ("warm p50, c=100", ratio({n: p50[n, 100] for n in names}), "ms"),
        ("warm p95, c=100", ratio({n: pct(lat[n, 100], 95) for n in names}), "ms"),
        ("cold p50, c=100", ratio({n: pct(cold[n], 50) for n in names}), f"ms ({n_cold} queries, data.mdb evicted)"),
        ("  x fp16 on today's I/O path", ratio({n: pct(cold[n], 50) for n in names}, pct(today, 50)),
         f"ms (fp16 there: {pct(today, 50):.4g} ms; read-around on, one fault at a time)"),
        ("resident data file after warm queries", ratio(resident), "MB mapped"),
    ]
    for c in CANDIDATES:
        rows.append((f"recall@10 vs exhaustive, c={c}", [recall(sets[n, c][:len(ex_sets)], ex_sets) for n in names],
                     ""))
        rows.append((f"  warm p50, c={c}", ratio({n: p50[n, c] for n in names}), "ms"))
    rows += [
        ("ingest write rate", ratio({n: pages[n] / (build["add_s"][n] + build["flush_s"][n]) for n in names}),
         "pages/s (add_embeddings + flush, pooling included)"),
        ("pooling time / page", [f"{build['pool_ms']:.1f}" if stats[n]["pool_factor"] > 1 else "-" for n in names],
         "ms (pool_tokens on one core, 770-token pages)"),
    ]
    print_grid(f"codecs ({pages[base]} pages; defaults: rescore as each layout's, k={k}; ratios vs {base})",
               names, rows)
    if sweep:
        print_grid("binary+exact: candidates x rescore (recall@10 vs exhaustive and vs fp16 two-stage at the same "
                   "candidates; warm p50 ms, and its ratio to fp16 at c=100 timed in turn)",
                   ["vs exhaustive", "vs fp16", "p50", "x fp16 c=100"],
                   [(f"c={c} rescore={r}", [rec, vs, ms, x], "") for c, r, rec, vs, ms, x in sweep])


SWEEP = ((100, 10), (100, 16), (100, 20), (100, 30), (100, 40), (200, 20), (250, 20), (250, 30), (300, 20),
         (400, 20), (1000, 20))


def _rotated(items: list, i: int) -> list:
    """``items`` starting at the i-th: each comes after every other as often (the previous query's
    data in the caches helps or hurts the next one)."""
    i %= len(items)
    return list(items[i:]) + list(items[:i])


def _rescore_sweep(engs: dict, queries: list, ex_sets: list[set], k: int, fp16_sets: dict) -> list[tuple]:
    """(candidates, rescore, recall@k vs exhaustive, vs fp16 at the same candidates ("-" if not run),
    warm p50 ms, its ratio to fp16's at c=100) for binary+exact settings, each query also run on fp16
    at c=100 in turn (the baseline of the same moments)."""
    eng, base = engs["binary+exact"], engs["fp16"]
    lat = {s: [] for s in SWEEP + (None,)}
    sets = {s: [] for s in SWEEP}
    for i, (qs, qm, _) in enumerate(queries):
        for s in _rotated(SWEEP + (None,), i):
            t = time.perf_counter()
            found = base.search_embeddings(qs, qm, k=k, candidates=100) if s is None else \
                eng.search_embeddings(qs, qm, k=k, candidates=s[0], rescore=s[1])
            lat[s].append((time.perf_counter() - t) * 1e3)
            if s is not None:
                sets[s].append({(h.doc_id, h.page) for h in found})
    out = []
    for s in SWEEP:
        rec = float(np.mean([len(x & y) / max(1, len(y)) for x, y in zip(sets[s], ex_sets)]))
        base = fp16_sets.get(s[0])
        vs = float(np.mean([len(x & y) / max(1, len(y)) for x, y in zip(sets[s], base)])) if base else "-"
        out.append((*s, rec, vs, pct(lat[s], 50), pct(lat[s], 50) / pct(lat[None], 50)))
    return out
