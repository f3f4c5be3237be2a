"""Benchmark of the integrity checks: what checksums cost on searches and writes, and a deep verify.

    python benchmarks/integrity.py                   # 10k pages (~2 GB on disk, several minutes)
    python benchmarks/integrity.py --pages 2000      # a quick run

The corpus and queries are benchmarks/search.py's (deterministic from --seed). Baselines from the
same run (the machine is shared and noisy: read the ratios):

  * search: every query runs twice, with checksum verification and without it (the digest sliced off
    unread: ``jevsearch.store.checksum.unseal`` patched in this process only), alternating which goes
    first, so that load drift hits both alike. Floor: xxHash3 over the same candidates' stored bytes.
  * writes: the same documents added to two fresh indexes, one in the current format (every value
    sealed) and one in format version 1 (no checksums), alternating per document.
  * deep verify: seconds for the whole index, per 10k pages, and MB/s of values read and checked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import xxhash

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._util import pct, print_table, timed
from benchmarks.search import Corpus, _unit, build
from jevsearch import Index
from jevsearch.store import checksum
from tests._store_child import as_version_1

_REAL_UNSEAL = checksum.unseal


@contextmanager
def verification(on: bool):
    """Reads verify digests (on) or slice them off unread (off: the baseline)."""
    if not on:
        checksum.unseal = lambda table, key, raw: memoryview(raw)[:-checksum.SIZE]
    try:
        yield
    finally:
        checksum.unseal = _REAL_UNSEAL


def search_rows(ix: Index, corpus: Corpus, n_queries: int, query_tokens: int, k: int, candidates: int) -> list:
    queries = [corpus.query(i, query_tokens) for i in range(n_queries)]
    for qs, qm, _ in queries:  # warm: every candidate mapped and in the page cache
        ix.search_embeddings(qs, qm, k=k, candidates=candidates)
    lat = {True: [], False: []}
    for i, (qs, qm, _) in enumerate(queries):
        for on in ((True, False) if i % 2 else (False, True)):
            with verification(on):
                t = time.perf_counter()
                hits = ix.search_embeddings(qs, qm, k=k, candidates=candidates)
                lat[on].append((time.perf_counter() - t) * 1e3)
            assert hits
    floor, nbytes = [], []
    with ix._state.store.read() as txn:  # private API, benchmark only: the candidates' stored values
        for qs, _, _ in queries:
            ids = ix._state.view.search(_unit(qs[None, :ix.manifest["single_dim"]]), candidates)[0]
            raws = [ix._state.store.get(txn, "multi", pid.to_bytes(8, "big"), raw=True) for pid in ids.tolist()]
            t = time.perf_counter()
            for r in raws:
                xxhash.xxh3_64_intdigest(r, seed=1)
            floor.append((time.perf_counter() - t) * 1e3)
            nbytes.append(sum(len(r) for r in raws))
    on, off = pct(lat[True], 50), pct(lat[False], 50)
    return [
        (f"two-stage c={candidates} p50, verified", on, "ms/query (every value read checked)"),
        (f"two-stage c={candidates} p50, unverified", off, "ms/query (digests sliced off unread)"),
        ("  verified / unverified", on / off, "x (target <= 1.05)"),
        ("  difference p50", on - off, "ms/query"),
        (f"two-stage c={candidates} p95, verified", pct(lat[True], 95), "ms/query"),
        (f"two-stage c={candidates} p95, unverified", pct(lat[False], 95), "ms/query"),
        ("xxh3 floor over the candidates' multi bytes", pct(floor, 50), f"ms/query ({np.mean(nbytes) / 1e6:.1f} MB)"),
        ("  xxh3 throughput", np.mean(nbytes) / pct(floor, 50) / 1e6, "GB/s (in page cache)"),
    ]


def write_rows(root: str, corpus: Corpus, pages: int, doc_pages: int) -> list:
    paths = {on: os.path.join(root, f"write-{on}") for on in (True, False)}
    Index.create(paths[False], single_dim=128, codec="fp16").close()
    as_version_1(paths[False])
    ixs = {True: Index.create(paths[True], single_dim=128, codec="fp16"), False: Index.open(paths[False])}
    took = {True: 0.0, False: 0.0}
    try:
        for d, first in enumerate(range(0, pages, doc_pages)):
            page = [corpus.page(p) for p in range(first, min(first + doc_pages, pages))]
            singles, multis = np.stack([s for s, _ in page]), [m for _, m in page]
            for on in ((True, False) if d % 2 else (False, True)):
                took[on] += timed(ixs[on].add_embeddings, f"doc{d:06d}.pdf", singles, multis)[0]
        for on in (True, False):
            took[on] += timed(ixs[on].flush)[0]
    finally:
        for ix in ixs.values():
            ix.close()
        for p in paths.values():
            shutil.rmtree(p, ignore_errors=True)
    return [
        ("write rate, checksums (format 2)", pages / took[True],
         f"pages/s (add_embeddings, {doc_pages} pages/document, + final flush)"),
        ("write rate, no checksums (format 1)", pages / took[False], "pages/s (the same documents)"),
        ("  format 2 / format 1", took[False] / took[True], "x"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--doc-pages", type=int, default=10)
    ap.add_argument("--write-pages", type=int, default=2000, help="pages per index in the write comparison")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to build the indexes (default: a temp dir, removed)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="jev-integrity-", dir=args.dir)
    print(f"jevsearch integrity benchmark: {args.pages} pages, load average {os.getloadavg()[0]:.1f}, "
          f"index at {root}", flush=True)
    try:
        corpus = Corpus(args.pages, args.seed)
        print_table("writes", write_rows(root, corpus, min(args.write_pages, args.pages), args.doc_pages))
        path = os.path.join(root, "idx")
        ix = Index.create(path, single_dim=128, codec="fp16")
        build({"fp16": ix}, corpus, args.doc_pages)
        ix.close()
        with Index.open(path, readonly=True) as ix:
            rows = search_rows(ix, corpus, args.queries, args.query_tokens, args.k, args.candidates)
            print_table("search latency (one engine thread)", rows)
            st = ix.stats()
            verify_s, report = timed(ix.verify, deep=True)
            read_mb = (st["bytes"]["multi"] + st["bytes"]["single"]) / 1e6
            print_table("deep verify", [
                ("deep verify", verify_s, f"s for {report['pages']} pages ({report['values_checked']} values)"),
                ("  per 10k pages", verify_s * 10_000 / report["pages"], "s"),
                ("  throughput", read_mb / verify_s, "MB/s of vectors read and checked"),
                ("load average at end", os.getloadavg()[0], "(2 cores, shared)"),
            ])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
