"""The model at its real size on this machine: load, memory, query and page speed per dtype, each beside a floor.

    jevsearch make-tiny-model models/full --full-size        # RANDOM weights, real shapes (~7.5 GB)
    python benchmarks/model.py --model models/full            # every dtype this machine runs
    python benchmarks/model.py --model models/full --dtypes int8 int8-cached --pages 1 --cold
    python benchmarks/model.py --kernels                      # small-M matmul kernels only

Each dtype runs in its own child process (its peak RSS is its own): warm load (and cold with
``--cold``: the weight files dropped from the page cache with posix_fadvise), peak RSS of text-only
use, text-query p50 at 8/12/32 tokens, one batch of 16 queries, then (``--pages N``) N A4 pages at
batch 1 and 2 (after which RSS includes the vision tower). Floors measured in the same run:
``read`` = the page-cache read time of the weight files; ``stream`` = reading the language model's
weights once from memory (a short query cannot beat it); ``flops`` = this CPU's matmul rate in the
dtype (a page's FLOPs / it). Worst cosine of every single and multi vector against float32 is
printed when float32 runs too. Random weights: only speed and memory mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["revenue", "growth", "by", "region", "in", "the", "last", "quarter", "of", "the", "fiscal", "year",
         "compared", "with", "the", "forecast", "and", "budget", "of", "every", "business", "unit", "across"]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _weight_files(model: Path) -> list[Path]:
    from jevsearch.model import checkpoint

    files, _ = checkpoint.base_weight_files(model)
    return [*files, model / checkpoint.ADAPTER_WEIGHTS]


def _read_files(files: list[Path]) -> float:
    """Seconds to read the files once (16 MiB reads)."""
    buf = bytearray(16 << 20)
    t = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t


def _drop_cache(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _query(enc, tokens: int) -> str:
    """A text whose query prompt is ``tokens`` tokens long."""
    words = []
    while len(enc.processor.tokenize_texts([" ".join(words + [WORDS[len(words) % len(WORDS)]])], "Query: ")[0]) <= tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def _p50(fn, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _stream_floor(module) -> tuple[float, int]:
    """Seconds to read every language-model weight the forward pass reads once (embeddings excepted)."""
    import torch

    lm = module.model.language_model
    tensors = [t for n, t in [*lm.named_parameters(), *lm.named_buffers()] if "embed_tokens" not in n and t.numel() > 1]
    for t in tensors[:4]:
        t.sum()
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            s = time.perf_counter()
            for t in tensors:
                t.max()
            best = min(best, time.perf_counter() - s)
    return best, sum(t.nbytes for t in tensors)


def _flop_rate(dtype) -> float:
    import torch

    x, w = torch.randn(768, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    t = _p50(lambda: torch.nn.functional.linear(x, w), 3)
    return 2 * 768 * 2048 * 2048 / t


def _page_image(tokens: int = 747):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (28 * 21, 28 * 36), "white")  # A4-like 0.58 aspect; resized to the token budget
    d = ImageDraw.Draw(img)
    for y in range(20, img.height - 20, 14):
        d.text((20, y), " ".join(WORDS[(y // 14) % 7:][:9]), fill="black")
    return img


def kernels(rows=(1, 12, 32)) -> None:
    """Small-M matmul kernels on one MLP weight of the real model (11008 x 2048): weight GB/s each streams."""
    import torch

    from benchmarks._util import print_grid

    torch.manual_seed(0)
    w = torch.randn(11008, 2048) * 0.02
    q, scales = (w / (w.abs().amax(1, keepdim=True) / 127)).round().to(torch.int8), w.abs().amax(1) / 127
    mk, wb, sb = w.to_mkldnn(), w.bfloat16(), scales.bfloat16()
    ways = {
        "float32 F.linear (MKL)": (lambda x: torch.nn.functional.linear(x, w), torch.float32, 4),
        "float32 oneDNN linear": (lambda x: torch._C._nn.mkldnn_linear(x.to_mkldnn(), mk, None).to_dense(),
                                  torch.float32, 4),
        "bfloat16 F.linear": (lambda x: torch.nn.functional.linear(x, wb), torch.bfloat16, 2),
        "int8 weight-only, bf16 in": (lambda x: torch.ops.aten._weight_int8pack_mm(x, q, sb),
                                      torch.bfloat16, 1),
        "int8 weight-only, fp32 in": (lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scales), torch.float32, 1),
    }
    out = []
    for name, (fn, dtype, size) in ways.items():
        cells = []
        for m in rows:
            x = torch.randn(m, 2048).to(dtype)
            cells.append(w.numel() * size / _p50(lambda x=x, fn=fn: fn(x), 5) / 1e9)
        out.append((name, cells, ""))
    print_grid("weight GB/s streamed by one 11008x2048 matmul, by rows M (higher is better)",
               [f"M={m}" for m in rows], out)


#: Columns that are not a dtype name: what they load as. "int8" runs with an empty int8 cache (it
#: quantises and writes it), "int8-cached" after it (maps the cache); "float32-mkl" is float32 with
#: every linear on F.linear, the path before the measured kernel choice.
VARIANTS = {"int8-cached": "int8", "float32-mkl": "float32"}


def _load(model: Path, name: str):
    from jevsearch.model import JinaV4Encoder

    if name == "int8":  # every "int8" load quantises: its cache starts empty
        shutil.rmtree(os.environ.get("JEVSEARCH_CACHE_DIR", "/nonexistent"), ignore_errors=True)
    return JinaV4Encoder.from_pretrained(model, device="cpu", dtype=VARIANTS.get(name, name))


def child(args) -> dict:
    """Measure one dtype in this process; prints one JSON line."""
    import numpy as np
    import torch

    from jevsearch.model import cpu

    model = Path(args.model)
    files = _weight_files(model)
    out = {"dtype": args.child}
    t = time.perf_counter()
    import peft  # noqa: F401 - what any first load pays before reading a byte, timed apart
    from transformers import Qwen2_5_VLModel  # noqa: F401

    out["imports_s"] = time.perf_counter() - t
    if args.cold:
        _drop_cache(files)
        t = time.perf_counter()
        _load(model, args.child)
        out["load_cold_s"] = time.perf_counter() - t
    out["read_s"] = min(_read_files(files), _read_files(files))
    before = _status("VmRSS:")
    t = time.perf_counter()
    enc = _load(model, args.child)
    out["load_warm_s"] = time.perf_counter() - t
    if args.child == "float32-mkl":  # the path before the kernel choice: every linear on F.linear
        from jevsearch.model.kernels import OneDnnLinear

        for m in enc.module.modules():
            if type(m) is OneDnnLinear:
                m.__class__ = torch.nn.Linear
    out["kernels"] = cpu.kernel_report()
    out["stream_s"], out["lm_weight_bytes"] = _stream_floor(enc.module)
    for tokens in (8, 12, 32):
        q = _query(enc, tokens)
        out[f"query{tokens}_p50_s"] = _p50(lambda q=q: enc.encode_texts([q]), args.reps)
    batch = [_query(enc, 8 + i) for i in range(max(args.batch, 1))]
    t = time.perf_counter()
    emb = enc.encode_texts(batch)
    if args.batch:
        out["batch16_s"] = time.perf_counter() - t
    out["peak_rss_text_bytes"] = _status("VmHWM:")
    out["rss_before_load"] = before
    np.savez(args.save, single=emb.single, **{f"m{i}": m for i, m in enumerate(emb.multi)})
    if args.pages:
        page = _page_image()
        tokens = enc.image_tokens(*page.size) + enc.image_prompt_tokens
        out["page_tokens"] = tokens
        out["flops_per_s"] = _flop_rate(enc.dtype)
        params = sum(p.numel() for n, p in enc.module.named_parameters() if "embed_tokens" not in n)
        out["page_flop_floor_s"] = 2 * params * tokens / out["flops_per_s"]
        for b in (1, 2)[: 1 + (args.pages > 1)]:
            t = time.perf_counter()
            enc.encode_images([page] * b, max_batch_tokens=b * tokens)
            out[f"page_batch{b}_s_per_page"] = (time.perf_counter() - t) / b
        out["peak_rss_pages_bytes"] = _status("VmHWM:")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="snapshot directory (make-tiny-model DIR --full-size)")
    p.add_argument("--dtypes", nargs="+", default=None,
                   help="default: int8 int8-cached bfloat16 float32 float32-mkl (see VARIANTS)")
    p.add_argument("--reps", type=int, default=5, help="timed queries per length (default 5)")
    p.add_argument("--batch", type=int, default=16, help="queries in the batch timed (default 16; 0: none)")
    p.add_argument("--pages", type=int, default=0, help="A4 pages to encode per dtype (0: none; slow on CPU)")
    p.add_argument("--cold", action="store_true", help="also a cold load (weight files dropped from the page cache)")
    p.add_argument("--kernels", action="store_true", help="only the small-M matmul kernel table (no model)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.kernels:
        kernels()
        return 0
    if not args.model:
        p.error("--model DIR is needed (or --kernels)")
    dtypes = args.dtypes or ["int8", "int8-cached", "bfloat16", "float32", "float32-mkl"]
    results, saved = {}, {}
    tmp = tempfile.mkdtemp(prefix="jevsearch-model-bench-")
    os.environ["JEVSEARCH_CACHE_DIR"] = os.path.join(tmp, "cache")  # int8 starts with no cached layers
    for dtype in dtypes:
        saved[dtype] = os.path.join(tmp, f"{dtype}.npz")
        cmd = [sys.executable, __file__, "--model", args.model, "--child", dtype, "--save", saved[dtype],
               "--reps", str(args.reps), "--pages", str(args.pages), "--batch", str(args.batch)] + (["--cold"] if args.cold else [])
        run = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if run.returncode:
            print(f"{dtype}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
            continue
        results[dtype] = json.loads(run.stdout.strip().splitlines()[-1])
        print(json.dumps(results[dtype]), flush=True)
    _report(results, saved)
    return 0


def _cosines(saved: dict, dtype: str) -> tuple[float, float]:
    import numpy as np

    a, b = np.load(saved["float32"]), np.load(saved[dtype])

    def worst(x, y):
        return float(np.min(np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))))

    return worst(a["single"], b["single"]), min(worst(a[k], b[k]) for k in a.files if k.startswith("m"))


def _report(results: dict, saved: dict) -> None:
    from benchmarks._util import print_grid

    if not results:
        return
    cols = list(results)
    gib = 1 << 30

    def row(name, f, note=""):
        return (name, [f(r) if f(r) is not None else "-" for r in results.values()], note)

    rows = [
        row("weight files read, page cache (s)", lambda r: r["read_s"], "floor for load"),
        row("imports of transformers + peft (s)", lambda r: r["imports_s"], "once per process, before any load"),
        row("load warm (s)", lambda r: r["load_warm_s"]),
        row("load warm / read", lambda r: r["load_warm_s"] / r["read_s"], "target <= 3"),
        row("load cold (s)", lambda r: r.get("load_cold_s")),
        row("LM weights streamed by a query (GiB)", lambda r: r["lm_weight_bytes"] / gib),
        row("stream LM weights once (s)", lambda r: r["stream_s"], "floor for a short query"),
        row("query 8 tokens p50 (s)", lambda r: r["query8_p50_s"]),
        row("query 12 tokens p50 (s)", lambda r: r["query12_p50_s"]),
        row("query 12 / stream floor", lambda r: r["query12_p50_s"] / r["stream_s"], "target <= 2.5"),
        row("query 32 tokens p50 (s)", lambda r: r["query32_p50_s"]),
        row("batch of 16 queries (s)", lambda r: r.get("batch16_s")),
        row("peak RSS, text only (GiB)", lambda r: r["peak_rss_text_bytes"] / gib),
        row("peak RSS / LM weights", lambda r: r["peak_rss_text_bytes"] / r["lm_weight_bytes"]),
        row("page: tokens", lambda r: r.get("page_tokens")),
        row("page batch 1 (s/page)", lambda r: r.get("page_batch1_s_per_page")),
        row("page batch 2 (s/page)", lambda r: r.get("page_batch2_s_per_page")),
        row("pages/min at best batch", lambda r: 60 / min(v for k, v in r.items() if k.startswith("page_batch"))
            if "page_batch1_s_per_page" in r else None),
        row("page FLOP floor (s)", lambda r: r.get("page_flop_floor_s"), "page FLOPs / matmul rate"),
        row("matmul GFLOP/s in dtype", lambda r: r["flops_per_s"] / 1e9 if "flops_per_s" in r else None),
    ]
    if "float32" in saved and "float32" in results:
        rows.append(row("worst cosine vs float32: single", lambda r: _cosines(saved, r["dtype"])[0]))
        rows.append(row("worst cosine vs float32: multi", lambda r: _cosines(saved, r["dtype"])[1]))
    print_grid("jina-embeddings-v4 at full size (RANDOM weights), CPU", cols, rows)
    k = next(iter(results.values()))["kernels"]
    print("\nkernels: " + ", ".join(f"{n}={v}" for n, v in k.items()))


if __name__ == "__main__":
    sys.exit(main())
