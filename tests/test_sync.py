"""The index follows the folder: renames re-keyed, copies copied, deleted files pruned, failed files and
pages remembered. Real tiny model, real PDFs, real LMDB + FAISS; ``list`` through ``cli.main``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from jevsearch import Engine
from tests.ingest_corpus import make_bad_page_count_pdf, make_pdf, make_truncated_pdf

MAX_PIXELS = 128 * 28 * 28


def _pages(eng) -> list[tuple[str, int]]:
    """Every (path, page) search can return, in one exhaustive pass."""
    hits = eng.search("anything", k=10_000)
    return sorted((h.path, h.page) for h in hits)


def _scores(eng, query="quarterly revenue"):
    return {(h.path, h.page): h.score for h in eng.search(query, k=10_000, mode="visual")}


def test_renames_are_rekeyed_copies_copied_deleted_files_pruned(tmp_path, model):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.pdf", "b.pdf", "c.pdf", "sub/d.pdf", "e.pdf"]):
        make_pdf(docs / name, 2, seed=i)
    with Engine.create(tmp_path / "idx", model=model, max_pixels=MAX_PIXELS) as eng:
        eng.add([docs])
        before = _scores(eng)
        p = lambda name: str(docs / name)  # noqa: E731

        # A rename without --prune: re-keyed, not encoded, and no duplicate hits.
        os.rename(docs / "e.pdf", docs / "sub" / "e2.pdf")
        report = eng.add([docs])
        assert report.moved == [(p("e.pdf"), p("sub/e2.pdf"))] and report.added == [] and report.pages == 0
        assert eng.document(p("e.pdf")) is None and eng.document(p("sub/e2.pdf"))["pages"] == 2

        os.makedirs(docs / "moved")
        os.rename(docs / "a.pdf", docs / "moved" / "a.pdf")
        os.unlink(docs / "b.pdf")
        shutil.copy(docs / "c.pdf", docs / "c-copy.pdf")
        report = eng.add([docs], prune=True)
        assert report.moved == [(p("a.pdf"), p("moved/a.pdf"))]
        assert report.copied == [(p("c.pdf"), p("c-copy.pdf"))]
        assert report.pruned == [p("b.pdf")]
        assert report.added == [] and report.pages == 0 and report.tokens == 0  # nothing was encoded
        assert sorted(report.skipped) == [p("c.pdf"), p("sub/d.pdf"), p("sub/e2.pdf")]
        assert "moved 1, copied 1, pruned 1" in str(report)

        files = sorted(str(f) for f in docs.rglob("*.pdf"))
        assert list(eng.documents()) == files
        assert _pages(eng) == [(f, n) for f in files for n in (1, 2)]  # every file once: no duplicates
        after = _scores(eng)
        # The same vectors under the new ids: identical scores.
        for old, new in [("a.pdf", "moved/a.pdf"), ("e.pdf", "sub/e2.pdf"), ("c.pdf", "c-copy.pdf")]:
            for n in (1, 2):
                assert after[(p(new), n)] == pytest.approx(before[(p(old), n)], rel=1e-6)
        meta = eng.document(p("moved/a.pdf"))["metadata"]
        assert meta["size"] == os.path.getsize(docs / "moved" / "a.pdf") and "added" in meta
        eng.verify(deep=True)
        assert eng.stats()["documents"] == 5 and eng.stats()["tombstones"] == 2  # b.pdf's pages: moves leave none

    # An unchanged folder: nothing to encode, so the model is never loaded, and nothing is rewritten.
    graph_file = os.stat(tmp_path / "idx" / "hnsw.bin")
    with Engine.open(tmp_path / "idx") as eng:
        report = eng.add([docs], prune=True)
        assert len(report.skipped) == 5 and not (report.moved or report.copied or report.pruned or report.added)
        assert eng._encoder is None
    assert os.stat(tmp_path / "idx" / "hnsw.bin").st_mtime_ns == graph_file.st_mtime_ns


def test_prune_spares_a_missing_folder_and_other_paths(tmp_path, model):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_pdf(tmp_path / "a" / "one.pdf", 1, seed=1)
    make_pdf(tmp_path / "b" / "two.pdf", 1, seed=2)
    make_pdf(tmp_path / "b" / "three.pdf", 1, seed=3)
    with Engine.create(tmp_path / "idx", model=model, max_pixels=MAX_PIXELS) as eng:
        eng.add([tmp_path / "a", tmp_path / "b"])
        os.unlink(tmp_path / "a" / "one.pdf")
        os.unlink(tmp_path / "b" / "two.pdf")
        assert eng.add([tmp_path / "b"], prune=True).pruned == [str(tmp_path / "b" / "two.pdf")]
        assert eng.document(str(tmp_path / "a" / "one.pdf")) is not None  # not under the paths given
        shutil.rmtree(tmp_path / "b")  # an unmounted disk looks like this: nothing is pruned under it
        report = eng.add([tmp_path / "b"], prune=True)
        assert report.pruned == [] and eng.document(str(tmp_path / "b" / "three.pdf")) is not None
        # A file named explicitly is pruned when it is gone.
        assert eng.add([tmp_path / "a" / "one.pdf"], prune=True).pruned == [str(tmp_path / "a" / "one.pdf")]


def test_failed_files_and_pages_are_remembered_until_they_change(tmp_path, model):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "good.pdf", 1)
    make_truncated_pdf(docs / "cut.pdf")  # page 1 cannot be rendered
    make_bad_page_count_pdf(docs / "bad.pdf")
    bad, cut = str(docs / "bad.pdf"), str(docs / "cut.pdf")
    with Engine.create(tmp_path / "idx", model=model, max_pixels=MAX_PIXELS) as eng:
        first = eng.add([docs])
        assert [p for p, _ in first.failed] == [bad] and [(p, n) for p, n, _ in first.missing_pages] == [(cut, 1)]
        assert set(eng.failures()) == {bad} and eng.failures()[bad]["reason"].startswith("corrupt PDF")

        again = eng.add([docs])  # unchanged: neither the bad file nor the missing page is tried again
        assert again.not_retried == [(bad, first.failed[0][1])] and again.failed == []
        assert sorted(again.skipped) == [cut, str(docs / "good.pdf")] and again.pages == 0

        retried = eng.add([docs], retry_failed=True)
        assert [p for p, _ in retried.failed] == [bad] and retried.added == [cut]
        assert [n for _, n, _ in retried.missing_pages] == [1]

        make_pdf(docs / "bad.pdf", 2, seed=5)  # fixed: indexed, and no longer recorded as failed
        fixed = eng.add([docs])
        assert fixed.added == [bad] and fixed.not_retried == [] and eng.failures() == {}

        make_bad_page_count_pdf(docs / "worse.pdf")
        eng.add([docs])
        os.unlink(docs / "worse.pdf")
        eng.add([docs], prune=True)
        assert eng.failures() == {}  # the record of a file that is gone is pruned too


def test_list_shows_status_pages_and_failures(tmp_path, model, capsys):
    from jevsearch.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("same.pdf", "touched.pdf", "edited.pdf", "gone.pdf"):
        make_pdf(docs / name, 1, seed=len(name))
    make_truncated_pdf(docs / "cut.pdf")
    make_bad_page_count_pdf(docs / "bad.pdf")
    with Engine.create(tmp_path / "idx", model=model, max_pixels=MAX_PIXELS) as eng:
        eng.add([docs])
    os.utime(docs / "touched.pdf", ns=(1, 1))  # new mtime, same content: hashed, still present
    size = os.path.getsize(docs / "edited.pdf")
    with open(docs / "edited.pdf", "r+b") as f:  # same size, other content: changed
        f.seek(size - 40)
        f.write(b"%" * 8)
    os.unlink(docs / "gone.pdf")

    assert main(["list", "--index", str(tmp_path / "idx"), "--json"]) == 0
    rows = {os.path.basename(r["path"]): r for r in json.loads(capsys.readouterr().out)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "same.pdf": "present", "touched.pdf": "present", "edited.pdf": "changed", "gone.pdf": "missing",
        "cut.pdf": "present", "bad.pdf": "failed"}
    assert rows["cut.pdf"]["pages"] == 2 and rows["cut.pdf"]["missing_pages"] == [1]
    assert rows["bad.pdf"]["reason"].startswith("corrupt PDF") and rows["same.pdf"]["added"].endswith("Z")

    assert main(["list", "--index", str(tmp_path / "idx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["status", "pages", "added", "path"] and len(lines) == 7
    cut_line = next(line for line in lines if "cut.pdf" in line)
    assert cut_line.split()[:2] == ["present", "2"] and "(missing pages: 1)" in cut_line


def test_page_numbers_are_checked_and_kept(tmp_path):
    from jevsearch import Index
    from jevsearch.errors import InvalidInputError

    rng = np.random.default_rng(0)
    unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.standard_normal(s))  # noqa: E731
    with Index.create(tmp_path / "idx", single_dim=16) as idx:
        idx.add_embeddings("a", unit(2, 32), [unit(3, 128), unit(4, 128)], page_numbers=[2, 5])
        assert sorted(h.page for h in idx.search_embeddings(unit(32), unit(2, 128), k=5)) == [2, 5]
        for bad in ([5, 2], [0, 1], [1], [1, True]):
            with pytest.raises(InvalidInputError, match="page_numbers"):
                idx.add_embeddings("b", unit(2, 32), [unit(3, 128), unit(4, 128)], page_numbers=bad)
        idx.rename_document("a", "b")
        idx.copy_document("b", "c")
        assert sorted((h.doc_id, h.page) for h in idx.search_embeddings(unit(32), unit(2, 128), k=5)) == \
            [("b", 2), ("b", 5), ("c", 2), ("c", 5)]
        idx.verify(deep=True)
