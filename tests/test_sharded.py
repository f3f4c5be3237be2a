"""ShardedEngine without Ray: routing, exact scatter/merge, missing shards, the manifest, the CLI.

Real indexes (LMDB + FAISS) with synthetic unit vectors for the search checks; the tiny model and
generated PDFs for the sharded add and the CLI. The Ray-served shards are in test_scale_ray.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from _store_child import unit

import jevsearch
from jevsearch import (
    CorruptIndexError,
    Engine,
    Index,
    IndexExistsError,
    InvalidInputError,
    NotAnIndexError,
    PageNotFoundError,
    ReadOnlyIndexError,
    ShardedEngine,
    ShardError,
)
from jevsearch.scale import is_sharded, route
from jevsearch.surface import Searchable
from tests.ingest_corpus import make_pdf, picture

MAX_PIXELS = 128 * 28 * 28


def _corpus(n=120, seed=0):
    """n documents of 1-4 pages, 6-20 tokens per page: (doc_id, singles [P, 64], multis, metadata, texts)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        pages = 1 + i % 4
        docs.append((f"/corpus/part{i % 3}/doc{i:03d}.pdf", unit(rng, pages, 64),
                     [unit(rng, int(rng.integers(6, 21)), 32) for _ in range(pages)], {"n": i},
                     [f"page {p + 1} of doc {i}" for p in range(pages)]))
    return docs


@pytest.fixture
def built(tmp_path):
    """The same corpus in a 4-shard index and in one ordinary index."""
    docs = _corpus()
    with ShardedEngine.create(tmp_path / "sh", shards=4, single_dim=32, multi_dim=32) as sh:
        assert sh.add_embeddings_many(docs) == [1 + i % 4 for i in range(len(docs))]
    with Index.create(tmp_path / "one", single_dim=32, multi_dim=32) as one:
        one.add_embeddings_many(docs)
    return tmp_path / "sh", tmp_path / "one", docs


def test_routing_is_a_fixed_function_of_the_id():
    # Golden values: changing the routing would strand every document of every sharded index.
    ids = ["/data/a.pdf", "/data/b.pdf", "report-2024.pdf", "é/ü.pdf", "x"]
    assert [route(i, 4) for i in ids] == [0, 3, 1, 2, 0]
    assert [route(i, 7) for i in ids] == [5, 0, 4, 4, 1]
    counts = np.bincount([route(f"/c/doc{i}.pdf", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900  # balanced


def test_documents_land_in_their_shard_and_each_shard_opens_alone(built):
    sh_path, _, docs = built
    assert is_sharded(sh_path) and not is_sharded(built[1])
    manifest = json.loads((sh_path / "shards.json").read_text())
    assert manifest["shards"] == ["shard-000", "shard-001", "shard-002", "shard-003"]
    assert not [f for f in os.listdir(sh_path) if f.startswith(".")]  # no temporary files left
    for i, name in enumerate(manifest["shards"]):
        with Engine.open(sh_path / name, readonly=True) as shard:  # an ordinary index
            want = sorted(d[0] for d in docs if route(d[0], 4) == i)
            assert list(shard.documents()) == want and want
    with ShardedEngine.open(sh_path) as sh:
        assert sh.route(docs[5][0]) == manifest["shards"][route(docs[5][0], 4)]
        assert sh.document(docs[5][0])["metadata"] == {"n": 5}
        assert sh.delete(docs[5][0]) and sh.document(docs[5][0]) is None and not sh.delete(docs[5][0])
        assert sh.stats()["documents"] == len(docs) - 1
        assert sh.verify()["shards"] == 4


def test_update_metadata_goes_to_the_documents_shard_and_takes_a_relative_path(built, monkeypatch):
    sh_path, _, docs = built
    doc_id = docs[7][0]
    monkeypatch.chdir("/")  # the corpus ids are absolute paths under /corpus
    with ShardedEngine.open(sh_path) as sh:
        assert sh.update_metadata(doc_id.lstrip("/"), {"status": "final"}) == {"n": 7, "status": "final"}
        assert sh.update_metadata(doc_id, {"n": 70}, merge=False) == {"n": 70}
        with pytest.raises(InvalidInputError, match="not in the index"):
            sh.update_metadata("/corpus/nope.pdf", {"a": 1})
    with Engine.open(sh_path / sh.route(doc_id), readonly=True) as shard:  # stored in its shard
        assert shard.document(doc_id)["metadata"] == {"n": 70}
    with ShardedEngine.open(sh_path, readonly=True) as sh, pytest.raises(ReadOnlyIndexError):
        sh.update_metadata(doc_id, {"n": 1})


def test_open_returns_the_engine_for_the_folder(built, tmp_path):
    sh_path, one_path, docs = built
    with jevsearch.open(sh_path, read_only=True) as sh, jevsearch.open(one_path) as one:
        assert type(sh) is ShardedEngine and sh.readonly and type(one) is Engine and not one.readonly
        assert isinstance(sh, Searchable) and isinstance(one, Searchable)
        with pytest.raises(ReadOnlyIndexError):
            sh.delete(docs[0][0])
    with pytest.raises(NotAnIndexError):
        jevsearch.open(tmp_path / "nothing")


def test_search_equals_one_index_when_candidates_cover_each_shard(built):
    sh_path, one_path, docs = built
    rng = np.random.default_rng(1)
    q_multi = [unit(rng, 7, 32) for _ in range(4)]
    q_single = unit(rng, 4, 64)
    most = max(sum(len(d[2]) for d in docs if route(d[0], 4) == i) for i in range(4))
    with ShardedEngine.open(sh_path, readonly=True, threads=1) as sh, Index.open(one_path, readonly=True) as one:
        exact = one.search_embeddings(None, q_multi, k=10, exhaustive=True)
        for got in (sh.search_embeddings(q_single, q_multi, k=10, candidates=most, rescore=most),
                    sh.search_embeddings(None, q_multi, k=10, exhaustive=True)):
            for hits, want in zip(got, exact):
                assert [(h.doc_id, h.page, h.text) for h in hits] == [(h.doc_id, h.page, h.text) for h in want]
                np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], rtol=1e-6)
                assert hits.missing == []
        single = sh.search_embeddings(q_single[0], q_multi[0], k=3, candidates=most, rescore=most)
        assert [(h.doc_id, h.page) for h in single] == [(h.doc_id, h.page) for h in exact[0][:3]]
        stats, ones = sh.stats(), one.stats()
        for key in ("documents", "pages", "tokens"):
            assert stats[key] == ones[key]
        assert list(sh.documents()) == list(one.documents())
        with pytest.raises(InvalidInputError, match="k"):
            sh.search_embeddings(q_single[0], q_multi[0], k=0)
        with pytest.raises(ReadOnlyIndexError):
            sh.add_embeddings(*docs[0][:3])


def test_missing_shard_is_an_error_unless_partial_is_allowed(built):
    sh_path, one_path, docs = built
    shutil.move(sh_path / "shard-002", sh_path.parent / "aside")
    with pytest.raises(ShardError, match="1 of 4 shards unavailable.*shard-002: missing.*allow_partial"):
        ShardedEngine.open(sh_path, readonly=True)
    rng = np.random.default_rng(2)
    q = unit(rng, 5, 32)
    with ShardedEngine.open(sh_path, readonly=True, allow_partial=True) as sh:
        assert sh.missing == ["shard-002"]
        hits = sh.search_embeddings(None, q, k=500, exhaustive=True)
        assert hits.missing == ["shard-002"]
        present = {d[0] for d in docs if route(d[0], 4) != 2}
        assert {h.doc_id for h in hits} == present  # every page of the others, none lost
        assert sh.stats()["missing"] == ["shard-002"]
        with pytest.raises(ShardError, match="shard-002"):
            sh.verify()  # a partial index is not a sound one
        gone = next(d[0] for d in docs if route(d[0], 4) == 2)
        with pytest.raises(ShardError, match="shard-002"):
            sh.document(gone)


def test_swapped_shards_fail_verify(built):
    sh_path = built[0]
    os.rename(sh_path / "shard-000", sh_path / "tmp")
    os.rename(sh_path / "shard-001", sh_path / "shard-000")
    os.rename(sh_path / "tmp", sh_path / "shard-001")
    with ShardedEngine.open(sh_path, readonly=True) as sh:
        with pytest.raises(CorruptIndexError, match="belongs in shard-00"):
            sh.verify()


def test_the_core_never_imports_ray_and_says_how_to_install_it():
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.modules['ray'] = None  # as if not installed: any import of it fails\n"
            "import jevsearch.engine, jevsearch.cli, jevsearch.scale, jevsearch.scale.ingest, jevsearch.scale.shards\n"
            "from jevsearch import ShardedEngine\n"
            "from jevsearch.scale.cluster import Session\n"
            "try:\n    Session('auto')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=repo))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingDependencyError ray: needs the Python package 'ray', not installed")
    assert 'pip install -e ".[ray]"' in out.stdout


def test_create_checks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(IndexExistsError):
        ShardedEngine.create(tmp_path / "full", shards=2)
    with pytest.raises(InvalidInputError, match="shards"):
        ShardedEngine.create(tmp_path / "s", shards=0)
    assert not (tmp_path / "s").exists()
    with pytest.raises(Exception, match="not a sharded index.*Engine.open"):
        Index.create(tmp_path / "plain").close()
        ShardedEngine.open(tmp_path / "plain")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shards.json").write_text('{"format": "jevsearch-sharded", "version": 1, "shards": ["../x"]}')
    with pytest.raises(CorruptIndexError, match="shard list"):
        ShardedEngine.open(tmp_path / "bad")


def test_sharded_add_and_the_cli_on_a_sharded_index(tmp_path, model, capsys):
    from jevsearch.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        make_pdf(corpus / f"doc{i}.pdf", 1 + i % 2, seed=i)
    picture(200, 150).save(corpus / "scan.png")
    (corpus / "broken.pdf").write_text("not a pdf")
    with ShardedEngine.create(tmp_path / "sh", shards=3, model=model, max_pixels=MAX_PIXELS) as sh, \
            Engine.create(tmp_path / "one", model=model, max_pixels=MAX_PIXELS) as one:
        report, single = sh.add([corpus]), one.add([corpus])
        # One report, as a local add gives, in the same (discovery) order.
        assert (report.added, report.failed, report.pages) == (single.added, single.failed, single.pages)
        again = sh.add([corpus])
        assert again.skipped == single.added and again.added == []
        gone = corpus / "doc0.pdf"
        os.unlink(gone)
        pruned = sh.add([corpus], prune=True)  # every shard prunes its own documents under the folder
        assert pruned.pruned == [str(gone)] and sh.document(str(gone)) is None and pruned.added == []
        make_pdf(gone, 1, seed=0)
        assert sh.add([corpus]).added == [str(gone)]
        hits, want = sh.search("quarterly revenue", k=5), one.search("quarterly revenue", k=5, mode="visual")
        assert [(h.path, h.page, h.snippet) for h in hits] == [(h.path, h.page, h.snippet) for h in want]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], rtol=1e-5)
        _same_surface(sh, one, "quarterly revenue")

    assert main(["info", "--index", str(tmp_path / "sh"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["shards"], info["documents"], info["pages"]) == (3, 6, report.pages)
    assert main(["verify", "--index", str(tmp_path / "sh")]) == 0
    assert "ok (3 shards, 6 documents" in capsys.readouterr().out
    assert main(["verify", "--index", str(tmp_path / "sh"), "--deep", "--repair"]) == 0  # each shard's writer
    assert "ok (3 shards, 6 documents" in capsys.readouterr().out
    assert main(["search", "quarterly revenue", "--index", str(tmp_path / "sh"), "-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["path"], r["page"]) for r in rows] == [(h.path, h.page) for h in want[:2]]
    # index into the existing sharded index: detected, unchanged files skipped
    assert main(["index", str(corpus), "--index", str(tmp_path / "sh"), "-q"]) == 3  # broken.pdf
    assert "broken.pdf" in capsys.readouterr().err
    assert main(["index", str(corpus), "--index", str(tmp_path / "sh"), "--shards", "2", "-q"]) == 1
    assert "has 3 shards" in capsys.readouterr().err


def _rows(results) -> list:
    """Search results as comparable rows: pages, or documents with their pages."""
    return [(r.path, round(r.score, 4), [(p.page, round(p.score, 4), p.snippet) for p in r.pages])
            if hasattr(r, "pages") else (r.path, r.page, round(r.score, 4), r.snippet) for r in results]


def _same_surface(sh, one, query: str) -> None:
    """A sharded engine answers as one index of the same documents: filters, groups, page ids, explain."""
    assert isinstance(sh, Searchable) and isinstance(one, Searchable)
    for options in ({"where": {"kind": "pdf"}}, {"where": {"kind": {"$ne": "pdf"}}},
                    {"group_by": "document", "pages_per_document": 2},
                    {"where": {"pages": {"$gte": 2}}, "group_by": "document"}):
        got, want = sh.search(query, k=4, **options), one.search(query, k=4, mode="visual", **options)
        assert _rows(got) == _rows(want) and got, options
    hits, want = sh.search(query, k=20), one.search(query, k=20, mode="visual")
    assert len({h.page_id for h in hits}) == len(hits)  # global ids: the shards' own ids collide
    for hit in hits:
        found = sh.page_hit(hit.page_id)
        assert (found.path, found.page, found.page_id) == (hit.path, hit.page, hit.page_id)
    hit = hits[0]
    ex, ex1 = sh.explain(hit, query), one.explain(want[0], query)
    assert ex.tokens == ex1.tokens and ex.source == ex1.source == "stored"
    np.testing.assert_allclose(ex.maps, ex1.maps, atol=1e-5)
    assert sh.thumbnail(hit).size == one.thumbnail(want[0]).size
    other = next(h for h in hits if route(h.doc_id, len(sh.shards)) != route(hit.doc_id, len(sh.shards)))
    with pytest.raises(PageNotFoundError):  # a page id of another shard is not this hit's page
        sh.page_data(dataclasses.replace(hit, page_id=other.page_id))
