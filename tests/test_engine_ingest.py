"""The product end to end: Engine.create(model=...), add(paths), search(text | image), render, reopen.

Real tiny model (random weights), real generated PDFs, real LMDB + FAISS; a crash mid-ingest is a
real SIGKILL of a real ``jevsearch index`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jevsearch import Engine
from jevsearch.errors import InvalidInputError, ModelMismatchError
from tests.ingest_corpus import (
    kill_after_documents,
    make_encrypted_pdf,
    make_pdf,
    make_truncated_pdf,
    make_zero_page_pdf,
    picture,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ~128 visual tokens per page keeps the tests fast; the default is the model's own budget.
MAX_PIXELS = 128 * 28 * 28


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "deep" / "er").mkdir(parents=True)
    make_pdf(root / "report.pdf", 3, rotate={1: 90}, seed=1)
    make_pdf(root / "deep" / "memo.pdf", 2, seed=2)
    make_pdf(root / "deep" / "er" / "note.pdf", 1, images=False, seed=3,
             texts=["Quarterly revenue by region grew in the north; the glacier survey is late."])
    picture(320, 240, seed=9).save(root / "chart.png")
    make_encrypted_pdf(root / "locked.pdf")
    make_zero_page_pdf(root / "deep" / "empty.pdf")
    make_truncated_pdf(root / "deep" / "cut.pdf")
    return root


def _create(path, model, **kw):
    return Engine.create(path, model=model, max_pixels=MAX_PIXELS, **kw)


def test_add_search_render(tmp_path, corpus, model):
    with _create(tmp_path / "idx", model) as eng:
        assert eng.manifest["single_dim"] == 64  # 128 is not among the tiny model's dims 4..64
        report = eng.add([corpus])
        names = lambda paths: sorted(os.path.relpath(p, corpus) for p in paths)  # noqa: E731
        assert names(report.added) == ["chart.png", "deep/cut.pdf", "deep/er/note.pdf", "deep/memo.pdf", "report.pdf"]
        assert names(p for p, _ in report.failed) == ["deep/empty.pdf", "locked.pdf"]
        assert report.pages == 9 and report.skipped == []
        assert sorted(eng.documents()) == sorted(report.added)
        doc = eng.document(str(corpus / "report.pdf"))
        assert doc["pages"] == 3 and len(doc["metadata"]["sha256"]) == 64
        # A partial document: page 1 of the cut PDF cannot be rendered; pages 2 and 3 keep their numbers.
        cut = str(corpus / "deep" / "cut.pdf")
        assert [(p, page) for p, page, _ in report.missing_pages] == [(cut, 1)]
        (missing,) = eng.document(cut)["metadata"]["missing_pages"]
        assert missing[0] == 1 and missing[1].startswith("damaged PDF")
        assert sorted(h.page for h in eng.search("x", k=9) if h.path == cut) == [2, 3]
        eng.verify(deep=True)

        hits = eng.search("quarterly revenue by region", k=5)
        assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            assert h.path in report.added and 1 <= h.page <= 3
        note = eng.search("glacier survey", k=9)  # every page: the note's is among them
        (hit,) = [h for h in note if h.path.endswith("note.pdf")]
        assert "glacier survey" in hit.snippet and hit.page == 1
        assert len(eng.search("anything", k=100)) == 9  # k bounded by the pages there are

        # An image query identical to an indexed image finds it first, with the maximal MaxSim:
        # every query token meets itself (score = its token count, up to float16 storage).
        img_hits = eng.search(Image.open(corpus / "chart.png"), k=3)
        assert img_hits[0].path == str(corpus / "chart.png") and img_hits[0].page == 1
        tokens = eng.document(str(corpus / "chart.png"))["tokens"]
        assert img_hits[0].score == pytest.approx(tokens, rel=2e-3)
        assert img_hits[0].snippet == ""  # an image has no text layer

        rotated = eng.render(next(h for h in eng.search("x", k=9) if h.path.endswith("report.pdf") and h.page == 2),
                             dpi=72)
        assert rotated.mode == "RGB" and rotated.size == (842, 595)
        with pytest.raises(InvalidInputError, match="query"):
            eng.search(42)


def test_readd_skips_unchanged_replaces_changed(tmp_path, corpus, model):
    with _create(tmp_path / "idx", model) as eng:
        first = eng.add([corpus])
        again = eng.add([corpus, corpus / "report.pdf"])
        assert sorted(again.skipped) == sorted(first.added) and again.added == []
        make_pdf(corpus / "report.pdf", 5, seed=7)
        third = eng.add([corpus])
        assert third.added == [str(corpus / "report.pdf")] and len(third.skipped) == 4
        assert eng.document(str(corpus / "report.pdf"))["pages"] == 5
        assert eng.stats()["pages"] == 11 and eng.stats()["documents"] == 5


def test_reopen_uses_recorded_model_and_refuses_another(tmp_path, corpus, model):
    with _create(tmp_path / "idx", model) as eng:
        eng.add([corpus / "report.pdf"])
        before = [(h.path, h.page, h.score) for h in eng.search("revenue", k=3)]
    with Engine.open(tmp_path / "idx", readonly=True) as eng:
        after = [(h.path, h.page, h.score) for h in eng.search("revenue", k=3)]
        assert [a[:2] for a in after] == [b[:2] for b in before]
        np.testing.assert_allclose([a[2] for a in after], [b[2] for b in before], rtol=1e-5)

    from jevsearch.model.tiny import write_tiny_checkpoint

    other = tmp_path / "other-model"
    write_tiny_checkpoint(other, seed=1)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Engine.open(tmp_path / "idx", model=str(other))
    with pytest.raises(ModelMismatchError, match="single_dim 32.*64"):
        Engine.open(tmp_path / "idx", single_dim=32)
    with pytest.raises(InvalidInputError, match="single_dim 100 is not one of"):
        _create(tmp_path / "idx2", model, single_dim=100)


def _index_cmd(corpus, index):
    return [sys.executable, "-m", "jevsearch", "index", str(corpus), "--index", str(index), "-q"]


def _env():
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def test_kill_mid_ingest_then_resume_equals_clean_run(tmp_path, model):
    corpus = tmp_path / "corpus"
    total = 10
    for i in range(total):
        folder = corpus / f"part{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        make_pdf(folder / f"doc{i}.pdf", 3, seed=i)
    for name in ("crashed", "clean"):
        _create(tmp_path / name, model).close()

    seen = kill_after_documents(_index_cmd(corpus, tmp_path / "crashed"), tmp_path / "crashed", _env(), REPO, total)

    with Engine.open(tmp_path / "crashed") as eng:  # opens after the crash, repairs, verifies
        eng.verify()
        partial = eng.stats()["documents"]
    assert seen <= partial < total
    rerun = subprocess.run(_index_cmd(corpus, tmp_path / "crashed"), env=_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    with Engine.open(tmp_path / "clean") as clean:
        clean.add([corpus])
    with Engine.open(tmp_path / "crashed", readonly=True) as a, Engine.open(tmp_path / "clean", readonly=True) as b:
        a.verify(deep=True)
        assert list(a.documents()) == list(b.documents()) and len(list(a.documents())) == total
        assert a.stats()["pages"] == b.stats()["pages"] == 3 * total  # no duplicates
        for doc in a.documents():
            assert a.document(doc)["metadata"]["sha256"] == b.document(doc)["metadata"]["sha256"]
        ha, hb = a.search("quarterly revenue", k=10), b.search("quarterly revenue", k=10)
        assert [(h.path, h.page) for h in ha] == [(h.path, h.page) for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-5)
