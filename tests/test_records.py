"""One damaged record does not brick an index: a document's field record is rebuilt from its metadata,
a damaged document record is named and left out of listings, and the manifest has a copy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from _store_child import flip_value, make_doc, query_for

from jevsearch import CorruptIndexError, Index
from jevsearch.store.schema import doc_key, page_key

DOCS = [("a.pdf", 3), ("b.pdf", 4), ("c.pdf", 2)]


def build(path: str) -> dict:
    out = {}
    with Index.create(path, single_dim=64) as ix:
        for seed, (name, pages) in enumerate(DOCS):
            singles, multis = make_doc(seed, pages)
            ix.add_embeddings(name, singles, multis, metadata={"team": f"t{seed}", "size": 10 * seed,
                                                               "mtime_ns": 1714555800 * 10**9})
            out[name] = (singles, multis)
    return out


def flip(path: str, table: str, key: bytes, at: int = 3) -> None:
    flip_value(path, table, key, at, mask=0x5A, count=2)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jevsearch", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=300)


def test_a_damaged_field_record_is_named_by_document_and_rebuilt(tmp_path, caplog):
    path = str(tmp_path / "idx")
    docs = build(path)
    flip(path, "fields", page_key(0))  # a.pdf's record (first page id 0)
    qs, qm = query_for(docs["a.pdf"][1], docs["a.pdf"][0], page=0)
    with Index.open(path, readonly=True) as ix, caplog.at_level(logging.WARNING):
        assert ix.search_embeddings(qs, qm, k=1)[0].doc_id == "a.pdf"
        assert [h.doc_id for h in ix.search_embeddings(qs, qm, k=3, where={"team": "t0"})] == ["a.pdf"] * 3
        assert any("field record of a.pdf fails its checksum" in r.getMessage() for r in caplog.records)
        with pytest.raises(CorruptIndexError, match="the field record of a.pdf fails its checksum: repair rebuilds"):
            ix.verify(deep=True)
        assert len(ix.document_list()) == 3
    r = cli("verify", "--deep", "--index", path)
    assert r.returncode == 1 and "problem: fields: the field record of a.pdf fails its checksum" in r.stdout
    assert "page id 0" not in r.stdout
    r = cli("verify", "--repair", "--index", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repaired: rebuilt the field index (3 documents)" in r.stdout
    with Index.open(path, readonly=True) as ix:
        ix.verify(deep=True)


def test_a_damaged_document_record_leaves_listing_and_info_working(tmp_path):
    path = str(tmp_path / "idx")
    build(path)
    flip(path, "docs", doc_key("b.pdf"), at=10)
    with Index.open(path, readonly=True) as ix:
        assert [d["doc_id"] for d in ix.document_list()] == ["a.pdf", "c.pdf"]
        assert list(ix.documents()) == ["a.pdf", "c.pdf"]
    for command in ("list", "info"):
        r = cli(command, "--index", path)
        assert r.returncode == 0, r.stderr
        assert "1 document records are damaged" in r.stderr and "verify(repair=True)" in r.stderr
    assert "a.pdf" in cli("list", "--index", path).stdout


def test_a_damaged_manifest_is_read_from_its_copy_and_rewritten(tmp_path, caplog):
    path = str(tmp_path / "idx")
    docs = build(path)
    flip(path, "meta", b"manifest", at=20)
    qs, qm = query_for(docs["c.pdf"][1], docs["c.pdf"][0], page=1)
    with Index.open(path, readonly=True) as ix, caplog.at_level(logging.WARNING):
        assert (ix.search_embeddings(qs, qm, k=1)[0].doc_id, ix.manifest["single_dim"]) == ("c.pdf", 64)
        assert any("manifest record is damaged: read from its copy" in r.getMessage() for r in caplog.records)
    with Index.open(path) as ix:  # a writer rewrites it
        assert not ix._state.store.manifest_damaged
    flip(path, "meta", b"manifest", at=20)
    flip(path, "meta", b"manifest.copy", at=20)
    with pytest.raises(CorruptIndexError, match="and its copy too: the index's format version, vector sizes, "
                                                 "codec and model identity are lost"):
        Index.open(path, readonly=True)


def test_the_readme_documents_the_recorded_file_fields_and_their_aliases(tmp_path):
    """The docs' field list names what document_list() shows (size, mtime_ns) and the filter aliases."""
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "indexing.md")) as f:
        readme = f.read()
    fields = readme[readme.index("* **Fields**"):readme.index("Operators:")]
    for name in ("`size`", "`mtime_ns`", "alias `bytes`", "alias `mtime`"):
        assert name in fields
    path = str(tmp_path / "idx")
    build(path)
    with Index.open(path, readonly=True) as ix:
        meta = ix.document_list()[1]["metadata"]
        assert (meta["size"], meta["mtime_ns"]) == (10, 1714555800 * 10**9)
        qs, qm = query_for(*reversed(make_doc(1, 4)), page=0)
        for where in ({"size": 10}, {"bytes": 10}, {"mtime_ns": 1714555800 * 10**9},
                      {"mtime": "2024-05-01T09:30:00Z"}):
            assert {h.doc_id for h in ix.search_embeddings(qs, qm, k=9, where=dict(where, team="t1"))} == {"b.pdf"}
