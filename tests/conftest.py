"""Fixtures shared by the test modules.

``model``: the tiny checkpoint's encoder (tests/fixtures/jina-v4-tiny), loaded once per module that asks
for it (module scope, as each module had it: a module's tests may share its query cache, no module sees
another's).
"""

from __future__ import annotations

import pytest

from tests.ingest_corpus import tiny_encoder


@pytest.fixture(scope="module")
def model():
    """The tiny model, loaded once per module: Engine.create accepts a loaded encoder (it records its snapshot)."""
    return tiny_encoder()
