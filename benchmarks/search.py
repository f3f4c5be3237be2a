"""Benchmark of the storage core and two-stage search on a synthetic jina-v4-shaped corpus.

    python benchmarks/search.py                    # 10k pages (~6 GB on disk for the 5 codecs, ~20 minutes)
    python benchmarks/search.py --pages 100000     # ~55 GB on disk; check `df -h` first
    python benchmarks/search.py --codecs fp16      # today's storage only (~2 GB at 10k pages)

Synthetic corpus (deterministic from --seed; same flags => same corpus, so runs are comparable):
  * topics: pages // 20 unit "topic" vectors c_t in R^128; page p belongs to topic p % n_topics.
  * page centre u_p = normalize(c_t + 1.0 * n_p), n_p a random unit vector.
  * page tokens: T_p ~ U[700, 840] (mean ~770, the jina-v4 token count of a rendered page);
    x_pj = normalize(u_p + 1.5 * n_pj)  -- token . centre ~ 0.55, like late-interaction tokens of one page.
  * single vector: s_p = normalize(W mean_j x_pj + 0.3 * n), W a fixed random 2048 x 128 matrix with
    orthonormal columns, so the 2048-d single is correlated with the page's tokens and its first 128
    dims (the Matryoshka truncation the HNSW indexes) carry part of that signal.
  * queries: a random target page; L = --query-tokens tokens, each one of the target's tokens plus
    noise (normalize(x + 1.0 * n)); q_single = normalize(W mean(q) + 0.3 * n) (benchmarks/eval.py raises
    both noise weights to make the queries harder).
  Documents have --doc-pages pages each and are added with one add_embeddings call per document.
  At the end, --append-pages pages are appended to the full index twice, as new documents: once with
  one commit per document, once with add_embeddings_many (--batch-docs documents per commit).

The corpus is stored once per configuration of --codecs (benchmarks/search_codecs.py: fp16, the
baseline, and the compact layouts of issue 13), built in the same pass (documents added to each in
turn); the sections below the codec table measure the fp16 index.

Baselines measured in the same run (this machine is shared and noisy: read ratios, not absolutes):
  * matmul floor: torch fp32 matmul of the same shape as one query's MaxSim over C pages, data already
    in fp32 in memory; memcpy floor: copying the stored fp16 bytes of those C pages.
  * ideal two-stage: exact inner product on the truncated singles (numpy, no HNSW) for the same number
    of candidates, then exact MaxSim: isolates what the HNSW loses from what stage 1 itself loses.
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

from benchmarks import search_codecs
from benchmarks._util import pct, peak_rss_mb, print_table, repeat_ms, timed
from jevsearch import Engine
from jevsearch.index import search
from jevsearch.search.maxsim import CPU_BLOCK_TOKENS, maxsim_concat, pad_queries
from jevsearch.search.pack import ConcatPacker
from jevsearch.search.pooling import pool_tokens
from jevsearch.search.threads import torch_threads
from jevsearch.store.lmdbenv import MAP_SIZE
from jevsearch.store.schema import page_key

DM, D_FULL = 128, 2048


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Corpus:
    """The generator described in the module docstring."""

    def __init__(self, pages: int, seed: int):
        rng = np.random.default_rng(seed)
        self.pages, self.seed = pages, seed
        self.topics = _unit(rng.standard_normal((max(1, pages // 20), DM), dtype=np.float32))
        self.w = np.linalg.qr(rng.standard_normal((D_FULL, DM)))[0].astype(np.float32)  # [2048, 128]
        self.lengths = rng.integers(700, 841, size=pages)

    def page(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(single [2048], tokens [T_p, 128]) of page p."""
        rng = np.random.default_rng((self.seed, p))
        u = _unit(self.topics[p % len(self.topics)] + _unit(rng.standard_normal(DM, dtype=np.float32)))
        noise = _unit(rng.standard_normal((self.lengths[p], DM), dtype=np.float32))
        tokens = _unit(u + 1.5 * noise)
        single = _unit(self.w @ tokens.mean(0) + 0.3 * _unit(rng.standard_normal(D_FULL, dtype=np.float32)))
        return single, tokens

    def query(self, i: int, n_tokens: int, token_noise: float = 1.0,
              single_noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, int]:
        """(q_single, q_multi, target page); the noise weights make queries harder (benchmarks/eval.py)."""
        rng = np.random.default_rng((self.seed + 1, i))
        target = int(rng.integers(self.pages))
        _, tokens = self.page(target)
        q = _unit(tokens[rng.choice(len(tokens), n_tokens, replace=False)]
                  + token_noise * _unit(rng.standard_normal((n_tokens, DM), dtype=np.float32)))
        single = _unit(self.w @ q.mean(0) + single_noise * _unit(rng.standard_normal(D_FULL, dtype=np.float32)))
        return single, q, target


def build(engs: dict[str, Engine], corpus: Corpus, doc_pages: int) -> dict:
    """Add the corpus to every engine, document by document in turn; seconds per engine."""
    add_s, gen_s = dict.fromkeys(engs, 0.0), 0.0
    payload = 0
    truncated = np.empty((corpus.pages, 128), dtype=np.float32)  # for the ideal stage 1
    for first in range(0, corpus.pages, doc_pages):
        t = time.perf_counter()
        pages = [corpus.page(p) for p in range(first, min(first + doc_pages, corpus.pages))]
        singles = np.stack([s for s, _ in pages])
        multis = [m for _, m in pages]
        truncated[first:first + len(pages)] = _unit(singles[:, :128])
        gen_s += time.perf_counter() - t
        for name, eng in engs.items():
            dt, _ = timed(eng.add_embeddings, f"doc{first // doc_pages:06d}.pdf", singles, multis,
                          metadata={"first_page": first})
            add_s[name] += dt
        payload += sum(m.shape[0] for m in multis) * DM * 2 + singles.nbytes
        done = first + len(pages)
        if done % max(doc_pages, corpus.pages // 10) < doc_pages:
            rates = ", ".join(f"{n} {done / t:.0f}" for n, t in add_s.items())
            print(f"  added {done} pages (pages/s in add_embeddings: {rates})", flush=True)
    flush_s = {name: timed(eng.flush)[0] for name, eng in engs.items()}
    sample = [corpus.page(p)[1] for p in range(min(20, corpus.pages))]
    pool_ms = 1e3 * timed(lambda: [pool_tokens(m, 2) for m in sample])[0] / len(sample)
    return {"add_s": add_s, "gen_s": gen_s, "flush_s": flush_s, "payload": payload, "truncated": truncated,
            "pool_ms": pool_ms}


def append_writes(path: str, corpus: Corpus, doc_pages: int, batch_docs: int, pages: int) -> tuple[float, float]:
    """pages/s appending ``pages`` more pages to the built index (at its full size): one add_embeddings
    per document, then the same data again as new documents with add_embeddings_many of
    ``batch_docs`` documents per commit. Each rate includes the final flush (HNSW inserts + save)."""
    docs = []
    for first in range(0, min(pages, corpus.pages), doc_pages):
        page = [corpus.page(p) for p in range(first, min(first + doc_pages, corpus.pages))]
        docs.append((np.stack([s for s, _ in page]), [m for _, m in page]))
    n = sum(len(d[1]) for d in docs)
    rates = []
    with Engine.open(path) as eng:
        for name, step in (("per-doc", 1), ("batched", batch_docs)):
            named = [(f"extra-{name}-{i:06d}.pdf", s, m) for i, (s, m) in enumerate(docs)]
            t = time.perf_counter()
            for i in range(0, len(named), step):
                eng.add_embeddings_many(named[i:i + step])
            eng.flush()
            rates.append(n / (time.perf_counter() - t))
    return rates[0], rates[1]


def rerank_ids(eng: Engine, q: np.ndarray, page_ids: np.ndarray, workers: int = 1):
    """(ids, scores): exact MaxSim of one query over the given page ids (private engine API: benchmark
    only), as a search runs it: torch on 1 thread, ``workers`` scorer threads."""
    with eng._state.store.read() as txn, torch.no_grad(), torch_threads(1):
        ids, raws, lens = search._fetch(eng._state, txn, page_ids)
        threads, eng.threads = eng.threads, workers
        try:  # checked against their checksums as a search does
            ids, scores = search._score(eng._state, txn, pad_queries([q], torch.float32, torch.device("cpu")), [len(q)], ids, raws, lens)
        finally:
            eng.threads = threads
    return ids, scores[0]


def lmdb_floor(root: str, doc_bytes: int, docs: int = 100) -> float:
    """pages/s of bare LMDB commits of documents of the same size (same env flags, one commit each):
    the disk's fsync-bound floor for add_embeddings."""
    import lmdb

    env = lmdb.open(os.path.join(root, "floor"), map_size=MAP_SIZE, metasync=False)
    page = np.random.default_rng(0).bytes(doc_bytes // 10)
    t = time.perf_counter()
    for d in range(docs):
        with env.begin(write=True) as txn:
            for p in range(10):
                txn.put((d * 10 + p).to_bytes(8, "big"), page, append=True)
    dt = time.perf_counter() - t
    env.close()
    shutil.rmtree(os.path.join(root, "floor"))
    return docs * 10 / dt


def floors(eng: Engine, n_pages: int, q: np.ndarray) -> dict:
    """ms of the real MaxSim path over n stored pages (1 and 2 scorer workers) vs floors of the same
    size, all on 1 torch thread:
    * in-cache matmul: one CPU block's fp32 matmul (data already in cache), times the blocks needed;
    * one-shot matmul: a single fp32 matmul over all the pages' tokens, data in memory;
    * memcpy: copying the stored fp16 bytes of those pages."""
    ids = np.arange(n_pages, dtype=np.int64)
    real = repeat_ms(lambda: rerank_ids(eng, q, ids), 10)
    real2 = repeat_ms(lambda: rerank_ids(eng, q, ids, 2), 10)
    with torch_threads(1), eng._state.store.read() as txn:
        fetched, raws, lens = search._fetch(eng._state, txn, ids)
        raws = [eng._state.store.unseal("multi", page_key(pid), r) for pid, r in zip(fetched.tolist(), raws)]
        host16 = np.concatenate([np.frombuffer(r, dtype=np.float16) for r in raws])
        pages32 = torch.from_numpy(host16.astype(np.float32)).view(-1, DM)  # [sum T, d]
        qt = torch.from_numpy(q)  # [L, d]
        block = pages32[:CPU_BLOCK_TOKENS]
        sim = torch.empty(len(qt), len(block))
        per_block = pct(repeat_ms(lambda: torch.mm(qt, block.T, out=sim), 50), 50)
        mm = repeat_ms(lambda: torch.matmul(qt, pages32.T), 10)
        src, dst = torch.from_numpy(host16), torch.empty(host16.shape, dtype=torch.float16)
        cp = repeat_ms(lambda: dst.copy_(src), 10)
        packer = ConcatPacker(DM, np.float16)
        tokens, starts = packer.pack(raws[:6], lens[:6])  # one CPU block (~4.6k tokens), in cache
        out = packer.sim(len(qt), len(tokens))
        per_kernel = pct(repeat_ms(lambda: maxsim_concat(qt[None], tokens, starts, out=out), 50), 50)
    return {"real": pct(real, 50), "real2": pct(real2, 50), "kernel": per_kernel * len(pages32) / len(tokens),
            "cache_mm": per_block * len(pages32) / len(block), "matmul": pct(mm, 50), "memcpy": pct(cp, 50),
            "tokens": int(sum(lens))}


def recall(a: list[set], b: list[set]) -> float:
    return float(np.mean([len(x & y) / max(1, len(y)) for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--doc-pages", type=int, default=10, help="pages per add_embeddings call")
    ap.add_argument("--batch-docs", type=int, default=10, help="documents per add_embeddings_many commit")
    ap.add_argument("--append-pages", type=int, default=2000, help="pages appended per write mode at the end")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--exhaustive-queries", type=int, default=None,
                    help="queries scored exhaustively (default: --queries, capped at 10 above 20k pages)")
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to build the index (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the indexes built (their folder is printed)")
    ap.add_argument("--m", type=int, default=32, help="HNSW M")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=128, help="raised to the candidates asked for")
    ap.add_argument("--codecs", default=",".join(search_codecs.CONFIGS),
                    help="configurations to compare, fp16 first (default: %(default)s)")
    ap.add_argument("--cold-queries", type=int, default=20, help="queries timed with a cold page cache")
    args = ap.parse_args()
    configs = args.codecs.split(",")
    if configs[0] != "fp16" or not set(configs) <= set(search_codecs.CONFIGS):
        ap.error(f"--codecs: fp16 first, then any of {', '.join(search_codecs.CONFIGS)}")
    n_ex = args.exhaustive_queries or (args.queries if args.pages <= 20_000 else min(args.queries, 10))

    root = tempfile.mkdtemp(prefix="jev-bench-", dir=args.dir)
    paths = {name: os.path.join(root, f"idx-{i}") for i, name in enumerate(configs)}
    path = paths["fp16"]
    print(f"jevsearch search benchmark: {args.pages} pages, HNSW M={args.m} efC={args.ef_construction} "
          f"efS={args.ef_search}, engine threads 1 unless a row says (torch default here "
          f"{torch.get_num_threads()}), load average {os.getloadavg()[0]:.1f}, index at {path}", flush=True)
    corpus = Corpus(args.pages, args.seed)
    try:
        engs = {name: Engine.create(paths[name], single_dim=128, hnsw_m=args.m, ef_construction=args.ef_construction,
                                    ef_search=args.ef_search, **search_codecs.CONFIGS[name]) for name in configs}
        b = build(engs, corpus, args.doc_pages)
        for e in engs.values():
            e.close()
        add_s, flush_s = b["add_s"]["fp16"], b["flush_s"]["fp16"]
        open_s, eng = timed(Engine.open, path, readonly=True)
        st = eng.stats()
        pages = st["pages"]
        floor = lmdb_floor(root, b["payload"] * args.doc_pages // pages)
        write_rows = [
            ("pages", pages, f"{st['tokens'] / pages:.0f} tokens/page, {args.doc_pages} pages/document"),
            ("write rate", pages / (add_s + flush_s),
             "pages/s (add_embeddings + final flush; generation excluded)"),
            ("write rate MB/s", b["payload"] / (add_s + flush_s) / 1e6, "MB/s of fp16 multis + fp32 singles"),
            ("bare LMDB commit floor", floor, "pages/s (same bytes per commit, same fsync policy)"),
            ("write rate / floor", pages / (add_s + flush_s) / floor, "x"),
            ("final flush s", flush_s, "s (queued HNSW inserts + save)"),
            ("open (readonly) s", open_s, "s"),
            ("bytes on disk / page", (st["bytes"]["lmdb_file"] + st["bytes"]["hnsw_file"]) / pages,
             "B (LMDB file + HNSW file)"),
            ("  multi / page", st["bytes"]["multi"] / pages, "B"),
            ("  single / page", st["bytes"]["single"] / pages, "B"),
            ("  hnsw / page", st["bytes"]["hnsw_file"] / pages, "B"),
        ]
        print_table("write (fp16)", write_rows)

        queries = [corpus.query(i, args.query_tokens) for i in range(args.queries)]
        rows, two_sets, p50 = [], {}, {}
        def latencies(cand: int) -> tuple[list[float], list[set]]:
            lat, sets = [], []
            for qs, qm, _ in queries:
                t = time.perf_counter()
                hits = eng.search_embeddings(qs, qm, k=args.k, candidates=cand)
                lat.append((time.perf_counter() - t) * 1e3)
                sets.append({(h.doc_id, h.page) for h in hits})
            return lat, sets

        lat, _ = latencies(100)  # the first pass maps each candidate's pages into this process
        rows.append(("two-stage c=100 p50, first pass", pct(lat, 50), "ms/query (pages not yet touched here)"))
        rows.append(("two-stage c=100 p95, first pass", pct(lat, 95), "ms/query"))
        latencies(200)  # warm: every candidate below is then mapped and in the page cache
        for cand in (50, 100, 200):
            lat, two_sets[cand] = latencies(cand)
            p50[cand] = pct(lat, 50)
            rows.append((f"two-stage c={cand} p50", pct(lat, 50), "ms/query"))
            rows.append((f"two-stage c={cand} p95", pct(lat, 95), "ms/query"))
        stage1 = [timed(eng._state.view.search, _unit(qs[None, :128]), 100)[0] * 1e3 for qs, _, _ in queries]
        rows.append(("  of which stage 1 (HNSW) c=100 p50", pct(stage1, 50), "ms/query"))
        eng.threads = 2
        lat, sets2 = latencies(100)
        eng.threads = 1
        rows.append(("two-stage c=100 p50, threads=2", pct(lat, 50), "ms/query (2 MaxSim workers)"))
        rows.append(("two-stage c=100 p95, threads=2", pct(lat, 95), "ms/query"))
        rows.append(("  same hits as threads=1", float(sets2 == two_sets[100]), "(1 = identical)"))
        batch_s, _ = timed(eng.search_embeddings, np.stack([q[0] for q in queries]), [q[1] for q in queries],
                           k=args.k, candidates=100)
        rows.append(("two-stage c=100 batch", batch_s * 1e3 / len(queries), f"ms/query in one batch of {len(queries)}"))

        ex_s, ex_hits = timed(eng.search_embeddings, None, [q[1] for q in queries[:n_ex]], k=args.k,
                              exhaustive=True)
        ex_sets = [{(h.doc_id, h.page) for h in hits} for hits in ex_hits]
        ex_ms = ex_s * 1e3 / n_ex
        rows.append(("exhaustive", ex_ms, f"ms/query ({n_ex} queries in one streamed pass)"))
        rows.append(("speedup c=100 vs exhaustive", ex_ms / p50[100], "x (exhaustive / two-stage p50)"))
        print_table("search latency", rows)

        qrows = []
        for cand in (50, 100, 200):
            ideal = []
            for qs, qm, _ in queries:
                stage1 = np.argsort(-(b["truncated"] @ _unit(qs[:128])), kind="stable")[:cand]
                ids, scores = rerank_ids(eng, qm, stage1)
                top = ids[np.lexsort((ids, -scores))[: args.k]]
                ideal.append({(f"doc{p // args.doc_pages:06d}.pdf", p % args.doc_pages + 1) for p in top.tolist()})
            qrows.append((f"recall@{args.k} c={cand} vs exhaustive", recall(two_sets[cand][:n_ex], ex_sets), ""))
            qrows.append((f"recall@{args.k} c={cand} vs ideal two-stage", recall(two_sets[cand], ideal), ""))
            qrows.append((f"ideal two-stage c={cand} vs exhaustive", recall(ideal[:n_ex], ex_sets), ""))
        target_hit = np.mean([any(h == (f"doc{t // args.doc_pages:06d}.pdf", t % args.doc_pages + 1) for h in s)
                              for s, (_, _, t) in zip(two_sets[100], queries)])
        qrows.append(("target page in top-10 (c=100)", float(target_hit), "sanity: queries are built from it"))
        print_table("quality", qrows)
        eng.close()
        search_codecs.compare(paths, b, queries, ex_sets, args.k, args.cold_queries)
        eng = Engine.open(path, readonly=True)

        q = queries[0][1]
        frows = []
        for n in (100, 400):
            f = floors(eng, min(n, pages), q)
            frows += [
                (f"MaxSim {n} pages: full path", f["real"], "ms (LMDB fetch + fp16->fp32 pack + matmul/max/sum)"),
                ("  full path, 2 workers", f["real2"], "ms (threads=2)"),
                ("  kernel only, in cache", f["kernel"], "ms (maxsim_concat() on one packed block, times the blocks)"),
                ("  matmul floor, in cache", f["cache_mm"], f"ms (fp32 matmul of {CPU_BLOCK_TOKENS}-token blocks already in cache)"),
                ("  matmul, one shot", f["matmul"], "ms (one fp32 matmul over all the tokens, data in memory)"),
                ("  memcpy floor", f["memcpy"], "ms (copy of the stored fp16 bytes)"),
                ("  full / (in-cache matmul + memcpy)", f["real"] / (f["cache_mm"] + f["memcpy"]), "x"),
                ("  throughput", f["tokens"] / f["real"] / 1e3, "M page-tokens/s"),
            ]
        frows.append(("peak RSS", peak_rss_mb(), "MB (includes LMDB pages mapped from the page cache)"))
        frows.append(("load average at end", os.getloadavg()[0], "(2 cores, shared)"))
        print_table("MaxSim vs floor (one query)", frows)
        eng.close()

        extra = min(args.append_pages, pages)
        per_doc, batched = append_writes(path, corpus, args.doc_pages, args.batch_docs, extra)
        print_table(f"writes at scale (appending {extra} pages to the {pages}-page index)", [
            ("one commit per document", per_doc, f"pages/s (add_embeddings, {args.doc_pages} pages/document)"),
            ("batched commits", batched, f"pages/s (add_embeddings_many, {args.batch_docs} documents per commit)"),
            ("batched / per-doc", batched / per_doc, "x"),
        ])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
