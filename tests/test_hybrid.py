"""Hybrid search: the Tantivy text index beside LMDB, lexical and fused rankings, and its upkeep
(kept in step with writes, caught up after kill -9, rebuilt when missing or damaged, built for old
indexes). Real Tantivy, real LMDB, synthetic embeddings; the CLI test uses the tiny model."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from _store_child import make_doc, query_for

from jevsearch import CorruptIndexError, InvalidInputError
from jevsearch.index import Index
from jevsearch.search.fusion import fuse
from jevsearch.search.snippets import highlight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = {
    "/d/invoice.pdf": ["Invoice INV-2024-08817 for the harbor warehouse", "Payment terms: net 30 days"],
    "/d/contract.pdf": ["Termination clause 14.2 applies after notice", "Signed in Zürich by Café Müller"],
    "/d/tokyo.pdf": ["東京都庁の会議は月曜日です", "Straße and naïve façade"],
    "/d/scan.pdf": ["", ""],  # no text layer
}
TEAMS = {"/d/invoice.pdf": "finance", "/d/contract.pdf": "legal", "/d/tokyo.pdf": "legal", "/d/scan.pdf": "ops"}


def build(path, *, text_index=True, docs=TEXTS):
    ix = Index.create(path, single_dim=64, text_index=text_index)
    vecs = {}
    for seed, (doc_id, texts) in enumerate(docs.items()):
        singles, multis = make_doc(seed, len(texts))
        vecs[doc_id] = (singles, multis)
        ix.add_embeddings(doc_id, singles, multis, page_texts=texts,
                          metadata={"team": TEAMS.get(doc_id, "x"), "title": f"{os.path.basename(doc_id)} file"})
    return ix, vecs


def lexical(ix, text, k=10, **kw):
    return [(h.doc_id, h.page) for h in ix.search_hybrid(None, None, text, k=k, mode="lexical", **kw)]


def test_exact_strings_phrases_cjk_and_accents(tmp_path):
    ix, _ = build(tmp_path / "i")
    with ix:
        assert lexical(ix, "INV-2024-08817") == [("/d/invoice.pdf", 1)]
        assert lexical(ix, "inv 2024 08817")[0] == ("/d/invoice.pdf", 1)
        assert lexical(ix, "clause 14.2")[0] == ("/d/contract.pdf", 1)
        assert lexical(ix, "14.3") == []  # a code is a phrase of its parts, not any of them
        assert lexical(ix, '"harbor warehouse"') == [("/d/invoice.pdf", 1)]
        assert lexical(ix, '"warehouse harbor"') == []
        assert lexical(ix, "東京都") == [("/d/tokyo.pdf", 1)]  # CJK bigrams, no spaces in the text
        assert lexical(ix, "会議") == [("/d/tokyo.pdf", 1)]
        assert lexical(ix, "京東") == []
        assert lexical(ix, "cafe muller zurich")[0] == ("/d/contract.pdf", 2)  # accents folded
        assert lexical(ix, "strasse naive facade")[0] == ("/d/tokyo.pdf", 2)
        assert {d for d, _ in lexical(ix, "scan.pdf")} == {"/d/scan.pdf"}  # file name and title are indexed
        hits = ix.search_hybrid(None, None, "INV-2024-08817", mode="lexical")
        assert hits[0].scores["lexical"] > 0 and hits[0].scores["visual"] is None
        assert ix.text_stats()["pages_without_text"] == 2
        with pytest.raises(InvalidInputError, match="mode"):
            ix.search_hybrid(None, None, "x", mode="fuzzy")
    assert highlight("Invoice INV-2024-08817, Café Müller", "inv-2024-08817 cafe") == \
        "Invoice «INV-2024-08817», «Café» Müller"
    assert highlight("東京都庁の会議", "会議") == "東京都庁の«会議»"


def test_hybrid_gives_lexical_pages_their_maxsim_and_degrades_to_visual(tmp_path):
    ix, vecs = build(tmp_path / "i")
    with ix:
        qs, qm = query_for(vecs["/d/contract.pdf"][1], vecs["/d/contract.pdf"][0], 1)  # looks like contract p2
        visual = ix.search_embeddings(qs, qm, k=8)
        hybrid = ix.search_hybrid(qs, qm, "INV-2024-08817", k=8)
        assert (hybrid[0].doc_id, hybrid[0].page) == ("/d/invoice.pdf", 1) or \
            (hybrid[1].doc_id, hybrid[1].page) == ("/d/invoice.pdf", 1)
        inv = next(h for h in hybrid if h.doc_id == "/d/invoice.pdf" and h.page == 1)
        want = next(h.score for h in visual if h.doc_id == "/d/invoice.pdf" and h.page == 1)
        assert inv.scores["visual"] == pytest.approx(want, abs=1e-3) and inv.scores["lexical"] > 0
        # Fused as RRF says: hand-computed from each side's ranks.
        vis_rank = [(h.doc_id, h.page) for h in visual].index(("/d/invoice.pdf", 1)) + 1
        assert inv.score == pytest.approx(1 / (60 + vis_rank) + 1 / 61, rel=1e-5)
        none = ix.search_hybrid(qs, qm, "zzyzx qqq", k=8)  # no lexical match: the visual ranking
        assert [(h.doc_id, h.page) for h in none] == [(h.doc_id, h.page) for h in visual]
        only_vis = ix.search_hybrid(qs, qm, "INV-2024-08817", k=8, weights={"lexical": 0})
        assert [(h.doc_id, h.page) for h in only_vis] == [(h.doc_id, h.page) for h in visual]


def test_fusion_order_hand_computed():
    # visual ranks a, b, c; lexical ranks c, d. c: 1/63 + 1/61; a: 1/61; b: 1/62; d: 1/62 (b first: visual).
    assert [i for i, _ in fuse({"visual": [1, 2, 3], "lexical": [3, 4]})] == [3, 1, 2, 4]
    fused = dict(fuse({"visual": [1, 2, 3], "lexical": [3, 4]}, weights={"visual": 2.0}))
    assert fused[1] == pytest.approx(2 / 61) and fused[3] == pytest.approx(2 / 63 + 1 / 61)


def test_filters_and_grouping_apply_to_both_sides(tmp_path):
    ix, vecs = build(tmp_path / "i")
    with ix:
        assert lexical(ix, "clause notice Zürich", where={"team": "finance"}) == []
        assert {d for d, _ in lexical(ix, "file", where={"team": "legal"})} == {"/d/contract.pdf", "/d/tokyo.pdf"}
        qs, qm = query_for(vecs["/d/invoice.pdf"][1], vecs["/d/invoice.pdf"][0], 0)
        hits = ix.search_hybrid(qs, qm, "INV-2024-08817 clause", k=10, where={"team": "legal"})
        assert hits and {h.doc_id for h in hits} <= {"/d/contract.pdf", "/d/tokyo.pdf"}
        docs = ix.search_hybrid(qs, qm, "clause 14.2", k=2, group_by="document")
        assert len(docs) == 2 and len({d.doc_id for d in docs}) == 2
        assert docs[0].doc_id in ("/d/contract.pdf", "/d/invoice.pdf")
        lex_docs = ix.search_hybrid(None, None, "file", k=3, mode="lexical", group_by="document",
                                    pages_per_document=1)
        assert len(lex_docs) == 3 and all(len(d.pages) == 1 for d in lex_docs)


def test_delete_replace_and_metadata_reflected_at_the_next_search(tmp_path):
    ix, _ = build(tmp_path / "i")
    reader = Index.open(tmp_path / "i", readonly=True)
    with ix, reader:
        ix.delete("/d/invoice.pdf")
        assert lexical(ix, "INV-2024-08817") == []
        singles, multis = make_doc(9, 1)
        ix.add_embeddings("/d/contract.pdf", singles, multis, page_texts=["Replacement text ZX-99"])
        assert lexical(ix, "ZX-99") == [("/d/contract.pdf", 1)] and lexical(ix, "clause 14.2") == []
        ix.update_metadata("/d/tokyo.pdf", {"title": "Quarterly Aurora"})
        assert {d for d, _ in lexical(ix, "aurora")} == {"/d/tokyo.pdf"}
        ix.rename_document("/d/tokyo.pdf", "/d/kyoto.pdf")
        assert {d for d, _ in lexical(ix, "kyoto.pdf")} == {"/d/kyoto.pdf"}
        ix.flush()
        # A reader (another process would see the same files) follows the writer's commits.
        assert lexical(reader, "INV-2024-08817") == [] and lexical(reader, "ZX-99") == [("/d/contract.pdf", 1)]
        ix.verify(deep=True)


CRASH_CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from _store_child import make_doc
from jevsearch.index import Index
ix = Index.open(sys.argv[1])
singles, multis = make_doc(42, 2)
ix.add_embeddings("/d/late.pdf", singles, multis, page_texts=["Late arrival QX-7781", "second"])
ix.delete("/d/invoice.pdf")
ix.update_metadata("/d/scan.pdf", {"title": "Borealis"})
if sys.argv[3] == "compact":
    import jevsearch.index.text as it
    it.after_compact = lambda st: os.kill(os.getpid(), signal.SIGKILL)
    ix.compact()
os.kill(os.getpid(), signal.SIGKILL)  # LMDB committed; the text index not (commits are batched)
"""


@pytest.mark.parametrize("when", ["writes", "compact"])
def test_kill9_between_lmdb_and_text_index_commits(tmp_path, when):
    ix, _ = build(tmp_path / "i")
    ix.close()
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(tmp_path / "i"), os.path.join(REPO, "tests"), when],
                          check=False,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    with Index.open(tmp_path / "i", readonly=True) as reader:  # behind, but never serving a deleted page
        assert lexical(reader, "INV-2024-08817") == []
        reader.verify()  # a reader cannot tell a crash from a writer's batched commits: not flagged
    with Index.open(tmp_path / "i") as ix:  # the writer catches up from LMDB
        assert lexical(ix, "QX-7781") == [("/d/late.pdf", 1)]
        assert lexical(ix, "INV-2024-08817") == []
        assert {d for d, _ in lexical(ix, "borealis")} == {"/d/scan.pdf"}
        ix.verify(deep=True)


def test_missing_or_damaged_text_index_is_named_and_rebuilt(tmp_path):
    ix, _ = build(tmp_path / "i")
    ix.close()
    os.remove(tmp_path / "i" / "text.json")
    with Index.open(tmp_path / "i", readonly=True) as reader:
        assert reader.search_hybrid(None, None, "INV-2024-08817", mode="lexical") == []  # visual still works
        with pytest.raises(CorruptIndexError, match="text index: the text index is missing"):
            reader.verify()
    with Index.open(tmp_path / "i") as ix:  # a writer rebuilds it at open
        assert lexical(ix, "INV-2024-08817") == [("/d/invoice.pdf", 1)]
        ix.verify(deep=True)
    for f in glob.glob(str(tmp_path / "i" / "text-*" / "*")):
        if os.path.isfile(f) and not f.endswith(".json"):
            with open(f, "r+b") as fh:
                fh.write(b"\xff" * 64)  # Tantivy segment files garbled
    with Index.open(tmp_path / "i", readonly=True) as reader, pytest.raises(CorruptIndexError, match="text index"):
        reader.verify(deep=True)
    with Index.open(tmp_path / "i") as ix:  # the writer's open finds it unreadable and rebuilds it
        assert lexical(ix, "INV-2024-08817") == [("/d/invoice.pdf", 1)]
        ix.verify(deep=True)
        # A text index that disagrees with LMDB although it claims LMDB's generation: verify names it.
        ix._state.text.remove([0])
        ix._state.text.commit(ix._state.text.gen, ix._state.text.pointer["epoch"])
        with pytest.raises(CorruptIndexError, match="text index: 1 documents missing"):
            ix.verify()
        report = ix.verify(deep=True, repair=True)
        assert any("rebuilt the text index" in r for r in report["repaired"])
        assert lexical(ix, "INV-2024-08817") == [("/d/invoice.pdf", 1)]


def test_old_index_searches_visually_and_compact_builds_the_text_index(tmp_path):
    ix, vecs = build(tmp_path / "i", text_index=False)
    with ix:
        assert not ix.has_text_index and not os.path.exists(tmp_path / "i" / "text.json")
        qs, qm = query_for(vecs["/d/invoice.pdf"][1], vecs["/d/invoice.pdf"][0], 0)
        visual = [(h.doc_id, h.page) for h in ix.search_embeddings(qs, qm, k=3)]
        assert [(h.doc_id, h.page) for h in ix.search_hybrid(qs, qm, "INV-2024-08817", k=3)] == visual
        with pytest.raises(InvalidInputError, match="no text index"):
            ix.search_hybrid(qs, qm, "INV-2024-08817", mode="lexical")
        ix.compact()
        assert ix.has_text_index
        assert lexical(ix, "INV-2024-08817") == [("/d/invoice.pdf", 1)]
        ix.verify(deep=True)
    with Index.open(tmp_path / "i", readonly=True) as reader:
        assert lexical(reader, "東京都") == [("/d/tokyo.pdf", 1)]


def test_cli_mode_text_index_and_info(tmp_path, capsys):
    from jevsearch.cli import main
    from tests.ingest_corpus import make_pdf

    assert main(["make-tiny-model", str(tmp_path / "tiny"), "-q"]) == 0
    (tmp_path / "docs").mkdir()
    make_pdf(tmp_path / "docs" / "a.pdf", 2, seed=1, texts=["Order ZK-4471-B shipped", "Nothing special here"])
    make_pdf(tmp_path / "docs" / "b.pdf", 1, seed=2, texts=["Harbor warehouse audit"])
    idx = str(tmp_path / "idx")
    assert main(["index", str(tmp_path / "docs"), "--index", idx, "--model", str(tmp_path / "tiny"), "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "ZK-4471-B", "--index", idx, "--mode", "lexical", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["path"].endswith("a.pdf") and rows[0]["page"] == 1 and "«ZK-4471-B»" in rows[0]["snippet"]
    assert main(["search", "ZK-4471-B", "--index", idx, "--json"]) == 0  # hybrid by default
    rows = json.loads(capsys.readouterr().out)
    assert (rows[0]["page"], set(rows[0]["scores"])) == (1, {"visual", "lexical"})
    assert main(["info", "--index", idx, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["text_index"] is True and info["pages_without_text"] == 0 and info["bytes_per_page"]["text_index"] > 0
    os.remove(os.path.join(idx, "text.json"))
    assert main(["index", "--text-index", "--index", idx, "-q"]) == 0  # rebuilt from the stored text, no model
    assert main(["verify", "--deep", "--index", idx, "-q"]) == 0


def test_web_app_mode_switch_and_marked_words(tmp_path):
    from fastapi.testclient import TestClient

    from jevsearch.cli import main
    from jevsearch.serve.app import build_app
    from jevsearch.serve.pages import highlighted
    from tests.ingest_corpus import make_pdf

    assert highlighted("a «<b>» «INV-1» c") == "a <mark>&lt;b&gt;</mark> <mark>INV-1</mark> c"  # escaped first
    assert main(["make-tiny-model", str(tmp_path / "tiny"), "-q"]) == 0
    (tmp_path / "docs").mkdir()
    make_pdf(tmp_path / "docs" / "a.pdf", 1, seed=1, texts=["Order ZK-4471-B shipped"])
    idx = str(tmp_path / "idx")
    assert main(["index", str(tmp_path / "docs"), "--index", idx, "--model", str(tmp_path / "tiny"), "-q"]) == 0
    with TestClient(build_app(idx, warm_up=False), base_url="http://127.0.0.1") as client:
        api = client.get("/api/search", params={"q": "ZK-4471-B", "mode": "lexical"}).json()
        assert "«ZK-4471-B»" in api["hits"][0]["snippet"] and api["hits"][0]["scores"]["visual"] is None
        page = client.get("/", params={"q": "ZK-4471-B", "mode": "lexical"}).text
        assert "<mark>ZK-4471-B</mark>" in page and '<option value="lexical" selected>' in page
        assert client.get("/api/search", params={"q": "x", "mode": "fuzzy"}).status_code == 400
