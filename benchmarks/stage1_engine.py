"""The FDE stage 1 built into the engine (issue 19), end to end against today's default, in one run.

    python benchmarks/stage1_engine.py                    # 10k pages of benchmarks/search.py's corpus
    python benchmarks/stage1_engine.py --pages 2000 --queries 20

Builds the same corpus (benchmarks/search.py's generator, same seed) into two default indexes (binary
codes + exact tokens), document by document in turn so machine load hits both alike: ``single``
(``stage1="single"``: today's index) and ``union`` (the new default: each page's MUVERA FDE in the
``fde`` table and a second HNSW over them). Then, query by query in rotating order:

* today: ``single`` searched as before this issue (200 candidates, rescore 30 fixed) and with the
  adaptive window (the default before the FDEs);
* union: the ``union`` index's default search (200 candidates: 100 from each graph);
* the same with a metadata filter matching 0.5 % of the pages.

Quality: recall@10 against exhaustive exact MaxSim, success@10 and MRR@10 of the planted target page;
also with noisier queries (``--noise``, token noise 2.0: harder for every stage 1). Cost: p50 latency,
build time and bytes per page (``stats()["bytes_per_page"]``), each as a ratio to today's.
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

from benchmarks._util import pct, print_grid
from benchmarks.search import Corpus
from jevsearch import Index

K, DOC_PAGES, BUCKETS = 10, 10, 200  # a filter on one bucket of 200 matches 0.5 % of the pages


def build(root: str, corpus: Corpus) -> tuple[dict[str, Index], dict[str, float]]:
    """The corpus in a "single" and a "union" index, added document by document in turn; build seconds."""
    ixs = {s: Index.create(os.path.join(root, s), single_dim=128, stage1=s, text_index=False)
           for s in ("single", "union")}
    spent = dict.fromkeys(ixs, 0.0)
    for first in range(0, corpus.pages, DOC_PAGES):
        pages = [corpus.page(p) for p in range(first, min(first + DOC_PAGES, corpus.pages))]
        doc = first // DOC_PAGES
        for name, ix in ixs.items():
            t = time.perf_counter()
            ix.add_embeddings(f"doc{doc:06d}.pdf", np.stack([s for s, _ in pages]), [m for _, m in pages],
                              metadata={"bucket": doc % BUCKETS})
            spent[name] += time.perf_counter() - t
        if (first + DOC_PAGES) % max(DOC_PAGES, corpus.pages // 5) < DOC_PAGES:
            print(f"  built {first + len(pages)} pages", flush=True)
    for name, ix in ixs.items():
        t = time.perf_counter()
        ix.flush()  # the graphs settled and saved: part of the build
        spent[name] += time.perf_counter() - t
    return ixs, spent


def quality(found: list, truth: list[set], targets: list[int]) -> tuple[float, float, float]:
    """(recall@10 vs exhaustive, success@10, MRR@10 of the planted target)."""
    rec = np.mean([len(set(f[:K]) & t) / max(1, len(t)) for f, t in zip(found, truth)])
    ranks = [f[:K].index(g) + 1 if g in f[:K] else 0 for f, g in zip(found, targets)]
    return float(rec), float(np.mean([r > 0 for r in ranks])), float(np.mean([1 / r if r else 0 for r in ranks]))


def compare(ixs: dict[str, Index], queries: list, where: dict | None, title: str) -> dict[str, float]:
    """One table: each setting's quality and p50 over ``queries``; returns the p50s."""
    settings = {
        "today: single, c=200, rescore 30": (ixs["single"], {"rescore": 30}),
        "single, c=200, adaptive": (ixs["single"], {}),
        "union (new default), c=100+100": (ixs["union"], {}),
    }
    ref = ixs["union"]
    truth = [{h.page_id for h in ref.search_embeddings(None, qm, k=K, exhaustive=True, where=where)}
             for _, qm, _ in queries]
    for qs, qm, _ in queries:  # warm: every page a setting reads mapped and cached
        for ix, kw in settings.values():
            ix.search_embeddings(qs, qm, k=K, candidates=200, where=where, **kw)
    names = list(settings)
    lat = {n: [] for n in names}
    found = {n: [] for n in names}
    for i, (qs, qm, _) in enumerate(queries):
        for n in names[i % len(names):] + names[:i % len(names)]:
            ix, kw = settings[n]
            t = time.perf_counter()
            hits = ix.search_embeddings(qs, qm, k=K, candidates=200, where=where, **kw)
            lat[n].append((time.perf_counter() - t) * 1e3)
            found[n].append([h.page_id for h in hits])
    targets = [t for _, _, t in queries]
    base = pct(lat[names[0]], 50)
    rows = []
    for n in names:
        rec, succ, mrr = quality(found[n], truth, targets)
        p50 = pct(lat[n], 50)
        rows.append((n, [f"{rec:.3f}", f"{succ:.3f}", f"{mrr:.3f}", f"{p50:.1f}", f"{p50 / base:.2f}x"], ""))
    print_grid(title, ["recall@10 vs exh", "success@10", "MRR@10", "p50 ms", "x today"], rows)
    return {n: pct(lat[n], 50) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=2.0, help="token noise of the harder query set")
    ap.add_argument("--dir", default=None, help="where to build (default: a temp dir, removed)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="jevsearch-stage1-engine-")
    try:
        corpus = Corpus(args.pages, args.seed)
        if os.path.exists(os.path.join(root, "union")):  # --dir of an earlier run: built already
            ixs, spent = {s: Index.open(os.path.join(root, s)) for s in ("single", "union")}, None
        else:
            ixs, spent = build(root, corpus)
        sizes = {n: ix.stats()["bytes_per_page"] for n, ix in ixs.items()}
        total = {n: sum(v for k, v in s.items() if k != "text_index") for n, s in sizes.items()}
        rows = [("build s", [f"{spent['single']:.0f}", f"{spent['union']:.0f}",
                             f"{spent['union'] / spent['single']:.2f}x"], "") if spent else None,
                ("bytes/page", [f"{total['single']:.0f}", f"{total['union']:.0f}",
                                f"{total['union'] / total['single']:.3f}x"], ""),
                ("fde bytes/page (table + graph)", ["0", f"{sizes['union']['fde']:.0f}",
                                                    f"{sizes['union']['fde'] / total['single']:.3f} of today's"], "")]
        print_grid(f"build ({args.pages} pages)", ["single (today)", "union", "ratio"], [r for r in rows if r])
        easy = [corpus.query(i, 24) for i in range(args.queries)]
        hard = [corpus.query(10_000 + i, 24, token_noise=args.noise) for i in range(args.queries)]
        compare(ixs, hard, None, f"noisier queries (token noise {args.noise})")
        unfiltered = compare(ixs, easy, None, f"planted queries ({args.pages} pages, {len(easy)} queries, k={K})")
        filtered = compare(ixs, easy, {"bucket": 7}, "filtered to 0.5 % of the pages")
        n = "union (new default), c=100+100"
        print(f"\nunion, filtered 0.5 % / unfiltered p50: {filtered[n] / unfiltered[n]:.2f}x")
        for ix in ixs.values():
            ix.close()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
