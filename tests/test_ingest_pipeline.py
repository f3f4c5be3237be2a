"""The streaming pipeline with the real tiny encoder and real generated documents."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from jevsearch.errors import DocumentError
from jevsearch.ingest import PageGeometry, discover, ingest, open_document
from tests.ingest_corpus import (
    make_bad_page_count_pdf,
    make_broken_png,
    make_encrypted_pdf,
    make_fake_pdf,
    make_pdf,
    make_truncated_pdf,
    make_zero_page_pdf,
    picture,
    tiny_encoder,
)

# A small pixel budget (~128 visual tokens per page) keeps the tests fast; the rules are the same.
MAX_PIXELS = 128 * 28 * 28


@pytest.fixture(scope="module")
def enc():
    return tiny_encoder()


@pytest.fixture(scope="module")
def geom(enc):
    p = enc.processor
    return PageGeometry(MAX_PIXELS, enc.min_pixels, p.patch_size * p.merge_size)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "a" / "b").mkdir(parents=True)
    texts = {
        "one.pdf": make_pdf(root / "one.pdf", 3, rotate={1: 90}, seed=1),
        "a/two.pdf": make_pdf(root / "a" / "two.pdf", 2, seed=2),
        "a/b/three.pdf": make_pdf(root / "a" / "b" / "three.pdf", 1, images=False, seed=3),
    }
    picture(300, 200, seed=4).save(root / "a" / "scan.png")
    make_encrypted_pdf(root / "locked.pdf")
    make_zero_page_pdf(root / "a" / "empty.pdf")
    make_fake_pdf(root / "a" / "b" / "fake.pdf")
    make_truncated_pdf(root / "cut.pdf")  # page 1's content is cut short; pages 2 and 3 render
    make_bad_page_count_pdf(root / "a" / "count.pdf")
    make_broken_png(root / "a" / "b" / "broken.png")
    return root, texts


def test_ingest_folder_encodes_every_good_page_and_reports_bad_files(enc, geom, folder):
    root, texts = folder
    sources, failed = discover([root])
    stored = []
    report = ingest(sources, enc, stored.append, geometry=geom, batch_tokens=400, queue_pages=2)

    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    assert [rel(p) for p in report.added] == ["a/b/three.pdf", "a/scan.png", "a/two.pdf", "cut.pdf", "one.pdf"]
    assert [rel(d.path) for d in stored] == [rel(p) for p in report.added]
    # Whatever a file makes the render process raise fails that file only: here MuPDF's "Invalid
    # number of pages" from page_count, and PIL's SyntaxError (not an OSError) from a broken PNG.
    assert sorted((rel(p), r.split(":")[0]) for p, r in report.failed) == [
        ("a/b/broken.png", "cannot be read"),
        ("a/b/fake.pdf", "not a PDF (file starts with b'This is ')"),
        ("a/count.pdf", "corrupt PDF"),
        ("a/empty.pdf", "PDF has no pages; corrupt or empty (MuPDF"),
        ("locked.pdf", "encrypted PDF needs a password (hint"),
    ]
    reasons = {rel(p): r for p, r in report.failed}
    assert reasons["a/count.pdf"] == "corrupt PDF: cannot count its pages: Invalid number of pages"
    assert reasons["a/b/broken.png"].startswith("cannot be read: SyntaxError: broken PNG file")
    # A partial document: the page that cannot be rendered is reported, the others keep their numbers.
    assert [(rel(p), page, r.split(":")[0]) for p, page, r in report.missing_pages] == [("cut.pdf", 1, "damaged PDF")]
    cut = next(d for d in stored if rel(d.path) == "cut.pdf")
    assert cut.page_numbers == [2, 3] and [p for p, _ in cut.missing] == [1] and cut.pages == 2
    assert report.skipped == [] and failed == []
    assert report.pages == 9 == sum(d.pages for d in stored)
    assert all(d.page_numbers == list(range(1, d.pages + 1)) for d in stored if d is not cut)

    by_name = {rel(d.path): d for d in stored}
    for name, want in texts.items():
        doc = by_name[name]
        assert doc.kind == "pdf" and len(doc.sha256) == 64
        assert [" ".join(t.split()) for t in doc.texts] == want
    one = by_name["one.pdf"]
    assert one.sizes[1] == one.sizes[0][::-1]  # the rotated page is rendered landscape
    for doc in stored:
        assert doc.singles.shape == (doc.pages, enc.hidden_size) and doc.singles.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(doc.singles, axis=1), 1, atol=1e-5)
        for (w, h), m in zip(doc.sizes, doc.multis):
            assert w * h <= MAX_PIXELS and w % 28 == 0 and h % 28 == 0
            assert m.shape == (geom.tokens(w, h) + enc.image_prompt_tokens, enc.multi_dim)
    assert by_name["a/scan.png"].kind == "image" and by_name["a/scan.png"].texts == [""]
    assert report.tokens == sum(geom.tokens(*s) for d in stored for s in d.sizes)
    assert all(report.timings[k] > 0 for k in ("render", "encode", "wall"))


def test_batching_does_not_change_embeddings(enc, geom, tmp_path):
    make_pdf(tmp_path / "d.pdf", 3, rotate={2: 270})
    sources, _ = discover([tmp_path])
    stored = []
    ingest(sources, enc, stored.append, geometry=geom, batch_tokens=10_000)
    with open_document(sources[0]) as doc:
        pages = [doc.render(i, geom) for i in range(3)]
    one_by_one = [enc.encode_images([p], max_pixels=MAX_PIXELS) for p in pages]
    for i, ref in enumerate(one_by_one):
        assert float(stored[0].singles[i] @ ref.single[0]) > 0.99999
        cos = np.sum(stored[0].multis[i] * ref.multi[0], axis=1)
        assert cos.min() > 0.9999


def test_unchanged_files_are_skipped_changed_ones_redone(enc, geom, tmp_path):
    make_pdf(tmp_path / "same.pdf", 1, seed=1)
    make_pdf(tmp_path / "edit.pdf", 1, seed=2)
    sources, _ = discover([tmp_path])
    first = []
    ingest(sources, enc, first.append, geometry=geom)
    known = {d.path: d.sha256 for d in first}
    make_pdf(tmp_path / "edit.pdf", 2, seed=3)
    again = []
    report = ingest(sources, enc, again.append, geometry=geom, known=known)
    assert [os.path.basename(p) for p in report.skipped] == ["same.pdf"]
    assert [os.path.basename(p) for p in report.added] == ["edit.pdf"]
    assert again[0].pages == 2 and again[0].sha256 != known[again[0].path]


def test_sink_rejecting_one_document_fails_only_that_one(enc, geom, tmp_path):
    for i in range(3):
        make_pdf(tmp_path / f"d{i}.pdf", 1, seed=i)
    sources, _ = discover([tmp_path])
    kept = []

    def sink(doc):
        if doc.path.endswith("d1.pdf"):
            raise DocumentError(doc.path, "refused by the store")
        kept.append(doc.path)

    report = ingest(sources, enc, sink, geometry=geom)
    assert [os.path.basename(p) for p in kept] == ["d0.pdf", "d2.pdf"] == [os.path.basename(p) for p in report.added]
    assert report.failed == [(str(tmp_path / "d1.pdf"), "refused by the store")]


def test_encoder_failure_stops_cleanly_and_propagates(enc, geom, tmp_path):
    for i in range(4):
        make_pdf(tmp_path / f"d{i}.pdf", 2, seed=i)
    sources, _ = discover([tmp_path])

    class FailsOnSecondCall:  # fault injection around the real encoder
        calls = 0

        def encode_images(self, images, **kw):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("device lost")
            return enc.encode_images(images, **kw)

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="device lost"):
        ingest(sources, FailsOnSecondCall(), lambda d: None, geometry=geom, batch_tokens=1, queue_pages=1)
    assert threading.active_count() == before  # the render thread was stopped and joined


def test_bad_batch_parameters_are_refused(enc, geom):
    with pytest.raises(ValueError, match="batch_tokens=0"):
        ingest([], enc, lambda d: None, geometry=geom, batch_tokens=0)


def test_store_failure_stops_the_ingest_and_keeps_what_was_stored(enc, geom, tmp_path):
    for i in range(4):
        make_pdf(tmp_path / f"d{i}.pdf", 1, seed=i)
    sources, _ = discover([tmp_path])
    stored = []

    def sink(doc):  # the disk fills up at the second document
        if stored:
            raise OSError(28, "No space left on device")
        stored.append(doc.path)

    before = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        ingest(sources, enc, sink, geometry=geom)
    assert [os.path.basename(p) for p in stored] == ["d0.pdf"]
    assert threading.active_count() == before  # render and store threads both joined


def test_a_renderer_crash_fails_that_file_and_a_new_renderer_goes_on(geom, tmp_path):
    from jevsearch.ingest.renderer import DONE, END, FAIL, START, RenderProcess

    for i in range(3):
        make_pdf(tmp_path / f"d{i}.pdf", 4, seed=i)
    sources, _ = discover([tmp_path])
    renderer = RenderProcess(sources, {}, geom, queue_pages=1)
    seen, reasons = [], {}
    try:
        while True:
            kind, idx, payload = renderer.queue.get(timeout=120)
            seen.append((kind, idx))
            if (kind, idx) == (START, 0):  # MuPDF segfaulting on a hostile file, mid-document
                os.kill(renderer._proc.pid, signal.SIGSEGV)
            if kind == FAIL:
                reasons[idx] = payload
            if kind == DONE:
                assert payload is None
                break
    finally:
        renderer.close()
    assert reasons == {0: "renderer crashed (exit status -11)"}
    assert (END, 0) not in seen and (END, 1) in seen and (END, 2) in seen
    assert renderer.render_seconds > 0
