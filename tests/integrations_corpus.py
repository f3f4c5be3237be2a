"""The corpus the integration tests share: the example PDFs (team finance / ops) and a chart image,
indexed with the tiny model (random weights: only agreement between paths matters)."""

from __future__ import annotations

import os
import shutil

from jevsearch import Engine
from tests.ingest_corpus import picture, tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 128 * 28 * 28
QUERY = "quarterly revenue by region"


def build(root):
    """``root``/docs and ``root``/idx; report.pdf has team=finance, manual.pdf and chart.png team=ops."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name in ("report.pdf", "manual.pdf"):
        shutil.copy(os.path.join(REPO, "examples", name), docs / name)
    picture(320, 240, seed=4).save(docs / "chart.png")
    with Engine.create(root / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        eng.add([docs / "report.pdf"], metadata={"team": "finance", "year": 2024})
        eng.add([docs / "manual.pdf", docs / "chart.png"], metadata={"team": "ops", "year": 2023})
    return root
