"""Never serve damaged data (issue 8): damaged copies of small real indexes (LMDB + FAISS in temp
dirs) are detected, named, skipped or repaired; every damaged file gives a named error, never a
crash or a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import faiss
import lmdb
import numpy as np
import pytest
from _store_child import as_version_1, make_doc, query_for, unit

from jevsearch import ChecksumError, CorruptIndexError, Index, ReadOnlyIndexError
from jevsearch.cli import cli_hint, cli_message
from jevsearch.search.maxsim import top_with_ties
from jevsearch.store import checksum
from jevsearch.store.hnsw import FILE_NAME, HnswGraph, truncate_normalize
from jevsearch.store.schema import page_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [("a.pdf", 3), ("b.pdf", 2), ("c.pdf", 4)]  # page ids 0-2, 3-4, 5-8


def build(path: str, docs=DOCS, **kw) -> dict:
    """An index of ``docs`` in today's fp16 layout (format 2: the formats these tests damage and
    upgrade; the codec layouts' damage: tests/test_index_codecs.py)."""
    out = {}
    kw.setdefault("codec", "fp16")
    with Index.create(path, single_dim=64, **kw) as ix:
        for seed, (name, pages) in enumerate(docs):
            singles, multis = make_doc(seed, pages)
            ix.add_embeddings(name, singles, multis, page_texts=[f"{name} {i}" for i in range(pages)])
            out[name] = (singles, multis)
    return out


@contextmanager
def raw_lmdb(path: str):
    """A write transaction on the live LMDB store of a closed index, and its tables: what damage does."""
    name = open(os.path.join(path, "CURRENT")).read().strip()
    env = lmdb.open(os.path.join(path, name), max_dbs=32)
    try:
        dbs = {n: env.open_db(n.encode()) for n in ("meta", "docs", "pages", "single", "multi", "text", "tomb")}
        with env.begin(write=True) as txn:
            yield txn, dbs
    finally:
        env.close()


def damage_value(path: str, table: str, key: bytes, edit) -> None:
    """Replace the stored bytes of a value by ``edit(bytearray)``; its digest (if any) stays as it was."""
    with raw_lmdb(path) as (txn, dbs):
        raw = bytearray(txn.get(key, db=dbs[table]))
        edit(raw)
        txn.put(key, bytes(raw), db=dbs[table])


def singles_query(docs) -> np.ndarray:
    """A query single vector near b.pdf page 2."""
    return docs["b.pdf"][0][1]


def pages_of(hits) -> list[tuple[str, int]]:
    return [(h.doc_id, h.page) for h in hits]


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- 1. checksums on the search path ----------------------------------------------------------


def test_a_flipped_bit_in_a_page_is_skipped_named_counted_listed_and_fixed_by_re_adding(tmp_path, caplog):
    path = str(tmp_path / "idx")
    docs = build(path)
    singles, multis = docs["c.pdf"]
    qs, qm = query_for(multis, singles, page=2)
    with Index.open(path, readonly=True) as ix:
        assert ix.manifest["checksums"] and ix.manifest["format_version"] == 2
        assert pages_of(ix.search_embeddings(qs, qm, k=1, candidates=3)) == [("c.pdf", 3)]

    def flip(raw):  # the lowest mantissa bit of one float16: the score barely moves, only the digest sees it
        raw[10] ^= 0x01
    damage_value(path, "multi", page_key(7), flip)
    with Index.open(path, readonly=True) as ix:
        for _ in range(2):
            two_stage = pages_of(ix.search_embeddings(qs, qm, k=2, candidates=3))
            every = pages_of(ix.search_embeddings(qs, qm, k=9))  # candidates >= pages: every page scored
            assert ("c.pdf", 3) not in two_stage and len(two_stage) == 2
            assert ("c.pdf", 3) not in every and len(every) == 8
        assert len(warnings_about(caplog, "c.pdf page 3")) == 1  # one warning, whatever the queries
        assert ix.stats()["damaged_pages"] == 1
        with pytest.raises(CorruptIndexError, match="c.pdf page 3: its multi-vectors fail their checksum") as e:
            ix.verify()
        assert "jevsearch delete DOC" in cli_message(e.value) and "c.pdf" in cli_hint(e.value)
    with Index.open(path, readonly=True) as ix:  # a deep verify finds it without any search
        with pytest.raises(CorruptIndexError, match="c.pdf: page 3 multi vectors fail their checksum"):
            ix.verify(deep=True)
    with Index.open(path) as ix:
        ix.add_embeddings("c.pdf", singles, multis)  # re-adding the document replaces the page
        assert ix.stats()["damaged_pages"] == 0
        assert pages_of(ix.search_embeddings(qs, qm, k=1, candidates=3)) == [("c.pdf", 3)]
        ix.verify(deep=True)


@pytest.mark.parametrize("table", ["pages", "docs", "text", "single"])
def test_damaged_records_are_skipped_never_served_or_crashing(tmp_path, caplog, table):
    path = str(tmp_path / "idx")
    docs = build(path)
    from jevsearch.store.schema import doc_key

    key = doc_key("b.pdf") if table == "docs" else page_key(4)  # b.pdf page 2
    damage_value(path, table, key, lambda raw: raw.__setitem__(0, raw[0] ^ 0x40))
    qs, qm = query_for(docs["b.pdf"][1], docs["b.pdf"][0], page=1)
    if table != "single":
        with Index.open(path) as ix:  # the best page, found damaged only as its hit is built: k served still
            top = pages_of(ix.search_embeddings(qs, qm, k=4))
            assert len(top) == 4 and ("b.pdf", 2) not in top
    with Index.open(path) as ix:
        hits = pages_of(ix.search_embeddings(qs, qm, k=9))
        if table == "single":  # only stage 1 uses it: the rerank is intact, a rebuilt graph leaves it out
            assert ("b.pdf", 2) in hits
        else:
            assert ("b.pdf", 2) not in hits and ix.stats()["damaged_pages"] >= 1
        with pytest.raises(CorruptIndexError) as e:
            ix.verify(deep=True)
        assert "b.pdf" in str(e.value) or "document record" in str(e.value)
        if table == "single":
            assert "b.pdf: page 2 single vectors fail their checksum" in str(e.value)
            assert ("b.pdf", 2) not in pages_of(ix.search_singles(singles_query(docs), k=9, exact=True))
            ix.compact()
            assert ix.stats()["hnsw_vectors"] == 8 and ix.stats()["damaged_pages"] == 1
        if table == "docs":
            # The unreadable record cannot name its document: a repair removes it and its pages.
            report = ix.verify(repair=True)
            assert any("damaged document record" in r for r in report["repaired"])
            assert sorted(ix.documents()) == ["a.pdf", "c.pdf"]
        else:
            assert ix.delete("b.pdf")  # deleting and re-adding the named document fixes the rest
            ix.add_embeddings("b.pdf", *docs["b.pdf"])
        ix.verify(deep=True)


def test_checksums_bind_values_to_their_keys(tmp_path):
    """A whole valid value copied over another key (a misdirected write) fails as surely as a flip."""
    path = str(tmp_path / "idx")
    build(path)
    with raw_lmdb(path) as (txn, dbs):
        txn.put(page_key(3), txn.get(page_key(4), db=dbs["multi"]), db=dbs["multi"])
    with Index.open(path, readonly=True) as ix:
        with pytest.raises(CorruptIndexError, match="b.pdf: page 1 multi vectors fail their checksum"):
            ix.verify(deep=True)
    with pytest.raises(ChecksumError):
        checksum.unseal("multi", page_key(3), checksum.seal("multi", page_key(4), b"x" * 64))


# -- 2/3. NaN and impossible scores in indexes without checksums ------------------------------


def test_top_with_ties_ranks_nan_below_every_score():
    scores = np.array([0.3, np.nan, 0.9, 0.5, np.nan], np.float32)
    assert sorted(top_with_ties(scores, 1).tolist()) == [2]
    assert sorted(top_with_ties(scores, 3).tolist()) == [0, 2, 3]
    assert len(top_with_ties(scores, 4)) >= 4  # NaN only fills what numbers cannot


@pytest.mark.parametrize("damage", ["huge", "nan"])
def test_version_1_pages_with_damaged_vectors_are_skipped_by_the_score_bound(tmp_path, caplog, damage):
    path = str(tmp_path / "idx")
    docs = build(path)
    as_version_1(path)
    qs, qm = query_for(docs["a.pdf"][1], docs["a.pdf"][0], page=0)

    def edit(raw):
        rows = np.frombuffer(raw, dtype=np.float16).reshape(-1, 128).copy()
        if damage == "huge":  # flipped exponent bits: a page that would rank first for every query
            rows[0], rows[1] = 60000, -60000
        else:
            rows[3] = np.nan
        raw[:] = rows.tobytes()
    damage_value(path, "multi", page_key(6), edit)  # c.pdf page 2
    with Index.open(path, readonly=True) as ix:
        assert ix.manifest["format_version"] == 1 and not ix.manifest.get("checksums")
        top = ix.search_embeddings(qs, qm, k=1, candidates=9)
        assert pages_of(top) == [("a.pdf", 1)]  # never "no results", never the damaged page
        assert ("c.pdf", 2) not in pages_of(ix.search_embeddings(qs, qm, k=9, exhaustive=True))
        assert ix.stats()["damaged_pages"] == 1 and len(warnings_about(caplog, "c.pdf page 2")) == 1
    with Index.open(path, readonly=True) as ix:
        with pytest.raises(CorruptIndexError, match="c.pdf: page 2 multi vectors damaged"):
            ix.verify(deep=True)
    with Index.open(path) as ix:  # the upgrade refuses to certify damaged vectors, and changes nothing
        with pytest.raises(CorruptIndexError, match="c.pdf") as e:
            ix.compact()
        assert "jevsearch delete DOC" in cli_message(e.value)
        assert ix.manifest["format_version"] == 1
        ix.add_embeddings("c.pdf", *docs["c.pdf"])
        ix.compact()
        assert ix.manifest["format_version"] == 2
        ix.verify(deep=True)


# -- format versions and the store rewrite ----------------------------------------------------


def test_version_1_indexes_search_as_before_and_compact_adds_checksums(tmp_path):
    path = str(tmp_path / "idx")
    docs = build(path)
    queries = [query_for(m, s, page=1) for s, m in docs.values()]

    def results():
        with Index.open(path, readonly=True) as ix:
            return [[(h.doc_id, h.page, h.score, h.text) for h in ix.search_embeddings(qs, qm, k=4, candidates=4)]
                    for qs, qm in queries]
    before = results()
    with Index.open(path) as ix:  # other meta records travel through both rewrites
        ix.set_failures({"/docs/bad.pdf": {"sha256": "ab", "reason": "damaged PDF"}})
    as_version_1(path)
    with raw_lmdb(path) as (txn, dbs):  # really version 1: plain JSON, raw arrays
        assert json.loads(txn.get(b"manifest", db=dbs["meta"]))["format_version"] == 1
        assert len(txn.get(page_key(0), db=dbs["single"])) == 256 * 4
    assert results() == before
    with Index.open(path) as ix:
        ix.verify(deep=True)
        ix.compact()
        assert ix.manifest["format_version"] == 2 and ix.manifest["checksums"]
        ix.verify(deep=True)
        assert ix.failures() == {"/docs/bad.pdf": {"sha256": "ab", "reason": "damaged PDF"}}
    assert results() == before
    with Index.open(path) as ix:
        ix.add_embeddings("d.pdf", *make_doc(9, 2))  # and writes go on, sealed
    with raw_lmdb(path) as (txn, dbs):
        for table in ("single", "multi", "pages", "text"):
            for k, v in txn.cursor(db=dbs[table]):
                checksum.unseal(table, k, v)
        # compact() also built the text index of the old index (from its stored texts), and its FDEs'
        # graph (fde.bin); its pages' FDEs are sealed like every value.
        assert sorted(os.listdir(path)) == ["CURRENT", "fde.bin", FILE_NAME, "store-2", "text-1", "text.json",
                                            "writer.lock"]
    with Index.open(path, readonly=True) as ix:  # the FDEs' checksums and graph check out
        assert ix.manifest["fde"] and ix.verify(deep=True)["values_checked"]


# -- 3. hnsw.bin ------------------------------------------------------------------------------


def _read_hnsw(path: str):
    raw = open(os.path.join(path, FILE_NAME), "rb").read()
    (hlen,) = struct.unpack("<I", raw[8:12])
    return json.loads(raw[12:12 + hlen]), faiss.deserialize_index(np.frombuffer(raw[12 + hlen:], np.uint8))


def _write_hnsw(path: str, header: dict, index) -> None:
    body = faiss.serialize_index(index).tobytes()
    head = json.dumps(header).encode()
    with open(os.path.join(path, FILE_NAME), "wb") as f:
        f.write(b"JEVHNSW1" + struct.pack("<I", len(head)) + head + body)


def _permute_id_map(index) -> None:
    ids = faiss.vector_to_array(index.id_map)
    faiss.copy_array_to_vector(ids[::-1].copy(), index.id_map)


def test_a_permuted_id_map_in_hnsw_bin_fails_its_digest_and_is_rebuilt(tmp_path, caplog):
    path = str(tmp_path / "idx")
    docs = build(path)
    queries = [query_for(m, s, page=0) for s, m in docs.values()]
    with Index.open(path, readonly=True) as ix:
        want = [pages_of(ix.search_embeddings(qs, qm, k=2, candidates=2)) for qs, qm in queries]
    header, index = _read_hnsw(path)
    _permute_id_map(index)
    _write_hnsw(path, header, index)  # structurally valid, old digest
    with Index.open(path, readonly=True) as ix:
        assert [pages_of(ix.search_embeddings(qs, qm, k=2, candidates=2)) for qs, qm in queries] == want
        assert warnings_about(caplog, "checksum mismatch")
        with pytest.raises(CorruptIndexError, match="rebuilt in memory only") as e:
            ix.verify()
        assert "jevsearch verify --repair" in cli_message(e.value)


def test_deep_verify_checks_the_graphs_vectors_against_lmdb(tmp_path):
    """A graph whose id map is wrong but whose file is whole (digest made after the damage)."""
    path = str(tmp_path / "idx")
    docs = build(path)
    header, index = _read_hnsw(path)
    _permute_id_map(index)
    graph = HnswGraph(64, 32, 200, 128, index=index)
    graph.save(path, epoch=header["epoch"], next_page_id=header["next_page_id"])
    with Index.open(path, readonly=True) as ix:
        ix.verify()  # the same ids are there: only reading the vectors shows it
        with pytest.raises(CorruptIndexError, match="another page's vector"):
            ix.verify(deep=True)
    with Index.open(path) as ix:
        assert "rebuilt the HNSW from LMDB and saved it" in ix.verify(deep=True, repair=True)["repaired"]
        qs, qm = query_for(docs["b.pdf"][1], docs["b.pdf"][0], page=1)
        assert pages_of(ix.search_embeddings(qs, qm, k=1, candidates=2)) == [("b.pdf", 2)]
    with Index.open(path, readonly=True) as ix:
        ix.verify(deep=True)


def test_a_reader_that_rebuilds_the_graph_says_once_that_a_writer_persists_it(tmp_path, caplog):
    path = str(tmp_path / "idx")
    docs = build(path)
    with open(os.path.join(path, FILE_NAME), "r+b") as f:
        f.seek(-20, 2)
        f.write(b"\x00" * 8)
    qs, qm = query_for(docs["a.pdf"][1], docs["a.pdf"][0], page=1)
    with Index.open(path, readonly=True) as ix:
        for _ in range(3):
            ix.search_embeddings(qs, qm, k=2, candidates=2)
    said = warnings_about(caplog, "a writer persists the repair")
    assert len(said) == 1 and "compact the index: Index.compact()" in said[0]
    Index.open(path).close()  # a writer repairs and saves at open
    caplog.clear()
    with Index.open(path, readonly=True) as ix:
        ix.verify(deep=True)
    assert not warnings_about(caplog, "rebuil")


# -- 4. unreachable pages ---------------------------------------------------------------------


def _cut_off(graph: HnswGraph, node: int) -> None:
    """Remove every link to ``node`` (at every level), keeping the lists -1-terminated."""
    hnsw = faiss.downcast_index(graph.index.index).hnsw
    nb = faiss.vector_to_array(hnsw.neighbors)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
    for i in range(graph.ntotal):
        for level in range(len(cum) - 1):
            lo, hi = offsets[i] + cum[level], offsets[i] + cum[level + 1]
            if hi > offsets[i + 1]:
                break
            row = nb[lo:hi]
            keep = row[(row >= 0) & (row != node)]
            nb[lo:hi] = -1
            nb[lo:lo + len(keep)] = keep
    faiss.copy_array_to_vector(nb, hnsw.neighbors)


def _level0_only_node(graph: HnswGraph) -> int:
    hnsw = faiss.downcast_index(graph.index.index).hnsw
    levels = faiss.vector_to_array(hnsw.levels)
    return int(next(i for i in range(graph.ntotal) if levels[i] == 1 and i != hnsw.entry_point))


def test_an_unreachable_page_is_found_by_exhaustive_scoring_reported_and_relinked(tmp_path):
    path = str(tmp_path / "idx")
    docs = build(path, docs=[(f"d{i:02d}.pdf", 3) for i in range(20)])  # 60 pages
    with Index.open(path) as ix:
        graph = ix._state.view.settle()
        node = _level0_only_node(graph)
        pid = int(graph.ids()[node])
        _cut_off(graph, node)
        assert graph.unreachable().tolist() == [pid]
        ix._state.view.clean = False  # edited behind the view's back: make flush save it
        ix.flush()
    name, page = f"d{pid // 3:02d}.pdf", pid % 3 + 1
    qs, qm = query_for(docs[name][1], docs[name][0], page=page - 1)
    with Index.open(path, readonly=True) as ix:
        # The singles' graph alone (the FDE graph would find the page another way)
        assert (name, page) not in pages_of(ix.search_embeddings(qs, qm, k=5, candidates=10, stage1="single"))
        every = pages_of(ix.search_embeddings(qs, qm, k=200))  # candidates >= live pages: exact, no graph
        assert len(every) == 60 and every[0] == (name, page)
        ix.verify()  # every page is in the graph: only walking it shows the problem
        with pytest.raises(CorruptIndexError, match=f"1 pages unreachable in the graph \\({name} p{page}\\)") as e:
            ix.verify(deep=True)
        assert f"jevsearch verify --repair --index {path}" in cli_message(e.value)
    with Index.open(path) as ix:
        ix.verify(deep=True, repair=True)
    with Index.open(path, readonly=True) as ix:  # persisted
        ix.verify(deep=True)
        assert pages_of(ix.search_embeddings(qs, qm, k=1, candidates=10, stage1="single")) == [(name, page)]


def test_link_unreachable_relinks_near_duplicates_in_place():
    rng = np.random.default_rng(3)
    base = unit(rng, 8, 32)
    vecs = np.repeat(base, 25, axis=0) + 1e-3 * rng.standard_normal((200, 32)).astype(np.float32)  # near-duplicates
    g = HnswGraph(32, 8, 40, 16)
    g.add(np.arange(1000, 1200), truncate_normalize(vecs, 32))
    node = _level0_only_node(g)
    _cut_off(g, node)
    lost = g.unreachable()  # the node, and those only it linked to
    assert 1000 + node in lost.tolist()
    assert g.link_unreachable().tolist() == []
    found = g.search(truncate_normalize(vecs[lost - 1000], 32), 30)[0]
    assert all(pid in row for pid, row in zip(lost.tolist(), found.tolist()))


# -- 5. damaged LMDB files: a named error, never a crash --------------------------------------

_CHILD = """
import sys
from jevsearch import Index, JevsearchError
try:
    with Index.open(sys.argv[1], readonly=True) as ix:
        print("ok", ix.verify(deep=True)["pages"])
except JevsearchError as e:
    print(type(e).__name__, e)
"""


def _meta_flip(data: str) -> None:
    with open(data, "r+b") as f:
        for meta in (0, 1):  # both meta pages: the map size field (offset 40 of each)
            f.seek(meta * 4096 + 40)
            b = f.read(8)
            f.seek(meta * 4096 + 40)
            f.write(bytes(x ^ 0xFF for x in b))


@pytest.mark.parametrize("damage,expect", [
    ("truncate", "truncated: 65536 bytes but its LMDB pages need"),
    ("garbage", "the LMDB file is damaged (InvalidError"),
    ("meta", "the LMDB file is damaged"),
])
def test_a_damaged_lmdb_file_is_a_named_error_in_every_process(tmp_path, damage, expect):
    path = str(tmp_path / "idx")
    build(path, docs=[(f"d{i}", 3) for i in range(8)])  # ~24 pages: data.mdb well above 64 KiB
    data = os.path.join(path, "store-0", "data.mdb")
    if damage == "truncate":
        os.truncate(data, 65536)  # an interrupted copy: reading a page past the end would SIGBUS
    elif damage == "garbage":
        with open(data, "wb") as f:
            f.write(os.urandom(16384))
    else:
        _meta_flip(data)
    out = subprocess.run([sys.executable, "-c", _CHILD, path], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and not out.stderr.strip(), (out.returncode, out.stderr[-2000:])
    assert out.stdout.startswith("CorruptIndexError") and expect in out.stdout and "data.mdb" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root (the test machine runs as root)")
def test_an_index_the_user_may_read_but_not_write_can_be_searched_and_verified(tmp_path):
    src = str(tmp_path / "idx")
    docs = build(src)
    top = tempfile.mkdtemp(prefix="jev-ro-")
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "idx")
        shutil.copytree(src, path)
        for root, _dirs, files in os.walk(path):
            for f in files:
                os.chmod(os.path.join(root, f), 0o444)
            os.chmod(root, 0o555)
        qs, qm = query_for(docs["c.pdf"][1], docs["c.pdf"][0], page=3)
        # The interpreter lives under /root here (or a 0700 temp clone): the child starts as root,
        # imports, then becomes nobody (uid 65534) before touching the index, so the kernel checks
        # nobody's permissions. py-lmdb imports a module at its first open: one first, as root.
        code = ("import os, sys, tempfile, lmdb, numpy as np\nfrom jevsearch import Index, ReadOnlyIndexError\n"
                "import jevsearch.index\nlmdb.open(tempfile.mkdtemp(dir=os.getcwd())).close()\n"
                "qs, qm = np.load(sys.argv[2]), np.load(sys.argv[3])\n"
                "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                "with Index.open(sys.argv[1], readonly=True) as ix:\n"
                "    h = ix.search_embeddings(qs, qm, k=1, candidates=3)[0]\n"
                "    print(h.doc_id, h.page, ix.verify(deep=True)['pages'], ix.stats()['documents'])\n"
                "try:\n    Index.open(sys.argv[1])\nexcept ReadOnlyIndexError as e:\n    print('refused', e)\n")
        np.save(os.path.join(top, "qs.npy"), qs)
        np.save(os.path.join(top, "qm.npy"), qm)
        env = dict(os.environ, HOME=top, PYTHONPATH=REPO)
        out = subprocess.run([sys.executable, "-c", code, path, os.path.join(top, "qs.npy"),
                              os.path.join(top, "qm.npy")], cwd=top, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert lines[0] == "c.pdf 4 9 3", out.stdout
        assert lines[1].startswith("refused") and "readonly=True" in lines[1]
        assert sorted(os.listdir(os.path.join(path, "store-0"))) == ["data.mdb", "lock.mdb"]
    finally:
        for root, _dirs, _files in os.walk(top):
            os.chmod(root, 0o755)
        shutil.rmtree(top, ignore_errors=True)


# -- 6. bounds --------------------------------------------------------------------------------


def test_huge_k_and_candidates_are_capped_to_the_live_pages(tmp_path):
    import resource

    path = str(tmp_path / "idx")
    docs = build(path, docs=[("a.pdf", 3), ("b.pdf", 2)])
    qs, qm = query_for(docs["a.pdf"][1], docs["a.pdf"][0], page=0)
    with Index.open(path, readonly=True) as ix:
        ix.search_embeddings(qs, qm, k=1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        for k, cand in ((600_000_000, 100), (30_000_000, 30_000_000), (2, 10**12)):
            hits = ix.search_embeddings(qs, qm, k=k, candidates=cand)
            assert len(hits) == min(k, 5)
        assert time.perf_counter() - t < 2
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB
        assert ix.search_embeddings(None, [qm, qm], k=10**9, exhaustive=True)[1][0].page == 1
        assert len(ix.search_singles(qs, k=600_000_000)) == len(ix.search_singles(qs, k=10**9, exact=True)) == 5


# -- 7/8. verify names documents and commands; CURRENT ----------------------------------------


def test_verify_names_the_documents_and_the_repairing_command(tmp_path):
    path = str(tmp_path / "idx")
    docs = build(path)
    header, _ = _read_hnsw(path)
    partial = HnswGraph(64, 32, 200, 128)
    keep = [pid for pid in range(9) if pid != 4]  # b.pdf page 2 left out
    singles = np.concatenate([s for s, _ in docs.values()])
    partial.add(np.array(keep), truncate_normalize(singles[keep], 64))
    partial.save(path, epoch=header["epoch"], next_page_id=header["next_page_id"])
    with Index.open(path) as ix:
        with pytest.raises(CorruptIndexError) as e:
            ix.verify()
        assert "hnsw: 1 live pages not indexed (b.pdf p2): repair rebuilds the graph" in str(e.value)
        assert "verify(repair=True) or compact()" in str(e.value)  # Python advice in the message
        assert cli_message(e.value).endswith(f"(hint: jevsearch verify --repair --index {path} repairs what "
                                              "LMDB can rebuild)")
        report = ix.verify(repair=True)
        assert report["pages"] == 9 and report["repaired"]
        ix.verify(deep=True)


def test_a_lost_current_file_is_named_and_restored_by_a_repairing_open(tmp_path):
    path = str(tmp_path / "idx")
    docs = build(path)
    os.unlink(os.path.join(path, "CURRENT"))
    for readonly in (True, False):
        with pytest.raises(CorruptIndexError, match="the CURRENT file is missing though store-0/ is there") as e:
            Index.open(path, readonly=readonly)
        assert cli_message(e.value).endswith(f"(hint: jevsearch verify --repair --index {path} repairs what "
                                              "LMDB can rebuild)")
    shutil.copytree(os.path.join(path, "store-0"), os.path.join(path, "store-7"))
    with pytest.raises(CorruptIndexError, match="2 store directories hold a whole LMDB file"):
        Index.open(path, repair=True)
    shutil.rmtree(os.path.join(path, "store-7"))
    with Index.open(path, repair=True) as ix:
        ix.verify(deep=True)
        assert sorted(ix.documents()) == sorted(docs)
    assert open(os.path.join(path, "CURRENT")).read() == "store-0\n"


def test_repair_needs_a_writer(tmp_path):
    path = str(tmp_path / "idx")
    build(path)
    with Index.open(path, readonly=True) as ix:
        with pytest.raises(ReadOnlyIndexError, match="readonly=True"):
            ix.verify(repair=True)


def test_orphan_entries_and_wrong_counters_are_listed_and_repaired(tmp_path):
    from jevsearch.store.schema import PAGE_REC, doc_key

    path = str(tmp_path / "idx")
    build(path)
    singles, multis = make_doc(40, 1)
    with raw_lmdb(path) as (txn, dbs):  # a page of no document, whole and well sealed, and a bad counter
        k = page_key(50)
        txn.put(k, checksum.seal("pages", k, PAGE_REC.pack(doc_key("gone.pdf"), 1, len(multis[0]))), db=dbs["pages"])
        txn.put(k, checksum.seal("multi", k, multis[0].astype(np.float16).tobytes()), db=dbs["multi"])
        txn.put(k, checksum.seal("single", k, singles[0].tobytes()), db=dbs["single"])
        state = json.loads(checksum.unseal("meta", b"state", txn.get(b"state", db=dbs["meta"])).tobytes())
        state.update(docs=5, next_page_id=51)
        txn.put(b"state", checksum.seal("meta", b"state", json.dumps(state).encode()), db=dbs["meta"])
    with Index.open(path) as ix:
        hits = ix.search_embeddings(None, multis[0], k=20, exhaustive=True)  # never served, no crash
        # k is capped to the 9 live pages; the orphan outranked them all and was dropped: all 9 are served.
        assert len(hits) == 9 and all(h.doc_id != "gone.pdf" for h in hits) and ix.stats()["damaged_pages"] == 1
        with pytest.raises(CorruptIndexError) as e:
            ix.verify()
        assert "pages: 1 entries of no document (first id 50): repair deletes them" in str(e.value)
        assert "multi: 1 entries of no document" in str(e.value) and "state: docs = 5 but 3 counted" in str(e.value)
        assert "hnsw: 1 deleted pages not tombstoned (first id 50)" in str(e.value)  # in the graph, of no document
        report = ix.verify(repair=True)
        assert "deleted 1 multi entries of no document" in report["repaired"]
        assert "recounted the state record" in report["repaired"]
        assert ix.stats()["documents"] == 3 and ix.stats()["damaged_pages"] == 0
        ix.verify(deep=True)


def test_the_cli_names_the_repairing_command_and_runs_it(tmp_path, capsys):
    from jevsearch.cli import main

    path = str(tmp_path / "idx")
    docs = build(path, docs=[(f"d{i:02d}.pdf", 3) for i in range(20)])
    with Index.open(path) as ix:  # one page no search can reach
        graph = ix._state.view.settle()
        node = _level0_only_node(graph)
        _cut_off(graph, node)
        ix._state.view.clean = False
        ix.flush()
    assert main(["verify", "--index", path]) == 0  # every page is in the graph
    assert main(["verify", "--index", path, "--deep"]) == 1
    out, err = capsys.readouterr()
    assert "problem: hnsw: 1 pages unreachable in the graph" in out
    assert err.strip().endswith(f"(hint: jevsearch verify --repair --index {path} repairs what LMDB can rebuild)")
    assert main(["verify", "--index", path, "--deep", "--repair"]) == 0
    out, _ = capsys.readouterr()
    assert "repaired: rebuilt the HNSW from LMDB and saved it" in out and f"{path}: ok" in out
    os.unlink(os.path.join(path, "CURRENT"))
    assert main(["search", "anything", "--index", path]) != 0
    _, err = capsys.readouterr()
    assert "the CURRENT file is missing though store-" in err and f"jevsearch verify --repair --index {path}" in err
    assert main(["verify", "--index", path, "--repair", "-q"]) == 0
    with Index.open(path, readonly=True) as ix:
        assert len(list(ix.documents())) == len(docs)
        ix.verify(deep=True)


def test_a_rewrite_re_encodes_a_table_adds_tables_and_keeps_the_rest(tmp_path):
    """The hook a codec change uses: float16 multi-vectors re-encoded as float32, a new table filled."""
    from jevsearch.store.lmdbstore import PageStore
    from jevsearch.store.lock import WriterLock
    from jevsearch.store.rewrite import Rewrite, rewrite

    path = str(tmp_path / "idx")
    docs = build(path)
    qs, qm = query_for(docs["b.pdf"][1], docs["b.pdf"][0], page=1)
    with Index.open(path) as ix:
        ix.set_failures({"/docs/bad.pdf": {"sha256": "ab", "reason": "damaged PDF"}})
        before = [(h.doc_id, h.page, h.score) for h in ix.search_embeddings(qs, qm, k=3)]
    lock, store = WriterLock(path), PageStore(path)
    try:
        with store.read() as txn:
            manifest = store.manifest(txn)
        to32 = lambda key, payload: np.frombuffer(payload, np.float16).astype(np.float32)  # noqa: E731
        rewrite(store, Rewrite(manifest=dict(manifest, multi_dtype="float32"), transforms={"multi": to32},
                               new_tables=["codebook"], fill=lambda put: put("codebook", b"k", b"centroids")))
        with store.read() as txn:
            assert bytes(store.get(txn, "codebook", b"k")) == b"centroids" and "codebook" in store.tables()
    finally:
        store.close()
        lock.release()
    with Index.open(path, readonly=True) as ix:
        assert ix.manifest["multi_dtype"] == "float32"
        ix.verify(deep=True)  # every value sealed under its key, the new ones included
        after = [(h.doc_id, h.page, h.score) for h in ix.search_embeddings(qs, qm, k=3)]
        assert [h[:2] for h in after] == [h[:2] for h in before]
        assert np.allclose([h[2] for h in after], [h[2] for h in before], rtol=1e-5)
        assert ix.failures() == {"/docs/bad.pdf": {"sha256": "ab", "reason": "damaged PDF"}}
