"""Encoder throughput: texts/s and pages/s, float32 vs bfloat16, token-budget vs naive batching.

    python benchmarks/encode.py                  # tiny RANDOM-weight checkpoint, this machine's CPU
    python benchmarks/encode.py --device cuda    # the same on a GPU

Measures with the tiny checkpoint (written fresh by ``jevsearch.model.tiny``, random weights, so
only speed means anything): texts/s and pages/s per dtype; padding waste and time of the encoder's
sorted token-budget batching against naive fixed-size batches in input order; peak RSS. Then
estimates, from FLOPs, pages/s of the REAL 3.8 B model at 768 visual tokens per page on an H100 and
on this CPU (measured matmul GFLOP/s). Compare ratios within one run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jevsearch.model import JinaV4Encoder, plan_batches
from jevsearch.model.tiny import write_tiny_checkpoint

#: jina-embeddings-v4 (Qwen2.5-VL-3B) dimensions, for the FLOP estimate.
REAL = dict(hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, lora_r=32,
            v_hidden=1280, v_layers=32, v_intermediate=3420, v_full_layers=4, v_window_patches=64,
            v_out=2048, merge=2)
H100_BF16_DENSE = 989e12  # FLOP/s, SXM spec sheet
H100_MFU = 0.4            # sustained fraction typical for batched transformer inference


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_page(d: dict, visual_tokens: int, prompt_tokens: int = 11) -> dict:
    """Forward FLOPs (2 per multiply-add) of one page: vision tower + language model + projector."""
    h, L, hd = d["hidden"], d["layers"], d["hidden"] // d["heads"]
    kv = d["kv_heads"] * hd
    lm_params = L * (2 * h * h + 2 * h * kv + 3 * h * d["intermediate"])
    lora = L * d["lora_r"] * (2 * (h + h) + 2 * (h + kv) + 3 * (h + d["intermediate"]))
    T = visual_tokens + prompt_tokens
    lm = 2 * (lm_params + lora) * T + L * 4 * T * T * h / 2  # causal attention: half the score matrix
    P, vh = visual_tokens * d["merge"] ** 2, d["v_hidden"]  # patches before the 2x2 merge
    v_params = d["v_layers"] * (4 * vh * vh + 3 * vh * d["v_intermediate"])
    v_attn = (d["v_full_layers"] * 4 * P * P * vh
              + (d["v_layers"] - d["v_full_layers"]) * 4 * P * d["v_window_patches"] * vh)
    mvh = vh * d["merge"] ** 2
    merger = 2 * visual_tokens * (mvh * mvh + mvh * d["v_out"])
    vision = 2 * v_params * P + v_attn + merger
    return {"vision": vision, "lm": lm, "total": vision + lm + 2 * T * h * 128}


def matmul_flops(dtype: torch.dtype, device: str, n: int = 1024, reps: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def make_texts(n: int, rng) -> list[str]:
    words = "retrieval engine page image token vector query passage model index score rank the of and".split()
    lengths = np.clip(rng.lognormal(mean=3.5, sigma=1.0, size=n), 3, 600).astype(int)
    return [" ".join(rng.choice(words, size=k)) for k in lengths]


def make_pages(n: int, rng) -> list[Image.Image]:
    # Mixed sizes like a real corpus: A4 pages at ~150 dpi, slides, and small figures.
    sizes = [(1240, 1754), (1280, 720), (600, 400), (1754, 1240)]
    pages = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        pages.append(Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)))
    return pages


def timed(fn, repeat: int) -> float:
    """Best of ``repeat`` after a warm-up: on a shared machine the minimum is the least disturbed run."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def waste(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def naive_batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    texts, pages = make_texts(args.texts, rng), make_pages(args.pages, rng)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.texts} texts, {args.pages} pages, "
          f"best of {args.repeat}; tiny checkpoint with RANDOM weights (speed only); shared machine: noisy")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
        rows = []
        for dtype in (torch.float32, torch.bfloat16):
            enc = JinaV4Encoder.from_pretrained(ckpt, device=args.device, dtype=dtype)
            t_text = timed(lambda: enc.encode_texts(texts, prompt_name="passage"), args.repeat)
            t_page = timed(lambda: enc.encode_images(pages), args.repeat)
            rows.append((str(dtype).removeprefix("torch."), args.texts / t_text, args.pages / t_page))
        print("\n| dtype | texts/s | pages/s |\n|---|---|---|")
        for name, tps, pps in rows:
            print(f"| {name} | {tps:.1f} | {pps:.2f} |")
        print(f"bf16/fp32 ratio: texts {rows[1][1] / rows[0][1]:.2f}x, pages {rows[1][2] / rows[0][2]:.2f}x")

        # Batching: the encoder's plan against naive fixed batches in input order (same budget scale).
        enc = JinaV4Encoder.from_pretrained(ckpt, device=args.device, dtype=torch.float32)
        tok = enc.processor.tokenize_texts(texts, "Passage: ")
        t_len = [len(t) for t in tok]
        p_len = [enc.image_tokens(*p.size) + enc.image_prompt_tokens for p in pages]
        print("\n| workload | batching | batches | padding waste | time s |\n|---|---|---|---|---|")
        for name, lengths, naive_size, run in (
            ("texts", t_len, 32, lambda b: enc._run(b, len(texts), "retrieval", None,
                                                      lambda idx: enc.processor.text_batch([tok[i] for i in idx]),
                                                      pool="mask")),
            ("pages", p_len, 4, lambda b: enc._run(b, len(pages), "retrieval", None,
                                                    lambda idx: enc.processor.image_batch([pages[i] for i in idx]),
                                                    pool="vision")),
        ):
            for label, batches in (("token budget (sorted)", plan_batches(lengths, enc.max_batch_tokens)),
                                   (f"naive fixed {naive_size}", naive_batches(len(lengths), naive_size))):
                t = timed(lambda: run(batches), args.repeat)
                print(f"| {name} | {label} | {len(batches)} | {waste(batches, lengths):.1%} | {t:.2f} |")
        print("(the tiny model costs little per token, so per-forward overhead can hide padding; the real "
              "model's cost is proportional to padded tokens, i.e. to 1 / (1 - waste))")
        print(f"\npeak RSS: {peak_rss_mib():.0f} MiB (whole process, tiny model)")

    # FLOP estimate for the real model.
    f = flops_per_page(REAL, visual_tokens=768)
    cpu32 = matmul_flops(torch.float32, "cpu")
    cpu16 = matmul_flops(torch.bfloat16, "cpu")
    h100 = H100_BF16_DENSE * H100_MFU
    print(f"\nReal jina-embeddings-v4, one page at 768 visual tokens (+11 prompt): "
          f"vision {f['vision'] / 1e12:.2f} + LM {f['lm'] / 1e12:.2f} = {f['total'] / 1e12:.2f} TFLOP")
    print("| hardware | sustained FLOP/s | est. pages/s | s/page |\n|---|---|---|---|")
    for name, rate in ((f"H100 bf16 ({H100_MFU:.0%} of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s)", h100),
                       (f"this CPU fp32 (measured matmul, {torch.get_num_threads()} threads)", cpu32),
                       (f"this CPU bf16 (measured matmul, {torch.get_num_threads()} threads)", cpu16)):
        print(f"| {name} | {rate / 1e9:,.0f} GFLOP/s | {rate / f['total']:.4g} | {f['total'] / rate:.3g} |")
    if args.device == "cuda":
        print(f"measured this GPU's bf16 matmul: {matmul_flops(torch.bfloat16, 'cuda', n=8192) / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
