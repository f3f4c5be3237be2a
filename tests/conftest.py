"""Fixtures shared by the test modules.

``model``: the tiny checkpoint's encoder (tests/fixtures/jina-v4-tiny), loaded once per module that asks
for it (module scope, as each module had it: a module's tests may share its query cache, no module sees
another's).
"""

from __future__ import annotations

import os

import pytest

from tests.ingest_corpus import tiny_encoder


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Caches the library writes (the int8 weights) go to a temporary folder, never the user's ~/.cache."""
    os.environ["JEVSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model():
    """The tiny model, loaded once per module: Engine.create accepts a loaded encoder (it records its snapshot)."""
    return tiny_encoder()
