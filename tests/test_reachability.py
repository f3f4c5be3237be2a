"""Every live page can be a stage-1 candidate: no page hides in the HNSW after adds, compaction or a
conversion, near-duplicate vectors (the known weak spot of HNSW) included. Pages a walk cannot reach
are relinked; what relinking cannot fix is scored exactly (the graph's ``lost`` list)."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from jevsearch import CorruptIndexError, Index
from jevsearch.store.graphview import _merged
from jevsearch.store.hnsw import FILE_NAME, HnswGraph, truncate_normalize
from jevsearch.store.subset import exact_scores, stored_vectors


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def near_duplicates(path: str, docs: int = 300, pages: int = 10, noise: float = 0.0025, twins: int = 0,
                    seed: int = 0, **kw) -> np.ndarray:
    """``docs`` documents of ``pages`` pages whose singles are one vector plus ``noise`` (per dim of
    256: 4 % of the norm), then ``twins`` documents of 5 pages with exactly that vector, each added by
    a plain add_embeddings call; returns that vector."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal(256))
    with Index.create(path, single_dim=128, **kw) as ix:
        for d in range(docs):
            ix.add_embeddings(f"d{d:03d}.pdf", _unit(base + noise * rng.standard_normal((pages, 256))),
                              [_unit(rng.standard_normal((2, 128))) for _ in range(pages)])
        for d in range(twins):
            ix.add_embeddings(f"same{d:03d}.pdf", np.repeat(base[None], 5, axis=0),
                              [_unit(rng.standard_normal((2, 128))) for _ in range(5)])
    return base


def cut_off(graph: HnswGraph, row: int) -> int:
    """Remove every level-0 link to node ``row`` (survivors moved to the front of each list: FAISS
    reads a list up to its first -1); returns its page id."""
    hnsw, nb, slots, _ = graph._level0()
    nb[nb == row] = -1
    for s in slots:
        keep = nb[s][nb[s] >= 0]
        nb[s] = -1
        nb[s[: len(keep)]] = keep
    faiss.copy_array_to_vector(nb, hnsw.neighbors)
    return int(graph.ids()[row])


def own_vector_misses(ix: Index, n: int = 10) -> list[int]:
    """Page ids that a stage-1 search with their own (graph) vector does not return among ``n``."""
    graph = ix._state.view.settle()
    ids, vecs = stored_vectors(graph)
    ids, vecs = ids.copy(), vecs.astype(np.float32)
    found = ix._state.view.search(vecs, n)
    return [int(pid) for pid, row in zip(ids, found) if pid not in row]


def test_near_duplicate_pages_stay_reachable_after_plain_adds(tmp_path):
    path = str(tmp_path / "idx")
    near_duplicates(path, seed=1)
    with Index.open(path, readonly=True) as ix:
        graph = ix._state.view.settle()
        assert len(graph.lost) == 0 and graph.unreachable().tolist() == []  # relinked before it was saved
        assert ix.verify(deep=True)["pages"] == 3000
        assert own_vector_misses(ix, 100) == []  # the default number of candidates


def test_exactly_identical_vectors_leave_no_page_unreachable(tmp_path):
    path = str(tmp_path / "idx")
    base = near_duplicates(path, docs=60, noise=0.02, twins=100)
    with Index.open(path) as ix:
        assert ix._state.view.lost().tolist() == [] and ix._state.view.graph.unreachable().tolist() == []
        ix.verify(deep=True)
        ix.add_embeddings("late.pdf", np.repeat(base[None], 3, axis=0), [_unit(np.ones((2, 128)))] * 3)
        ix.verify(deep=True)  # checked again after the add: the graph changed
        ix.compact()
        assert ix._state.view.graph.unreachable().tolist() == []
        ix.compact(codec="binary")  # a conversion rebuilds the graph too
        ix.verify(deep=True)


def test_pages_relinking_cannot_reach_are_scored_exactly_and_the_list_is_saved_checked(tmp_path):
    rng = np.random.default_rng(5)
    vecs = truncate_normalize(rng.standard_normal((200, 32)).astype(np.float32), 32)
    g = HnswGraph(32, 8, 40, 16)
    g.add(np.arange(1000, 1200), vecs)
    assert g.lost is None and g.lost_pages().tolist() == []
    entry = g._level0()[3]
    victim = next(r for r in range(200) if r != entry)
    cut_off(g, victim)
    assert g.unreachable().tolist() == [1000 + victim]
    g.lost = g.unreachable()  # as if relinking had failed: the exact fallback must cover it
    q = vecs[victim][None]
    ids, scores = g.search(q, 5)
    assert 1000 + victim not in ids[0]
    merged = _merged(ids, scores, g.lost, exact_scores(g, q, g.lost))
    assert merged[0, 0] == 1000 + victim and len(set(merged[0].tolist())) == 5
    d = str(tmp_path)
    g.save(d, epoch=0, next_page_id=1200)
    loaded, header = HnswGraph.load(d, 16)
    assert loaded.lost.tolist() == [1000 + victim] and header["lost"] == [1000 + victim]
    with open(os.path.join(d, FILE_NAME), "r+b") as f:
        raw = f.read()
        f.seek(raw.index(str(1000 + victim).encode(), raw.index(b'"lost"')))
        f.write(str(1001 + victim).encode())  # another page id: the list's digest fails
    with pytest.raises(CorruptIndexError, match="list of unreachable pages is damaged"):
        HnswGraph.load(d, 16)


def test_an_index_searches_its_lost_pages_exactly(tmp_path):
    """End to end: a page the graph cannot reach (relinking disabled by a saved list that names it) is
    still a candidate, with and without a filter."""
    path = str(tmp_path / "idx")
    near_duplicates(path, docs=30, noise=0.05)
    with Index.open(path) as ix:
        graph = ix._state.view.settle()
        entry = graph._level0()[3]
        victim = next(r for r in range(graph.ntotal) if r != entry)
        pid = cut_off(graph, victim)
        graph.lost = graph.unreachable()
        assert pid in graph.lost.tolist()
        q = graph.vectors()[1][victim][None]
        assert pid in ix._state.view.search(q, 5)[0].tolist()
        assert pid in ix._state.view.search(q, 5, within=np.arange(max(0, pid - 3), min(graph.ntotal, pid + 3)))[0].tolist()
        report = ix.verify(deep=True)
        assert report["hnsw_scanned_exactly"] >= 1
