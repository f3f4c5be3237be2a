"""The FDE stage 1 (issue 19): the union of the singles' HNSW and the graph of MUVERA encodings.

Real indexes (LMDB + FAISS) of a seeded corpus shaped like benchmarks/search.py's (topic clusters,
tokens far from their page's single vector), exhaustive MaxSim as the truth: the union finds the
exhaustive top 10 where the single vector alone misses it, after adds, deletes, compaction and the
conversion of an index made without FDEs; filters; damage in the fde table named; shards merged.
"""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pytest

from jevsearch import CorruptIndexError, Index, InvalidInputError, ShardedEngine
from jevsearch.search.fde import Fde, params
from jevsearch.store.hnsw import HnswGraph
from jevsearch.store.lmdbstore import page_key
from tests._store_child import flip_value

D, DM, PAGES, PER_DOC = 256, 128, 480, 8
CAND = 40  # of 480 pages: the single vector alone finds ~0.7 of the exhaustive top 10 here


def _unit(x) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _corpus(n: int = PAGES, seed: int = 0):
    """n pages: (single [D], tokens [60-99, DM]) around n/12 topics, and the singles' projection."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((n // 12, DM)))
    w = np.linalg.qr(rng.standard_normal((D, DM)))[0].astype(np.float32)
    pages = []
    for p in range(n):
        u = _unit(topics[p % len(topics)] + _unit(rng.standard_normal(DM)))
        tokens = _unit(u + 1.5 * _unit(rng.standard_normal((int(rng.integers(60, 100)), DM))))
        pages.append((_unit(w @ tokens.mean(0) + 0.3 * _unit(rng.standard_normal(D))), tokens))
    return pages, w


def _queries(pages, w, n: int = 24, seed: int = 1):
    """(q_single, q_multi [16, DM], target page) drawn from a target page's tokens plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        target = int(rng.integers(len(pages)))
        t = pages[target][1]
        q = _unit(t[rng.choice(len(t), 16, replace=False)] + _unit(rng.standard_normal((16, DM))))
        out.append((_unit(w @ q.mean(0) + 0.3 * _unit(rng.standard_normal(D))), q, target))
    return out


def _add(ix, pages, docs: range) -> None:
    for d in docs:
        part = pages[d * PER_DOC:(d + 1) * PER_DOC]
        ix.add_embeddings(f"d{d:03d}.pdf", np.stack([s for s, _ in part]), [t for _, t in part],
                          metadata={"group": d % 20})


def _recall(ix, queries, stage1=None, candidates=CAND, where=None) -> float:
    """Mean recall@10 against the exhaustive top 10 (within ``where``)."""
    rec = []
    for qs, qm, _ in queries:
        truth = {(h.doc_id, h.page) for h in ix.search_embeddings(None, qm, k=10, exhaustive=True, where=where)}
        got = {(h.doc_id, h.page) for h in ix.search_embeddings(qs, qm, k=10, candidates=candidates,
                                                                    stage1=stage1, where=where)}
        rec.append(len(got & truth) / max(1, len(truth)))
    return float(np.mean(rec))


@pytest.fixture(scope="module")
def corpus():
    pages, w = _corpus()
    return pages, _queries(pages, w)


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """The corpus in a new index (stage 1 "union" by default), closed."""
    path = tmp_path_factory.mktemp("stage1") / "idx"
    with Index.create(path, single_dim=32, text_index=False) as ix:
        _add(ix, corpus[0], range(PAGES // PER_DOC))
    return path


@pytest.fixture
def idx(base, tmp_path):
    path = tmp_path / "idx"
    shutil.copytree(base, path)
    return path


def test_the_encoder_is_seeded_and_its_inner_product_tracks_maxsim(corpus):
    pages, queries = corpus
    tokens = [t for _, t in pages[:120]]
    a, b = Fde.of(params(DM)), Fde(params(DM))
    np.testing.assert_array_equal(a.pages(tokens), b.pages(tokens))  # every writer encodes alike
    assert not np.array_equal(a.pages(tokens), Fde.of(params(DM, seed=1)).pages(tokens))
    assert a.pages([tokens[0][:3]]).shape == (1, 2560)  # fewer tokens than buckets: empty ones filled
    for _, q, target in queries[:5]:
        maxsim = np.array([(q @ t.T).max(1).sum() for t in tokens])
        fde = a.pages(tokens) @ a.queries([q])[0]
        assert np.corrcoef(maxsim, fde)[0, 1] > 0.5
        if target < 120:
            assert int(np.argmax(fde)) == int(np.argmax(maxsim)) == target
    with pytest.raises(InvalidInputError, match="fde bits"):
        params(DM, bits=12)


def test_union_finds_the_exhaustive_top_10_the_single_vector_misses(base, corpus):
    _, queries = corpus
    with Index.open(base, readonly=True) as ix:
        assert ix.manifest["fde"] == params(DM)
        single, union = _recall(ix, queries, "single"), _recall(ix, queries)
        assert union >= 0.97 and union >= single + 0.15, (single, union)
        # the planted target page: found at least as often
        def success(stage1):
            return np.mean([t in [h.page_id for h in ix.search_embeddings(qs, qm, k=10, candidates=CAND,
                                                                            stage1=stage1)]
                            for qs, qm, t in queries])
        assert success("union") >= success("single")
        parts = ix.stats()["bytes_per_page"]
        assert parts["fde"] >= 2 * 2560  # float16 table values plus their graph, as their own part
        ix.verify(deep=True)


def test_adds_deletes_and_compaction_keep_the_fde_graph_in_step(idx, corpus):
    pages, queries = corpus
    more, _ = _corpus(40, seed=9)
    deleted = range(0, 60, 6)
    with Index.open(idx) as ix:
        for d in deleted:
            ix.delete(f"d{d:03d}.pdf")
        _add(ix, more, range(5))  # d000..d004 again (new page ids), from another corpus
        gone = {f"d{d:03d}.pdf" for d in deleted if d >= 5}
        # Queries whose planted page is still there (a removed one leaves a top 10 of near-ties)
        live = [q for q in queries if (d := q[2] // PER_DOC) >= 5 and d not in deleted]
        assert len(live) >= 15
        before = _recall(ix, live)
        for qs, qm, _ in queries:
            assert not {h.doc_id for h in ix.search_embeddings(qs, qm, k=20, candidates=CAND)} & gone
        assert before >= 0.95
        ix.verify(deep=True)
        assert ix.compact() == {"dropped": [], "damaged": [], "redo": []}
        assert ix._state.fde_view.settle().ntotal == ix.stats()["pages"]  # tombstones dropped
        assert _recall(ix, live) >= 0.95
    with Index.open(idx, readonly=True) as ix:  # the graph was saved: loaded, not rebuilt
        assert ix._state.fde_view.clean and _recall(ix, live) >= 0.95
        ix.verify(deep=True)


def test_an_index_without_fdes_searches_as_before_and_gains_them_at_compaction(tmp_path, corpus):
    pages, queries = corpus
    path = tmp_path / "old"
    with Index.create(path, single_dim=32, text_index=False, stage1="single") as ix:
        _add(ix, pages, range(PAGES // PER_DOC))
        assert "fde" not in ix.manifest and not os.path.exists(path / "fde.bin")
        before = [ix.search_embeddings(qs, qm, k=10, candidates=CAND) for qs, qm, _ in queries]
        assert before == [ix.search_embeddings(qs, qm, k=10, candidates=CAND, stage1="single")
                          for qs, qm, _ in queries]
        with pytest.raises(InvalidInputError, match="compact"):
            ix.search_embeddings(*queries[0][:2], stage1="union")
        ix.compact()  # made with stage1="single": kept
        assert "fde" not in ix.manifest
        # an index made before FDEs existed: no stage 1 recorded at all
        st = ix._state
        with st.store.write() as txn:
            st.set_manifest(txn, {k: v for k, v in st.manifest.items() if k != "stage1"})
    with Index.open(path) as ix:
        assert [ix.search_embeddings(qs, qm, k=10, candidates=CAND) for qs, qm, _ in queries] == before
        single = _recall(ix, queries)
        ix.compact()  # gains them
        assert ix.manifest["fde"] == params(DM) and os.path.exists(path / "fde.bin")
        assert _recall(ix, queries) >= max(0.97, single + 0.15)
        ix.verify(deep=True)
        ix.compact(stage1="single")  # and can drop them
        assert "fde" not in ix.manifest and not os.path.exists(path / "fde.bin")
        assert [ix.search_embeddings(qs, qm, k=10, candidates=CAND) for qs, qm, _ in queries] == before
        ix.verify(deep=True)


def test_a_conversion_interrupted_before_its_manifest_leaves_the_index_as_it_was(tmp_path, corpus, monkeypatch):
    pages, queries = corpus
    path = tmp_path / "old"
    with Index.create(path, single_dim=32, text_index=False, stage1="single") as ix:
        _add(ix, pages, range(20))
    real = HnswGraph.save

    def crash(self, index_dir, *, file_name="hnsw.bin", **kw):
        real(self, index_dir, file_name=file_name, **kw)
        if file_name == "fde.bin":
            raise KeyboardInterrupt  # after the FDEs and their graph, before the manifest names them
    monkeypatch.setattr(HnswGraph, "save", crash)
    ix = Index.open(path)
    with pytest.raises(KeyboardInterrupt):
        ix.compact(stage1="union")
    monkeypatch.undo()
    ix._state.store.close()  # the process "died": nothing else of it runs
    ix._state.writer_lock.release()
    with Index.open(path) as ix:
        assert "fde" not in ix.manifest
        ix.verify(deep=True)
        ix.search_embeddings(*queries[0][:2], k=10)
        ix.compact(stage1="union")
        assert ix.manifest["fde"] and ix.stats()["pages"] == ix._state.fde_view.settle().ntotal
        ix.verify(deep=True)


@pytest.mark.parametrize("groups", [[3, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
def test_a_filtered_search_returns_min_k_matches_through_both_graphs(base, corpus, groups):
    _, queries = corpus
    where = {"group": {"$in": groups}}
    with Index.open(base, readonly=True) as ix:
        matching = {(d, p) for d in range(PAGES // PER_DOC) if d % 20 in groups for p in range(1, PER_DOC + 1)}
        for qs, qm, _ in queries[:8]:
            for k in (5, 40):
                hits = ix.search_embeddings(qs, qm, k=k, candidates=CAND, where=where)
                assert len(hits) == min(k, len(matching))
                assert {(int(h.doc_id[1:4]), h.page) for h in hits} <= matching
        # Within the filter the top 10 beyond the planted page's topic are near-ties: the union must beat
        # the single vector there and find every planted page that matches.
        inside = [q for q in queries if q[2] // PER_DOC % 20 in groups]
        if len(groups) > 2:  # (a selective filter leaves few pages: both stage 1s find nearly all)
            assert _recall(ix, inside, where=where) >= _recall(ix, inside, "single", where=where) + 0.1
        for qs, qm, target in inside:
            assert target in [h.page_id for h in ix.search_embeddings(qs, qm, k=10, candidates=CAND, where=where)]


def test_a_damaged_fde_is_named_by_verify_and_left_out_of_the_fde_graph(idx, corpus):
    _, queries = corpus
    victim = 13  # d001.pdf page 6
    flip_value(str(idx), "fde", page_key(victim), 100)
    with Index.open(idx, readonly=True) as ix:
        with pytest.raises(CorruptIndexError, match="d001.pdf: page 6 fde vectors fail their checksum"):
            ix.verify(deep=True)
    os.remove(idx / "fde.bin")  # the graph is rebuilt from LMDB: the damaged value is never served
    with Index.open(idx) as ix:
        graph = ix._state.fde_view.settle()
        assert victim not in graph.ids().tolist() and graph.ntotal == PAGES - 1
        with pytest.raises(CorruptIndexError, match="d001.pdf page 6: its FDE is damaged or missing"):
            ix.verify()  # named also without reading every value
        assert _recall(ix, queries) >= 0.95
        pages, _ = corpus  # the page itself is sound: the singles' HNSW still finds it
        assert ix.search_embeddings(pages[victim][0], pages[victim][1][:16], k=1, candidates=CAND)[0].page_id == victim
        ix.delete("d001.pdf")  # re-added: a sound FDE again
        _add(ix, pages, [1])
        ix.compact()
        ix.verify(deep=True)


def test_shards_search_each_shard_with_its_own_union_and_merge_exactly(tmp_path, corpus):
    pages, queries = corpus
    docs = [(f"d{d:03d}.pdf", np.stack([s for s, _ in pages[d * PER_DOC:(d + 1) * PER_DOC]]),
             [t for _, t in pages[d * PER_DOC:(d + 1) * PER_DOC]]) for d in range(30)]
    with ShardedEngine.create(tmp_path / "sh", shards=3, single_dim=32, text_index=False) as sh:
        sh.add_embeddings_many(docs)
    with ShardedEngine.open(tmp_path / "sh", readonly=True) as sh:
        shard_dirs = [os.path.join(tmp_path / "sh", n) for n in sorted(os.listdir(tmp_path / "sh"))
                      if os.path.isdir(os.path.join(tmp_path / "sh", n))]
        shards = [Index.open(p, readonly=True) for p in shard_dirs]
        try:
            assert all(s.manifest.get("fde") for s in shards)
            for (qs, qm, _), stage1 in itertools.product(queries[:8], (None, "single")):
                got = [(h.doc_id, h.page, h.score) for h in sh.search_embeddings(qs, qm, k=10, candidates=24,
                                                                               stage1=stage1)]
                each = [(h.doc_id, h.page, h.score) for s in shards
                        for h in s.search_embeddings(qs, qm, k=10, candidates=24, stage1=stage1)]
                assert got == sorted(each, key=lambda x: (-x[2], x[0], x[1]))[:10]
        finally:
            for s in shards:
                s.close()
