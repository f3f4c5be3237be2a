"""Ingest throughput end to end: render -> encode -> store, with baselines measured in the same run.

    python benchmarks/ingest.py                       # 12 PDFs x 20 pages (240 pages), tiny checkpoint
    python benchmarks/ingest.py --docs 30 --pages 10 --model /models/jina-embeddings-v4

Corpus: ``tests/ingest_corpus.make_corpus`` (seeded): A4 pages with ~40 words of text in a text box and a
generated bar-chart picture, page 2 of each PDF rotated 90 degrees, in nested folders. Pages are rendered
at the model's full pixel budget (~736 visual tokens for A4 with the real preprocessor config).

Reported, all from this run:
- render only: open + render + text layer, one thread, no encoder (the pipeline's producer alone);
- encoder only: the encoder on pre-rendered pages (same batches as the pipeline);
- end to end: ``Engine.add`` wall time, pages/s, its split (render in a child process and store in a
  thread, both overlapped with the encoder in the caller's thread), the share of wall time outside the encoder, the overlap
  (sum of the parts / wall), and RSS (before, peak during, growth);
- an estimate for the real jina-embeddings-v4 (3.8 B parameters, 768 visual tokens per page): its
  encoder time per page from FLOPs (``benchmarks/encode.flops_per_page``; H100 at 40 % of bf16 peak,
  this CPU at its float32 matmul rate measured here), with this run's render and store costs per page.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil
import torch

# The real model's FLOPs per page and the hardware rates: the encoder benchmark's, so both agree.
from benchmarks.encode import H100_BF16_DENSE, H100_MFU, REAL, flops_per_page, matmul_flops
from jevsearch import (
    Engine,
    modelinfo,
)
from jevsearch.ingest import discover, open_document
from jevsearch.search.threads import torch_threads
from tests.ingest_corpus import make_corpus


class PeakRSS:
    """Samples this process's RSS every 20 ms while active."""

    def __init__(self):
        self.proc = psutil.Process()
        self.before = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--pages", type=int, default=20, help="pages per document")
    ap.add_argument("--model", help="model snapshot (default: a fresh tiny checkpoint, random weights)")
    ap.add_argument("--max-pixels", type=int, help="page pixel budget (default: the model's)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="jevsearch-bench-")
    corpus = os.path.join(tmp, "corpus")
    make_corpus(corpus, args.docs, args.pages)
    model = args.model
    if model is None:
        from jevsearch.model.tiny import write_tiny_checkpoint

        model = os.path.join(tmp, "tiny")
        write_tiny_checkpoint(model, seed=0)
    eng = Engine.create(os.path.join(tmp, "index"), model=model, max_pixels=args.max_pixels)
    enc, geom = eng.encoder, eng.page_geometry
    sources, _ = discover([corpus])

    # Baseline 1: the producer alone.
    t0 = time.perf_counter()
    pages = 0
    for src in sources:
        with open_document(src) as doc:
            for i in range(doc.page_count):
                doc.render(i, geom), doc.text(i)
                pages += 1
    render_alone = time.perf_counter() - t0

    # Baseline 2: the encoder alone on the first document's pages (warm-up on one page first), before
    # and after the end-to-end run; the faster of the two (this machine is shared: load comes and goes).
    with open_document(sources[0]) as doc:
        sample = [doc.render(i, geom) for i in range(doc.page_count)]
    enc.encode_images(sample[:1], max_pixels=geom.max_pixels)

    def encoder_alone() -> float:
        t0 = time.perf_counter()
        enc.encode_images(sample, max_pixels=geom.max_pixels)
        return (time.perf_counter() - t0) / len(sample)

    threads = modelinfo.ingest_threads(enc)  # what Engine.add runs the encoder with
    with torch_threads(threads):
        before = encoder_alone()
    with PeakRSS() as rss:
        report = eng.add([corpus])
    eng.close()
    with torch_threads(threads):
        encode_per_page = min(before, encoder_alone())
    sample.clear()  # the rendered pages: free before the report
    t = report.timings
    assert report.pages == pages and not report.failed, report
    wall = t["wall"]
    outside = 1 - t["encode"] / wall
    tokens_per_page = report.tokens / pages

    print(f"corpus: {len(sources)} PDFs, {pages} pages, {tokens_per_page:.0f} visual tokens/page; "
          f"model {model}; encoder torch threads {threads}, cores {os.cpu_count()}")
    print(f"{'stage':<36}{'seconds':>9}{'ms/page':>10}{'pages/s':>10}")
    rows = [
        ("render only (1 thread, baseline)", render_alone),
        ("encoder only (baseline, best of 2)", encode_per_page * pages),
        ("end to end: wall", wall),
        ("  render (child process, overlapped)", t["render"]),
        ("  encode", t["encode"]),
        ("  store (thread, overlapped)", t["store"]),
    ]
    for name, s in rows:
        print(f"{name:<36}{s:>9.2f}{1000 * s / pages:>10.1f}{pages / s:>10.1f}")
    print(f"share of wall time outside the encoder: {100 * outside:.1f} %")
    print(f"end to end / encoder alone: {encode_per_page * pages / wall:.2f} "
          f"(1.0 = the pipeline adds nothing to the encoder's own time)")
    print(f"overlap: (render + encode + store) / wall = {(t['render'] + t['encode'] + t['store']) / wall:.2f}")
    print(f"RSS: {rss.before / 2**20:.0f} MiB before add, peak {rss.peak / 2**20:.0f} MiB during "
          f"(+{(rss.peak - rss.before) / 2**20:.0f} MiB); process peak (ru_maxrss) "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    # Real-size estimate: encoder time from FLOPs; render and store per page as measured here.
    render_pp, store_pp = t["render"] / pages, t["store"] / pages
    flops = flops_per_page(REAL, visual_tokens=768)["total"]
    print(f"\nreal jina-embeddings-v4 estimate: {flops / 1e12:.1f} TFLOP per page (768 visual tokens)")
    for where, rate in ((f"H100 ({H100_MFU:.0%} of bf16 peak)", H100_BF16_DENSE * H100_MFU),
                        ("this CPU (fp32 matmul rate)", matmul_flops(torch.float32, "cpu"))):
        enc_pp = flops / rate
        # Render and store run on their own threads: they cost wall time only where they exceed the
        # encoder's (on a GPU machine they have CPU cores of their own).
        wall_pp = max(enc_pp, render_pp, store_pp)
        print(f"  {where:<28} encoder {1000 * enc_pp:9.1f} ms/page -> {1 / wall_pp:7.2f} pages/s; outside the "
              f"encoder {100 * (1 - enc_pp / wall_pp):.1f} % (no overlap at all: "
              f"{100 * (render_pp + store_pp) / (enc_pp + render_pp + store_pp):.1f} %)")


if __name__ == "__main__":
    main()
