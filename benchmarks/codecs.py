"""Benchmark of the multi-vector codecs' scoring kernels and of token pooling (no index, no I/O).

    python benchmarks/codecs.py                  # ~1-2 minutes
    python benchmarks/codecs.py --queries 50 --pages 100

One query of --query-tokens tokens against --pages candidate pages of ~770 x 128 tokens (the
benchmark corpus of ``benchmarks/search.py``), as ``Scorer.score`` runs it in a search: torch on 1
thread, 1 worker, pages unpacked block by block from their stored bytes. "Warm, data in memory":
every query scores a different copy of the encoded pages, cycling through copies that together
exceed twice the L3 cache, so the stored bytes come from DRAM as in a real index (the 1.6 MB of one
query's binary codes would otherwise stay in cache and flatter the compact codecs).

Rows (ratios against the fp16 kernel of the same run):
  * bytes per page, kernel ms per query (p50), unpack share (the same blocks unpacked, not scored);
  * binary's optional Hamming pass (binary-binary MaxSim: query signs, XOR + np.bitwise_count);
  * options measured for the choices in jevsearch/search/codecs.py: binary scored in float32 (+-1/sqrt(d)
    unpacked to float32, the float query as is), unpacking variants, the float32 vs int8 matmul
    floor of one block;
  * rank agreement: recall@10 of each codec's top 10 among the candidates against float32 MaxSim on
    the original tokens;
  * pooling ms per 770-token page (factor 2 and 3) and the tokens it keeps.
The CPU is detected (model, ISA flags, caches) and printed: kernels differ a lot across ISAs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._util import pct, print_table, repeat_ms
from benchmarks.search import Corpus
from jevsearch.search import codecs
from jevsearch.search.maxsim import CPU_BLOCK_TOKENS, block_tokens, pad_queries
from jevsearch.search.pack import ConcatPacker
from jevsearch.search.pooling import pool_tokens
from jevsearch.search.rerank import Scorer, _blocks

DM = 128
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx512_vpopcntdq")


def cpu_summary() -> tuple[str, int]:
    """(a line naming the CPU and its relevant ISA flags, L3 bytes or 0), read from /proc and /sys."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    l3 = 0
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        l3 = int(text[:-1]) * {"K": 1024, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text)
    except (OSError, ValueError):
        pass
    have = [f for f in FLAGS if f in flags] or ["none of " + "/".join(FLAGS)]
    return (f"{model}, {os.cpu_count()} cpus, flags {' '.join(have)}, torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}, L3 {l3 >> 20} MiB"), l3


def copies(raws: list[bytes], need_bytes: int) -> list[list[bytes]]:
    """Distinct in-memory copies of one set of page values, enough to total ``need_bytes``."""
    size = sum(len(r) for r in raws)
    return [[bytes(bytearray(r)) for r in raws] for _ in range(max(2, math.ceil(need_bytes / size)))]


def interleaved_ms(fns: dict, n: int, sets: dict, warmup: int = 3) -> dict:
    """p50 ms of each ``fns[name](i, pages)`` over i = 0..n-1, the contenders taking turns call by call
    (a shared, noisy machine then slows them alike); each call gets the next copy of its pages
    (``sets[name]``)."""
    times: dict = {name: [] for name in fns}
    for i in range(-warmup, n):
        for name, fn in fns.items():
            copies_ = sets[name]
            t = time.perf_counter()
            fn(i % n, copies_[i % len(copies_)])
            if i >= 0:
                times[name].append((time.perf_counter() - t) * 1e3)
    return {name: pct(v, 50) for name, v in times.items()}


def binary_float32_scores(qt: torch.Tensor, raws: list, lens: list[int], budget: int, buf: dict) -> np.ndarray:
    """The binary codec scored the float32 way (the option not taken): each block's bytes -> +-1/sqrt(d)
    float32 by a 256 x 8 table, then the float32 matmul + reduceat of the fp16 path."""
    table = buf.setdefault("table", codecs.get("binary", DM).unpack(
        (torch.arange(256, dtype=torch.uint8)[:, None],), torch.float32))  # byte -> its 8 dims, [256, 8]
    out = np.empty(len(raws), dtype=np.float32)
    q = qt.reshape(-1, DM)
    for start, stop in _blocks(lens, budget, padded=False):
        n = sum(lens[start:stop])
        codes = torch.frombuffer(bytearray(b"".join(raws[start:stop])), dtype=torch.uint8).int()
        tokens = buf.setdefault("tokens", torch.empty(CPU_BLOCK_TOKENS * 2, DM))[:n]
        torch.index_select(table, 0, codes, out=tokens.view(-1, 8))
        sim = torch.mm(q, tokens.T)
        starts = np.concatenate([[0], np.cumsum(lens[start:stop - 1])]).astype(np.intp)
        out[start:stop] = np.maximum.reduceat(sim.numpy(), starts, axis=1).sum(axis=0)
    return out


def unpack_variants(raws: list[bytes], lens: list[int], budget: int) -> list[tuple]:
    """ms to unpack one query's binary pages, block by block as the kernel does (the block's bytes
    already staged), by each way measured."""
    blocks = [np.frombuffer(b"".join(raws[a:b]), dtype=np.uint8) for a, b in _blocks(lens, budget, padded=False)]
    most = max(len(b) for b in blocks)  # bytes of the largest block, 16 per token
    staged = [torch.from_numpy(b.copy()) for b in blocks]
    signs = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int8) * 2 - 1  # [256, 8]
    table64, f_table = torch.from_numpy(signs.view(np.int64).reshape(256)), torch.from_numpy(signs.astype(np.float32))
    i8, f32 = torch.empty(most * 8, dtype=torch.int8), torch.empty(most * 8)
    idx = torch.empty(most, dtype=torch.int32)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)

    def each(fn):
        return lambda: [fn(b, len(b)) for b in staged]

    def table_int8(b, n):
        idx[:n].copy_(b)
        torch.index_select(table64, 0, idx[:n], out=i8[: n * 8].view(torch.int64))

    def table_f32(b, n):
        idx[:n].copy_(b)
        torch.index_select(f_table, 0, idx[:n], out=f32[: n * 8].view(n, 8))

    def unpackbits(b, n):
        np.multiply(np.unpackbits(b.numpy()), 2, out=f32[: n * 8].numpy(), casting="unsafe")
        f32[: n * 8].sub_(1)

    def shift_ops(b, n):
        torch.mul((b.view(-1, 1) >> shifts) & 1, 2, out=f32[: n * 8].view(n, 8))
        f32[: n * 8].sub_(1)

    variants = [
        ("torch table -> int8 (chosen)", each(table_int8)),
        ("np.take table -> int8", each(lambda b, n: np.take(table64.numpy(), b.numpy(), out=i8[: n * 8].numpy().view(np.int64)))),
        ("torch table -> float32", each(table_f32)),
        ("np.unpackbits -> float32", each(unpackbits)),
        ("torch shifts -> float32", each(shift_ops)),
    ]
    return [(name, pct(repeat_ms(fn, 10), 50)) for name, fn in variants]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=100, help="candidate pages per query")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--pool-pages", type=int, default=5, help="770-token pages pooled per factor")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as a search runs the kernel
    cpu, l3 = cpu_summary()
    print(f"jevsearch codec benchmark: {args.pages} pages x ~770 tokens x {DM} dims, {args.query_tokens} query "
          f"tokens, 1 thread, load average {os.getloadavg()[0]:.1f}\nCPU: {cpu}", flush=True)

    corpus = Corpus(max(args.pages, 20), args.seed)
    pages = [corpus.page(p)[1] for p in range(args.pages)]
    lens = [len(p) for p in pages]
    queries = [corpus.query(i, args.query_tokens)[1] for i in range(args.queries)]
    qts = [pad_queries([q], torch.float32, torch.device("cpu")) for q in queries]
    budget = block_tokens(args.query_tokens, cpu=True)
    exact = [np.array([(q.astype(np.float64) @ p.T.astype(np.float64)).max(axis=1).sum() for p in pages]) for q in queries]

    def recall10(scores: list[np.ndarray]) -> float:
        return float(np.mean([len(set(np.argsort(-s)[:10]) & set(np.argsort(-e)[:10])) / 10
                              for s, e in zip(scores, exact)]))

    encoded = {name: [codecs.get(name, DM).encode(p).tobytes() for p in pages] for name in ("fp16", "int8", "binary")}
    sets = {name: copies(raws, 2 * max(l3, 32 << 20)) for name, raws in encoded.items()}
    scorers = {name: Scorer(DM, name, torch.device("cpu"), torch.float32) for name in encoded}
    packers = {name: ConcatPacker(DM, name) for name in encoded}
    blocks = _blocks(lens, budget, padded=False)
    buf: dict = {}
    kernels = {name: (lambda i, s, sc=sc: sc.score(qts[i], s, lens)) for name, sc in scorers.items()}
    kernels["binary, float32 kernel"] = lambda i, s: binary_float32_scores(qts[i], s, lens, budget, buf)
    kernels["binary Hamming pass"] = lambda i, s: scorers["binary"].score(qts[i], s, lens, hamming=True)
    unpacks = {f"{name} unpack": (lambda i, s, p=p: [p.pack(s[a:b], lens[a:b]) for a, b in blocks])
               for name, p in packers.items()}
    code = {name: name.split(" ")[0].split("-")[0].rstrip(",") for name in (*kernels, *unpacks)}  # row -> codec
    ms = interleaved_ms({**kernels, **unpacks}, len(qts), {name: sets[code[name]] for name in code})
    notes = {"binary, float32 kernel": "option: +-1/sqrt(d) unpacked to float32, float32 matmul",
             "binary Hamming pass": "Scorer.score(hamming=True): query signs, XOR + np.bitwise_count"}
    rows = []
    for name, fn in kernels.items():
        raws = encoded[code[name]]
        unpack = ms.get(f"{name} unpack", float("nan")) / ms[name]
        rows.append((name, sum(len(r) for r in raws) / len(raws), ms[name], unpack,
                     recall10([np.asarray(fn(i, raws)).reshape(-1) for i in range(len(qts))]),
                     notes.get(name, f"{len(sets[code[name]])} copies of the pages")))

    errors = {}
    for name in ("fp16", "int8"):
        got = scorers[name].score(pad_queries(queries, torch.float32, torch.device("cpu")), encoded[name], lens)
        errors[name] = np.abs(got - np.stack(exact))  # [Q, C]

    base_bytes, base_ms = rows[0][1], rows[0][2]
    print(f"\n== kernel per query ({args.pages} candidates, warm, pages from DRAM; p50 of {args.queries} queries)")
    print(f"  {'codec':<24} {'B/page':>9} {'x fp16':>7} {'ms/query':>9} {'x fp16':>7} {'unpack':>7} {'recall@10':>9}  notes")
    for name, b, ms, share, rec, note in rows:
        share_s = f"{share:7.0%}" if share == share else f"{'-':>7}"
        print(f"  {name:<24} {b:9.0f} {b / base_bytes:7.3f} {ms:9.2f} {ms / base_ms:7.2f} {share_s} {rec:9.3f}  {note}")

    print_table("score error against float32 MaxSim on the original tokens (every query x page)", [
        (f"{name} max |error|", float(e.max()), f"(mean {e.mean():.2g}, p99 {np.percentile(e, 99):.2g})")
        for name, e in errors.items()])

    # Floors: one cache-resident block, float32 vs int8 matmul, and the batch of queries.
    q = qts[0].reshape(-1, DM)
    block_f = torch.randn(CPU_BLOCK_TOKENS, DM)
    block_i = torch.randint(-1, 2, (CPU_BLOCK_TOKENS, DM), dtype=torch.int8)
    qc, _ = codecs.quantize_rows(q)
    mm_f = pct(repeat_ms(lambda: torch.mm(q, block_f.T), 50), 50)
    mm_i = pct(repeat_ms(lambda: torch._int_mm(qc, block_i.T), 50), 50)
    batch = pad_queries(queries[:10], torch.float32, torch.device("cpu"))
    batch_rows = []
    for name in ("fp16", "binary"):
        s = Scorer(DM, name, torch.device("cpu"), torch.float32)
        ms = pct(repeat_ms(lambda: s.score(batch, encoded[name], lens), 5), 50)
        batch_rows.append((f"{name}: batch of {len(batch)} queries", ms / len(batch), "ms per query (fetch + unpack shared)"))
    print_table("floors and batches", [
        (f"float32 matmul, one {CPU_BLOCK_TOKENS}-token block", mm_f * 1e3, f"us ({args.query_tokens} query rows)"),
        ("int8 matmul (torch._int_mm), same block", mm_i * 1e3, f"us ({mm_f / mm_i:.1f}x faster)"),
        *batch_rows,
    ])
    print_table(f"unpacking one query's binary pages ({sum(lens)} tokens, block by block, bytes staged)",
                [(n, ms, "ms") for n, ms in unpack_variants(encoded["binary"], lens, budget)])

    pool_pages_ = [Corpus(args.pool_pages, args.seed + 1).page(p)[1] for p in range(args.pool_pages)]
    pool_rows = []
    for f in (2, 3):
        t = time.perf_counter()
        kept = sum(len(pool_tokens(p, f)) for p in pool_pages_)
        ms = (time.perf_counter() - t) * 1e3 / len(pool_pages_)
        pool_rows.append((f"pool_factor={f}", ms, f"ms per page ({sum(map(len, pool_pages_)) / len(pool_pages_):.0f} "
                                                  f"-> {kept / len(pool_pages_):.0f} tokens)"))
    print_table("token pooling (Ward, scipy)", pool_rows)


if __name__ == "__main__":
    main()
