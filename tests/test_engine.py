"""The Engine facade's smaller contracts: options recorded at create, thread hygiene, Hit shape."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _store_child import make_doc, query_for
from jevsearch import Engine, Hit, InvalidInputError, JevsearchError


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


def test_hit_is_a_small_extendable_dataclass():
    names = [f.name for f in dataclasses.fields(Hit)]
    assert names[:5] == ["doc_id", "page", "score", "metadata", "text"]  # positional order is the contract
    h = Hit("a.pdf", 1, 0.5)
    assert (h.metadata, h.text, h.path) == ({}, None, "a.pdf")


def test_closed_engine_refuses_calls(tmp_path):
    eng = Engine.create(tmp_path / "i", single_dim=64)
    eng.close()
    eng.close()  # idempotent
    for call in (lambda: eng.stats(), lambda: eng.documents(), lambda: eng.add_embeddings("x", *make_doc(1, 1))):
        with pytest.raises(JevsearchError, match="closed"):
            call()
