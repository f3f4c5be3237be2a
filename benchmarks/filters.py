"""Benchmark of filtered search (``where=``): latency and recall at several selectivities.

    python benchmarks/filters.py                                   # 20k pages, a few minutes
    python benchmarks/filters.py --pages 100000 --index /tmp/f100k # the issue's scale; the index is kept
                                                                   # and reused by later runs (same flags)

Synthetic corpus (deterministic from --seed): benchmarks/search.py's pages and queries (topic
clusters; 2048-d singles correlated with the 128-d tokens; queries of 16 noisy tokens of a random
page), with --tokens tokens per page, in documents of --doc-pages pages. Each document has two
filterable fields: ``cat`` (one of 1000 values, uniform) and ``num`` (uniform in [0, 1)).

Filters at selectivities 50 %, 5 %, 0.5 %, 0.05 % of the pages, two kinds each: ``cat`` ``$in`` a
share of the 1000 values (at 0.05 %: one value and ``num < 0.5``), and ``num`` ``$lt`` the share.
For each: p50 latency of search_embeddings (k=10, 100 candidates) with stage 1 as chosen by the
library, and forced to the HNSW ID-selector walk and to the exact scan (how WALK_SLOT_PAGES, the
switch point's constant in jevsearch/store/subset.py, was measured); recall@10 of each against the exact filtered two-stage
(exact inner products over the matching pages' truncated singles, top 100, exact MaxSim) computed
here with numpy; and the unfiltered p50 of the same queries in the same run, the baseline.
Fewer tokens per page than a real page (~770) keep the 100k build to minutes and the LMDB file to a
few GB; the MaxSim rerank, and so the unfiltered baseline, is then cheaper than with real pages,
which makes the 2x target harder, not easier.
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

from benchmarks._util import pct
from benchmarks.search import Corpus as PageCorpus
from jevsearch import Index
from jevsearch.store import subset

DM, D_FULL, DIM = 128, 2048, 128
SELECTIVITIES = (0.5, 0.2, 0.05, 0.005, 0.0005)  # and 20 %: near the switch at 100k


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Corpus:
    """benchmarks/search.py's page generator (topic clusters, singles correlated with the tokens) with
    --tokens tokens per page, plus per-document metadata."""

    def __init__(self, pages: int, doc_pages: int, tokens: int, seed: int):
        self.pages, self.doc_pages, self.tokens, self.seed = pages, doc_pages, tokens, seed
        self.gen = PageCorpus(pages, seed)
        self.gen.lengths = np.full(pages, tokens)
        rng = np.random.default_rng(seed + 2)
        self.docs = -(-pages // doc_pages)
        self.cat = rng.integers(0, 1000, size=self.docs)
        self.num = rng.random(self.docs)

    def page(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gen.page(p)

    def meta(self, d: int) -> dict:
        return {"cat": f"c{self.cat[d]:04d}", "num": float(self.num[d])}

    def query(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gen.query(i, 16)[:2]


def build(path: str, c: Corpus, batch_docs: int = 256) -> None:
    t = time.perf_counter()
    with Index.create(path, single_dim=DIM) as eng:
        for d0 in range(0, c.docs, batch_docs):
            batch = []
            for d in range(d0, min(c.docs, d0 + batch_docs)):
                pages = [c.page(p) for p in range(d * c.doc_pages, min(c.pages, (d + 1) * c.doc_pages))]
                batch.append((f"/corpus/d{d:06d}.pdf", np.stack([s for s, _ in pages]), [m for _, m in pages],
                              c.meta(d)))
            eng.add_embeddings_many(batch)
            done = min(c.pages, (d0 + batch_docs) * c.doc_pages)
            if (d0 // batch_docs) % 20 == 0:
                print(f"  built {done} pages ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"  built {c.pages} pages in {time.perf_counter() - t:.0f} s", flush=True)


def filters_for(c: Corpus, s: float) -> dict[str, dict]:
    n_cat = round(1000 * s)
    cat = ({"cat": {"$in": [f"c{v:04d}" for v in range(n_cat)]}} if n_cat >= 1
           else {"cat": "c0000", "num": {"$lt": s * 1000}})
    return {"cat": cat, "num": {"num": {"$lt": s}}}


def matching_pages(c: Corpus, where: dict) -> np.ndarray:
    ok = np.ones(c.docs, dtype=bool)
    if "cat" in where:
        spec = where["cat"]
        vals = [spec] if isinstance(spec, str) else spec["$in"]
        ok &= np.isin(c.cat, [int(v[1:]) for v in vals])
    if "num" in where:
        ok &= c.num < where["num"]["$lt"]
    pages = np.arange(c.pages)
    return pages[ok[pages // c.doc_pages]]


def exact_two_stage(c: Corpus, trunc: np.ndarray, page_ids: np.ndarray, qs, qm, k=10, candidates=100) -> set:
    qt = _unit(qs[:DIM])
    s1 = trunc[page_ids] @ qt
    top = page_ids[np.argsort(-s1)[:candidates]]
    scores = [(float((qm @ c.page(int(p))[1].astype(np.float16).astype(np.float32).T).max(1).sum()), int(p))
              for p in top]
    scores.sort(key=lambda x: (-x[0], x[1]))
    return {p for _, p in scores[:k]}


def page_of(hit, c: Corpus) -> int:
    return int(hit.doc_id[-10:-4]) * c.doc_pages + hit.page - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20000)
    ap.add_argument("--doc-pages", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per page (a real page: ~770)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds over the queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", help="keep the index here and reuse it when it exists (same flags)")
    args = ap.parse_args()
    c = Corpus(args.pages, args.doc_pages, args.tokens, args.seed)
    tmp = None
    path = args.index or os.path.join(tmp := tempfile.mkdtemp(prefix="jev-filters-"), "idx")
    try:
        if not os.path.exists(path):
            print(f"building {args.pages} pages x {args.tokens} tokens ...", flush=True)
            build(path, c)
        trunc = np.stack([_unit(c.page(p)[0][:DIM]) for p in range(c.pages)])
        queries = [c.query(i) for i in range(args.queries)]
        with Index.open(path, readonly=True) as eng:
            assert eng.stats()["pages"] == c.pages, "the index at --index was built with other flags"
            default = subset.WALK_SLOT_PAGES
            rows = [(kind, s, where) for s in SELECTIVITIES for kind, where in filters_for(c, s).items()]
            configs = [(None, default)] + [(w, f) for _, _, w in rows for f in (default, 0.0, float("inf"))]
            times = [[] for _ in configs]
            found = [[] for _ in configs]
            # Interleaved (every configuration per query, in turn, --repeat times): a shared, noisy
            # machine then slows every column alike, and the ratios stay meaningful.
            for rep in range(args.repeat + 1):  # round 0 warms up (page cache, field index, buffers)
                for qs, qm in queries:
                    for i, (where, fraction) in enumerate(configs):
                        subset.WALK_SLOT_PAGES = fraction
                        t = time.perf_counter()
                        hits = eng.search_embeddings(qs, qm, k=10, candidates=100, where=where)
                        if rep:
                            times[i].append((time.perf_counter() - t) * 1e3)
                        else:
                            found[i].append({page_of(h, c) for h in hits})
            subset.WALK_SLOT_PAGES = default
        base = pct(times[0], 50)
        every = np.arange(c.pages)
        base_recall = np.mean([len(g & exact_two_stage(c, trunc, every, qs, qm)) / 10
                               for g, (qs, qm) in zip(found[0], queries)])
        print(f"\n== filtered search, {c.pages} pages ({c.docs} documents x {c.doc_pages} pages, "
              f"{c.tokens} tokens/page), k=10, 100 candidates, {len(queries)} queries x {args.repeat}")
        print(f"unfiltered p50: {base:.2f} ms, recall@10 {base_recall:.3f} against the exact two-stage "
              f"(auto: exact scan below {(default * 4 * 100 / c.pages) ** 0.5:.0%} of the pages)\n")
        print(f"{'filter':<6} {'target':>7} {'actual':>8} {'pages':>7} | {'p50 ms':>7} {'x unf':>6} "
              f"{'recall':>6} | {'walk ms':>7} {'recall':>6} | {'scan ms':>7} {'recall':>6}")
        for r, (kind, s, where) in enumerate(rows):
            ids = matching_pages(c, where)
            truth = [exact_two_stage(c, trunc, ids, qs, qm) for qs, qm in queries]
            cols = []
            for i in range(1 + 3 * r, 4 + 3 * r):
                recall = np.mean([len(g & t) / max(1, len(t)) for g, t in zip(found[i], truth)])
                cols += [pct(times[i], 50), recall]
            print(f"{kind:<6} {s:>7.2%} {len(ids) / c.pages:>8.3%} {len(ids):>7} | {cols[0]:>7.2f} "
                  f"{cols[0] / base:>6.2f} {cols[1]:>6.3f} | {cols[2]:>7.2f} {cols[3]:>6.3f} | "
                  f"{cols[4]:>7.2f} {cols[5]:>6.3f}", flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
