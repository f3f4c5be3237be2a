"""``jevsearch index DIR --prune`` on an unchanged folder: what a rerun costs when nothing changed.

    python benchmarks/prune.py                      # 10,000 one-page PDFs, and 1,000 PDFs of 10 pages
    python benchmarks/prune.py --pages 2000         # smaller

Nothing is encoded on such a run (and the model is never loaded), so the time is discovery (walking the
folder), hashing every file (SHA-256: a rename is recognised by content), reading the index's document
list, and the prune check (a stat of every indexed file under the folder). The index is filled the way
``Engine.add`` fills it (same ids and metadata) but with random vectors, since encoding 10k pages with
even the tiny model takes half an hour here and plays no part in a rerun.

Reported, all from this run: the parts alone as baselines (``discover``; SHA-256 of every file; a stat of
every file), ``Engine.add(prune=True)`` in this process (index already open), and the whole command as a
fresh process (``python -m jevsearch index DIR --index IDX --prune -q``: interpreter, torch and FAISS
imports, open, add, close). Files were just written, so they are in the page cache (a warm rerun).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pymupdf

from benchmarks._util import print_table, timed
from jevsearch import Engine
from jevsearch.ingest import discover, file_sha256
from jevsearch.model.tiny import write_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(root: str, files: int, pages: int) -> None:
    """``files`` PDFs of ``pages`` short text pages, 100 per sub-folder."""
    for i in range(files):
        folder = os.path.join(root, f"part{i // 100:03d}")
        os.makedirs(folder, exist_ok=True)
        doc = pymupdf.open()
        for p in range(pages):
            doc.new_page(width=595, height=842).insert_text((72, 72), f"document {i} page {p + 1}", fontsize=12)
        doc.save(os.path.join(folder, f"doc{i:05d}.pdf"))
        doc.close()


def fill_index(eng: Engine, root: str, dim: int, multi_dim: int) -> None:
    """Every file of ``root`` as Engine.add would store it (id, sha256, size, mtime_ns, kind), random vectors."""
    rng = np.random.default_rng(0)
    sources, _ = discover([root])
    batch = []
    for src in sources:
        st = os.stat(src.path)
        pages = pymupdf.open(src.path).page_count
        singles = rng.standard_normal((pages, dim)).astype(np.float32)
        singles /= np.linalg.norm(singles, axis=1, keepdims=True)
        multis = rng.standard_normal((pages, 4, multi_dim)).astype(np.float32)
        multis /= np.linalg.norm(multis, axis=2, keepdims=True)
        meta = {"sha256": file_sha256(src.path), "kind": src.kind, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "added": "2025-01-01T00:00:00Z"}
        batch.append((src.path, singles, multis, meta))
        if len(batch) == 500:
            eng.add_embeddings_many(batch)
            batch = []
    if batch:
        eng.add_embeddings_many(batch)


def bench(tmp: str, model: str, files: int, pages: int) -> None:
    root = os.path.join(tmp, f"docs-{files}x{pages}")
    index = os.path.join(tmp, f"idx-{files}x{pages}")
    t_make, _ = timed(make_folder, root, files, pages)
    with Engine.create(index, model=model) as eng:
        enc = eng.encoder
        fill_index(eng, root, enc.hidden_size, enc.multi_dim)
        eng.compact()
    paths = [s.path for s in discover([root])[0]]
    mb = sum(os.path.getsize(p) for p in paths) / 1e6

    t_discover, _ = timed(discover, [root])
    t_stat, _ = timed(lambda: [os.stat(p) for p in paths])
    t_hash, _ = timed(lambda: [file_sha256(p) for p in paths])
    with Engine.open(index) as eng:
        t_list, _ = timed(eng.document_list)
        t_add, report = timed(eng.add, [root], prune=True)
        assert len(report.skipped) == files and not (report.added or report.pruned or report.moved)
        assert eng._encoder is None  # nothing to encode: the model was never loaded
    cmd = [sys.executable, "-m", "jevsearch", "index", root, "--index", index, "--prune", "-q"]
    env = dict(os.environ, PYTHONPATH=REPO)
    t_cli, done = timed(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    t_import, _ = timed(subprocess.run, [sys.executable, "-c", "import jevsearch.engine"], env=env)

    print_table(f"index --prune, unchanged folder: {files} PDFs x {pages} pages = {files * pages} pages, "
                f"{mb:.1f} MB (folder made in {t_make:.0f} s)", [
                    ("discover (walk + stat)", t_discover * 1e3, "ms  baseline"),
                    ("stat every file", t_stat * 1e3, "ms  baseline"),
                    ("SHA-256 every file", t_hash * 1e3, "ms  baseline"),
                    ("Index.document_list", t_list * 1e3, "ms"),
                    ("Engine.add(prune=True)", t_add * 1e3,
                     f"ms  = {t_add / (t_discover + t_hash + t_list):.2f}x (discover + hash + list)"),
                    ("per 10k pages", t_add * 1e3 * 10_000 / (files * pages), "ms  Engine.add, scaled"),
                    ("whole command (fresh process)", t_cli * 1e3, "ms  " + " ".join(cmd[1:4]) + " ... --prune -q"),
                    ("  of which: import jevsearch.engine", t_import * 1e3, "ms  (python, torch, FAISS)"),
                ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000, help="pages in each folder (default 10000)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="jevsearch-prune-")
    model = os.path.join(tmp, "tiny")
    write_tiny_checkpoint(model)
    print(f"CPU: {os.cpu_count()} cores, files under {tmp}")
    bench(tmp, model, args.pages, 1)
    bench(tmp, model, args.pages // 10, 10)


if __name__ == "__main__":
    main()
