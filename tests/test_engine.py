"""The Engine facade's smaller contracts: options recorded at create, thread hygiene, Hit shape."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _store_child import make_doc, query_for

from jevsearch import DocHit, Engine, Hit, InvalidInputError, JevsearchError, ShardedEngine
from jevsearch.index.results import to_json


def test_full_dim_fixed_at_create_and_float32_storage(tmp_path):
    with Engine.create(tmp_path / "i", single_dim=64, single_full_dim=256, multi_dtype="float32") as eng:
        singles, multis = make_doc(3, 2)
        with pytest.raises(InvalidInputError, match="stores 256-d"):
            eng.add_embeddings("x", singles[:, :128] / np.linalg.norm(singles[:, :128], axis=1, keepdims=True),
                               multis)
        eng.add_embeddings("x", singles, multis)
        hit = eng.search_embeddings(None, multis[1], k=1, exhaustive=True)[0]
        # float32 storage: the page scored against itself is exact to float32 rounding.
        assert (hit.page, hit.score) == (2, pytest.approx(len(multis[1]), abs=1e-4))
        assert eng.manifest["multi_dtype"] == "float32"
        assert eng.stats()["bytes"]["multi"] >= sum(m.size for m in multis) * 4
    with pytest.raises(InvalidInputError, match="single_full_dim"):
        Engine.create(tmp_path / "j", single_dim=128, single_full_dim=64)


def test_search_leaves_torch_threads_as_the_caller_set_them(tmp_path):
    before = torch.get_num_threads()
    with Engine.create(tmp_path / "i", single_dim=64, threads=1) as eng:
        singles, multis = make_doc(1, 3)
        eng.add_embeddings("x", singles, multis)
        torch.set_num_threads(2)
        try:
            eng.search_embeddings(*query_for(multis, singles, 0), k=2)
            assert torch.get_num_threads() == 2
            eng.threads = 2  # settable per engine
            assert eng.search_embeddings(*query_for(multis, singles, 0), k=1)[0].page == 1
        finally:
            torch.set_num_threads(before)
    with pytest.raises(InvalidInputError, match="threads"):
        Engine.open(tmp_path / "i", threads=0)
    with Engine.open(tmp_path / "i", readonly=True) as eng, pytest.raises(InvalidInputError, match="threads"):
        eng.threads = -1


def test_hit_is_a_small_extendable_dataclass():
    names = [f.name for f in dataclasses.fields(Hit)]
    assert names[:5] == ["doc_id", "page", "score", "metadata", "text"]  # positional order is the contract
    h = Hit("a.pdf", 1, 0.5)
    assert (h.metadata, h.text, h.path) == ({}, None, "a.pdf")
    # One JSON shape for the CLI's --json and the web app's API.
    doc = DocHit("a.pdf", 0.5, {"n": 1}, [dataclasses.replace(h, page_id=3, snippet="s")])
    assert json.loads(json.dumps(to_json([h, doc]))) == [
        {"rank": 1, "score": 0.5, "path": "a.pdf", "page": 1, "snippet": "", "metadata": {}, "page_id": None},
        {"rank": 2, "score": 0.5, "path": "a.pdf", "metadata": {"n": 1},
         "pages": [{"page": 1, "score": 0.5, "snippet": "s", "page_id": 3}]}]


@pytest.mark.parametrize("create", [Engine.create, lambda path, **kw: ShardedEngine.create(path, shards=2, **kw)],
                         ids=["one", "sharded"])
def test_closed_engine_refuses_calls(tmp_path, create):
    eng = create(tmp_path / "i", single_dim=64)
    eng.close()
    eng.close()  # idempotent
    for call in (lambda: eng.stats(), lambda: eng.documents(), lambda: eng.add_embeddings("x", *make_doc(1, 1))):
        with pytest.raises(JevsearchError, match="closed"):
            call()


def _hits(eng, singles, multis):
    return [(h.doc_id, h.page, round(h.score, 4))
            for h in eng.search_embeddings(*query_for(multis, singles, 1), k=5, candidates=50)]


def test_add_embeddings_many_is_one_all_or_nothing_commit(tmp_path):
    docs = [(f"d{i}.pdf", *make_doc(i, 3), {"n": i}) for i in range(4)]
    with Engine.create(tmp_path / "one", single_dim=64) as eng:
        for doc in docs:
            eng.add_embeddings(*doc)
        expected = _hits(eng, docs[2][1], docs[2][2])
    with Engine.create(tmp_path / "many", single_dim=64) as eng:
        bad = ("bad.pdf", *make_doc(9, 2))
        bad[2][1][0, 0] = np.nan
        with pytest.raises(InvalidInputError, match=r"docs\[2\] \('bad.pdf'\): multis\[1\]: row 0 has NaN"):
            eng.add_embeddings_many(docs[:2] + [bad])
        assert eng.stats()["documents"] == 0  # nothing of the refused batch was written
        with pytest.raises(InvalidInputError, match="appears twice"):
            eng.add_embeddings_many([docs[0], docs[0]])
        with pytest.raises(InvalidInputError, match="expected a tuple"):
            eng.add_embeddings_many(["d0.pdf"])
        gen = eng._state.view.gen
        assert eng.add_embeddings_many(docs) == [3, 3, 3, 3]
        assert eng._state.view.gen == gen + 1  # one commit for the whole batch
        assert sorted(eng.documents()) == [d[0] for d in docs]
        assert eng.document("d3.pdf")["metadata"] == {"n": 3}
        assert _hits(eng, docs[2][1], docs[2][2]) == expected
        eng.verify()
    with Engine.open(tmp_path / "many") as eng:  # durable, and the same after reopening
        assert _hits(eng, docs[2][1], docs[2][2]) == expected


def test_add_embeddings_many_fixes_the_full_dim_from_its_first_document(tmp_path):
    with Engine.create(tmp_path / "i", single_dim=64) as eng:
        s0, m0 = make_doc(0, 2)
        s1, m1 = make_doc(1, 2)
        short = s1[:, :128] / np.linalg.norm(s1[:, :128], axis=1, keepdims=True)
        with pytest.raises(InvalidInputError, match=f"stores {s0.shape[1]}-d"):
            eng.add_embeddings_many([("a", s0, m0), ("b", short, m1)])
        assert eng.manifest["single_full_dim"] is None  # the refused batch fixed nothing
