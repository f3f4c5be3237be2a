"""MaxSim against a float64 reference, padding, tie-breaks, and two-stage vs exhaustive search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _store_child import make_doc, query_for, unit

import jevsearch
from jevsearch import Engine
from jevsearch.search import maxsim as maxsim_module
from jevsearch.search.maxsim import maxsim, pad_queries, top_with_ties
from jevsearch.search.pack import PagePacker
from jevsearch.search.rerank import Scorer


def reference(q: np.ndarray, page: np.ndarray) -> float:
    """sum_i max_j q_i . d_j in float64, one query and one page, no padding involved."""
    return float((q.astype(np.float64) @ page.astype(np.float64).T).max(axis=1).sum())


def test_maxsim_matches_float64_reference_on_ragged_input():
    rng = np.random.default_rng(0)
    # Adversarial for padding: pages whose every token has a negative dot with the queries, so a
    # zero padding token (instead of a repeated real one) would win the max and change the score.
    queries = [unit(rng, n, 128) for n in (3, 11, 7)]
    pages = [unit(rng, n, 128).astype(np.float16) for n in (1, 40, 17, 64, 5)]
    pages.append((-np.abs(unit(rng, 9, 128)) * np.sign(queries[0].sum(0))).astype(np.float16))
    packer = PagePacker(128, np.float16, torch.device("cpu"), torch.float32)
    got = maxsim(pad_queries(queries, torch.float32, torch.device("cpu")),
                 packer.pack([p.tobytes() for p in pages], [len(p) for p in pages])).numpy()
    want = np.array([[reference(q, p) for p in pages] for q in queries])
    assert got.shape == (3, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The packer's reused buffer gives the same answer on a second, smaller call.
    again = maxsim(pad_queries(queries[:1], torch.float32, torch.device("cpu")),
                   packer.pack([p.tobytes() for p in pages[2:4]], [17, 64])).numpy()
    np.testing.assert_allclose(again, want[:1, 2:4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_cpu_scorer_matches_float64_reference_in_any_blocking(monkeypatch, workers):
    """The CPU path (pages end to end, reduceat per page, blocks shared among workers) is exact
    whatever the block size and the number of workers, including batched queries of unequal length."""
    rng = np.random.default_rng(4)
    queries = [unit(rng, n, 128) for n in (5, 2, 9)]
    pages = [unit(rng, n, 128).astype(np.float16) for n in (1, 40, 17, 64, 5, 33, 2, 80)]
    pages.append((-np.abs(unit(rng, 9, 128)) * np.sign(queries[0].sum(0))).astype(np.float16))
    want = np.array([[reference(q, p) for p in pages] for q in queries])
    qt = pad_queries(queries, torch.float32, torch.device("cpu"))
    scorer = Scorer(128, np.float16, torch.device("cpu"), torch.float32)
    try:
        for block in (1, 50, 100, 4096):  # 1 token: a page per block; 4096: all pages in one block
            monkeypatch.setattr(maxsim_module, "CPU_BLOCK_TOKENS", block)
            got = scorer.score(qt, [p.tobytes() for p in pages], [len(p) for p in pages], workers)
            assert got.shape == (3, 9) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Reused buffers: a later, smaller call is not polluted by the earlier, larger one.
        again = scorer.score(qt[:1], [pages[2].tobytes(), pages[6].tobytes()], [17, 2], workers)
        np.testing.assert_allclose(again, want[:1, [2, 6]], rtol=1e-5, atol=1e-5)
    finally:
        scorer.close()


def test_maxsim_in_bf16_is_close_but_not_exact():
    """Documents why the CPU path scores in float32: bf16 inputs cost ~1e-2 on scores of ~10."""
    rng = np.random.default_rng(1)
    q, pages = unit(rng, 20, 128), unit(rng, 4, 300, 128)
    exact = np.array([reference(q, p) for p in pages])
    bf = maxsim(torch.from_numpy(q)[None].bfloat16(), torch.from_numpy(pages).bfloat16()).numpy()[0]
    f32 = maxsim(torch.from_numpy(q)[None], torch.from_numpy(pages)).numpy()[0]
    assert np.abs(f32 - exact).max() < 1e-4 < np.abs(bf - exact).max() < 0.1


def test_top_with_ties():
    s = np.array([0.5, 0.9, 0.7, 0.7, 0.1], dtype=np.float32)
    assert sorted(top_with_ties(s, 2)) == [1, 2, 3]  # both 0.7s kept: the caller breaks the tie
    assert sorted(top_with_ties(s, 1)) == [1]
    assert sorted(top_with_ties(s, 9)) == [0, 1, 2, 3, 4]


@pytest.fixture
def corpus(small_index):
    """(the small index of tests/conftest.py opened read-only: one index, then a sharded one; its embeddings)."""
    path, docs = small_index
    with jevsearch.open(path, read_only=True) as eng:
        yield eng, docs


def _key(hits):
    return [(h.doc_id, h.page, round(h.score, 4)) for h in hits]


def test_two_stage_equals_exhaustive_when_candidates_cover_the_index(corpus):
    eng, docs = corpus
    pages = eng.stats()["pages"]
    rng = np.random.default_rng(2)
    for _trial in range(5):
        qs, qm = unit(rng, 256), unit(rng, 6, 128)
        two = eng.search_embeddings(qs, qm, k=10, candidates=pages, rescore=pages)
        ex = eng.search_embeddings(None, qm, k=10, exhaustive=True)
        assert _key(two) == _key(ex)
        # Exhaustive really is exact: every score equals the float64 reference on the stored page.
        for h in ex:
            stored = docs[h.doc_id][1][h.page - 1].astype(np.float16)
            assert h.score == pytest.approx(reference(qm, stored), abs=1e-4)


def test_exhaustive_is_independent_of_chunking(corpus, monkeypatch):
    eng, _ = corpus
    qm = unit(np.random.default_rng(3), 5, 128)
    whole = eng.search_embeddings(None, qm, k=7, exhaustive=True)
    monkeypatch.setattr(maxsim_module, "BLOCK_TOKENS", 64)  # ~1 page per chunk
    monkeypatch.setattr(maxsim_module, "CPU_BLOCK_TOKENS", 64)  # and per block
    monkeypatch.setattr(maxsim_module, "CPU_INT8_BLOCK_TOKENS", 64)
    assert _key(eng.search_embeddings(None, qm, k=7, exhaustive=True)) == _key(whole)


@pytest.mark.parametrize("small_index", ["one"], indirect=True)  # Engine.threads: one index's own setting
def test_search_with_two_threads_equals_one(corpus, monkeypatch):
    eng, docs = corpus
    monkeypatch.setattr(maxsim_module, "CPU_BLOCK_TOKENS", 64)  # many blocks, so both workers score
    monkeypatch.setattr(maxsim_module, "CPU_INT8_BLOCK_TOKENS", 64)
    rng = np.random.default_rng(5)
    qs, qm = unit(rng, 256), unit(rng, 6, 128)
    pages = eng.stats()["pages"]
    before = torch.get_num_threads()
    one = [eng.search_embeddings(qs, qm, k=5, candidates=pages), eng.search_embeddings(None, qm, k=5, exhaustive=True)]
    eng.threads = 2
    try:
        two = [eng.search_embeddings(qs, qm, k=5, candidates=pages), eng.search_embeddings(None, qm, k=5, exhaustive=True)]
    finally:
        eng.threads = 1
    assert [_key(h) for h in two] == [_key(h) for h in one]
    assert torch.get_num_threads() == before  # searching runs torch on 1 thread, then restores the caller's


def test_batch_equals_single_queries_and_k_is_bounded(corpus):
    eng, docs = corpus
    qs = [query_for(docs[d][1], docs[d][0], 0, seed=i) for i, d in enumerate(["doc01", "doc06", "doc11"])]
    pages = eng.stats()["pages"]
    for cand in (8, pages):  # little overlap: scored per query; full overlap: the union scored once
        batch = eng.search_embeddings(np.stack([q[0] for q in qs]), [q[1] for q in qs], k=4, candidates=cand)
        assert len(batch) == 3
        for (s, m), hits in zip(qs, batch):
            assert _key(hits) == _key(eng.search_embeddings(s, m, k=4, candidates=cand))
    assert [h[0].doc_id for h in batch] == ["doc01", "doc06", "doc11"]
    everything = eng.search_embeddings(qs[0][0], qs[0][1], k=1000, candidates=5)
    assert len(everything) == pages  # candidates raised to k, k capped by what exists
    assert len(eng.search_embeddings(None, qs[0][1], k=1000, exhaustive=True)) == pages
    ex_batch = eng.search_embeddings(None, [q[1] for q in qs], k=3, exhaustive=True)
    assert [_key(h) for h in ex_batch] == [_key(eng.search_embeddings(None, q[1], k=3, exhaustive=True)) for q in qs]


def test_ties_break_by_doc_id_then_page(tmp_path):
    singles, multis = make_doc(1, 2)
    with Engine.create(tmp_path / "i", single_dim=64) as eng:
        for name in ("b", "c", "a"):  # identical documents: every score ties
            eng.add_embeddings(name, singles, [multis[0], multis[0]])
        for exhaustive in (False, True):
            hits = eng.search_embeddings(singles[0], multis[0][:4], k=4, exhaustive=exhaustive)
            assert [(h.doc_id, h.page) for h in hits] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
        assert eng.search_embeddings(None, multis[0], k=2, exhaustive=True)[0].score == \
            pytest.approx(len(multis[0]), rel=1e-3)


def test_empty_index_returns_nothing(tmp_path):
    with Engine.create(tmp_path / "i", single_dim=64) as eng:
        q = unit(np.random.default_rng(0), 3, 128)
        assert eng.search_embeddings(None, q, exhaustive=True) == []
        assert eng.search_embeddings(unit(np.random.default_rng(0), 64), q) == []
