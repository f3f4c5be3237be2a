"""jevsearch.eval and `jevsearch eval`: datasets, metrics, settings, report, plot.

Real parts throughout: the tiny model, generated PDFs and images, real indexes, pytrec_eval, pyarrow
Parquet files written here in the ViDoRe layouts, matplotlib.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys

import numpy as np
import pytest
from _store_child import make_doc, query_for, unit
from PIL import Image

from jevsearch import DatasetError, Engine, Index, InvalidInputError, MissingDependencyError
from jevsearch.eval import DEFAULT_SETTINGS, Dataset, Query, evaluate, load_dataset, metrics
from tests.ingest_corpus import make_pdf, picture, tiny_encoder

MAX_PIXELS = 128 * 28 * 28  # ~128 visual tokens per page keeps the tests fast


# ----- a small BEIR-style dataset, indexed once ----------------------------------------------------
def write_beir(root, qrels_lines=None, queries=None):
    """corpus/ (report.pdf 3 pages, sub/memo.pdf 2 pages, chart.png), queries.jsonl, qrels/test.tsv."""
    (root / "corpus" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    make_pdf(root / "corpus" / "report.pdf", 3, seed=1)
    make_pdf(root / "corpus" / "sub" / "memo.pdf", 2, seed=2)
    picture(200, 150, seed=3).save(root / "corpus" / "chart.png")
    picture(200, 150, seed=3).save(root / "query-chart.png")  # the same picture, as an image query
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "quarterly revenue by region"},
        {"_id": "q2", "image": "query-chart.png"},
        {"_id": "q3", "text": "glacier sediment"},
        {"_id": "q4", "text": "never judged"},
    ]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels_lines = qrels_lines if qrels_lines is not None else [
        "q1\treport.pdf#2\t2", "q1\tsub/memo.pdf\t1", "q2\tchart.png\t1", "q3\treport.pdf#3\t1", "q3\tchart.png\t0"]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")
    return root


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """The dataset and an index of its corpus (tiny model), shared by the tests that only read them."""
    root = write_beir(tmp_path_factory.mktemp("beir") / "ds")
    ds = load_dataset(root)
    path = tmp_path_factory.mktemp("beir-index") / "idx"
    with Engine.create(path, model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        report = eng.add(ds.corpus_paths())
        assert report.failed == [] and report.pages == 6
    return dict(root=root, ds=ds, index=path)


def test_load_beir_folder(beir):
    ds = beir["ds"]
    assert [q.id for q in ds.queries] == ["q1", "q2", "q3"] and ds.skipped == 1  # q4 has no judgement
    assert ds.queries[1].image == str(beir["root"] / "query-chart.png") and ds.queries[0].text.startswith("quarterly")
    assert ds.qrels["q1"] == {"report.pdf#2": 2, "sub/memo.pdf": 1}
    assert ds.corpus_paths() == [str(beir["root"] / "corpus")]
    corpus = beir["root"] / "corpus"
    assert ds.document_corpus_id(str(corpus / "sub" / "memo.pdf")) == "sub/memo.pdf"
    assert ds.document_corpus_id("/elsewhere/memo.pdf") is None


def test_run_ids_match_pages_and_whole_files(beir):
    """A hit on page p matches file#p; where the qrels name the whole file, its pages count once."""
    ds, corpus = beir["ds"], str(beir["root"] / "corpus")
    memo, report = os.path.join(corpus, "sub", "memo.pdf"), os.path.join(corpus, "report.pdf")
    rel = ds.qrels["q1"]
    assert ds.run_id(report, 2, rel) == "report.pdf#2" and ds.run_id(report, 1, rel) == "report.pdf#1"
    assert ds.run_id(memo, 1, rel) == ds.run_id(memo, 2, rel) == "sub/memo.pdf"
    assert ds.run_id(memo, 2, ds.qrels["q3"]) == "sub/memo.pdf#2"  # not judged as a whole for q3

    from jevsearch.eval.runner import _ranked
    from jevsearch.index import Hit

    hits = [Hit(memo, 2, 9.0), Hit(report, 1, 8.0), Hit(memo, 1, 7.0), Hit(report, 2, 6.0)]
    assert _ranked(ds, hits, rel) == ["sub/memo.pdf", "report.pdf#1", "report.pdf#2"]


# ----- metrics --------------------------------------------------------------------------------------
def test_metrics_equal_a_hand_computed_case():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"c": 1}, "q3": {"d": 1}}
    run = {"q1": ["x", "a", "b"], "q2": [f"n{i}" for i in range(10)] + ["c"], "q3": []}
    got = metrics.compute(qrels, run, k=10)
    # q1: gains 0, 1, 2 at ranks 1-3; ideal 2, 1. q2: its relevant page at rank 11. q3: nothing returned.
    ndcg_q1 = (1 / math.log2(3) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    ndcg10_q2 = 0.0
    assert got["nDCG@5"] == pytest.approx((ndcg_q1 + 0 + 0) / 3, abs=1e-12)
    assert got["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg10_q2 + 0) / 3, abs=1e-12)
    assert got["recall@10"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["MRR@10"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # q2's hit at rank 11 is past the cutoff
    assert list(got) == ["nDCG@5", "nDCG@10", "recall@10", "recall@100", "MRR@10"]


def test_metrics_keep_our_order_for_tied_ranks():
    """trec_eval sorts by score then document id; the ranks we hand it keep our order whatever the ids."""
    qrels = {"q": {"a": 1}}
    assert metrics.compute(qrels, {"q": ["z", "a"]}, k=10)["MRR@10"] == 0.5
    assert metrics.compute(qrels, {"q": ["a", "z"]}, k=10)["MRR@10"] == 1.0


def _direct(qrels, run, k):
    """The textbook definitions, written out: linear gains, log2(rank + 1) discounts."""
    out = {m: [] for m in metrics.names(k)}
    for q, rel in qrels.items():
        ranked = run.get(q, [])
        gains = [rel.get(c, 0) for c in ranked]

        def ndcg(cut):
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:cut]))
            ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:cut]
            return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))

        n_rel = sum(1 for g in rel.values() if g > 0)
        out["nDCG@5"].append(ndcg(5))
        out[f"nDCG@{k}"].append(ndcg(k))
        out[f"recall@{k}"].append(sum(1 for g in gains[:k] if g > 0) / n_rel)
        out["recall@100"].append(sum(1 for g in gains[:100] if g > 0) / n_rel)
        first = next((i for i, g in enumerate(gains[:k]) if g > 0), None)
        out[f"MRR@{k}"].append(0.0 if first is None else 1 / (first + 1))
    return {m: float(np.mean(v)) for m, v in out.items()}


@pytest.mark.parametrize("k", [10, 3])
def test_library_metrics_equal_a_direct_computation_on_random_runs(k):
    rng = np.random.default_rng(k)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.choice(docs, size=int(rng.integers(1, 8)), replace=False)
        qrels[f"q{q}"] = {d: int(rng.integers(0, 4)) for d in judged}
        qrels[f"q{q}"][judged[0]] = int(rng.integers(1, 4))  # at least one relevant
        run[f"q{q}"] = list(rng.choice(docs, size=int(rng.integers(0, 150)), replace=False))
    got, want = metrics.compute(qrels, run, k), _direct(qrels, run, k)
    assert got.keys() == want.keys()
    for m in got:
        assert got[m] == pytest.approx(want[m], abs=1e-9), m


# ----- evaluate on the real index ------------------------------------------------------------------
def test_every_setting_runs_and_known_answers_hold(beir):
    ds = beir["ds"]
    with Engine.open(beir["index"], readonly=True) as eng:
        settings = [*DEFAULT_SETTINGS, {"candidates": 3, "label": "three"}, {"candidates": 6, "exhaustive": False}]
        report = evaluate(eng, ds, k=5, settings=settings)
        rows = {r["setting"]: r for r in report.rows}
        assert list(rows) == ["single@64 hnsw", "single@64 exact", "two-stage c=20", "two-stage c=50",
                              "two-stage c=100", "two-stage c=200", "exhaustive", "three", "two-stage c=6"]
        assert report.metric_names == ["nDCG@5", "recall@5", "recall@100", "MRR@5"]  # k=5: nDCG@5 once
        for r in report.rows:
            assert all(0 <= v <= 1 for v in r["metrics"].values())
            assert r["latency_ms"]["n"] == 3 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"]
        assert report.encode_ms["n"] == 3 and report.index["pages"] == 6

        # Every page is among 100 candidates here, so c=100 is exhaustive MaxSim: equal rows.
        assert rows["two-stage c=100"]["metrics"] == rows["exhaustive"]["metrics"]
        # The row equals the metrics of the engine's own search, mapped by hand.
        run = {}
        for q in ds.queries:
            query = Image.open(q.image) if q.image else q.text
            run[q.id] = _ranked_by_hand(eng.search(query, k=100, mode="visual"), beir["root"] / "corpus",
                                        ds.qrels[q.id])
        assert metrics.compute(ds.qrels, run, 5) == pytest.approx(rows["two-stage c=100"]["metrics"])

        # The image query is the indexed chart itself: first in every setting (reciprocal rank 1).
        for r in report.rows:
            assert r["per_query"]["q2"]["MRR@5"] == 1.0, r["setting"]
            assert r["metrics"]["MRR@5"] == pytest.approx(np.mean([v["MRR@5"] for v in r["per_query"].values()]))


def _ranked_by_hand(hits, corpus, relevant):
    out = []
    for h in hits:
        rel = os.path.relpath(h.doc_id, corpus)
        cid = f"{rel}#{h.page}"
        if cid not in relevant and rel in relevant:
            cid = rel
        if cid not in out:
            out.append(cid)
    return out


# ----- Index.search_singles -------------------------------------------------------------------------
def test_search_singles_hnsw_and_exact(tmp_path):
    """exact=True equals a brute-force scan of the full singles; exact=False is the HNSW stage 1 with
    truncated inner products as scores; deleted documents never appear."""
    rng = np.random.default_rng(0)
    with Index.create(tmp_path / "i", single_dim=16) as idx:
        docs = {f"doc{i}": make_doc(i, pages=4) for i in range(30)}
        for doc_id, (singles, multis) in docs.items():
            idx.add_embeddings(doc_id, singles, multis)
        idx.delete("doc7")
        live = [(d, p + 1, s[p]) for d, (s, _) in docs.items() if d != "doc7" for p in range(len(s))]
        # As stored: float16 singles in the default layout (format 3).
        full = np.stack([v for _, _, v in live]).astype(idx.manifest["single_dtype"]).astype(np.float32)
        qs = unit(rng, 3, full.shape[1])
        exact = idx.search_singles(qs, k=5, exact=True)
        for q, hits in zip(qs, exact):
            order = np.argsort(-(full @ q), kind="stable")[:5]
            assert [(h.doc_id, h.page) for h in hits] == [live[i][:2] for i in order]
            assert [h.score for h in hits] == pytest.approx((full @ q)[order], abs=1e-5)
        trunc = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
        for q, hits in zip(qs, idx.search_singles(qs, k=5)):
            qt = q[:16] / np.linalg.norm(q[:16])
            best = {live[i][:2] for i in np.argsort(-(trunc @ qt))[:5]}
            assert len(best & {(h.doc_id, h.page) for h in hits}) >= 4  # an HNSW: near-exact at this size
            want = {live[i][:2]: (trunc @ qt)[i] for i in range(len(live))}
            assert [h.score for h in hits] == pytest.approx([want[(h.doc_id, h.page)] for h in hits], abs=1e-5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        one = idx.search_singles(qs[0], k=2)
        assert isinstance(one[0].score, float) and len(one) == 2
        with pytest.raises(InvalidInputError, match="stored singles have 256"):
            idx.search_singles(qs[0][:64] / np.linalg.norm(qs[0][:64]), exact=True)
        with pytest.raises(InvalidInputError, match="k"):
            idx.search_singles(qs[0], k=0)


# ----- a dataset of embeddings over an index's own document ids ------------------------------------
@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A bring-your-own-embeddings index (no model) and queries built near known pages."""
    path = tmp_path_factory.mktemp("emb") / "idx"
    docs = {f"doc{i}.pdf": make_doc(i, pages=3) for i in range(40)}
    with Index.create(path, single_dim=32) as idx:
        idx.add_embeddings_many([(d, s, m) for d, (s, m) in docs.items()])
    queries, qrels = [], {}
    for i in range(12):
        doc = f"doc{i * 3}.pdf"
        s, m = docs[doc]
        qs, qm = query_for(m, s, i % 3, seed=i)
        queries.append(Query(f"q{i}", single=qs, multi=qm))
        qrels[f"q{i}"] = {f"{doc}#{i % 3 + 1}": 2, doc: 0} if i % 2 else {doc: 1}
    return dict(path=path, queries=queries, qrels=qrels)


def test_evaluate_embeddings_dataset_with_an_index(embedded):
    ds = Dataset(embedded["queries"], embedded["qrels"])
    with Index.open(embedded["path"], readonly=True) as idx:
        report = evaluate(idx, ds, k=10, settings=[{"candidates": 10}, {"exhaustive": True}, {"mode": "single"}])
    rows = {r["setting"]: r["metrics"] for r in report.rows}
    # Queries are noisy copies of their page's tokens: exact MaxSim finds every one first.
    assert rows["exhaustive"] == {"nDCG@5": 1.0, "nDCG@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "MRR@10": 1.0}
    assert report.encode_ms is None and report.queries == 12


def test_embeddings_dataset_errors(embedded):
    q = embedded["queries"][0]
    with Index.open(embedded["path"], readonly=True) as idx:
        with pytest.raises(DatasetError, match="'nope.pdf' is not a document of the index"):
            evaluate(idx, Dataset([q], {q.id: {"nope.pdf": 1}}), settings=[{"exhaustive": True}])
        with pytest.raises(DatasetError, match="'doc0.pdf#4'.*has 3 pages"):
            evaluate(idx, Dataset([q], {q.id: {"doc0.pdf#4": 1}}), settings=[{"exhaustive": True}])
        with pytest.raises(InvalidInputError, match="needs a model"):
            evaluate(idx, Dataset([Query("t", text="words")], {"t": {"doc0.pdf": 1}}))
    with pytest.raises(DatasetError, match="grade 0.5"):
        Dataset([q], {q.id: {"doc0.pdf": 0.5}})
    with pytest.raises(DatasetError, match="given twice"):
        Dataset([q, q], {q.id: {"doc0.pdf": 1}})


@pytest.mark.parametrize("setting, match", [
    ({"candidate": 50}, "'candidate' is not a search_embeddings option"),
    ({"exact": True}, "exact=True goes with mode 'single'"),
    ({"mode": "multi"}, "mode 'multi'"),
    ({"mode": "single", "candidates": 5}, "with mode 'single'"),
    ("candidates=5", "is not a dict"),
    ({"label": 3}, "label 3"),
])
def test_bad_settings_are_refused_before_any_search(embedded, setting, match):
    ds = Dataset(embedded["queries"], embedded["qrels"])
    with Index.open(embedded["path"], readonly=True) as idx:
        with pytest.raises(InvalidInputError, match=match):
            evaluate(idx, ds, settings=[{"candidates": 10}, setting])


def test_repeated_labels_and_bad_k_are_refused(embedded):
    ds = Dataset(embedded["queries"], embedded["qrels"])
    with Index.open(embedded["path"], readonly=True) as idx:
        with pytest.raises(InvalidInputError, match="repeated label"):
            evaluate(idx, ds, settings=[{"candidates": 10}, {"candidates": 10}])
        with pytest.raises(InvalidInputError, match="k: 0"):
            evaluate(idx, ds, k=0)
        with pytest.raises(InvalidInputError, match="settings: empty"):
            evaluate(idx, ds, settings=[])


# ----- bad BEIR-style datasets: each a clear error -------------------------------------------------
def _break(root, case):
    if case == "no folder":
        return root / "absent"
    write_beir(root)
    edits = {
        "nothing": lambda: [os.remove(root / "queries.jsonl")],
        "no qrels": lambda: [os.remove(root / "qrels" / "test.tsv")],
        "no corpus": lambda: [os.rename(root / "corpus", root / "docs")],
        "bad json": lambda: [(root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2",\n')],
        "no id": lambda: [(root / "queries.jsonl").write_text('{"text": "a"}\n')],
        "no image": lambda: [(root / "queries.jsonl").write_text('{"_id": "q1", "image": "nope.png"}\n')],
        "no text": lambda: [(root / "queries.jsonl").write_text('{"_id": "q1", "text": "  "}\n')],
        "twice": lambda: [(root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n' * 2)],
        "empty queries": lambda: [(root / "queries.jsonl").write_text("")],
    }
    qrels = {
        "unknown query": ["q9\tchart.png\t1"],
        "unknown doc": ["q1\tmissing.pdf\t1"],
        "page of an image": ["q1\tchart.png#1\t1"],
        "page out of range": ["q1\treport.pdf#4\t1"],
        "page zero": ["q1\treport.pdf#0\t1"],
        "two fields": ["q1\tchart.png"],
        "fraction": ["q1\tchart.png\t0.5"],
        "judged twice": ["q1\tchart.png\t1", "q1\tchart.png\t2"],
        "no positive": ["q1\tchart.png\t0", "q2\treport.pdf\t0"],
    }
    if case in edits:
        edits[case]()
    else:
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels[case]) + "\n")
    return root


@pytest.mark.parametrize("case, match", [
    ("no folder", "absent: no such folder"),
    ("nothing", "neither queries.jsonl nor Parquet files"),
    ("no qrels", r"qrels/test.tsv: missing \(hint"),
    ("no corpus", r"corpus: missing folder"),
    ("bad json", r"queries.jsonl:2: not JSON"),
    ("no id", 'queries.jsonl:1: no "_id"'),
    ("no image", r"image 'nope.png': no such file \(hint: image paths are relative"),
    ("no text", 'no "text" and no "image"'),
    ("twice", "query id 'q1' given twice"),
    ("empty queries", "qrels name query 'q1', which is not among the 0 queries"),
    ("unknown query", "qrels name query 'q9'"),
    ("unknown doc", "name 'missing.pdf', which is not in the corpus"),
    ("page of an image", "name 'chart.png#1', which is not in the corpus"),
    ("page out of range", r"'report.pdf#4', but report.pdf has 3 pages \(hint: pages count from 1\)"),
    ("page zero", "'report.pdf#0', but report.pdf has 3 pages"),
    ("two fields", r"test.tsv:2: 'q1\\tchart.png' is not query-id<TAB>corpus-id<TAB>integer score"),
    ("fraction", "test.tsv:2: .* is not query-id"),
    ("judged twice", "test.tsv:3: query 'q1' and 'chart.png' judged twice"),
    ("no positive", r"no query with a relevant document \(4 queries, 2 judged\)"),
])
def test_bad_dataset_gives_a_clear_error(tmp_path, case, match):
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(_break(tmp_path / "ds", case))
    assert "(hint: " in str(info.value)


def test_index_without_the_corpus_is_refused(beir, embedded):
    with Index.open(embedded["path"], readonly=True) as idx:
        with pytest.raises(DatasetError, match="holds none of the 3 judged documents"):
            evaluate(idx, beir["ds"])


def test_missing_optional_packages_say_how_to_install(beir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytrec_eval", None)  # what an environment without the extra sees
    with pytest.raises(MissingDependencyError, match=r"pytrec_eval.*\(hint: pip install 'jevsearch\[eval\]'\)"):
        metrics.compute({"q": {"a": 1}}, {"q": ["a"]}, k=10)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "vd").mkdir()
    (tmp_path / "vd" / "test.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingDependencyError, match="pyarrow"):
        load_dataset(tmp_path / "vd")


# ----- ViDoRe Parquet layouts ----------------------------------------------------------------------
def _image_cell(img: Image.Image, fmt: str = "PNG") -> dict:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return {"bytes": buf.getvalue(), "path": None}


def _write_parquet(path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("dash", [True, False], ids=["v1-v2 corpus-id", "v3 corpus_id"])
def test_vidore_beir_parquet(tmp_path, dash):
    root = tmp_path / "vidore"
    cid, qid = ("corpus-id", "query-id") if dash else ("corpus_id", "query_id")
    pages = [picture(180, 240, seed=s) for s in range(4)]
    _write_parquet(root / "corpus" / "test-00000-of-00001.parquet", {
        cid: [100, 101, 102, 103], "image": [_image_cell(p, "JPEG" if i == 1 else "PNG") for i, p in enumerate(pages)],
        "doc-id": ["a", "a", "b", "b"]})
    _write_parquet(root / "queries" / "test-00000-of-00001.parquet",
                   {qid: [7, 8, 9], "query": ["solar panel output", "board members", "water usage"]})
    _write_parquet(root / "qrels" / "test-00000-of-00001.parquet",
                   {qid: [7, 7, 8], cid: [101, 103, 100], "score": [2, 1, 1]})
    ds = load_dataset(root)
    assert [q.id for q in ds.queries] == ["7", "8"] and ds.skipped == 1
    assert ds.qrels == {"7": {"101": 2, "103": 1}, "8": {"100": 1}}
    assert not (root / "jevsearch-corpus").exists()  # images are written only when indexing
    (folder,) = ds.corpus_paths()
    assert sorted(os.listdir(folder)) == ["100.png", "101.jpg", "102.png", "103.png"]
    assert Image.open(os.path.join(folder, "101.jpg")).format == "JPEG"
    before = os.stat(os.path.join(folder, "100.png")).st_mtime_ns
    assert load_dataset(root).corpus_paths() == [folder]  # written once
    assert os.stat(os.path.join(folder, "100.png")).st_mtime_ns == before
    assert ds.document_corpus_id(os.path.join(folder, "101.jpg")) == "101"

    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        assert eng.add(ds.corpus_paths()).pages == 4
        report = evaluate(eng, ds, settings=[{"exhaustive": True}, {"mode": "single", "exact": True}])
    assert [r["latency_ms"]["n"] for r in report.rows] == [2, 2]
    assert all(r["metrics"]["recall@100"] == 1.0 for r in report.rows)  # 4 pages: every one is returned


def test_vidore_qa_parquet(tmp_path):
    root = tmp_path / "docvqa"
    rows = [("what is the total?", 0, "img/a.png"), (None, 1, "img/b.png"), ("what is the total?", 2, "c.jpg"),
            ("who signed?", 0, "img/a.png")]
    _write_parquet(root / "data" / "test-00000-of-00001.parquet", {
        "query": [r[0] for r in rows], "image": [_image_cell(picture(seed=r[1])) for r in rows],
        "image_filename": [r[2] for r in rows], "answer": ["12", None, "12", "Bob"]})
    ds = load_dataset(root)
    assert [(q.id, q.text) for q in ds.queries] == [("q0", "what is the total?"), ("q1", "who signed?")]
    assert ds.qrels == {"q0": {"img/a.png": 1, "c.jpg": 1}, "q1": {"img/a.png": 1}}
    (folder,) = ds.corpus_paths()
    assert sorted(os.listdir(folder)) == ["c.png", "img_a.png", "img_b.png"]
    assert ds.document_corpus_id(os.path.join(folder, "img_a.png")) == "img/a.png"


def test_vidore_bad_parquet(tmp_path):
    _write_parquet(tmp_path / "a" / "data" / "test.parquet", {"query": ["x"], "image": [_image_cell(picture())]})
    with pytest.raises(DatasetError, match=r"no column 'image_filename' \(it has: image, query\)"):
        load_dataset(tmp_path / "a")
    root = tmp_path / "b"
    _write_parquet(root / "corpus" / "test.parquet", {"corpus-id": [1], "image": [_image_cell(picture())]})
    _write_parquet(root / "queries" / "test.parquet", {"query-id": [1], "query": ["x"]})
    _write_parquet(root / "qrels" / "test.parquet", {"query-id": [1], "corpus-id": [2], "score": [1]})
    with pytest.raises(DatasetError, match="name '2', which is not in the corpus"):
        load_dataset(root)


# ----- report, plot and the command -----------------------------------------------------------------
def test_report_json_table_and_plot(beir, tmp_path):
    with Engine.open(beir["index"], readonly=True) as eng:
        report = evaluate(eng, beir["ds"], settings=[{"mode": "single"}, {"candidates": 2}, {"candidates": 4},
                                                      {"exhaustive": True}])
    paths = report.save(tmp_path / "out")
    assert [os.path.basename(p) for p in paths] == ["report.json", "quality_vs_latency.png"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert [r["setting"] for r in saved["rows"]] == ["single@64 hnsw", "two-stage c=2", "two-stage c=4", "exhaustive"]
    lines = report.table().splitlines()
    assert lines[0].split() == ["setting", "nDCG@5", "nDCG@10", "recall@10", "recall@100", "MRR@10", "p50", "ms",
                                "p95", "ms"]
    assert lines[2].startswith("two-stage c=2 ") and "3 queries (1 without a relevant document skipped)" in lines[-1]

    png = (tmp_path / "out" / "quality_vs_latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG" and img.size == (900, 576)
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50 and (pixels.sum(axis=1) < 300).mean() > 0.005  # drawn, not blank


def _report(points):
    from jevsearch.eval.report import EvalReport

    rows = [{"setting": name, "params": params, "metrics": {"nDCG@5": ndcg},
             "latency_ms": {"p50": ms, "p95": ms, "mean": ms, "n": 3}} for name, params, ms, ndcg in points]
    return EvalReport(rows=rows, metric_names=["nDCG@5"], k=10, depth=100, queries=3, dataset="d")


@pytest.mark.parametrize("curve_ms, drawn", [((3.1, 3.3, 3.6), False), ((2.0, 5.0, 12.0), True)])
def test_plot_keeps_labels_inside_and_its_legend_shows_only_drawn_lines(curve_ms, drawn):
    """The two-stage curve at one nDCG and near-equal latencies hides under its markers: neither it nor
    its legend entry is drawn. The rightmost point's long label stays inside the figure."""
    points = [("single-vector", {"mode": "single"}, 0.9, 0.6)]
    points += [(f"two-stage c={c}", {"candidates": c}, ms, 0.7 if not drawn else 0.6 + c / 1000)
               for c, ms in zip((20, 50, 100), curve_ms)]
    points.append(("exhaustive MaxSim over every page", {"exhaustive": True}, 48.0, 0.71))
    fig = _report(points).figure()
    ax = fig.axes[0]
    assert (len(ax.lines) == 1) == drawn and (ax.get_legend() is not None) == drawn
    if drawn:
        assert [h.get_linestyle() for h in ax.get_legend().legend_handles] == [ax.lines[0].get_linestyle()]
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text.get_text()


def test_command_indexes_an_empty_index_then_reuses_it(tmp_path, capsys):
    """Through cli.main, the code the console script runs (test_cli.py runs the console itself)."""
    from jevsearch.cli import main
    from tests.ingest_corpus import make_fake_pdf, tiny_model_dir

    root = write_beir(tmp_path / "ds")
    make_fake_pdf(root / "corpus" / "broken.pdf")
    code = main(["eval", str(root), "--index", str(tmp_path / "idx"), "--model", tiny_model_dir(),
                 "--out", str(tmp_path / "rep"), "-k", "5", "--candidates", "2,4"])
    out, err = capsys.readouterr()
    assert code == 3, err  # broken.pdf could not be indexed; the rest was evaluated
    assert "failed: " in err and "broken.pdf" in err and "%|" not in err  # no progress bar off a terminal
    table = out.splitlines()
    assert table[0].split()[:4] == ["setting", "nDCG@5", "recall@5", "recall@100"]
    assert [line.split("  ")[0] for line in table[1:6]] == ["single@64 hnsw", "single@64 exact", "two-stage c=2",
                                                            "two-stage c=4", "exhaustive"]
    assert out.rstrip().endswith("quality_vs_latency.png") and "wrote " in out
    assert sorted(os.listdir(tmp_path / "rep")) == ["quality_vs_latency.png", "report.json"]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    from jevsearch.model.cpu import default_cpu_dtype

    default = str(default_cpu_dtype()).removeprefix("torch.")  # measured: float32 or bfloat16
    assert report["index"]["pages"] == 6 and report["index"]["model_dtype"] == default
    assert f"model in {default}" in out

    # The index is no longer empty: the second run only reads it (it works while a writer holds it).
    with Engine.open(tmp_path / "idx"):
        code = main(["eval", str(root), "--index", str(tmp_path / "idx"), "--out", str(tmp_path / "rep2"), "-q",
                     "--dtype", "int8"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("setting") and "wrote" not in out and "model in int8" in out
    report = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert report["index"]["pages"] == 6 and report["index"]["model_dtype"] == "int8"
    assert main(["eval", str(tmp_path / "nowhere"), "--index", str(tmp_path / "idx")]) == 1
    assert "nowhere: no such folder" in capsys.readouterr().err
