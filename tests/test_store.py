"""The persistent index on real LMDB + FAISS in temp dirs: round trip, reopen, replace, delete,
compact, repair, locking, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from _store_child import DM, D, make_doc, query_for, unit

from jevsearch import (
    Engine,
    FormatVersionError,
    IndexExistsError,
    IndexLockedError,
    InvalidInputError,
    NotAnIndexError,
    ReadOnlyIndexError,
)
from jevsearch.engine import Hit
from jevsearch.store import checksum
from jevsearch.store.validate import NORM_TOLERANCE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def index(tmp_path):
    """An index with docs a.pdf (3 pages, texts), b.pdf (2 pages), c.pdf (4 pages), in the default layout."""
    path = str(tmp_path / "idx")
    eng = Engine.create(path, single_dim=64, model_info={"name": "tiny", "revision": "r1"})
    docs = {}
    for seed, (name, pages) in enumerate([("a.pdf", 3), ("b.pdf", 2), ("c.pdf", 4)]):
        singles, multis = make_doc(seed, pages)
        texts = [f"{name} page {i + 1}" for i in range(pages)] if name == "a.pdf" else None
        assert eng.add_embeddings(name, singles, multis, metadata={"title": name.upper()}, page_texts=texts) == pages
        docs[name] = (singles, multis)
    yield path, eng, docs
    eng.close()


def test_round_trip_and_reopen(index):
    path, eng, docs = index
    singles, multis = docs["c.pdf"]
    qs, qm = query_for(multis, singles, page=2)
    hits = eng.search_embeddings(qs, qm, k=3, candidates=20)
    assert isinstance(hits[0], Hit)
    assert (hits[0].doc_id, hits[0].page, hits[0].metadata) == ("c.pdf", 3, {"title": "C.PDF"})
    assert hits[0].text is None
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    qa = query_for(*reversed(docs["a.pdf"]), page=0)
    top = eng.search_embeddings(*qa, k=1)[0]
    assert (top.doc_id, top.page, top.text) == ("a.pdf", 1, "a.pdf page 1")
    eng.close()
    with Engine.open(path) as again:
        assert [(h.doc_id, h.page, h.score) for h in again.search_embeddings(qs, qm, k=3, candidates=20)] == \
            [(h.doc_id, h.page, h.score) for h in hits]
        assert list(again.documents()) == ["a.pdf", "b.pdf", "c.pdf"]
        assert again.document("b.pdf") == {"doc_id": "b.pdf", "pages": 2, "metadata": {"title": "B.PDF"},
                                           "tokens": sum(len(m) for m in docs["b.pdf"][1])}
        assert again.document("nope.pdf") is None
        m = again.manifest
        assert (m["format_version"], m["single_dim"], m["single_full_dim"], m["multi_dim"], m["codec"],
                m["keep_exact"], m["pool_factor"]) == (3, 64, D, DM, "binary", True, 1)
        assert m["model"] == {"name": "tiny", "revision": "r1"} and m["hnsw"]["M"] == 32
        with pytest.raises(TypeError):
            m["model"] = None  # a read-only view
        st = again.stats()
        assert (st["documents"], st["pages"], st["tombstones"], st["hnsw_vectors"]) == (3, 9, 0, 9)
        assert st["tokens"] == sum(len(x) for _, ms in docs.values() for x in ms)
        # binary codes (16 B per token) and the exact float16 tokens
        assert st["bytes"]["multi"] >= st["tokens"] * DM // 8 and st["bytes"]["exact"] >= st["tokens"] * DM * 2
        assert st["bytes"]["hnsw_file"] > 0
        assert again.verify()["pages"] == 9
        again.set_model_info({"name": "tiny", "revision": "r2"})
    with Engine.open(path, readonly=True) as ro:
        assert ro.manifest["model"]["revision"] == "r2"


def test_stored_vectors_are_float16_and_renormalised(index):
    path, eng, docs = index
    singles, multis = make_doc(42, 1)
    # Within the tolerance: accepted and renormalised. Exact MaxSim of the page with itself = T.
    eng.add_embeddings("scaled.pdf", singles * (1 + NORM_TOLERANCE / 2), [multis[0] * (1 - NORM_TOLERANCE / 2)])
    hit = eng.search_embeddings(None, multis[0], k=1, exhaustive=True)[0]
    assert hit.doc_id == "scaled.pdf"
    assert hit.score == pytest.approx(len(multis[0]), rel=2e-3)  # fp16 storage, not 1 - tol/2
    eng.verify(deep=True)


def test_replace_is_atomic_and_complete(index):
    path, eng, docs = index
    singles, multis = make_doc(7, 5)
    eng.add_embeddings("b.pdf", singles, multis, metadata={"v": 2})
    assert eng.document("b.pdf")["pages"] == 5 and eng.document("b.pdf")["metadata"] == {"v": 2}
    st = eng.stats()
    assert (st["documents"], st["pages"], st["tombstones"]) == (3, 12, 2)
    hits = eng.search_embeddings(None, unit(np.random.default_rng(3), 6, DM), k=100, exhaustive=True)
    assert sorted(h.page for h in hits if h.doc_id == "b.pdf") == [1, 2, 3, 4, 5]
    # The old version's pages are gone from two-stage results too (tombstones filtered).
    for page in range(2):
        qs, qm = query_for(docs["b.pdf"][1], docs["b.pdf"][0], page)
        assert all(h.metadata == {"v": 2} for h in eng.search_embeddings(qs, qm, k=20) if h.doc_id == "b.pdf")
    eng.verify(deep=True)


def test_delete_and_compact_reclaims(tmp_path):
    path = str(tmp_path / "idx")
    with Engine.create(path, single_dim=64) as eng:
        for i in range(6):
            eng.add_embeddings(f"d{i}", *make_doc(i, 4, tokens=(300, 400)))
        before = eng.stats()["bytes"]["lmdb_file"]
        assert eng.delete("d1") and eng.delete("d2") and eng.delete("d3") and eng.delete("d4")
        assert not eng.delete("d1")
        st = eng.stats()
        assert (st["documents"], st["pages"], st["tombstones"], st["hnsw_vectors"]) == (2, 8, 16, 24)
        qs, qm = query_for(*reversed(make_doc(2, 4, tokens=(300, 400))), page=1)
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=24, candidates=24)} == {"d0", "d5"}
        eng.verify()
        eng.compact()
        st = eng.stats()
        assert (st["pages"], st["tombstones"], st["hnsw_vectors"]) == (8, 0, 8)
        assert st["bytes"]["lmdb_file"] < before / 2
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=24, candidates=24)} == {"d0", "d5"}
        eng.verify(deep=True)
        eng.add_embeddings("d9", *make_doc(9, 2))  # writes go on after the file swap
    with Engine.open(path) as eng:
        assert list(eng.documents()) == ["d0", "d5", "d9"] and eng.stats()["hnsw_vectors"] == 10
        eng.verify()


def test_hnsw_file_damaged_or_missing_is_rebuilt(index):
    path, eng, docs = index
    qs, qm = query_for(docs["a.pdf"][1], docs["a.pdf"][0], 1)
    want = [(h.doc_id, h.page) for h in eng.search_embeddings(qs, qm, k=3)]
    eng.close()
    with open(os.path.join(path, "hnsw.bin"), "r+b") as f:
        f.seek(40)
        f.write(b"\xff" * 64)
    with Engine.open(path) as again:
        assert [(h.doc_id, h.page) for h in again.search_embeddings(qs, qm, k=3)] == want
        again.verify()
    os.unlink(os.path.join(path, "hnsw.bin"))
    with Engine.open(path, readonly=True) as ro:  # readers rebuild in memory, write nothing
        assert [(h.doc_id, h.page) for h in ro.search_embeddings(qs, qm, k=3)] == want
    assert not os.path.exists(os.path.join(path, "hnsw.bin"))


def test_hnsw_file_with_float32_vectors_still_loads(index, caplog):
    """Graphs saved before the HNSW stored float16 vectors (IndexHNSWFlat) open as they are, unrebuilt."""
    import faiss

    from jevsearch.store.hnsw import HnswGraph, truncate_normalize

    path, eng, docs = index
    qs, qm = query_for(docs["c.pdf"][1], docs["c.pdf"][0], 3)
    want = [(h.doc_id, h.page) for h in eng.search_embeddings(qs, qm, k=3)]
    eng.close()
    flat = faiss.IndexIDMap(faiss.IndexHNSWFlat(64, 32, faiss.METRIC_INNER_PRODUCT))
    old = HnswGraph(64, 32, 200, 128, index=flat)
    for name, first in (("a.pdf", 0), ("b.pdf", 3), ("c.pdf", 5)):
        singles = docs[name][0]
        old.add(np.arange(first, first + len(singles)), truncate_normalize(singles, 64))
    old.save(path, epoch=0, next_page_id=9)
    with Engine.open(path) as again:
        assert isinstance(faiss.downcast_index(again._state.view.graph.index.index), faiss.IndexHNSWFlat)
        assert [(h.doc_id, h.page) for h in again.search_embeddings(qs, qm, k=3)] == want
        again.verify()
    assert "rebuilding" not in caplog.text


def test_create_refuses_existing(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("user data")
    with pytest.raises(IndexExistsError, match="not empty"):
        Engine.create(tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "user data"
    (tmp_path / "empty").mkdir()
    Engine.create(tmp_path / "empty").close()
    with pytest.raises(IndexExistsError):
        Engine.create(tmp_path / "empty")
    assert sorted(os.listdir(tmp_path)) == ["empty", "full"]  # no temp directory left behind
    assert sorted(os.listdir(tmp_path / "empty")) == ["CURRENT", "fde.bin", "hnsw.bin", "store-0", "text-1", "text.json",
                                                      "writer.lock"]
    with pytest.raises(InvalidInputError):
        Engine.create(tmp_path / "bad", single_dim=0)
    with pytest.raises(InvalidInputError):
        Engine.create(tmp_path / "bad", multi_dtype="int8")


def test_not_an_index_and_newer_format(tmp_path):
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(NotAnIndexError, match="not a jevsearch index"):
            Engine.open(bad)
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(NotAnIndexError, match="names no LMDB store"):
        Engine.open(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["CURRENT"]  # no lock file dropped into a foreign dir
    path = str(tmp_path / "idx")
    Engine.create(path).close()
    env = lmdb.open(os.path.join(path, "store-0"), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        m = json.loads(checksum.unseal("meta", b"manifest", txn.get(b"manifest", db=meta)).tobytes())
        txn.put(b"manifest", checksum.seal("meta", b"manifest", json.dumps(dict(m, format_version=99)).encode()),
                db=meta)
    env.close()
    for ro in (False, True):
        with pytest.raises(FormatVersionError, match="upgrade jevsearch"):
            Engine.open(path, readonly=ro)
    Engine.create(tmp_path / "after")  # the lock of the refused open was released


def test_one_writer_many_readers(index):
    path, eng, docs = index
    with pytest.raises(IndexLockedError, match="another writer"):
        Engine.open(path)
    code = "import sys; from jevsearch import Engine, IndexLockedError\n" \
           "try: Engine.open(sys.argv[1])\nexcept IndexLockedError as e: print('locked', e)\n" \
           "with Engine.open(sys.argv[1], readonly=True) as r: print(r.stats()['documents'])"
    out = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("locked") and out.stdout.split()[-1] == "3"
    with Engine.open(path, readonly=True) as ro:
        with pytest.raises(ReadOnlyIndexError):
            ro.add_embeddings("x.pdf", *make_doc(1, 1))
        with pytest.raises(ReadOnlyIndexError):
            ro.delete("a.pdf")
        eng.add_embeddings("new.pdf", *make_doc(11, 2))  # a reader in this process sees the commit
        assert "new.pdf" in list(ro.documents())
        qs, qm = query_for(*reversed(make_doc(11, 2)), page=1)
        assert ro.search_embeddings(qs, qm, k=1)[0].doc_id == "new.pdf"
    eng.close()
    with pytest.raises(Exception, match="closed"):
        eng.search_embeddings(qs, qm)
    Engine.open(path).close()  # lock released by close


def _bad_adds():
    s, m = make_doc(5, 2)
    nan_m = [m[0].copy(), m[1]]
    nan_m[0][3, 5] = np.nan
    inf_s = s.copy()
    inf_s[1, 0] = np.inf
    return {
        "singles: dimension 32 is below": (s[:, :32], m),
        "singles: dimension 128 but this index stores 256": (s[:, :128] / np.linalg.norm(s[:, :128], axis=1,
                                                                                          keepdims=True), m),
        "singles: row 1 has NaN": (inf_s, m),
        "multis\\[0\\]: row 3 has NaN": (s, nan_m),
        "singles: row 0 has L2 norm 2": (s * 2, m),
        "multis\\[1\\]: row 0 has L2 norm 0.5": (s, [m[0], m[1] * 0.5]),
        "singles: no rows": (s[:0], []),
        "multis\\[1\\]: page 2 has no tokens": (s, [m[0], m[1][:0]]),
        "multis: 1 pages but singles has 2": (s, m[:1]),
        "multis\\[0\\]: token dimension 64": (s, [m[0][:, :64], m[1]]),
        "expected a 2-d array": (s[0], m),
        "not a float array": (s.astype(bool), m),
    }


@pytest.mark.parametrize("problem", list(_bad_adds()))
def test_bad_input_is_refused_and_writes_nothing(index, problem):
    path, eng, docs = index
    before = (eng.stats(), list(eng.documents()))
    singles, multis = _bad_adds()[problem]
    with pytest.raises(ValueError, match=problem) as e:
        eng.add_embeddings("bad.pdf", singles, multis)
    assert isinstance(e.value, InvalidInputError)
    assert (eng.stats(), list(eng.documents())) == before


def test_bad_metadata_texts_and_queries(index):
    path, eng, docs = index
    s, m = make_doc(5, 2)
    for kwargs, msg in [({"metadata": {"x": float("nan")}}, "metadata"), ({"metadata": {"x": object()}}, "metadata"),
                        ({"page_texts": ["only one"]}, "page_texts"), ({"metadata": [1]}, "metadata")]:
        with pytest.raises(InvalidInputError, match=msg):
            eng.add_embeddings("bad.pdf", s, m, **kwargs)
    with pytest.raises(InvalidInputError, match="doc_id"):
        eng.add_embeddings("", s, m)
    assert eng.document("bad.pdf") is None
    qs, qm = query_for(m, s, 0)
    for args, kwargs, msg in [((qs[:32], qm), {}, "below the index's single_dim"),
                              ((qs, qm[:, :64]), {}, "q_multi: shape"),
                              ((qs, qm * 3), {}, "L2 norm"),
                              ((None, qm), {}, "q_single: required"),
                              ((qs, qm), {"k": 0}, "k: 0"),
                              ((qs, qm), {"candidates": -1}, "candidates"),
                              ((np.stack([qs, qs]), [qm]), {}, "2 queries but q_multi has 1"),
                              ((np.stack([qs, qs]), qm), {}, "q_single: shape")]:
        with pytest.raises(InvalidInputError, match=msg):
            eng.search_embeddings(*args, **kwargs)


def test_long_doc_ids_and_unicode(tmp_path):
    with Engine.create(tmp_path / "i", single_dim=64) as eng:
        long_id = "/very/" + "long-directory-name/" * 60 + "ré sumé.pdf"  # > LMDB's 511-byte key limit
        eng.add_embeddings(long_id, *make_doc(1, 1), page_texts=["été ✓"])
        hit = eng.search_embeddings(None, make_doc(1, 1)[1][0], k=1, exhaustive=True)[0]
        assert (hit.doc_id, hit.text) == (long_id, "été ✓")
        assert eng.delete(long_id) and list(eng.documents()) == []


def _graph_ids(eng) -> set[int]:
    return set(eng._state.view.settle().ids().tolist())  # private: what the in-memory HNSW holds


def test_background_hnsw_inserts_cover_every_page(tmp_path, monkeypatch):
    """Queued pages go to the background inserter every few pages; search, stats, verify and the saved
    file all see every page."""
    from jevsearch.store import graphview

    monkeypatch.setattr(graphview, "BACKGROUND_PAGES", 4)
    path = str(tmp_path / "idx")
    calls = []
    real_add = graphview.HnswGraph.add

    def add(self, ids, vecs, threads=None):
        calls.append(threads)
        return real_add(self, ids, vecs, threads)

    monkeypatch.setattr(graphview.HnswGraph, "add", add)
    with Engine.create(path, single_dim=64) as eng:
        docs = {f"d{i}": make_doc(i, 3) for i in range(10)}
        for name, (s, m) in docs.items():
            eng.add_embeddings(name, s, m)
        assert graphview.BACKGROUND_THREADS in calls  # the background thread really inserted
        assert eng.stats()["hnsw_vectors"] == eng.stats()["pages"] == 30
        s, m = docs["d7"]
        qs, qm = query_for(m, s, 2)
        assert (eng.search_embeddings(qs, qm, k=1)[0].doc_id, eng.search_embeddings(qs, qm, k=1)[0].page) == ("d7", 3)
        eng.verify(deep=True)
    with Engine.open(path, readonly=True) as ro:
        assert ro._state.view.clean and _graph_ids(ro) == set(range(30))  # the saved file was complete


def test_failed_background_insert_keeps_the_commit_and_is_repaired(tmp_path, monkeypatch, caplog):
    from jevsearch.store import graphview

    monkeypatch.setattr(graphview, "BACKGROUND_PAGES", 4)
    real_add = graphview.HnswGraph.add

    def add(self, ids, vecs, threads=None):
        if threads == graphview.BACKGROUND_THREADS and 5 in ids:
            raise MemoryError("injected")
        return real_add(self, ids, vecs, threads)

    monkeypatch.setattr(graphview.HnswGraph, "add", add)
    path = str(tmp_path / "idx")
    with Engine.create(path, single_dim=64) as eng:
        for i in range(6):  # the batch holding page 5 fails in the background; no add raises
            eng.add_embeddings(f"d{i}", *make_doc(i, 3))
        monkeypatch.setattr(graphview.HnswGraph, "add", real_add)
        hits = eng.search_embeddings(*query_for(make_doc(1, 3)[1], make_doc(1, 3)[0], 2), k=1)
        assert (hits[0].doc_id, hits[0].page) == ("d1", 3)  # page id 5, restored from LMDB
        assert _graph_ids(eng) == set(range(18))
        eng.verify()
    assert "inserting into the HNSW failed" in caplog.text
    with Engine.open(path, readonly=True) as ro:
        assert _graph_ids(ro) == set(range(18))


# -- OS paging: random access for searches, read-around for scans, parallel reads when cold -------

def _map_flags(index_dir) -> set[str]:
    """The VmFlags of this process's map of the index's data file (Linux /proc/self/smaps)."""
    from jevsearch.store.lmdbenv import DATA_FILE, current_env

    data = os.path.realpath(os.path.join(current_env(str(index_dir))[0], DATA_FILE))
    inside, flags = False, set()
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                inside = head[-1] == data
            elif inside and head[0] == "VmFlags:":
                flags |= set(head[1:])
    return flags


def test_the_map_is_read_at_random_except_while_scanning(tmp_path):
    """Searches fault single pages (MADV_RANDOM: "rr"); exhaustive scans, verify and compact have OS
    read-around while they run, and random access comes back after them."""
    path = tmp_path / "idx"
    with Engine.create(path, single_dim=64) as eng:
        for i in range(3):
            eng.add_embeddings(f"d{i}", *make_doc(i))
        qs, qm = query_for(make_doc(1)[1], make_doc(1)[0], page=0)
        eng.search_embeddings(qs, qm, k=3)
        assert "rr" in _map_flags(path)
        with eng._state.store.scanning():
            assert "rr" not in _map_flags(path)
            with eng._state.store.scanning():  # nested (another scan in the process): still read-around
                pass
            assert "rr" not in _map_flags(path)
        assert "rr" in _map_flags(path)
        eng.search_embeddings(None, qm, k=3, exhaustive=True)
        eng.verify(deep=True)
        assert "rr" in _map_flags(path)


def test_a_cold_fetch_reads_ahead_in_threads_with_the_same_results(tmp_path, monkeypatch):
    import threading

    from jevsearch.store import fetch

    path = tmp_path / "idx"
    docs = {f"d{i}": make_doc(i, pages=4) for i in range(8)}
    with Engine.create(path, single_dim=64) as eng:
        for name, (s, m) in docs.items():
            eng.add_embeddings(name, s, m)
        queries = [query_for(docs[f"d{i}"][1], docs[f"d{i}"][0], page=i % 4, seed=i) for i in range(4)]
        warm = [[(h.doc_id, h.page, h.score) for h in eng.search_embeddings(qs, qm, k=5, candidates=20, rescore=8)]
                for qs, qm in queries]
        monkeypatch.setattr(fetch, "COLD_FETCH_S", 0.0)  # every fetch counts as cold: reads ahead
        monkeypatch.setattr(fetch, "COLD_PER_VALUE_S", 0.0)
        cold = [[(h.doc_id, h.page, h.score) for h in eng.search_embeddings(qs, qm, k=5, candidates=20, rescore=8)]
                for qs, qm in queries]
        assert any(t.name.startswith("jevsearch-prefetch") for t in threading.enumerate())
    assert cold == warm
