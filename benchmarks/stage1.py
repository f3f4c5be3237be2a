"""Stage 1 options and the adaptive rescore window (issue 19), measured in one run on one index.

    python benchmarks/stage1.py                    # 10k pages of benchmarks/search.py's corpus (~2.2 GB)
    python benchmarks/stage1.py --pages 2000 --queries 20

Builds one binary + exact index (the default layout) of ``benchmarks/search.py``'s generator (same seed,
same corpus) and, beside it in memory, each page's MUVERA fixed dimensional encoding (FDE). Then, per
query, in turn (the machine is shared: read ratios to today's default timed in the same loop):

* **today**: ``search_embeddings`` with the defaults before this issue: 200 HNSW candidates, rescore 30
  fixed (``rescore=30``); **adaptive**: the new default (the window widens while the bound says a
  page could still enter the top 10);
* stage 1 options, each followed by the same codes pass and adaptive exact rescore (the engine's own
  private ``jevsearch.index.search.rerank_candidates``/``rescore_window``, so only the candidates differ):
  ``single c=N`` (the HNSW's N nearest truncated singles, today's stage 1), ``expand c=N m=M``
  (the HNSW-neighbour expansion: the level-0 graph neighbours of the M best candidates by the codes
  join the candidates), ``fde c=N`` (MUVERA: the N best pages by the inner product of FDEs, exact flat
  search), ``union c=N+F`` (the single's N and the FDE's F).

Quality: recall@10 against exhaustive exact MaxSim (the planted queries of ``benchmarks/search.py``),
success@10 and MRR@10 of the planted target page. Part B: recall@10 against float16 at the same
candidates (every candidate rescored) on the benchmark corpus and on adversarial corpora (random unit
tokens, 2-6 tokens per page, near-duplicate pages in tens), each also filtered to 20% of its pages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._util import pct, print_grid
from benchmarks.search import Corpus, _unit
from jevsearch import Index
from jevsearch.index import search
from jevsearch.search.fde import Fde as LibFde
from jevsearch.search.fde import params
from jevsearch.search.maxsim import pad_queries
from jevsearch.search.threads import torch_threads
from jevsearch.store.hnsw import truncate_normalize

K = 10


class Fde:
    """The library's MUVERA encoder (:mod:`jevsearch.search.fde`) with the interface this script uses."""

    def __init__(self, dim: int, **given):
        self.enc = LibFde.of(params(dim, **given))
        self.dim = self.enc.dim

    def encode(self, tokens: np.ndarray, query: bool) -> np.ndarray:
        return (self.enc.queries if query else self.enc.pages)([tokens])[0]


def build(path: str, corpus: Corpus, fde: Fde, doc_pages: int = 10) -> tuple[Index, np.ndarray, float]:
    """The binary + exact index of the corpus (added as benchmarks/search.py does) and its FDEs."""
    ix = Index.create(path, single_dim=128, codec="binary", keep_exact=True)
    fdes = np.zeros((corpus.pages, fde.dim), np.float32)
    t = time.perf_counter()
    for first in range(0, corpus.pages, doc_pages):
        pages = [corpus.page(p) for p in range(first, min(first + doc_pages, corpus.pages))]
        ix.add_embeddings(f"doc{first // doc_pages:06d}.pdf", np.stack([s for s, _ in pages]), [m for _, m in pages],
                          metadata={"first_page": first, "group": (first // doc_pages) % 5})
        for i, (_, m) in enumerate(pages):
            fdes[first + i] = fde.encode(m, query=False)
        if (first + doc_pages) % max(doc_pages, corpus.pages // 5) < doc_pages:
            print(f"  built {first + len(pages)} pages", flush=True)
    ix.flush()
    return ix, fdes, time.perf_counter() - t


class Stage1:
    """Candidate sets of each option, then the engine's codes pass and adaptive exact rescore."""

    def __init__(self, ix: Index, fdes: np.ndarray, fde: Fde):
        import faiss

        self.ix, self.fde = ix, fde
        self.flat = faiss.IndexFlatIP(fde.dim)
        self.flat.add(fdes)
        graph = ix._state.view.settle()
        _, nb, slots, _ = graph._level0()
        ids = graph.ids()
        links = nb[slots]
        self.row = {pid: i for i, pid in enumerate(ids.tolist())}
        self.neighbours = np.where(links >= 0, ids[np.maximum(links, 0)], -1)  # [N, 2M] page ids

    def single(self, qs: np.ndarray, c: int) -> np.ndarray:
        return self.ix._state.view.search(truncate_normalize(qs[None], 128), c)[0]

    def fde_top(self, qm: np.ndarray, c: int) -> np.ndarray:
        _, ids = self.flat.search(self.fde.encode(qm, query=True)[None], c)
        return ids[0].astype(np.int64)  # pages were added in id order from 0

    def run(self, qm: np.ndarray, cand: np.ndarray, expand: int = 0) -> tuple[np.ndarray, int]:
        """Top 10 page ids from ``cand`` (codes, then adaptive exact rescore), and the candidates scored."""
        ix = self.ix
        with ix._state.mutex, ix._state.store.read() as txn, torch.no_grad(), torch_threads(1):
            ix._state.refresh(txn)
            qt = pad_queries([torch.from_numpy(qm)], ix._state.dtype, ix._state.device)
            cand = np.unique(cand[cand >= 0])
            found = search.rerank_candidates(ix._state, txn, qt, [len(qm)], cand[None], len(cand), "multi")
            if expand:
                ids, scores = found[0]
                best = ids[np.argsort(-scores)[:expand]]
                more = self.neighbours[[self.row[p] for p in best.tolist()]].ravel()
                more = np.setdiff1d(more[more >= 0], cand)
                if len(more):
                    extra = search.rerank_candidates(ix._state, txn, qt, [len(qm)], more[None], len(more), "multi")[0]
                    found = [(np.concatenate([ids, extra[0]]), np.concatenate([scores, extra[1]]))]
            scored = len(found[0][0])
            top = search.rescore_window(ix._state, txn, qt, [len(qm)], found, K, K, 30)[0]
        return top[0][np.argsort(-top[1], kind="stable")[:K]], scored


def quality(found: list, truth: list[set], targets: list[int]) -> tuple[float, float, float]:
    """(recall@10 vs exhaustive, success@10, MRR@10 of the planted target)."""
    rec = np.mean([len(set(f[:K]) & t) / len(t) for f, t in zip(found, truth)])
    ranks = [list(f[:K]).index(g) + 1 if g in list(f[:K]) else 0 for f, g in zip(found, targets)]
    return float(rec), float(np.mean([r > 0 for r in ranks])), float(np.mean([1 / r if r else 0 for r in ranks]))


def stage1_curve(ix: Index, s1: Stage1, queries: list, truth: list[set], targets: list[int]) -> None:
    options = {f"single c={c}": (lambda qs, qm, c=c: (s1.single(qs, c), 0)) for c in (100, 200, 400)}
    for c, m in ((100, 5), (100, 10), (200, 10)):
        options[f"expand c={c} m={m}"] = lambda qs, qm, c=c, m=m: (s1.single(qs, c), m)
    for c in (100, 200, 400):
        options[f"fde c={c}"] = lambda qs, qm, c=c: (s1.fde_top(qm, c), 0)
    for c, f in ((100, 100), (200, 100)):
        options[f"union c={c}+{f}"] = lambda qs, qm, c=c, f=f: (np.concatenate([s1.single(qs, c), s1.fde_top(qm, f)]), 0)
    names = ["today (c=200 rescore=30)", "adaptive (new default)", *options]
    lat = {n: [] for n in names}
    found = {n: [] for n in names}
    scored = {n: [] for n in names}
    for i, (qs, qm, _) in enumerate(queries):
        for n in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            if n.startswith(("today", "adaptive")):
                hits = ix.search_embeddings(qs, qm, k=K, candidates=200, rescore=30 if n.startswith("today") else None)
                ids, count = [h.page_id for h in hits], 200
            else:
                cand, expand = options[n](qs, qm)
                ids, count = s1.run(qm, cand, expand)
                ids = ids.tolist()
            lat[n].append((time.perf_counter() - t) * 1e3)
            found[n].append(ids)
            scored[n].append(count)
    base = pct(lat[names[0]], 50)
    rows = []
    for n in names:
        rec, succ, mrr = quality(found[n], truth, targets)
        p50 = pct(lat[n], 50)
        rows.append((n, [f"{rec:.3f}", f"{succ:.3f}", f"{mrr:.3f}", f"{np.mean(scored[n]):.0f}", f"{p50:.1f}",
                         f"{p50 / base:.2f}x"], ""))
    print_grid(f"stage 1 options ({ix.stats()['pages']} pages, {len(queries)} queries, k={K})",
               ["recall@10 vs exh", "success@10", "MRR@10", "cands scored", "p50 ms", "x today"], rows)


def part_b(name: str, ix: Index, queries: list, candidates: int, where: dict | None = None) -> tuple:
    """(recall@10 vs fp16 at the same candidates of rescore 30 and of the adaptive window, p50 of each)."""
    rec, lat = {30: [], None: []}, {30: [], None: []}
    for qs, qm, *_ in queries:
        truth = {h.page_id for h in ix.search_embeddings(qs, qm, k=K, candidates=candidates, rescore=candidates,
                                                          where=where)}
        for r in (30, None):
            t = time.perf_counter()
            got = {h.page_id for h in ix.search_embeddings(qs, qm, k=K, candidates=candidates, rescore=r, where=where)}
            lat[r].append((time.perf_counter() - t) * 1e3)
            rec[r].append(len(got & truth) / max(1, len(truth)))
    p30, pa = pct(lat[30], 50), pct(lat[None], 50)
    return (f"{name}{' filtered 20%' if where else ''}, c={candidates}",
            [f"{np.mean(rec[30]):.4f}", f"{np.mean(rec[None]):.4f}", f"{p30:.1f}", f"{pa:.1f}", f"{pa / p30:.2f}x"], "")


def adversarial(path: str, kind: str, seed: int = 19) -> tuple[Index, list]:
    """1,600 pages: ``random`` (60-120 random unit tokens), ``few`` (2-6 of them), ``dups`` (160 random pages,
    each in 10 near-copies); 24 queries of 16 random unit tokens (random) or a page's tokens plus noise."""
    rng = np.random.default_rng(seed)
    d = 128
    if kind == "dups":
        base = [_unit(rng.standard_normal((int(rng.integers(40, 81)), d))) for _ in range(160)]
        multis = [_unit(b + 0.05 * rng.standard_normal(b.shape)).astype(np.float32) for b in base for _ in range(10)]
    else:
        lo, hi = (60, 120) if kind == "random" else (2, 6)
        multis = [_unit(rng.standard_normal((int(rng.integers(lo, hi + 1)), d))).astype(np.float32)
                  for _ in range(1600)]
    ix = Index.create(path, single_dim=d, codec="binary", keep_exact=True)
    for doc in range(len(multis) // 20):
        m = multis[doc * 20:(doc + 1) * 20]
        ix.add_embeddings(f"d{doc:03d}", _unit(np.stack([x.mean(0) for x in m])).astype(np.float32), m,
                          metadata={"group": doc % 5})
    queries = []
    for _ in range(24):
        if kind == "random":
            q = _unit(rng.standard_normal((16, d)))
        else:
            page = multis[rng.integers(len(multis))]
            q = _unit(page[rng.choice(len(page), 16)] + 0.7 * rng.standard_normal((16, d)))
        queries.append((_unit(q.mean(0)).astype(np.float32), q.astype(np.float32)))
    return ix, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to build (default: a temp dir, removed)")
    ap.add_argument("--skip-adversarial", action="store_true")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="jevsearch-stage1-")
    try:
        corpus, fde = Corpus(args.pages, args.seed), Fde(128)
        bench, saved = os.path.join(root, "bench"), os.path.join(root, "fde.npy")
        if os.path.exists(saved):  # --dir of an earlier run: the same corpus, built already
            ix, fdes = Index.open(bench), np.load(saved)
        else:
            ix, fdes, build_s = build(bench, corpus, fde)
            np.save(saved, fdes)
            print(f"built {args.pages} pages in {build_s:.0f} s; FDE {fde.dim} dims ({fde.dim * 2} B/page as float16)")
        queries = [corpus.query(i, 24) for i in range(args.queries)]
        targets = [t for _, _, t in queries]
        t = time.perf_counter()
        truth = [{h.page_id for h in ix.search_embeddings(None, qm, k=K, exhaustive=True)} for _, qm, _ in queries]
        print(f"exhaustive truth: {(time.perf_counter() - t) / len(queries):.2f} s/query")
        for qs, qm, _ in queries:  # warm: every page a setting reads mapped and cached
            ix.search_embeddings(qs, qm, k=K, candidates=400, rescore=400)
        stage1_curve(ix, Stage1(ix, fdes, fde), queries, truth, targets)
        rows = [part_b("benchmark", ix, queries, 200), part_b("benchmark", ix, queries, 200, {"group": 2})]
        ix.close()
        if not args.skip_adversarial:
            for kind in ("random", "few", "dups"):
                shutil.rmtree(os.path.join(root, kind), ignore_errors=True)
                adv, qs = adversarial(os.path.join(root, kind), kind)
                rows += [part_b(kind, adv, qs, 100), part_b(kind, adv, qs, 100, {"group": 2})]
                adv.close()
        print_grid("part B: recall@10 vs float16 at the same candidates (every candidate rescored)",
                   ["rescore 30", "adaptive", "p50 30", "p50 adaptive", "ratio"], rows)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
