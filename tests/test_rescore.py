"""The adaptive rescore window (issue 19, part B): binary codes + exact rescoring keep the float16 top k
on corpora whose tokens the codes' signs rank badly, not only on the benchmark's generator."""

from __future__ import annotations

import numpy as np
import pytest

from jevsearch import Index

D, PAGES, DOC_PAGES, CANDIDATES, K = 128, 1600, 20, 100, 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def random_tokens(tmp_path_factory):
    """1,600 pages of 60-120 random unit tokens (every token as far from every other as chance makes
    it: the codes' signs rank such pages poorly), in documents of 20 pages tagged group 0-4."""
    rng = np.random.default_rng(19)
    path = tmp_path_factory.mktemp("rescore") / "random"
    ix = Index.create(path, single_dim=D, codec="binary", keep_exact=True)
    for d in range(PAGES // DOC_PAGES):
        multis = [_unit(rng.standard_normal((int(rng.integers(60, 121)), D))) for _ in range(DOC_PAGES)]
        singles = _unit(np.stack([m.mean(0) for m in multis]))
        ix.add_embeddings(f"doc{d:03d}", singles, multis, metadata={"group": d % 5})
    queries = []
    for _ in range(24):
        q = _unit(rng.standard_normal((16, D)))
        queries.append((_unit(q.mean(0)), q))
    yield ix, queries
    ix.close()


def _recall(ix, queries, **kw) -> float:
    """Mean share of the float16 top k at the same candidates (every candidate rescored) that ``kw`` keeps."""
    found = []
    for qs, qm in queries:
        truth = {h.page_id for h in ix.search_embeddings(qs, qm, k=K, candidates=CANDIDATES, rescore=CANDIDATES,
                                                          where=kw.get("where"))}
        got = {h.page_id for h in ix.search_embeddings(qs, qm, k=K, candidates=CANDIDATES, **kw)}
        found.append(len(got & truth) / len(truth))
    return float(np.mean(found))


def test_default_window_keeps_the_float16_top_k_on_random_tokens(random_tokens):
    ix, queries = random_tokens
    assert _recall(ix, queries, rescore=30) < 0.9  # a fixed window of 30 loses pages here
    assert _recall(ix, queries) >= 0.995


def test_filtered_default_window_keeps_the_float16_top_k(random_tokens):
    ix, queries = random_tokens
    where = {"group": 2}  # 20% of the pages
    assert _recall(ix, queries, rescore=30, where=where) < 0.9
    assert _recall(ix, queries, where=where) >= 0.995
    hits = ix.search_embeddings(*queries[0], k=K, where=where)
    assert len(hits) == K and all(h.metadata["group"] == 2 for h in hits)
