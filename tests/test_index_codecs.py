"""Codecs in the index (issue 13): every layout through create / add / reopen / search / delete / compact,
the three-step search against exhaustive exact MaxSim, conversions by compact, pooling at ingest, the
manifest's format version, info/stats, and the errors naming the bad parameter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _store_child import make_doc, query_for

from jevsearch import Engine, Hit, Index
from jevsearch.cli import main as cli_main
from jevsearch.errors import FormatVersionError, InvalidInputError
from jevsearch.search.pooling import pool_tokens
from jevsearch.store import checksum
from jevsearch.store.lmdbenv import current_env

LAYOUTS = {
    "fp16": {"codec": "fp16"},
    "int8+exact": {"codec": "int8", "keep_exact": True},
    "int8": {"codec": "int8", "keep_exact": False},
    "binary+exact": {"codec": "binary", "keep_exact": True},
    "binary": {"codec": "binary", "keep_exact": False},
    "binary/2": {"codec": "binary", "keep_exact": False, "pool_factor": 2},
}


def _docs(n: int = 6, pages: int = 3, tokens=(40, 70)):
    return {f"doc-{i}": make_doc(i, pages, tokens) for i in range(n)}


def _fill(ix, docs) -> None:
    for name, (singles, multis) in docs.items():
        ix.add_embeddings(name, singles, multis, metadata={"name": name})


def _ranked(hits):
    return [(h.doc_id, h.page) for h in hits]


def _scores(hits):
    return {(h.doc_id, h.page): h.score for h in hits}


def _exact_reference(tmp_path, docs, q_multi):
    """Every page's MaxSim on float16 tokens: an fp16 index's exhaustive search (today's exact path)."""
    with Index.create(tmp_path / "reference", single_dim=64, codec="fp16") as ref:
        _fill(ref, docs)
        pages = sum(len(m) for _, m in docs.values())
        return _scores(ref.search_embeddings(None, q_multi, k=pages, exhaustive=True))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_round_trips_create_add_reopen_search_delete_compact(tmp_path, name):
    layout = LAYOUTS[name]
    path = tmp_path / "idx"
    docs = _docs()
    with Index.create(path, single_dim=64, **layout) as ix:
        _fill(ix, docs)
        m = ix.manifest
        # fp16 without pooling is today's storage (format 2, float32 singles); codes only (no float
        # tokens) store the singles' first single_dim dims (format 4); the rest is format 3.
        legacy, codes_only = name == "fp16", not layout.get("keep_exact") and name != "fp16"
        assert m["format_version"] == (2 if legacy else 4 if codes_only else 3)
        assert m.get("single_stored_dim") == (64 if codes_only else None) and m["single_full_dim"] == 256
        assert m.get("codec") == (None if legacy else layout["codec"])
        assert m.get("multi_dtype") == ("float16" if legacy else None)
        assert m["single_dtype"] == ("float32" if legacy else "float16")
        qs, qm = query_for(docs["doc-4"][1], docs["doc-4"][0], page=1)
        hits = ix.search_embeddings(qs, qm, k=5, candidates=12)
        assert _ranked(hits)[0] == ("doc-4", 2)
        stats = ix.stats()
        pooled = layout.get("pool_factor", 1) > 1
        raw_tokens = sum(len(t) for _, m in docs.values() for t in m)
        assert stats["tokens"] == (sum(-(-len(t) // 2) for _, m in docs.values() for t in m) if pooled else raw_tokens)
    with Index.open(path) as ix:  # the layout is the index's: nothing to pass at open
        assert ix.stats()["codec"] == layout["codec"] and ix.stats()["keep_exact"] == layout.get("keep_exact", False)
        again = ix.search_embeddings(qs, qm, k=5, candidates=12)
        assert [(h.doc_id, h.page, h.score) for h in again] == [(h.doc_id, h.page, h.score) for h in hits]
        assert ix.delete("doc-4")
        assert "doc-4" not in {h.doc_id for h in ix.search_embeddings(qs, qm, k=5, candidates=12)}
        ix.compact()
        assert ix.stats()["tombstones"] == 0
        assert {k: v for k, v in ix.manifest.items() if k != "model"} == {k: v for k, v in m.items() if k != "model"}
        ix.verify(deep=True)
        q2s, q2m = query_for(docs["doc-2"][1], docs["doc-2"][0], page=2)
        assert _ranked(ix.search_embeddings(q2s, q2m, k=3, candidates=12))[0] == ("doc-2", 3)
        # A copy carries the stored values as they are (pooled pages are not pooled again).
        assert ix.copy_document("doc-2", "doc-2-copy") == 3
        assert ix.document("doc-2-copy")["tokens"] == ix.document("doc-2")["tokens"]
        copied = _scores(ix.search_embeddings(None, q2m, k=100, exhaustive=True))
        assert copied[("doc-2-copy", 3)] == copied[("doc-2", 3)]
        ix.verify(deep=True)


@pytest.mark.parametrize("name", ["binary+exact", "int8+exact"])
def test_three_step_equals_exhaustive_exact_maxsim(tmp_path, name):
    docs = _docs(n=8)
    pages = sum(len(m) for _, m in docs.values())
    qs, qm = query_for(docs["doc-5"][1], docs["doc-5"][0], page=0, seed=3)
    exact = _exact_reference(tmp_path, docs, qm)
    best = sorted(exact.items(), key=lambda kv: (-kv[1], kv[0]))
    with Index.create(tmp_path / "idx", single_dim=64, **LAYOUTS[name]) as ix:
        _fill(ix, docs)
        # Candidates and rescore cover every page: exactly the exhaustive exact search.
        full = ix.search_embeddings(qs, qm, k=10, candidates=pages, rescore=pages)
        assert [(h.doc_id, h.page, h.score) for h in full] == [(*key, score) for key, score in best[:10]]
        assert _ranked(ix.search_embeddings(None, qm, k=10, exhaustive=True)) == [key for key, _ in best[:10]]
        # All three steps (stage 1 in the graph, codes, exact rescore of a few): the hits' scores are
        # the exact ones, not the codes' (a rescore that did not happen would give codes' scores).
        three = ix.search_embeddings(qs, qm, k=5, candidates=pages - 4, rescore=8)
        assert all(h.score == exact[(h.doc_id, h.page)] for h in three)
        assert _ranked(three)[0] == best[0][0]
        codes = ix.search_embeddings(qs, qm, k=5, candidates=pages - 4, rescore=5)  # rescore raised to k only
        assert all(h.score == exact[(h.doc_id, h.page)] for h in codes)


def test_codes_scores_within_their_tolerance(tmp_path):
    """Without exact tokens the scores are the codes': int8 within 1.2e-2 of float MaxSim per page
    (measured max 0.0102 at 24 query tokens), binary the MaxSim of the +-1/sqrt(d) sign vectors
    within the query's int8 rounding."""
    docs = _docs(n=5)
    rng = np.random.default_rng(7)
    q = rng.standard_normal((24, 128)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = _exact_reference(tmp_path, docs, q)
    with Index.create(tmp_path / "int8", single_dim=64, codec="int8", keep_exact=False) as ix:
        _fill(ix, docs)
        got = _scores(ix.search_embeddings(None, q, k=100, exhaustive=True))
    err = np.array([abs(got[key] - exact[key]) for key in exact])
    assert err.max() < 1.2e-2 and err.mean() < 3e-3
    with Index.create(tmp_path / "binary", single_dim=64, codec="binary", keep_exact=False) as ix:
        _fill(ix, docs)
        got = _scores(ix.search_embeddings(None, q, k=100, exhaustive=True))
    bound = float(np.sqrt(128) * np.abs(q).max(axis=1).sum() / 254)  # sum over rows of d * (max|q|/254) / sqrt(d)
    off_exact = []
    for name, (_, multis) in docs.items():
        for p, tokens in enumerate(multis):
            signs = np.where(tokens > 0, 1.0, -1.0) / np.sqrt(128)
            ref = float((q.astype(np.float64) @ signs.T).max(axis=1).sum())
            assert abs(got[(name, p + 1)] - ref) <= bound
            off_exact.append(abs(got[(name, p + 1)] - exact[(name, p + 1)]))
    assert np.mean(off_exact) > 0.05  # really the codes' own scores


def test_pooling_keeps_page_boundaries_and_refuses_a_bad_factor(tmp_path):
    docs = _docs(n=2, pages=3, tokens=(30, 50))
    with Index.create(tmp_path / "idx", single_dim=64, codec="fp16", pool_factor=2) as ix:
        _fill(ix, docs)
        for name, (_, multis) in docs.items():
            assert ix.document(name)["tokens"] == sum(-(-len(t) // 2) for t in multis)
            for p, tokens in enumerate(multis):
                stored, _ = ix.page_data(Hit(name, p + 1, 0.0, {"name": name}))
                # Each page pooled on its own: a pooled token never mixes two pages.
                np.testing.assert_allclose(stored, pool_tokens(tokens, 2), atol=1e-3)
    for bad in (0, 4, 2.0, "2", True):
        with pytest.raises(InvalidInputError, match="pool_factor"):
            Index.create(tmp_path / f"bad{bad}", single_dim=64, codec="binary", pool_factor=bad)
    with Index.open(tmp_path / "idx") as ix:
        with pytest.raises(InvalidInputError, match="pool_factor: this index's tokens are already pooled"):
            ix.compact(pool_factor=3)
        with pytest.raises(InvalidInputError, match="pool_factor"):
            ix.compact(pool_factor=5)


def test_bad_codec_keep_exact_and_rescore_are_errors_naming_the_parameter(tmp_path):
    for kwargs, name in (({"codec": "jpeg"}, "codec"), ({"codec": 8}, "codec"),
                         ({"codec": "fp16", "keep_exact": True}, "keep_exact"),
                         ({"codec": "binary", "keep_exact": "yes"}, "keep_exact"),
                         ({"multi_dtype": "float32", "codec": "binary"}, "multi_dtype")):
        with pytest.raises(InvalidInputError, match=f"^{name}:"):
            Index.create(tmp_path / "bad", single_dim=64, **kwargs)
    assert not (tmp_path / "bad").exists()
    docs = _docs(n=2)
    with Index.create(tmp_path / "idx", single_dim=64, codec="binary", keep_exact=True) as ix:
        _fill(ix, docs)
        qs, qm = query_for(docs["doc-1"][1], docs["doc-1"][0], page=0)
        with pytest.raises(InvalidInputError, match=r"^rescore: 50 is more than candidates \(20\)"):
            ix.search_embeddings(qs, qm, k=5, candidates=20, rescore=50)
        for bad in (0, -3, 2.5):
            with pytest.raises(InvalidInputError, match="^rescore:"):
                ix.search_embeddings(qs, qm, rescore=bad)
        with pytest.raises(InvalidInputError, match="^codec:"):
            ix.compact(codec="jpeg")
        with pytest.raises(InvalidInputError, match="^rescore: 100000 is more than candidates"):
            ix.search_embeddings(qs, qm, rescore=100_000)  # above the default candidates


def test_compact_converts_an_index_in_place(tmp_path):
    path = tmp_path / "idx"
    docs = _docs(n=6)
    pages = sum(len(m) for _, m in docs.values())
    qs, qm = query_for(docs["doc-3"][1], docs["doc-3"][0], page=2, seed=1)
    with Index.create(path, single_dim=64, codec="fp16") as ix:
        _fill(ix, docs)
        ix.delete("doc-0")
        before = ix.search_embeddings(None, qm, k=10, exhaustive=True)
        size_before = ix.stats()["bytes_per_page"]
        reader = Index.open(path, readonly=True)
        try:
            ix.compact(codec="binary")  # keep_exact: the default for binary
            m = ix.manifest
            assert (m["format_version"], m["codec"], m["keep_exact"], m["pool_factor"]) == (3, "binary", True, 1)
            after = ix.search_embeddings(qs, qm, k=10, candidates=pages, rescore=pages)
            assert [(h.doc_id, h.page, h.score) for h in after] == [(h.doc_id, h.page, h.score) for h in before]
            # A reader opened before follows the conversion at its next call, with the new scorers.
            seen = reader.search_embeddings(qs, qm, k=10, candidates=pages, rescore=pages)
            assert [(h.doc_id, h.page, h.score) for h in seen] == [(h.doc_id, h.page, h.score) for h in before]
            assert reader.stats()["codec"] == "binary"
        finally:
            reader.close()
        size = ix.stats()["bytes_per_page"]
        assert size["multi_codes"] < size_before["multi_codes"] / 8
        assert size["exact"] >= size_before["multi_codes"] * 0.9
        ix.verify(deep=True)
        ix.compact(keep_exact=False)  # drop the exact tokens: the smallest index
        assert ix.stats()["bytes_per_page"]["exact"] == 0 and ix.manifest["keep_exact"] is False
        assert ix.manifest["format_version"] == 4 and ix.manifest["single_stored_dim"] == 64  # singles cut too
        ix.verify(deep=True)
        with pytest.raises(InvalidInputError, match="^codec: this index keeps only binary codes"):
            ix.compact(codec="int8")
        with pytest.raises(InvalidInputError, match="^codec: this index keeps only binary codes"):
            ix.compact(keep_exact=True)
        assert ix.manifest["codec"] == "binary"
        assert _ranked(ix.search_embeddings(qs, qm, k=1))[0] == ("doc-3", 3)


def test_codes_only_index_keeps_the_singles_prefix_the_hnsw_needs(tmp_path):
    """Without float tokens an index stores each single vector's first single_dim dims (format 4):
    the HNSW rebuilt from them equals the one rebuilt from full vectors, and the exact single scan
    ranks by the renormalised prefixes."""
    docs = _docs(n=12)
    singles = np.concatenate([s for s, _ in docs.values()])
    queries = [query_for(docs[f"doc-{i}"][1], docs[f"doc-{i}"][0], page=i % 3, seed=i)[0] for i in range(6)]
    found, sizes = {}, {}
    for name in ("binary+exact", "binary"):
        with Index.create(tmp_path / name, single_dim=64, **LAYOUTS[name]) as ix:
            _fill(ix, docs)
            ix.compact()  # rebuilds the HNSW from the stored singles
            found[name] = [[(h.doc_id, h.page) for h in ix.search_singles(q, k=8)] for q in queries]
            sizes[name] = ix.stats()["bytes_per_page"]["singles"]
            exact = [ix.search_singles(q, k=8, exact=True) for q in queries]
            ix.verify(deep=True)
    assert found["binary"] == found["binary+exact"]
    assert sizes["binary"] < sizes["binary+exact"] / 2  # 64 of 256 float16 dims
    cut = singles[:, :64] / np.linalg.norm(singles[:, :64], axis=1, keepdims=True)
    names = [(n, p + 1) for n, (s, _) in docs.items() for p in range(len(s))]
    for q, hits in zip(queries, exact):  # the codes-only index's exact scan: over the prefixes
        qc = q[:64] / np.linalg.norm(q[:64])
        want = dict(zip(names, cut @ qc))
        best = sorted(want.values(), reverse=True)[:8]
        # float16 storage may swap near-ties: the scores are the prefixes' within its rounding.
        np.testing.assert_allclose([want[(h.doc_id, h.page)] for h in hits], best, atol=2e-3)
        np.testing.assert_allclose([h.score for h in hits], best, atol=2e-3)


def test_a_format_3_codes_only_index_opens_and_compact_cuts_its_singles(tmp_path, monkeypatch):
    """Codes-only indexes of format 3 (before format 4) kept full singles: they open and search as
    they are, and compact rewrites them to format 4."""
    import jevsearch.index.lifecycle as index_module
    from jevsearch.index.layout import new_layout

    docs = _docs(n=4)
    qs, qm = query_for(docs["doc-1"][1], docs["doc-1"][0], page=1)
    with monkeypatch.context() as m:  # the writer of format 3: no single prefix
        m.setattr(index_module, "new_layout", lambda *a, single_dim=None, **k: new_layout(*a, **k))
        with Index.create(tmp_path / "v3", single_dim=64, codec="binary", keep_exact=False) as ix:
            _fill(ix, docs)
            assert ix.manifest["format_version"] == 3 and "single_stored_dim" not in ix.manifest
            before = [(h.doc_id, h.page, h.score) for h in ix.search_embeddings(qs, qm, k=5, candidates=12)]
    with Index.open(tmp_path / "v3") as ix:
        assert [(h.doc_id, h.page, h.score) for h in ix.search_embeddings(qs, qm, k=5, candidates=12)] == before
        assert ix.search_singles(qs, k=3, exact=True)[0].doc_id == "doc-1"  # full 256-d singles
        full = ix.stats()["bytes_per_page"]["singles"]
        ix.compact()
        assert ix.manifest["format_version"] == 4 and ix.manifest["single_stored_dim"] == 64
        assert ix.stats()["bytes_per_page"]["singles"] < full / 2
        assert [(h.doc_id, h.page, h.score) for h in ix.search_embeddings(qs, qm, k=5, candidates=12)] == before
        ix.verify(deep=True)


def test_compact_pools_an_index_and_back_to_today_format(tmp_path):
    path = tmp_path / "idx"
    docs = _docs(n=4)
    with Index.create(path, single_dim=64, codec="int8", keep_exact=True) as ix:
        _fill(ix, docs)
        ix.compact(codec="fp16", keep_exact=False)  # back to today's storage: format 2, older code opens it
        m = ix.manifest
        assert m["format_version"] == 2 and m["multi_dtype"] == "float16" and "codec" not in m
        assert m["single_dtype"] == "float32"
        ix.verify(deep=True)
        ix.compact(codec="binary", keep_exact=False, pool_factor=2)
        pooled = sum(-(-len(t) // 2) for _, mm in docs.values() for t in mm)
        assert ix.stats()["tokens"] == pooled == sum(ix.document(n)["tokens"] for n in docs)
        ix.verify(deep=True)
        qs, qm = query_for(docs["doc-1"][1], docs["doc-1"][0], page=1)
        assert _ranked(ix.search_embeddings(qs, qm, k=1))[0] == ("doc-1", 2)


def test_info_and_stats_report_codec_and_bytes_per_part(tmp_path, capsys):
    docs = _docs(n=3)
    sizes = {}
    for name in ("fp16", "binary+exact", "binary"):
        with Index.create(tmp_path / name, single_dim=64, **LAYOUTS[name]) as ix:
            _fill(ix, docs)
            st = ix.stats()
            sizes[name] = st["bytes_per_page"]
            assert set(st["bytes_per_page"]) == {"multi_codes", "exact", "singles", "hnsw", "text_index", "fde",
                                                   "other"}
            assert st["codec"] == LAYOUTS[name]["codec"] and st["pool_factor"] == 1
    tokens_per_page = np.mean([len(t) for _, m in docs.values() for t in m])
    # LMDB stores a value in whole 4 KB pages (small ones share leaf pages): sizes are approximate.
    assert sizes["fp16"]["multi_codes"] == pytest.approx(tokens_per_page * 256, rel=0.2)
    assert sizes["binary"]["multi_codes"] < sizes["fp16"]["multi_codes"] / 6
    assert sizes["binary"]["exact"] == 0
    assert sizes["binary+exact"]["exact"] == pytest.approx(sizes["fp16"]["multi_codes"], rel=0.05)
    assert sizes["binary"]["singles"] < sizes["fp16"]["singles"]  # float16 singles
    assert cli_main(["info", "--index", str(tmp_path / "binary+exact"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["codec"], info["keep_exact"], info["pool_factor"], info["format_version"]) == ("binary", True, 1, 3)
    assert info["bytes_per_page"]["exact"] > 5 * info["bytes_per_page"]["multi_codes"] > 0
    assert cli_main(["info", "--index", str(tmp_path / "binary")]) == 0
    text = capsys.readouterr().out
    assert "codec" in text and "binary" in text and "bytes_per_page" in text and "pool_factor" in text


def test_cli_compact_converts_and_index_refuses_another_codec(tmp_path, capsys):
    path = tmp_path / "idx"
    with Index.create(path, single_dim=64, codec="fp16") as ix:
        _fill(ix, _docs(n=2))
    assert cli_main(["compact", "--index", str(path), "--codec", "binary", "--no-keep-exact",
                     "--pool-factor", "2"]) == 0
    out = capsys.readouterr().out
    assert "fp16 codes -> binary codes, pooled by 2" in out
    with Index.open(path, readonly=True) as ix:
        assert (ix.manifest["codec"], ix.manifest["keep_exact"], ix.manifest["pool_factor"]) == ("binary", False, 2)
    from tests.ingest_corpus import make_pdf

    make_pdf(tmp_path / "a.pdf", pages=1)
    assert cli_main(["index", str(tmp_path / "a.pdf"), "--index", str(path), "--codec", "int8"]) == 1
    assert "--codec: the index stores codec 'binary'" in capsys.readouterr().err
    from tests.ingest_corpus import tiny_model_dir

    new = tmp_path / "new"  # a new index takes the options
    assert cli_main(["index", str(tmp_path / "a.pdf"), "--index", str(new), "--model", tiny_model_dir(),
                     "--codec", "int8", "--no-keep-exact", "--pool-factor", "3", "-q"]) == 0
    with Index.open(new, readonly=True) as ix:
        assert (ix.manifest["codec"], ix.manifest["keep_exact"], ix.manifest["pool_factor"]) == ("int8", False, 3)
        assert ix.stats()["pages"] == 1


def _rewrite_manifest(path, change) -> dict:
    """Replace the manifest record (sealed as the index does); returns the one it had."""
    import lmdb

    env = lmdb.open(current_env(str(path))[0], max_dbs=16)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            old = json.loads(bytes(txn.get(b"manifest", db=meta))[:-checksum.SIZE])
            new = change if "format" in change else dict(old, **change)
            txn.put(b"manifest", checksum.seal("meta", b"manifest", json.dumps(new).encode()), db=meta)
    finally:
        env.close()
    return old


def test_an_unknown_codec_or_newer_format_is_refused(tmp_path):
    path = tmp_path / "idx"
    with Index.create(path, single_dim=64, codec="binary") as ix:
        _fill(ix, _docs(n=1))
    for change in ({"codec": "pq4"}, {"format_version": 5}):
        before = _rewrite_manifest(path, change)
        with pytest.raises(FormatVersionError, match="upgrade jevsearch"):
            Index.open(path, readonly=True)
        _rewrite_manifest(path, before)
    Index.open(path, readonly=True).close()


def test_engine_add_pools_pages_and_explain_recomputes_them(tmp_path):
    from tests.ingest_corpus import make_pdf, tiny_encoder

    make_pdf(tmp_path / "a.pdf", pages=2)
    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=128 * 28 * 28, codec="binary",
                       keep_exact=True, pool_factor=2) as eng:
        report = eng.add([tmp_path / "a.pdf"])
        assert len(report.added) == 1
        hit = eng.search("quarterly revenue", k=1)[0]
        multi, view = eng.page_data(hit)
        assert view is not None and view.rows * view.cols > 0  # the layout and thumbnail are kept
        assert len(multi) == -(-view.tokens // 2)  # the stored rows are the pooled ones
        ex = eng.explain(hit, "quarterly revenue")
        assert ex.source == "recomputed" and "pooled" in ex.note


@pytest.mark.parametrize("table, what", [("multi", "multi-vectors"), ("exact", "exact tokens")])
def test_damaged_codes_or_exact_tokens_are_skipped_and_named(tmp_path, caplog, table, what):
    import lmdb

    from jevsearch.errors import CorruptIndexError
    from jevsearch.store.schema import page_key

    path = tmp_path / "idx"
    docs = _docs(n=3)
    with Index.create(path, single_dim=64, codec="binary", keep_exact=True) as ix:
        _fill(ix, docs)
    env = lmdb.open(current_env(str(path))[0], max_dbs=16)
    try:  # one flipped bit in doc-1 page 2 (page id 4): a sign, or a float16 mantissa bit
        db = env.open_db(table.encode())
        with env.begin(write=True) as txn:
            raw = bytearray(txn.get(page_key(4), db=db))
            raw[10] ^= 0x01
            txn.put(page_key(4), bytes(raw), db=db)
    finally:
        env.close()
    singles, multis = docs["doc-1"]
    qs, qm = query_for(multis, singles, page=1)
    with Index.open(path) as ix:
        # rescore 3: the codes of all 9 pages, the exact tokens of the best 3; 9: the exact tokens of all
        # 9 (no codes pass). A page found damaged is left out of later searches from their codes on.
        for rescore in ((3, 3) if table == "multi" else (9, 3, 3)):
            hits = _ranked(ix.search_embeddings(qs, qm, k=3, candidates=9, rescore=rescore))
            assert ("doc-1", 2) not in hits and len(hits) == 3
        assert ix.stats()["damaged_pages"] == 1
        with pytest.raises(CorruptIndexError, match=f"doc-1 page 2: its {what} fail their checksum"):
            ix.verify()
        with pytest.raises(CorruptIndexError, match=f"doc-1: page 2 {table} vectors fail their checksum"):
            ix.verify(deep=True)
        ix.add_embeddings("doc-1", singles, multis, metadata={"name": "doc-1"})  # re-adding replaces the page
        assert _ranked(ix.search_embeddings(qs, qm, k=1, candidates=9))[0] == ("doc-1", 2)
        ix.verify(deep=True)


def test_default_candidates_follow_the_codes_kernel_and_rescore_3k():
    from jevsearch.index.layout import Layout
    from jevsearch.search import codecs

    binary, fp16 = codecs.get("binary", 128), codecs.get("fp16", 128)
    assert Layout(binary, keep_exact=True).depth(10, None, None) == (200, 30)
    assert Layout(binary).depth(10, None, None) == (100, 30)  # ranked by the signs: more would not help
    assert Layout(fp16).depth(10, None, None) == (100, 30)
    assert Layout(codecs.Int8Codec(128, kernel="int8")).depth(10, None, None) == (200, 30)
    assert Layout(codecs.Int8Codec(128, kernel="float")).depth(10, None, None) == (100, 30)  # fp16's cost
    assert Layout(binary, keep_exact=True).depth(40, None, None) == (200, 120)  # 3k
    assert Layout(binary, keep_exact=True).depth(10, 50, None) == (50, 30)
