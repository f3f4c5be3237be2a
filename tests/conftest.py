"""Fixtures shared by the test modules.

``model``: the tiny checkpoint's encoder (tests/fixtures/jina-v4-tiny), loaded once per module that asks
for it (module scope, as each module had it: a module's tests may share its query cache, no module sees
another's).

``example_corpus``: the example PDFs and a chart image indexed with the tiny model
(:func:`tests.ingest_corpus.build_examples`), built once per test run; read-only for every user (the web
app, the integrations and the MCP server all read it).

``small_index``: 12 documents of synthetic unit vectors (``tests/_store_child.make_doc``), built once per
run as one index and as a sharded one (``params``): the search tests run on both and must agree.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.ingest_corpus import build_examples, tiny_encoder

SMALL_SHARDS = 3


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Caches the library writes (the int8 weights) go to a temporary folder, never the user's ~/.cache."""
    os.environ["JEVSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model():
    """The tiny model, loaded once per module: Engine.create accepts a loaded encoder (it records its snapshot)."""
    return tiny_encoder()


@pytest.fixture(scope="session")
def example_corpus(tmp_path_factory):
    """``root`` with ``root/docs`` and ``root/idx`` (see the module docstring); do not modify it."""
    return build_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="session", params=("one", "sharded"))
def small_index(tmp_path_factory, request):
    """(path of the index, {doc_id: (singles, multis)}): 12 documents of 1-4 pages, metadata {"i": n}."""
    from _store_child import make_doc

    from jevsearch import Engine, ShardedEngine

    path = tmp_path_factory.mktemp(f"small-{request.param}") / "idx"
    options = {"single_dim": 64, "hnsw_m": 8, "ef_construction": 40, "ef_search": 16}
    docs = {f"doc{i:02d}": make_doc(i, pages=1 + i % 4) for i in range(12)}
    eng = Engine.create(path, **options) if request.param == "one" else \
        ShardedEngine.create(path, shards=SMALL_SHARDS, **options)
    with eng:
        for i, (name, (singles, multis)) in enumerate(docs.items()):
            eng.add_embeddings(name, np.asarray(singles), multis, metadata={"i": i})
    return path, docs
