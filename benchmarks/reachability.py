"""What keeping every page reachable in the HNSW costs, and what it fixes (issue 22 item 1).

    python benchmarks/reachability.py                 # 10k pages, ~2 minutes
    python benchmarks/reachability.py --pages 3000

Corpus: --pages pages in 10-page documents added one add_embeddings call each; singles 256-d, the HNSW
over their first 128 dims (M=32, efConstruction=200); 2 tokens per page (stage 1 is measured here).
  * "spread": random unit singles (the search-cost baseline);
  * "near-dup x": every single is one vector plus x noise per dim (x=0.0025: 4 % of the norm);
  * "twins": near-dup 0.02 plus 500 pages of exactly that vector.

Rows: unreachable pages after the plain adds (the graph as FAISS built it), after relinking, and the
pages a stage-1 search with their own vector misses at 100 candidates (default) or 10; the check
(walk + relink) after the last add, against the time the adds took; stage-1 search latency before
(the FAISS walk alone: what GraphView.search did) and now (walk + the exact scan of the lost list),
with an empty list and with 100 lost pages forced. Baselines in the same run: read ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._util import pct, print_grid, repeat_ms
from jevsearch import Index
from jevsearch.search.threads import torch_threads
from jevsearch.store import graphview
from jevsearch.store.subset import stored_vectors


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build(path: str, pages: int, noise: float | None, twins: int, seed: int) -> Index:
    """The index (open for writing) after the adds, its graph as FAISS built it (not yet relinked)."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal(256))
    ix = Index.create(path, single_dim=128)
    for d in range(pages // 10):
        s = _unit(rng.standard_normal((10, 256))) if noise is None else _unit(base + noise * rng.standard_normal((10, 256)))
        ix.add_embeddings(f"d{d}", s, [_unit(rng.standard_normal((2, 128))) for _ in range(10)])
    for d in range(twins // 5):
        ix.add_embeddings(f"t{d}", np.repeat(base[None], 5, 0), [_unit(rng.standard_normal((2, 128)))] * 5)
    return ix


def misses(ix: Index, n: int) -> int:
    ids, vecs = stored_vectors(ix._state.view.settle())
    ids, vecs = ids.copy(), vecs.astype(np.float32)
    found = np.concatenate([ix._state.view.search(vecs[i:i + 256], n) for i in range(0, len(ids), 256)])
    return int(sum(pid not in row for pid, row in zip(ids, found)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    graphview.SAVE_EVERY_PAGES = 10**9  # no save (which relinks) during the adds: measure the graph FAISS built
    root = tempfile.mkdtemp(prefix="jev-reach-")
    rows, lat = [], []
    try:
        for name, noise, twins in (("spread", None, 0), ("near-dup 0.0025", 0.0025, 0),
                                   ("near-dup 0.00125", 0.00125, 0), ("twins", 0.02, 500)):
            t = time.perf_counter()
            ix = build(os.path.join(root, name.replace(" ", "_")), args.pages, noise, twins, args.seed)
            graph = ix._state.view.settle()
            add_s = time.perf_counter() - t
            before = len(graph.unreachable())
            t = time.perf_counter()
            left = len(ix._state.view.lost())  # the check (walk) and relinking a search runs after a change
            check_s = time.perf_counter() - t
            rows.append((name, [graph.ntotal, before, left, misses(ix, 100), misses(ix, 10),
                                f"{check_s * 1e3:.0f} ms / {add_s:.1f} s"], ""))
            if name == "spread":
                rng = np.random.default_rng(1)
                q = _unit(rng.standard_normal((args.queries, 128)))
                view = ix._state.view

                def each(fn, q=q):  # one torch thread, as Index searches run
                    with torch_threads(1):
                        return [repeat_ms(lambda row=row: fn(row, 100), 1, 0)[0] for row in q[:, None]]
                walk, now = each(graph.search), each(view.search)
                graph.lost = graph.ids()[:: max(1, graph.ntotal // 100)][:100]  # as if 100 pages stayed lost
                lost = each(view.search)
                lat = [("walk alone (before)", [pct(walk, 50), pct(walk, 90), 1.0], ""),
                       ("walk + empty lost list (now)", [pct(now, 50), pct(now, 90), pct(now, 50) / pct(walk, 50)], ""),
                       ("walk + 100 lost pages scanned", [pct(lost, 50), pct(lost, 90), pct(lost, 50) / pct(walk, 50)], "")]
                graph.lost = None
            ix._state.view.clean = True  # nothing to save: the folder is removed
            ix.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_grid(f"reachability at {args.pages} pages", ["pages", "unreachable after adds",
               "after relinking", "own-vector misses @100", "@10", "check+relink / all adds"], rows)
    print_grid("stage-1 latency, 100 candidates, one thread", ["p50 ms", "p90 ms", "p50 ratio"], lat)


if __name__ == "__main__":
    main()
