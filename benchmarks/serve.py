"""The web app and heat-maps: time to first result in a real browser, explain per page (stored vectors vs
recomputed by the model), thumbnail bytes per page and the ingest time they take.

    python benchmarks/serve.py                                  # examples/, tiny checkpoint
    python benchmarks/serve.py --model /models/jina-embeddings-v4 --docs examples/
    python benchmarks/serve.py --screenshot docs/serve.png      # also write the README's screenshot

Index: the PDFs under ``--docs`` (default examples/: 5 pages) at the model's full page budget, built by
``Engine.add``. Browser: ``jevsearch serve`` in its own process (model loaded before timing), driven by
headless Debian chromium through Playwright (tests/browser.py); "first result" is from the click on
Search to the first thumbnail decoded on screen (includes encoding the query, search, HTML, thumbnail).
Explain: ``Engine.explain`` per page, median of the index's pages, with its parts; "recomputed" is the
same on a copy of the index without stored layouts (as an index from before they were recorded), where
the model re-encodes each page image. Baseline for thumbnails: the render process's own time in the
same ingest (thumbnails are made there, overlapped with encoding).
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

import lmdb

from benchmarks._util import print_table
from jevsearch import Engine
from jevsearch.store.lmdbenv import current_env
from tests.browser import browser, search, serve, wait_heatmap
from tests.ingest_corpus import tiny_model_dir

QUERY = "quarterly revenue by region"


def build(index: str, docs: str, model: str) -> dict:
    with Engine.create(index, model=model) as eng:
        t0 = time.perf_counter()
        report = eng.add([docs])
        wall = time.perf_counter() - t0
        hits = eng.search(QUERY, k=1000)
        sizes = [len(eng.page_data(h, vectors=False)[1].thumbnail) for h in hits]
        stats = eng.stats()
    return {"pages": report.pages, "wall": wall, "render": report.timings["render"],
            "thumbnail": report.timings["thumbnail"], "encode": report.timings["encode"], "sizes": sizes,
            "visual_table": stats["bytes"].get("visual", 0), "multi_table": stats["bytes"]["multi"]}


def explain_times(index: str, repeats: int = 3) -> dict:
    """Median ms per page of Engine.explain and its parts, each timed ``repeats`` times per page (query
    embedding cached, as in the app)."""
    from jevsearch import visuals
    from jevsearch.search.explain import patch_maps

    parts = {k: [] for k in ("total", "page_data", "maps", "picture", "overlay")}

    def timed(key, fn):
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            parts[key].append((time.perf_counter() - t0) * 1e3)
        return out

    with Engine.open(index, readonly=True) as eng:
        hits = eng.search(QUERY, k=1000)
        eng.explain(hits[0], QUERY)  # warm: model, query embedding, MuPDF
        q = eng.encoder.encode_texts([QUERY]).multi[0]
        for h in hits:
            ex = timed("total", lambda: eng.explain(h, QUERY))
            multi, view = timed("page_data", lambda: eng.page_data(h))
            if view is not None and view.grid_rows(len(multi)):
                timed("maps", lambda: patch_maps(q, multi, view.first, view.rows, view.cols))
            timed("picture", lambda: visuals.display_image(eng, h, view))
            timed("overlay", lambda: ex.overlay())
    out = {k: statistics.median(v) if v else float("nan") for k, v in parts.items()}
    return dict(out, source=ex.source, pages=len(hits))


def drop_layouts(src: str, dst: str) -> None:
    shutil.copytree(src, dst)
    env = lmdb.open(current_env(dst)[0], max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"visual", txn=txn, create=False), delete=True)
    finally:
        env.close()


def browser_times(index: str, screenshot: str | None, repeats: int) -> dict:
    with serve(index) as base, browser() as page:
        first = search(page, base, QUERY)  # the first query of a fresh server (model already loaded)
        t0 = time.perf_counter()
        page.locator("#results a.card").first.click()
        wait_heatmap(page)
        open_page = time.perf_counter() - t0
        t0 = time.perf_counter()
        page.locator("#tokens a.chip").nth(2).click()
        wait_heatmap(page)
        token = time.perf_counter() - t0
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        again = [search(page, base, f"{QUERY} {i}") for i in range(repeats)]
    return {"first": first * 1e3, "again": statistics.median(again) * 1e3, "page": open_page * 1e3,
            "token": token * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    ap.add_argument("--model", help="model snapshot (default: the tiny random checkpoint)")
    ap.add_argument("--repeats", type=int, default=5, help="browser searches after the first (default 5)")
    ap.add_argument("--screenshot", help="write the page view screenshot here (e.g. docs/serve.png)")
    args = ap.parse_args()
    model = args.model or tiny_model_dir()
    work = tempfile.mkdtemp(prefix="jevsearch-bench-serve-")
    try:
        index = os.path.join(work, "idx")
        b = build(index, args.docs, model)
        n, sizes = b["pages"], b["sizes"]
        print(f"index: {n} pages of {args.docs}, model {model}")
        print_table("thumbnails (made in the render process, overlapped with encoding)", [
            ("bytes per page, mean", statistics.mean(sizes), f"min {min(sizes)}, max {max(sizes)}"),
            ("visual table, bytes per page", b["visual_table"] / n, "LMDB pages incl. layout records"),
            ("multi-vectors, bytes per page", b["multi_table"] / n, "baseline: what a page already costs"),
            ("thumbnail ms per page", b["thumbnail"] / n * 1e3, "in the render process"),
            ("render ms per page", b["render"] / n * 1e3, "baseline: the render process, thumbnails included"),
            ("encode ms per page", b["encode"] / n * 1e3, "the encoder, in parallel"),
            ("ingest wall ms per page", b["wall"] / n * 1e3, ""),
        ])
        stored = explain_times(index)
        drop_layouts(index, os.path.join(work, "old"))
        recomputed = explain_times(os.path.join(work, "old"))
        print_table(f"explain ms per page (median of {stored['pages']} pages)", [
            ("stored vectors: explain", stored["total"], f"source={stored['source']}"),
            ("  page_data (LMDB read)", stored["page_data"], ""),
            ("  patch maps (math)", stored["maps"], ""),
            ("  page picture (render at 100 dpi)", stored["picture"], ""),
            ("  overlay (all tokens)", stored["overlay"], "extra, when drawn"),
            ("recomputed by the model: explain", recomputed["total"], f"source={recomputed['source']}; ratio "
             f"{recomputed['total'] / stored['total']:.2f}x stored"),
        ])
        bt = browser_times(index, args.screenshot, args.repeats)
        print_table("browser (headless chromium, jevsearch serve on 127.0.0.1)", [
            ("first result, first query (ms)", bt["first"], "click Search -> first thumbnail shown"),
            (f"first result, median of {args.repeats} more (ms)", bt["again"], ""),
            ("open a result with its heat-map (ms)", bt["page"], "click -> overlay shown"),
            ("switch token heat-map (ms)", bt["token"], "click -> new overlay shown"),
        ])
        if args.screenshot:
            print(f"\nwrote {args.screenshot}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
