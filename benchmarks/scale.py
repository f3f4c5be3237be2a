"""Ray ingest and sharded search, with baselines measured in the same run (read ratios: the machine is shared).

    python benchmarks/scale.py                          # all parts; a local 2-CPU Ray cluster
    python benchmarks/scale.py --only ingest,latency    # some parts: ingest, latency, commit, shards
    python benchmarks/scale.py --pages 40000            # the sharded corpus of the issue (~8 GB per copy)

ingest   ``tests/ingest_corpus.make_corpus`` PDFs (--docs x --doc-pages), the tiny checkpoint at its own pixel
         budget, end to end (render, encode, store). Baselines: local ``ingest()`` with 1 and 2 torch threads
         (Engine.add picks 1 on 2 cores). Ray: a warm pool (actor start reported apart) of 1, then 2
         single-threaded CPU actors; efficiency = rate(2 actors) / (2 x rate(1 actor)); then the actors
         alone on pre-rendered pages (no render tasks). Best of --repeat interleaved runs. Ray workers at
         nice 0 (Ray's default is 15), like the local baselines.
latency  One 1-page PDF at a time through a warm 1-actor pool vs the same work in this process (render the
         file's bytes, encode): Ray's added latency per document (tasks, object store, driver loop).
commit   The driver's ceiling: documents of --commit-doc-pages pages with the real model's shapes (2048-d
         single, 770 x 128 multi per page, float32) as the actors return them, fetched from the object
         store (ray.get) and committed as Engine.add does (one commit per document), and with
         add_embeddings_many (16 per commit) for comparison. GPUs one driver keeps busy = pages/s / 46.
shards   ``benchmarks/search.Corpus`` (jina-v4-shaped synthetic pages, ~770 tokens) of --pages pages in one
         index and in 4 shards: p50 of 40 queries (16 tokens, k=10; 100 candidates per shard, and 25 per
         shard for the same total rerank work as one index), recall@10 against exhaustive exact MaxSim,
         and the fan-out cost: the sharded wall time minus the shards' own searches of the same query
         (each timed alone, interleaved with the others), with threads in this process and with Ray
         actors (one per shard). Default 8000 pages: two 40k-page copies take ~17 GB and the exhaustive
         reference reads every page per query, far more than a few minutes on 2 cores; --pages 40000
         runs the issue's size where there is room.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import ray

from benchmarks._util import pct, print_table
from jevsearch import Engine, Index, ShardedEngine
from jevsearch.ingest import discover, ingest
from jevsearch.scale.ingest import EncoderPool
from jevsearch.search.threads import torch_threads
from tests.ingest_corpus import make_corpus, make_pdf

GPU_PAGES_S = 46.0  # the project's estimate for the real model on one H100 (benchmarks/encode.py)


def ingest_part(tmp: str, model: str, args, rows: list) -> None:
    corpus = os.path.join(tmp, "corpus")
    make_corpus(corpus, args.docs, args.doc_pages)
    sources, _ = discover([corpus])
    with Engine.create(os.path.join(tmp, "probe"), model=model) as eng:
        encoder, geometry, recorded = eng.encoder, eng.page_geometry, dict(eng.manifest["model"])
    pages = args.docs * args.doc_pages

    def local(threads: int):
        with torch_threads(threads):
            r = ingest(sources, encoder, lambda d: None, geometry=geometry, batch_tokens=encoder.max_batch_tokens)
        assert r.pages == pages, r
        return r

    local(1)  # warm-up: first render process, first forward
    pools = {w: EncoderPool("auto", recorded, w) for w in (1, 2)}
    try:
        starts = {}
        for w, pool in pools.items():
            starts[w] = _s(pool.start)
            pool.ingest(sources[:1], lambda d: None)  # warm-up: render workers, first forward
        # Interleaved, best of --repeat: the machine is shared and its load comes and goes.
        runs = {k: [] for k in ("local1", "local2", 1, 2)}
        for _ in range(args.repeat):
            runs["local1"].append(local(1))
            runs["local2"].append(local(2))
            for w, pool in pools.items():
                r = pool.ingest(sources, lambda d: None)
                assert r.pages == pages and not r.failed, r
                runs[w].append(r)
        best = {k: max(v, key=lambda r: -r.timings["wall"]) for k, v in runs.items()}
        rate = {k: pages / r.timings["wall"] for k, r in best.items()}
        for k, label in (("local1", "local, 1 torch thread (Engine.add's choice)"),
                         ("local2", "local, 2 torch threads (baseline)"),
                         (1, "ray, 1 single-threaded actor"), (2, "ray, 2 single-threaded actors")):
            t = best[k].timings
            note = f"pages/s; render {1e3 * t['render'] / pages:.0f}, encode {1e3 * t['encode'] / pages:.0f} ms/page"
            if k in starts:
                note += f"; pool start {starts[k]:.1f} s, not counted"
            rows.append((label, rate[k], note))
        rows += [("ray 2 actors / local 2 threads", rate[2] / rate["local2"], "x"),
                 ("efficiency: ray 2 actors / (2 x ray 1 actor)", rate[2] / (2 * rate[1]), "(1.0 = linear)")]

        # The encoder pool alone: the same pre-rendered pages straight to the actors (no render tasks).
        from jevsearch.scale.ingest import TASK
        from jevsearch.scale.workers import render_range

        with open(sources[0].path, "rb") as f:
            g = (geometry.max_pixels, geometry.min_pixels, geometry.factor)
            _, rasters = render_range(f.read(), sources[0].path, "pdf", g, 0, args.doc_pages)
        ref = ray.put(rasters)
        calls = 2 * ((args.docs + 1) // 2)  # an even number of calls, one document's pages each
        alone = {}
        for _ in range(args.repeat):
            for w, pool in pools.items():
                t = time.perf_counter()
                ray.get([pool.actors[i % w].encode.remote(TASK, ref) for i in range(calls)])
                alone[w] = max(alone.get(w, 0.0), calls * len(rasters) / (time.perf_counter() - t))
        rows += [("encoder actors alone (pre-rendered), 1 actor", alone[1], "pages/s"),
                 ("encoder actors alone (pre-rendered), 2 actors", alone[2], "pages/s"),
                 ("efficiency of the actors alone: 2 / (2 x 1)", alone[2] / (2 * alone[1]), "(1.0 = linear)")]
    finally:
        for pool in pools.values():
            pool.close()


def latency_part(tmp: str, model: str, args, rows: list) -> None:
    from PIL import Image

    from jevsearch.ingest.sources import Source
    from jevsearch.scale.workers import render_range

    files = []
    for i in range(args.latency_docs + 1):
        path = os.path.join(tmp, f"one{i}.pdf")
        make_pdf(path, 1, seed=100 + i)
        files.append(Source(path, "pdf"))
    with Engine.create(os.path.join(tmp, "probe-lat"), model=model) as eng:
        encoder, geometry, recorded = eng.encoder, eng.page_geometry, dict(eng.manifest["model"])
    g = (geometry.max_pixels, geometry.min_pixels, geometry.factor)

    def in_process(src) -> None:
        with open(src.path, "rb") as f:
            _, rasters = render_range(f.read(), src.path, src.kind, g, 0, 16)
        encoder.encode_images([Image.fromarray(a) for a in rasters], max_pixels=geometry.max_pixels)

    local_ms, ray_ms = [], []
    with EncoderPool("auto", recorded, 1) as pool, torch_threads(1):
        in_process(files[0])
        pool.ingest(files[:1], lambda d: None)
        for f in files[1:]:  # interleaved, so both see the same machine
            local_ms.append(_ms(in_process, f))
            ray_ms.append(_ms(lambda x: pool.ingest([x], lambda d: None), f))
    diff = [r - loc for r, loc in zip(ray_ms, local_ms)]
    rows += [("1-page document in this process (render + encode)", statistics.median(local_ms), "ms, median"),
             ("1-page document through Ray (warm pool)", statistics.median(ray_ms), "ms, median"),
             ("Ray's added latency per document", statistics.median(diff), f"ms, median of {len(diff)} pairs")]


def commit_part(tmp: str, args, rows: list) -> None:
    rng = np.random.default_rng(0)
    p = args.commit_doc_pages

    def unit(*shape):
        x = rng.standard_normal(shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    # As an actor returns them: one object per call holding (singles, multis) of a document.
    ref = ray.put({"vectors": [(unit(p, 2048), [unit(770, 128) for _ in range(p)])], "seconds": 0.0})
    docs = args.commit_docs
    t = time.perf_counter()
    for _ in range(docs):
        ray.get(ref)
    get_pp = (time.perf_counter() - t) / (docs * p)
    singles, multis = ray.get(ref)["vectors"][0]
    results = {}
    for name, group in (("one commit per document (as Engine.add)", 1), ("add_embeddings_many, 16 per commit", 16)):
        with Engine.create(os.path.join(tmp, f"commit-{group}"), single_dim=128) as eng:
            eng.add_embeddings("warm", singles, multis)
            t = time.perf_counter()
            for first in range(0, docs, group):
                eng.add_embeddings_many([(f"doc{i}", singles, multis, {"sha256": "0" * 64, "kind": "pdf"})
                                         for i in range(first, min(first + group, docs))])
            eng.flush()
            commit_pp = (time.perf_counter() - t) / (docs * p)
        results[group] = 1 / (commit_pp + get_pp)
        rows.append((f"driver: ray.get + {name}", results[group],
                     f"pages/s = {results[group] / GPU_PAGES_S:.1f} GPUs at {GPU_PAGES_S:g} pages/s"))
    rows.append(("  of which ray.get of the vectors", get_pp * 1e3, "ms/page"))


def shards_part(tmp: str, args, rows: list) -> None:
    from benchmarks.search import Corpus

    corpus = Corpus(args.pages, seed=0)
    one = Index.create(os.path.join(tmp, "one"), single_dim=128)
    sh = ShardedEngine.create(os.path.join(tmp, "sh"), shards=4, single_dim=128)
    t = time.perf_counter()
    for first in range(0, args.pages, 50):  # documents of 10 pages, 5 per commit
        docs = []
        for d in range(first, min(first + 50, args.pages), 10):
            page = [corpus.page(i) for i in range(d, min(d + 10, args.pages))]
            docs.append((f"doc{d // 10:06d}.pdf", np.stack([s for s, _ in page]), [m for _, m in page]))
        one.add_embeddings_many(docs)
        sh.add_embeddings_many(docs)
    one.close()
    sh.close()
    print(f"  built 2 x {args.pages} pages in {time.perf_counter() - t:.0f} s", flush=True)
    queries = [corpus.query(i, 16) for i in range(args.queries)]
    with Index.open(os.path.join(tmp, "one"), readonly=True) as one, \
            ShardedEngine.open(os.path.join(tmp, "sh"), readonly=True) as sh, \
            ShardedEngine.open(os.path.join(tmp, "sh"), ray="auto") as served:
        shard_idx = [Index.open(os.path.join(tmp, "sh", name), readonly=True) for name in sh.shards]
        exact = [{(h.doc_id, h.page) for h in one.search_embeddings(None, q, k=10, exhaustive=True)}
                 for _, q, _ in queries[:args.exact]]
        ways = {"one": lambda qs, q: one.search_embeddings(qs, q, k=10, candidates=100),
                "threads": lambda qs, q: sh.search_embeddings(qs, q, k=10, candidates=100),
                "threads25": lambda qs, q: sh.search_embeddings(qs, q, k=10, candidates=25),
                "ray": lambda qs, q: served.search_embeddings(qs, q, k=10, candidates=100)}
        for i, shard in enumerate(shard_idx):
            ways[i] = lambda qs, q, shard=shard: shard.search_embeddings(qs, q, k=10, candidates=100)
        ms = {name: [] for name in ways}
        found = {name: [] for name in ways}
        for rep in range(2):  # the first pass warms up (page cache, FAISS, actors) and is not kept
            for qs, q, _ in queries:  # every way for one query, then the next: they see the same machine
                for name, search in ways.items():
                    t = time.perf_counter()
                    hits = search(qs, q)
                    if rep:
                        ms[name].append((time.perf_counter() - t) * 1e3)
                        found[name].append(hits)
        for shard in shard_idx:
            shard.close()
    recall = {name: np.mean([len(exact[i] & {(h.doc_id, h.page) for h in found[name][i]}) / 10
                             for i in range(len(exact))]) for name in ("one", "threads", "threads25", "ray")}
    summed = [sum(x) for x in zip(*(ms[i] for i in range(4)))]
    slowest = [max(x) for x in zip(*(ms[i] for i in range(4)))]
    p50 = {name: pct(v, 50) for name, v in ms.items()}
    rows += [("1 index, 100 candidates: p50", p50["one"],
              f"ms (recall@10 {recall['one']:.3f} vs exhaustive, {args.exact} queries)"),
             ("4 shards x 100 candidates, threads: p50", p50["threads"],
              f"ms (recall@10 {recall['threads']:.3f}; 4x the rerank work)"),
             ("4 shards x 25 candidates, threads: p50", p50["threads25"],
              f"ms (recall@10 {recall['threads25']:.3f}; the same work as 1 index)"),
             ("4 shards x 100 candidates, Ray actors: p50", p50["ray"], f"ms (recall@10 {recall['ray']:.3f})"),
             ("  each shard alone (100 candidates): p50", statistics.median(p50[i] for i in range(4)), "ms"),
             ("  the 4 shards one after another: p50", pct(summed, 50), "ms"),
             ("  threads: wall - the 4 one after another: p50", pct([a - b for a, b in zip(ms["threads"], summed)], 50),
              "ms per query (< 0: they overlap)"),
             ("  threads: wall - slowest shard: p50", pct([a - b for a, b in zip(ms["threads"], slowest)], 50),
              "ms per query (0 = perfect overlap; 4 searches share 2 cores)"),
             ("  Ray: wall - slowest shard: p50", pct([a - b for a, b in zip(ms["ray"], slowest)], 50),
              "ms per query (actor calls, hits pickled, the cores shared)")]


def _ms(fn, arg) -> float:
    t = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - t) * 1e3


def _s(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="ingest,latency,commit,shards")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--doc-pages", type=int, default=10)
    ap.add_argument("--commit-docs", type=int, default=40)
    ap.add_argument("--commit-doc-pages", type=int, default=10)
    ap.add_argument("--pages", type=int, default=8000, help="sharded corpus pages")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each ingest configuration (best is kept)")
    ap.add_argument("--latency-docs", type=int, default=15)
    ap.add_argument("--exact", type=int, default=20, help="queries checked against exhaustive search")
    args = ap.parse_args()
    parts = set(args.only.split(","))

    # Ray runs workers at nice 15: on a shared machine they would wait behind every other process while
    # the local baselines do not. The same priority for both.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 << 20)
    tmp = tempfile.mkdtemp(prefix="jevsearch-scale-")
    try:
        from jevsearch.model.tiny import write_tiny_checkpoint

        model = os.path.join(tmp, "tiny")
        write_tiny_checkpoint(model, seed=0)
        print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; ray {ray.__version__}")
        for name, fn in (("ingest", lambda rows: ingest_part(tmp, model, args, rows)),
                         ("latency", lambda rows: latency_part(tmp, model, args, rows)),
                         ("commit", lambda rows: commit_part(tmp, args, rows)),
                         ("shards", lambda rows: shards_part(tmp, args, rows))):
            if name in parts:
                rows: list = []
                fn(rows)
                print_table(name, rows)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
