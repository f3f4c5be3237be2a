"""Synthetic embeddings for the store tests, and a child process for crash / concurrency tests.

    python tests/_store_child.py write INDEX --docs N [--crash POINT]   # prints "committed <doc>" per add
    python tests/_store_child.py read INDEX --until N                    # searches until it sees N docs
    python tests/_store_child.py upgrade INDEX --docs N --crash POINT    # a version-1 index, then compact()
    python tests/_store_child.py convert INDEX --docs N --crash POINT    # an fp16 index, then compact(codec=...)

Crash points kill the process with SIGKILL at a precise place by wrapping a library function in
this child only (the library has no test hooks):
  mid_txn      inside the LMDB write transaction of the 4th document, after its pages were put
  after_commit after the 4th document's LMDB commit, before the in-memory HNSW view learns about it
  mid_save     while saving hnsw.bin (temp file written, not yet renamed) at the flush after doc 4
  mid_compact  after compact() wrote the new hnsw.bin, before LMDB records the new epoch
  mid_copy     after compact() copied LMDB to store-<n+1>/, before CURRENT names it
  after_swap   after CURRENT names the compacted store, before the old store-<n>/ is deleted
  mid_rewrite  (upgrade, convert) while compact() rewrites the store: after its multi table is copied
  mid_fill     (convert) while compact(codec=...) writes the re-encoded pages: after 5 of them
  none         no injected crash (the parent kills at a random moment)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

D = 256  # full single dim used by the tests (the index truncates to 64)
DM = 128


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_doc(seed: int, pages: int = 3, tokens: tuple[int, int] = (20, 60)):
    """(singles [P, D], multis: P x [T_i, DM]) with ragged T_i; the same seed gives the same doc."""
    rng = np.random.default_rng(seed)
    multis = [unit(rng, int(rng.integers(*tokens)), DM) for _ in range(pages)]
    return unit(rng, pages, D), multis


def query_for(multis: list[np.ndarray], singles: np.ndarray, page: int, seed: int = 0):
    """A query near page ``page`` (0-based): its single vector and a noisy subset of its tokens."""
    rng = np.random.default_rng(seed)
    toks = multis[page][rng.choice(len(multis[page]), size=8, replace=False)]
    q = toks + 0.1 * unit(rng, *toks.shape)
    s = singles[page] + 0.05 * unit(rng, singles.shape[1])
    return s / np.linalg.norm(s), q / np.linalg.norm(q, axis=1, keepdims=True)


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_crash(point: str) -> None:
    from jevsearch.store import hnsw, lmdbstore, tablestore

    if point == "mid_txn":
        orig = lmdbstore.PageStore.put_document

        def put_document(self, txn, doc, *a, **kw):
            orig(self, txn, doc, *a, **kw)
            if doc["doc_id"] == "doc-3":
                _kill()
        lmdbstore.PageStore.put_document = put_document
    elif point == "after_commit":
        from jevsearch.store import graphview

        orig_committed = graphview.GraphView.committed
        calls = {"n": 0}

        def committed(self, state, removed, ids=None, vecs=None):
            calls["n"] += 1
            if calls["n"] == 4:
                _kill()
            return orig_committed(self, state, removed, ids, vecs)
        graphview.GraphView.committed = committed
    elif point == "mid_save":
        orig_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith("hnsw.bin") and os.environ.get("_JEV_ARMED"):
                _kill()
            orig_replace(src, dst)
        hnsw.os.replace = replace
    elif point == "mid_compact":
        orig_save = hnsw.HnswGraph.save

        def save(self, index_dir, *, epoch, next_page_id, file_name=hnsw.FILE_NAME):
            orig_save(self, index_dir, epoch=epoch, next_page_id=next_page_id, file_name=file_name)
            if file_name != hnsw.FILE_NAME:
                return
            if epoch > 0:
                _kill()
        hnsw.HnswGraph.save = save  # the class compaction's graph is saved with
    elif point == "mid_rewrite":
        from jevsearch.store import rewrite

        orig_copy = rewrite._copy_table

        def copy_table(store, txn, table, *a):
            orig_copy(store, txn, table, *a)
            if table == "multi":
                _kill()
        rewrite._copy_table = copy_table
    elif point == "mid_fill":
        from jevsearch.store import rewrite

        orig_put, calls = rewrite._Writer.put, {"n": 0}

        def put(self, table, key, payload, append=False):
            orig_put(self, table, key, payload, append)
            calls["n"] += table == "multi"
            if calls["n"] == 5:
                _kill()
        rewrite._Writer.put = put
    elif point in ("mid_copy", "after_swap"):
        orig_write, orig_rmtree = tablestore.write_atomic, tablestore.shutil.rmtree

        def write_atomic(path, data):
            if point == "mid_copy" and path.endswith(tablestore.CURRENT) and data != b"store-0\n":
                _kill()
            orig_write(path, data)

        def rmtree(path, *a, **kw):
            if point == "after_swap" and os.path.isdir(path) \
                    and os.path.basename(path).startswith(tablestore.ENV_PREFIX):
                _kill()
            orig_rmtree(path, *a, **kw)
        tablestore.write_atomic = write_atomic
        tablestore.shutil = type("patched_shutil", (), {"rmtree": staticmethod(rmtree)})


def write(index: str, docs: int, crash: str) -> None:
    from jevsearch import Engine

    _install_crash(crash)
    eng = Engine.open(index) if os.path.exists(index) else Engine.create(index, single_dim=64)
    print("ready", flush=True)
    for i in range(docs):
        singles, multis = make_doc(i, pages=2 + i % 3, tokens=(200, 400))
        eng.add_embeddings(f"doc-{i}", singles, multis, metadata={"pages": len(multis)})
        print(f"committed doc-{i}", flush=True)
        if i % 4 == 3:
            os.environ["_JEV_ARMED"] = "1"
            eng.flush()
        if i % 5 == 4:
            eng.delete(f"doc-{i - 2}")
            print(f"deleted doc-{i - 2}", flush=True)
        if i == 5:
            eng.compact()
    eng.close()
    print("done", flush=True)


def as_version_1(path: str) -> None:
    """Rewrite a closed index in format version 1 (no checksums), as jevsearch wrote them before."""
    from jevsearch.store.lmdbstore import PageStore
    from jevsearch.store.lock import WriterLock
    from jevsearch.store.rewrite import Rewrite, rewrite

    lock, store = WriterLock(path), PageStore(path)
    try:
        with store.read() as txn:
            m = store.manifest(txn)
        m.pop("checksums")
        rewrite(store, Rewrite(manifest=dict(m, format_version=1)))
    finally:
        store.close()
        lock.release()


def upgrade(index: str, docs: int, crash: str) -> None:
    """A version-1 index of ``docs`` documents, then compact() (which rewrites it with checksums)."""
    from jevsearch import Index

    with Index.create(index, single_dim=64, codec="fp16") as eng:  # version 1 had plain floats
        for i in range(docs):
            singles, multis = make_doc(i, pages=2 + i % 3, tokens=(200, 400))
            eng.add_embeddings(f"doc-{i}", singles, multis, metadata={"pages": len(multis)})
            print(f"committed doc-{i}", flush=True)
    as_version_1(index)
    _install_crash(crash)
    with Index.open(index) as eng:
        eng.compact()
    print("done", flush=True)


CONVERTED = {"codec": "binary", "keep_exact": True, "pool_factor": 2}


def convert(index: str, docs: int, crash: str) -> None:
    """An fp16 index of ``docs`` documents, then compact(**CONVERTED): a pooled binary+exact index."""
    from jevsearch import Index

    with Index.create(index, single_dim=64, codec="fp16") as eng:
        for i in range(docs):
            singles, multis = make_doc(i, pages=2 + i % 3, tokens=(200, 400))
            eng.add_embeddings(f"doc-{i}", singles, multis, metadata={"pages": len(multis)})
            print(f"committed doc-{i}", flush=True)
    _install_crash(crash)
    with Index.open(index) as eng:
        eng.compact(**CONVERTED)
    print("done", flush=True)


def read(index: str, until: int) -> None:
    """Search repeatedly while a writer works; exits 0 once ``until`` documents are visible, printing
    how many distinct document counts it observed. Every answer comes from one LMDB snapshot, so an
    exhaustive search listing every page must show each document with all its pages."""
    from jevsearch import Engine

    rng = np.random.default_rng(1)
    seen_counts = set()
    deadline = time.time() + 60
    with Engine.open(index, readonly=True) as eng:
        print("ready", flush=True)
        while time.time() < deadline:
            q_single, q_multi = unit(rng, D), unit(rng, 8, DM)
            for h in eng.search_embeddings(q_single, q_multi, k=20, candidates=40):
                if not 1 <= h.page <= h.metadata["pages"]:
                    print(f"bad page {h.page} of {h.doc_id}", flush=True)
                    sys.exit(4)
            pages: dict[str, set] = {}
            expected: dict[str, int] = {}
            for h in eng.search_embeddings(None, q_multi, k=10_000, exhaustive=True):
                pages.setdefault(h.doc_id, set()).add(h.page)
                expected[h.doc_id] = h.metadata["pages"]
            half = [d for d, p in pages.items() if p != set(range(1, expected[d] + 1))]
            if half:
                print(f"half documents: {half}", flush=True)
                sys.exit(3)
            seen_counts.add(len(pages))
            if len(pages) >= until:
                eng.verify()
                print(f"ok {len(seen_counts)}", flush=True)
                return
    print("timeout", flush=True)
    sys.exit(2)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["write", "read", "upgrade", "convert"])
    p.add_argument("index")
    p.add_argument("--docs", type=int, default=10)
    p.add_argument("--crash", default="none")
    p.add_argument("--until", type=int, default=10)
    a = p.parse_args()
    if a.mode == "read":
        read(a.index, a.until)
    else:
        {"write": write, "upgrade": upgrade, "convert": convert}[a.mode](a.index, a.docs, a.crash)


def flip_value(path: str, table: str, key: bytes, at: int, *, mask: int = 0xFF, count: int = 1) -> None:
    """Damage a stored value in place: XOR ``count`` bytes of ``table``'s value at ``key`` from offset ``at``
    with ``mask`` (its digest stays as it was), in the live LMDB of the index at ``path``."""
    import lmdb

    with open(os.path.join(path, "CURRENT")) as f:
        name = f.read().strip()
    env = lmdb.open(os.path.join(path, name), max_dbs=32)
    try:
        db = env.open_db(table.encode())
        with env.begin(write=True) as txn:
            raw = bytearray(txn.get(key, db=db))
            for i in range(at, at + count):
                raw[i] ^= mask
            txn.put(key, bytes(raw), db=db)
    finally:
        env.close()
