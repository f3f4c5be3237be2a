"""Text documents: chunking edge cases, and a mixed index (PDFs + passages) with the tiny model.

Real tiny model (random weights: rankings are meaningless, only the machinery is checked), real
generated PDFs, real LMDB + FAISS.
"""

from __future__ import annotations

import os

import pymupdf
import pytest

from jevsearch import DocHit, Engine
from jevsearch.errors import DocumentError, InvalidInputError
from jevsearch.ingest.text import chunk_text, passage_budget, read_text, token_spans
from tests.ingest_corpus import WORDS, make_pdf

MAX_PIXELS = 128 * 28 * 28  # 128 visual tokens per page -> passages of 128 tokens, 16 overlap


def _words(n: int, seed: int = 0) -> list[str]:
    return [f"{WORDS[(i * 7 + seed) % len(WORDS)]}{i}" for i in range(n)]


# ----- chunking --------------------------------------------------------------------------------
def test_read_text_decodes_utf8_and_normalises_line_ends(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n\r\nthree\rfour")
    assert read_text(str(tmp_path / "crlf.txt")) == "one\ntwo\n\nthree\nfour"  # BOM dropped
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(DocumentError, match="not UTF-8 text: byte 0xe9 at offset 3"):
        read_text(str(tmp_path / "latin1.txt"))
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_text(str(tmp_path / "empty.txt")) == "" and chunk_text("", 8, 1) == []
    assert chunk_text("\n \r\n\t", 8, 1) == []


@pytest.mark.parametrize("tokenizer", [None, "model"])
def test_passages_respect_the_budget_and_overlap(model, tokenizer):
    tok = model.processor.tokenizer if tokenizer else None
    count = (lambda s: len(tok.encode(s, add_special_tokens=False).ids)) if tok else (lambda s: len(token_spans(s)))
    words = _words(3000)
    one_line = " ".join(words)  # one huge line: no paragraph or line breaks to cut at
    passages = chunk_text(one_line, 128, 16, tok)
    assert all(count(p) <= 128 + 1 for p in passages)  # +1: a word re-tokenised at a passage edge
    assert all(count(p) >= 96 for p in passages[:-1])  # cuts fall in the last quarter, not early
    assert all(not p.startswith(" ") and p.split()[0] in words for p in passages)  # never mid-word
    for a, b in zip(passages, passages[1:]):  # neighbours share the overlap (a few whole words)
        shared = set(a.split()[-8:]) & set(b.split()[:8])
        assert shared and b.split()[0] in a.split()
    covered = {w for p in passages for w in p.split()}
    assert covered == set(words)  # nothing lost
    blob = "x" * 5000  # one "word" longer than a passage: cut at token boundaries
    parts = chunk_text(blob, 64, 8, tok)
    assert len(parts) > 1 and all(count(p) <= 65 for p in parts) and set("".join(parts)) == {"x"}


def test_cuts_prefer_paragraphs_then_lines_then_sentences():
    w = lambda a, b: " ".join(f"w{i}" for i in range(a, b))  # noqa: E731 - one approximate token each
    first = chunk_text(f"{w(0, 18)}.\n\n{w(18, 40)} end. {w(40, 60)}", 24, 2)[0]
    assert first == f"{w(0, 18)}."  # the paragraph break, not the budget's end
    lines = chunk_text(f"{w(0, 14)} a. {w(14, 17)}\n{w(17, 50)}", 20, 2)
    assert lines[0] == f"{w(0, 14)} a. {w(14, 17)}"  # the line end beats the earlier sentence end
    sentence = chunk_text(f"{w(0, 16)}. {w(16, 50)}", 20, 2)
    assert sentence[0] == f"{w(0, 16)}."  # a sentence end beats a plain space


def test_passage_budget_follows_the_page_size():
    assert passage_budget(768) == (512, 64)  # jina-v4's default pages: capped
    assert passage_budget(MAX_PIXELS // 28 ** 2) == (128, 16)


# ----- a mixed index ---------------------------------------------------------------------------
@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "docs"
    (root / "notes").mkdir(parents=True)
    make_pdf(root / "report.pdf", 2, seed=1)
    with pymupdf.open(root / "report.pdf") as doc:
        doc.set_metadata({"title": "Quarterly report", "author": "Ana", "creationDate": "D:20240315093000+01'00'"})
        doc.saveIncr()
    para = lambda i: " ".join(_words(60, seed=i)) + "."  # noqa: E731
    (root / "notes" / "long.md").write_text("# Notes\n\n" + "\n\n".join(para(i) for i in range(6)))
    (root / "notes" / "crlf.txt").write_bytes(b"glacier survey\r\nbasalt sediment\r\n")
    (root / "notes" / "empty.txt").write_bytes(b"")
    (root / "notes" / "latin1.txt").write_bytes(b"caf\xe9")
    return root


def test_mixed_index_of_pdfs_and_passages(tmp_path, mixed, model):
    with Engine.create(tmp_path / "idx", model=model, max_pixels=MAX_PIXELS) as eng:
        report = eng.add([mixed], metadata={"team": "fin"})
        rel = lambda paths: sorted(os.path.relpath(p, mixed) for p in paths)  # noqa: E731
        assert rel(report.added) == ["notes/crlf.txt", "notes/long.md", "report.pdf"]
        reasons = dict((os.path.relpath(p, mixed), r) for p, r in report.failed)
        assert reasons["notes/empty.txt"].startswith("empty text file")
        assert reasons["notes/latin1.txt"].startswith("not UTF-8 text")
        long_md = eng.document(str(mixed / "notes" / "long.md"))
        assert long_md["pages"] >= 4  # ~420 words in passages of <= 128 tokens
        meta = eng.document(str(mixed / "report.pdf"))["metadata"]
        assert meta["title"] == "Quarterly report" and meta["author"] == "Ana"
        assert meta["created"] == "2024-03-15T08:30:00Z" and meta["team"] == "fin" and meta["kind"] == "pdf"
        size = os.path.getsize(mixed / "report.pdf")
        assert meta["size"] == size
        by_file = eng.search("x", k=9, where={"bytes": size, "mtime": {"$gte": "2020-01-01", "$lt": "2100"}})
        assert {h.path for h in by_file} == {str(mixed / "report.pdf")}  # size/mtime_ns as bytes/mtime

        total = eng.stats()["pages"]
        hits = eng.search("glacier survey basalt", k=total)  # one vector space: every page and passage
        assert len(hits) == total and {h.metadata["kind"] for h in hits} == {"pdf", "text"}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            if h.metadata["kind"] == "text":
                assert h.snippet == h.text and h.snippet  # the passage itself
                assert 1 <= h.page <= eng.document(h.path)["pages"] and "\r" not in h.text
        crlf = [h for h in hits if h.path.endswith("crlf.txt")]
        assert [h.text for h in crlf] == ["glacier survey\nbasalt sediment"]
        texts = eng.search("glacier", k=total, where={"kind": "text"})
        assert {h.metadata["kind"] for h in texts} == {"text"} and len(texts) == total - 2
        assert {h.path for h in eng.search("x", k=9, where={"kind": {"$ne": "text"}})} == {str(mixed / "report.pdf")}
        assert {h.path for h in eng.search("x", k=9, where={"created": {"$gte": "2024-01"}})} == \
            {str(mixed / "report.pdf")}
        docs = eng.search("glacier", k=5, group_by="document", pages_per_document=2)
        assert len(docs) == 3 and all(isinstance(d, DocHit) and 1 <= len(d.pages) <= 2 for d in docs)
        assert all(p.snippet for d in docs for p in d.pages if p.metadata["kind"] == "text")

        again = eng.add([mixed], metadata={"team": "ops"})  # unchanged: skipped, yet the metadata moves
        assert again.added == [] and rel(again.skipped) == rel(report.added)
        assert len(eng.search("x", k=total, where={"team": "ops"})) == total
        (mixed / "notes" / "crlf.txt").write_text("a changed note")
        third = eng.add([mixed / "notes"])
        assert rel(third.added) == ["notes/crlf.txt"] and eng.document(str(mixed / "notes" / "crlf.txt"))["pages"] == 1
        assert eng.document(str(mixed / "notes" / "crlf.txt"))["metadata"]["team"] == "ops"  # kept

        os.chdir(mixed)
        assert eng.update_metadata("report.pdf", {"status": "final"})["status"] == "final"  # relative path
        with pytest.raises(InvalidInputError, match="kind set by jevsearch"):
            eng.add([mixed], metadata={"kind": "x"})
        with pytest.raises(InvalidInputError, match="sha256 recorded by jevsearch"):
            eng.update_metadata("report.pdf", {"sha256": "0"})
        assert eng.update_metadata("report.pdf", {}, merge=False)["kind"] == "pdf"  # the ingest's stay
