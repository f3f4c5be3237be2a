"""Discovery, validation and rendering of real generated PDFs and images (no model needed)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from jevsearch.errors import DocumentError
from jevsearch.ingest.pages import PageGeometry, open_document
from jevsearch.ingest.sources import Source, discover, file_sha256
from tests.ingest_corpus import (
    make_encrypted_pdf,
    make_fake_pdf,
    make_pdf,
    make_truncated_pdf,
    make_zero_page_pdf,
    picture,
)

GEOM = PageGeometry(max_pixels=602112, min_pixels=3136, factor=28)  # jina-v4's preprocessor_config.json


@pytest.fixture
def tree(tmp_path):
    """papers/{a.pdf, sub/b.pdf, sub/deeper/c.PDF, notes.txt, .hidden.pdf, scan.png, loop -> papers}."""
    root = tmp_path / "papers"
    (root / "sub" / "deeper").mkdir(parents=True)
    make_pdf(root / "a.pdf", 2)
    make_pdf(root / "sub" / "b.pdf", 1)
    make_pdf(root / "sub" / "deeper" / "c.PDF", 1)
    (root / "notes.txt").write_text("not a document")
    make_fake_pdf(root / ".hidden.pdf")
    picture().save(root / "scan.png")
    os.symlink(root, root / "sub" / "loop")  # a folder symlink loop
    os.symlink(root / "a.pdf", root / "alias.pdf")  # the same file twice
    return root


def test_discover_walks_folders_once_and_reports_bad_paths(tree, tmp_path):
    os.symlink(tmp_path / "missing.pdf", tree / "dangling.pdf")
    os.symlink(tree / "self1.pdf", tree / "self2.pdf")
    os.symlink(tree / "self2.pdf", tree / "self1.pdf")  # a file symlink loop
    os.mkfifo(tree / "pipe.pdf")  # opening it would block forever
    (tmp_path / "report.docx").write_text("x")
    sources, failed = discover([tree, tmp_path / "report.docx", tmp_path / "nope.pdf", tree / "sub" / "b.pdf"])

    rel = [os.path.relpath(s.path, tree) for s in sources]
    assert rel == ["a.pdf", "notes.txt", "scan.png", "sub/b.pdf", "sub/deeper/c.PDF"]  # sorted, alias/loop/repeat once
    assert [s.kind for s in sources] == ["pdf", "text", "image", "pdf", "pdf"]
    assert all(os.path.isabs(s.path) for s in sources)
    reasons = {os.path.basename(p): r for p, r in failed}
    assert reasons["dangling.pdf"] == "broken symbolic link"
    assert "symbolic links" in reasons["self1.pdf"] and "symbolic links" in reasons["self2.pdf"]
    assert reasons["pipe.pdf"] == "not a regular file"
    assert reasons["report.docx"].startswith("unsupported file type .docx")
    assert reasons["nope.pdf"] == "no such file or directory"
    assert len(failed) == 6


def test_discover_single_path_and_unlistable_folder(tmp_path):
    make_pdf(tmp_path / "x.pdf", 1)
    sources, failed = discover(str(tmp_path / "x.pdf"))
    assert [s.path for s in sources] == [str(tmp_path / "x.pdf")] and failed == []
    # A folder we cannot list (as root, chmod would not stop us: a file in place of a folder does).
    (tmp_path / "blocked").write_text("")
    sources, failed = discover([tmp_path / "blocked"])
    assert sources == [] and failed[0][1].startswith("unsupported file type")


def test_sha256_streams_whole_file(tmp_path):
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(str(tmp_path / "f.bin"), chunk_bytes=1 << 20) == hashlib.sha256(data).hexdigest()


def test_render_pages_fit_budget_keep_rotation_and_text(tmp_path):
    texts = make_pdf(tmp_path / "r.pdf", 3, rotate={1: 90})
    with open_document(Source(str(tmp_path / "r.pdf"), "pdf")) as doc:
        assert doc.page_count == 3
        imgs = [doc.render(i, GEOM) for i in range(3)]
        page_texts = [doc.text(i) for i in range(3)]
    assert [im.mode for im in imgs] == ["RGB"] * 3
    assert imgs[0].size == (644, 896) and imgs[1].size == (896, 644)  # the rotated page is landscape
    for im in imgs:
        w, h = im.size
        assert w % 28 == 0 and h % 28 == 0 and w * h <= GEOM.max_pixels
        assert w * h > 0.9 * GEOM.max_pixels  # the budget is used, not wasted
    for want, got in zip(texts, page_texts):
        assert " ".join(got.split()) == want
    # The picture is drawn in the lower part of the page, the text in the upper part.
    a = np.asarray(imgs[0])
    assert a[: a.shape[0] // 2].min() < 100  # black text
    assert (a[int(a.shape[0] * 0.75)] != 255).any()  # the picture


def test_huge_and_extreme_pages(tmp_path):
    make_pdf(tmp_path / "huge.pdf", 1, size=(14400, 14400), images=False)  # the PDF maximum: 200 inches
    with open_document(Source(str(tmp_path / "huge.pdf"), "pdf")) as doc:
        assert doc.render(0, GEOM).size == (756, 756)
    make_pdf(tmp_path / "strip.pdf", 1, size=(14400, 50), images=False, texts=["x"])
    with open_document(Source(str(tmp_path / "strip.pdf"), "pdf")) as doc:
        with pytest.raises(DocumentError, match=r"page 1: aspect ratio 288:1 exceeds"):
            doc.render(0, GEOM)


@pytest.mark.parametrize(
    "maker, reason",
    [
        (make_encrypted_pdf, r"^encrypted PDF needs a password"),
        (make_zero_page_pdf, r"^PDF has no pages"),
        (make_fake_pdf, r"^not a PDF \(file starts with b'This is '\)"),
        (lambda p: open(p, "wb").close(), r"^empty file$"),
        (lambda p: open(p, "wb").write(b"%PDF-1.7\n" + bytes(range(256)) * 8), r"^corrupt PDF: \w"),
    ],
    ids=["encrypted", "zero-pages", "fake", "empty", "garbage"],
)
def test_bad_pdfs_are_refused_with_reason(tmp_path, maker, reason):
    path = tmp_path / "bad.pdf"
    maker(path)
    with pytest.raises(DocumentError) as info:
        with open_document(Source(str(path), "pdf")) as doc:
            for i in range(doc.page_count):
                doc.render(i, GEOM)
    assert info.value.path == str(path)
    assert re.match(reason, info.value.reason), info.value.reason
    assert str(path) not in info.value.reason  # the path is said once, by DocumentError itself


def test_truncated_pdf_fails_but_a_lost_xref_is_repaired(tmp_path):
    make_truncated_pdf(tmp_path / "cut.pdf", keep=0.3)
    with pytest.raises(DocumentError, match=r"page 1: damaged PDF: (premature end|object out of range)"):
        with open_document(Source(str(tmp_path / "cut.pdf"), "pdf")) as doc:
            for i in range(doc.page_count):
                doc.render(i, GEOM)
    # Only the trailing cross-reference table lost: MuPDF rebuilds it and every page is intact.
    texts = make_pdf(tmp_path / "tail.pdf", 2, images=False)
    data = (tmp_path / "tail.pdf").read_bytes()
    (tmp_path / "tail.pdf").write_bytes(data[: data.rindex(b"xref")])
    with open_document(Source(str(tmp_path / "tail.pdf"), "pdf")) as doc:
        assert [" ".join(doc.text(i).split()) for i in range(2)] == texts
        assert doc.render(1, GEOM).size == (644, 896)


def test_images_as_one_page_documents(tmp_path):
    big = picture(4000, 3000)
    big.save(tmp_path / "big.jpg", quality=80)
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 0))  # fully transparent: a white page, not black
    rgba.save(tmp_path / "clear.webp", lossless=True)
    picture(30, 20).convert("P").save(tmp_path / "tiny.tiff")
    Image.new("I;16", (280, 280), 40000).save(tmp_path / "deep.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

    def render(name):
        with open_document(Source(str(tmp_path / name), "image")) as doc:
            assert doc.page_count == 1 and doc.text(0) == ""
            return doc.render(0, GEOM)

    assert render("big.jpg").size == (896, 672)  # smart_resize into max_pixels
    clear = render("clear.webp")
    assert clear.mode == "RGB" and np.asarray(clear).min() == 255
    assert render("tiny.tiff").size == (84, 56)  # scaled up to min_pixels, as smart_resize does
    deep = np.asarray(render("deep.png"))
    assert deep.shape == (280, 280, 3) and abs(int(deep.mean()) - 40000 // 256) <= 1
    with pytest.raises(DocumentError, match="not a readable image|cannot decode image"):
        render("broken.png")
