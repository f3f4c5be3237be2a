"""Long documents are committed in parts: a kill -9 keeps what was encoded and a rerun completes it;
the render child checks the planner's hash. Real tiny model, real PDFs, real LMDB, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jevsearch import Engine
from jevsearch.cli import main
from jevsearch.ingest import pipeline
from jevsearch.ingest.renderer import CHANGED
from tests.ingest_corpus import make_pdf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 64 * 28 * 28


def _create(path, model):
    Engine.create(path, model=model, max_pixels=MAX_PIXELS).close()


def _index_cmd(corpus, index, part_seconds: float):
    """``jevsearch index`` with parts handed over every ``part_seconds`` (the constant set before main)."""
    code = (f"import sys; from jevsearch.ingest import pipeline; pipeline.PART_SECONDS = {part_seconds}; "
            "from jevsearch.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "index", str(corpus), "--index", str(index), "-q"]


def _partial(index) -> dict | None:
    with Engine.open(index, readonly=True) as reader:
        docs = reader.document_list()
    return docs[0] if docs else None


def test_kill9_mid_pdf_keeps_its_parts_and_a_rerun_completes_it(tmp_path, model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pages = 120
    make_pdf(corpus / "manual.pdf", pages, images=False)
    for name in ("crashed", "clean"):
        _create(tmp_path / name, model)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_index_cmd(corpus, tmp_path / "crashed", 0.3), env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = None, time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        seen = _partial(tmp_path / "crashed")
        if seen is not None and seen["pages"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen is not None and 2 <= seen["pages"] < pages, proc.stderr.read().decode()[-800:]

    kept = _partial(tmp_path / "crashed")  # what the reader saw is still there after the kill
    assert kept["pages"] >= seen["pages"]
    assert kept["metadata"]["partial"] == {"through": kept["pages"], "of": pages}
    with Engine.open(tmp_path / "crashed", readonly=True) as eng:
        eng.verify(deep=True)
        hits = eng.search("manual page 1", k=3)  # its committed pages are searchable
        assert hits and all(h.page <= kept["pages"] for h in hits)
        assert "partial" in eng.document_list()[0]["metadata"]

    out = subprocess.run([sys.executable, "-m", "jevsearch", "list", "--index", str(tmp_path / "crashed")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "partial" in out.stdout, out.stdout  # never shown as a complete document

    rerun = subprocess.run(_index_cmd(corpus, tmp_path / "crashed", 60), env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    with Engine.open(tmp_path / "clean") as clean:
        clean.add([corpus])
    with Engine.open(tmp_path / "crashed", readonly=True) as a, Engine.open(tmp_path / "clean", readonly=True) as b:
        a.verify(deep=True)
        assert a.stats()["pages"] == b.stats()["pages"] == pages  # completed, no duplicates
        assert a.stats()["tombstones"] == 0  # resumed after the kept pages, not restarted from page 1
        (doc,) = a.document_list()
        assert "partial" not in doc["metadata"] and doc["pages"] == pages
        assert doc["metadata"]["sha256"] == b.document_list()[0]["metadata"]["sha256"]
        ha, hb = a.search("manual page 77", k=5), b.search("manual page 77", k=5)
        assert [(h.path, h.page) for h in ha] == [(h.path, h.page) for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-4)


def test_parts_then_other_documents_then_resume_rewrites_without_reencoding(tmp_path, model, monkeypatch):
    """A resumed document whose page ids are no longer the last is rewritten from its stored values."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    make_pdf(corpus / "long.pdf", 12, images=False, seed=1)
    _create(tmp_path / "idx", model)
    monkeypatch.setattr(pipeline, "PART_PAGES", 4)
    with Engine.open(tmp_path / "idx") as eng:
        stored = []
        real = eng._extend

        def stop_after_first_part(doc, auto=()):
            stored.append(doc)
            raise KeyboardInterrupt  # the run stops after its first part: as an interruption would

        eng._extend = stop_after_first_part
        with pytest.raises(KeyboardInterrupt):
            eng.add([corpus])
        eng._extend = real
        first = eng.document(str(corpus / "long.pdf"))
        assert first["metadata"]["partial"] == {"through": 4, "of": 12} and first["pages"] == 4
        make_pdf(corpus / "other.pdf", 2, images=False, seed=2)
        eng.add([corpus / "other.pdf"])  # its pages take the ids after long.pdf's
        report = eng.add([corpus])
        assert report.added == [str(corpus / "long.pdf")] and report.pages == 8, report
        doc = eng.document(str(corpus / "long.pdf"))
        assert doc["pages"] == 12 and "partial" not in doc["metadata"]
        eng.verify(deep=True)
        assert eng.stats()["pages"] == 14
        hits = eng.search("long page 2", k=14)
        assert sorted(h.page for h in hits if h.path.endswith("long.pdf")) == list(range(1, 13))


def test_file_changed_between_planning_and_rendering_is_not_stored_with_the_planned_hash(tmp_path, model):
    from jevsearch.ingest import file_sha256

    corpus = tmp_path / "c"
    corpus.mkdir()
    make_pdf(corpus / "x.pdf", 1, seed=1)
    _create(tmp_path / "idx", model)

    class Racing(Engine):
        """Rewrites b.pdf when the run re-keys the moved file: after the plan hashed b.pdf, before any
        rendering (a real change of the file at the worst moment, not a mocked hash)."""

        def rename_document(self, old, new, **kw):
            super().rename_document(old, new, **kw)
            make_pdf(corpus / "b.pdf", 3, seed=3)

    with Racing.open(tmp_path / "idx") as eng:
        eng.add([corpus])
        os.rename(corpus / "x.pdf", corpus / "y.pdf")
        make_pdf(corpus / "b.pdf", 2, seed=2)
        report = eng.add([corpus])
        assert report.moved == [(str(corpus / "x.pdf"), str(corpus / "y.pdf"))]
        assert report.failed == [(str(corpus / "b.pdf"), CHANGED)]
        assert eng.document(str(corpus / "b.pdf")) is None
        assert str(corpus / "b.pdf") not in eng.failures()  # not a lasting failure: planned again next time
        again = eng.add([corpus])
        assert again.added == [str(corpus / "b.pdf")]
        doc = eng.document(str(corpus / "b.pdf"))
        assert doc["metadata"]["sha256"] == file_sha256(str(corpus / "b.pdf")) and doc["pages"] == 3


def test_pdf_metadata_is_recorded(tmp_path, model):
    import pymupdf

    make_pdf(tmp_path / "t.pdf", 1)
    doc = pymupdf.open(tmp_path / "t.pdf")
    doc.set_metadata({"title": "Annual  report", "author": "Ada", "creationDate": "D:20231102150500+01'00'"})
    doc.save(tmp_path / "u.pdf")
    _create(tmp_path / "idx", model)
    with Engine.open(tmp_path / "idx") as eng:
        eng.add([tmp_path / "u.pdf"])
        meta = eng.document(str(tmp_path / "u.pdf"))["metadata"]
    assert (meta["title"], meta["author"], meta["created"]) == ("Annual report", "Ada", "2023-11-02T14:05:00Z")
    assert main is not None
