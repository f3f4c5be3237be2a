"""Metadata filters, update_metadata, and document-level results on a synthetic index.

Every operator is checked against a brute-force oracle written here (a per-document Python predicate
over the metadata the index returns) and an exact filtered two-stage search computed with numpy from
the embeddings the test added: both stage-1 paths (HNSW with an ID selector, exact scan) must give
exactly its results.
"""

from __future__ import annotations

import math
import os

import faiss
import numpy as np
import pytest
from _store_child import D, make_doc, unit

import jevsearch
from jevsearch import CorruptIndexError, DocHit, Index, InvalidInputError, ShardedEngine
from jevsearch.scale import is_sharded, route
from jevsearch.search.filters import parse
from jevsearch.store import subset
from jevsearch.store.lmdbstore import PageStore

DIM = 64
SHARDS = 3
KINDS = ("one", "sharded")  # every search test runs on one index and on a sharded one of the same documents


def create(kind: str, path, **options):
    """A new writable index: one Index, or a ShardedEngine of SHARDS shards."""
    return Index.create(path, **options) if kind == "one" else ShardedEngine.create(path, shards=SHARDS, **options)
TEAMS = ["fin", "ops", "legal", "hr", "eng"]


def random_meta(rng: np.random.Generator) -> dict:
    m = {}
    if rng.random() < 0.9:
        m["team"] = str(rng.choice(TEAMS))
    if rng.random() < 0.85:
        m["year"] = int(rng.integers(2015, 2026))
    elif rng.random() < 0.5:
        m["year"] = str(int(rng.integers(2015, 2026)))  # a string: never equal to a number
    if rng.random() < 0.5:
        m["score"] = round(float(rng.normal()), 3)
    if rng.random() < 0.7:
        m["draft"] = bool(rng.random() < 0.5)
    if rng.random() < 0.6:
        m["tags"] = sorted({str(t) for t in rng.choice(list("abcd"), size=int(rng.integers(0, 4)))})
    if rng.random() < 0.6:
        m["date"] = f"20{int(rng.integers(18, 26))}-{int(rng.integers(1, 13)):02d}-01"
    if rng.random() < 0.1:
        m["team"] = None  # null: not filterable
    if rng.random() < 0.1:
        m["extra"] = {"nested": 1}
    return m


def doc_name(i: int, rng: np.random.Generator) -> str:
    return f"/data/{rng.choice(['reports', 'notes'])}/{rng.choice(['2023', '2024'])}/doc{i:03d}.{rng.choice(['pdf', 'md'])}"


# ----- the oracle ----------------------------------------------------------------------------------
def _kind(v):
    return "b" if isinstance(v, bool) else "s" if isinstance(v, str) else "n"


def _values(doc: dict, name: str) -> list:
    if name in ("doc_id", "path"):
        return [doc["doc_id"]]
    if name == "name":
        return [os.path.basename(doc["doc_id"])]
    if name == "pages":
        return [doc["pages"]]
    v = doc["metadata"].get(name)
    return [x for x in (v if isinstance(v, list) else [v])
            if isinstance(x, (str, bool, int, float)) and not (isinstance(x, float) and not math.isfinite(x))]


GLOBS = {  # pattern -> what it must match, said in plain Python
    "reports/2024/**": lambda p: "/reports/2024/" in p,
    "*.md": lambda p: p.endswith(".md"),
    "/data/notes/*/doc0?0.pdf": lambda p: p.startswith("/data/notes/") and p.count("/") == 4
    and p.endswith("0.pdf") and os.path.basename(p)[:4] == "doc0" and len(os.path.basename(p)) == 10,
    "/data/**/doc00*": lambda p: os.path.basename(p).startswith("doc00"),
}


def oracle(where: dict, doc: dict) -> bool:
    for key, spec in where.items():
        if key == "$and":
            ok = all(oracle(w, doc) for w in spec)
        elif key == "$or":
            ok = any(oracle(w, doc) for w in spec)
        else:
            vals = _values(doc, key)
            ok = all(_field_ok(vals, op, arg) for op, arg in (spec if isinstance(spec, dict) else {"$eq": spec}).items())
        if not ok:
            return False
    return True


def _field_ok(vals: list, op: str, arg) -> bool:
    def eq(a):
        return any(_kind(v) == _kind(a) and v == a for v in vals)

    cmp = {"$gt": lambda v: v > arg, "$gte": lambda v: v >= arg, "$lt": lambda v: v < arg, "$lte": lambda v: v <= arg}
    if op == "$eq":
        return eq(arg)
    if op == "$ne":
        return not eq(arg)
    if op == "$in":
        return any(eq(a) for a in arg)
    if op == "$nin":
        return not any(eq(a) for a in arg)
    if op in cmp:
        return any(_kind(v) == _kind(arg) and cmp[op](v) for v in vals)
    if op == "$glob":
        return any(isinstance(v, str) and GLOBS[arg](v) for v in vals)
    if op == "$exists":
        return bool(vals) == arg
    raise AssertionError(op)


# ----- the exact filtered two-stage reference ------------------------------------------------------
def _t(x):
    x = np.asarray(x, np.float64)[..., :DIM]
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(corpus: dict, docs: dict, qs, qm, where, k, candidates=None):
    """Exact filtered search over the test's own embeddings (as the index stores them: truncated
    singles in float16, multi-vectors in float16). candidates=None: exhaustive MaxSim."""
    pages = [(d, p) for d, info in docs.items() if where is None or oracle(where, info)
             for p in range(info["pages"])]
    if candidates is not None and len(pages) > candidates:
        s1 = [float(_t(corpus[d][0][p]).astype(np.float16).astype(np.float64) @ _t(qs)) for d, p in pages]
        pages = [pages[i] for i in np.argsort(s1)[::-1][:candidates]]
    q = qm / np.linalg.norm(qm, axis=1, keepdims=True)
    scored = [(float((q @ corpus[d][1][p].astype(np.float16).astype(np.float64).T).max(axis=1).sum()), d, p + 1)
              for d, p in pages]
    scored.sort(key=lambda x: (-x[0], x[1], x[2]))
    return scored[:k]


def index_reference(path, corpus: dict, docs: dict, qs, qm, where, k, candidates):
    """The exact two-stage reference of the index at ``path``: a sharded one takes ``candidates`` in
    each shard (its own documents) and merges the shards' top k."""
    if not is_sharded(path):
        return reference(corpus, docs, qs, qm, where, k, candidates)
    parts = [reference(corpus, {d: v for d, v in docs.items() if route(d, SHARDS) == i}, qs, qm, where, k, candidates)
             for i in range(SHARDS)]
    return sorted((x for part in parts for x in part), key=lambda x: (-x[0], x[1], x[2]))[:k]


@pytest.fixture(scope="module", params=KINDS)
def built(tmp_path_factory, request):
    """60 documents of 1-8 pages with random metadata, in one index or a sharded one; the embeddings
    kept for the reference."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("filters") / "idx"
    corpus, docs = {}, {}
    # stage1="single": the reference below is the singles' exact two-stage search
    with create(request.param, path, single_dim=DIM, hnsw_m=32, stage1="single") as eng:
        for i in range(60):
            name = doc_name(i, rng)
            singles, multis = make_doc(1000 + i, int(rng.integers(1, 9)), tokens=(8, 24))
            corpus[name] = (singles, multis)
            eng.add_embeddings(name, singles, multis, metadata=random_meta(rng))
        docs = {d: eng.document(d) for d in eng.documents()}
    return path, corpus, docs


def queries(corpus, n=3, seed=0):
    rng = np.random.default_rng(seed)
    names = sorted(corpus)
    out = []
    for _ in range(n):
        singles, multis = corpus[names[int(rng.integers(len(names)))]]
        p = int(rng.integers(len(multis)))
        qm = multis[p][rng.choice(len(multis[p]), 6, replace=False)] + 0.3 * unit(rng, 6, 128)
        qs = singles[p] + 0.3 * unit(rng, D)
        out.append((qs / np.linalg.norm(qs), qm / np.linalg.norm(qm, axis=1, keepdims=True)))
    return out


FILTERS = [
    {"team": "fin"},
    {"team": {"$eq": "ops"}},
    {"team": {"$ne": "fin"}},
    {"team": {"$in": ["legal", "hr"]}},
    {"team": {"$nin": ["legal", "hr", "eng"]}},
    {"year": {"$gt": 2020}},
    {"year": {"$gte": 2020, "$lte": 2022}},
    {"year": {"$lt": 2018}},
    {"year": 2019},
    {"year": "2019"},
    {"score": {"$gt": 0.5}},
    {"draft": True},
    {"draft": {"$ne": True}},
    {"tags": "b"},
    {"tags": {"$nin": ["a", "c"]}},
    {"date": {"$gte": "2024-01-01"}},
    {"date": {"$lt": "2020"}},
    {"score": {"$exists": True}},
    {"team": {"$exists": False}},
    {"extra": {"$exists": True}},
    {"path": {"$glob": "reports/2024/**"}},
    {"name": {"$glob": "*.md"}},
    {"path": {"$glob": "/data/notes/*/doc0?0.pdf"}},
    {"doc_id": {"$glob": "/data/**/doc00*"}},
    {"pages": {"$gte": 6}},
    {"$or": [{"team": "fin", "draft": False}, {"year": {"$lt": 2017}}]},
    {"$and": [{"tags": {"$in": ["a", "d"]}}, {"$or": [{"year": {"$gte": 2022}}, {"team": "hr"}]}]},
    {"team": "nobody"},
]


@pytest.mark.parametrize("where", FILTERS, ids=[str(f) for f in FILTERS])
def test_every_operator_equals_an_exact_filtered_search(built, where, monkeypatch):
    path, corpus, docs = built
    matching = [d for d, info in docs.items() if oracle(where, info)]
    with jevsearch.open(path, read_only=True) as eng:
        for qs, qm in queries(corpus):
            want = reference(corpus, docs, qs, qm, where, k=10)
            got = eng.search_embeddings(qs, qm, k=10, exhaustive=True, where=where)
            assert [(h.doc_id, h.page) for h in got] == [(d, p) for _, d, p in want]
            assert [h.score for h in got] == pytest.approx([s for s, _, _ in want], abs=1e-4)
            want = [(d, p) for _, d, p in index_reference(path, corpus, docs, qs, qm, where, k=10, candidates=20)]
            for slot in (float("inf"), 0.0):  # every filter as an exact scan, then through the HNSW selector
                monkeypatch.setattr(subset, "WALK_SLOT_PAGES", slot)
                got = eng.search_embeddings(qs, qm, k=10, candidates=20, where=where)
                assert [(h.doc_id, h.page) for h in got] == want, slot
    assert all(h.doc_id in matching for h in got)


def test_selective_and_broad_filters_return_k(built, monkeypatch):
    path, corpus, docs = built
    names = sorted(docs)
    pages = lambda ids: sum(docs[d]["pages"] for d in ids)  # noqa: E731
    few = names[:4]  # a handful of pages: fewer than the candidates
    some = [d for d in names if docs[d]["pages"] >= 5][:6]  # more pages than k, few of the index's
    with jevsearch.open(path, read_only=True) as eng:
        (qs, qm), = queries(corpus, 1, seed=3)
        for ids in (few, some, names):
            for slot in (0.0, subset.WALK_SLOT_PAGES):
                monkeypatch.setattr(subset, "WALK_SLOT_PAGES", slot)
                for k in (5, 12):
                    hits = eng.search_embeddings(qs, qm, k=k, candidates=k, where={"doc_id": {"$in": ids}})
                    assert len(hits) == min(k, pages(ids))
                    assert {h.doc_id for h in hits} <= set(ids)
                    batch = eng.search_embeddings(np.stack([qs, qs]), [qm, qm[:3]], k=k, where={"doc_id": {"$in": ids}})
                    assert [len(b) for b in batch] == [min(k, pages(ids))] * 2
                    assert [(h.doc_id, h.page) for h in batch[0]] == \
                        [(h.doc_id, h.page) for h in eng.search_embeddings(qs, qm, k=k, where={"doc_id": {"$in": ids}})]


def test_a_selective_filter_never_starves_the_walk(tmp_path, monkeypatch):
    """A sparse graph, a narrow beam and 1.5% matching pages: the ID-selector walk meets too few of
    them, and stage 1 falls back to the exact scan rather than return fewer than k."""
    rng = np.random.default_rng(2)
    n = 2000
    singles = unit(rng, n, D)
    multis = [unit(rng, 8, 128) for _ in range(n)]
    with Index.create(tmp_path / "i", single_dim=DIM, hnsw_m=4, ef_construction=16, ef_search=8) as eng:
        eng.add_embeddings_many([(f"p{i}", singles[i:i + 1], multis[i:i + 1], {"rare": i % 67 == 0})
                                 for i in range(n)])
        monkeypatch.setattr(subset, "WALK_SLOT_PAGES", 0.0)  # the walk, whatever the selectivity,
        monkeypatch.setattr(subset, "MAX_WIDEN", 1.0)  # with a beam too narrow for 1.5 % of the pages
        (qs, qm), = queries({"x": (singles, multis)}, 1)
        hits = eng.search_embeddings(qs, qm, k=20, candidates=20, where={"rare": True})
        bits = np.zeros(n, dtype=bool)
        bits[::67] = True
        walk = eng._state.view.settle().search(_t(qs[None]).astype(np.float32), 20,
                                         exclude=faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little")))[0]
    assert len(hits) == 20 and all(int(h.doc_id[1:]) % 67 == 0 for h in hits)
    assert (walk >= 0).sum() < 20  # the walk alone starves: the fallback filled the results


def test_where_is_checked_where_it_enters(built):
    path, corpus, _ = built
    (qs, qm), = queries(corpus, 1)
    bad = {
        "unknown operator '\\$after'": {"year": {"$after": 1}},
        "unknown operator '\\$regex'": {"name": {"$regex": "x"}},
        "unknown operator '\\$not' at the top level": {"$not": {"year": 1}},
        r"\$gt: expected a number or a string, got bool": {"year": {"$gt": True}},
        r"\$in: expected a list": {"team": {"$in": "fin"}},
        "a list is not a value": {"tags": ["a", "b"]},
        "null is not a filterable value": {"team": None},
        "not a finite number": {"score": {"$lt": float("nan")}},
        "nested fields are not filterable": {"extra": {"nested": 1}},
        "expected true or false": {"team": {"$exists": 1}},
        r"\$or takes a non-empty list": {"$or": {"team": "fin"}},
        "expected a JSON object": "team=fin",
    }
    with jevsearch.open(path, read_only=True) as eng:
        for message, where in bad.items():
            with pytest.raises(InvalidInputError, match=message):
                eng.search_embeddings(qs, qm, k=3, where=where)
        with pytest.raises(InvalidInputError, match="group_by"):
            eng.search_embeddings(qs, qm, group_by="page")
        assert len(eng.search_embeddings(qs, qm, k=3, where={})) == 3  # no filter


def _metas(eng):
    return {d: eng.document(d) for d in eng.documents()}


@pytest.mark.parametrize("kind", KINDS)
def test_filters_follow_update_metadata_and_delete(tmp_path, kind):
    rng = np.random.default_rng(1)
    corpus = {f"d{i}": make_doc(i, 3, tokens=(8, 16)) for i in range(8)}
    (qs, qm), = queries(corpus, 1)
    with create(kind, tmp_path / "i", single_dim=DIM) as eng:
        for i, (name, (s, m)) in enumerate(corpus.items()):
            eng.add_embeddings(name, s, m, metadata={"team": "fin" if i < 4 else "ops", "n": i})
        reader = jevsearch.open(tmp_path / "i", read_only=True)
        try:
            fin = {"team": "fin"}
            assert {h.doc_id for h in reader.search_embeddings(qs, qm, k=50, where=fin)} == {"d0", "d1", "d2", "d3"}
            new = eng.update_metadata("d5", {"team": "fin", "status": "final"})
            assert new == {"team": "fin", "n": 5, "status": "final"}
            for who in (eng, reader):  # the writer's own view and a reader's, at their next search
                hits = who.search_embeddings(qs, qm, k=50, where=fin)
                assert {h.doc_id for h in hits} == {"d0", "d1", "d2", "d3", "d5"}
                assert all(h.metadata["team"] == "fin" for h in hits)
                assert {h.doc_id for h in who.search_embeddings(qs, qm, k=50, where={"status": "final"})} == {"d5"}
            assert eng.update_metadata("d5", {"team": "ops"}, merge=False) == {"team": "ops"}
            assert "d5" not in {h.doc_id for h in reader.search_embeddings(qs, qm, k=50, where=fin)}
            ids_before = {(h.doc_id, h.page): h.score for h in eng.search_embeddings(qs, qm, k=50, exhaustive=True)}
            assert eng.delete("d1")
            eng.add_embeddings("d9", *make_doc(99, 2, tokens=(8, 16)), metadata={"team": "fin"})
            for who in (eng, reader):  # a reader catches up without a reload: new records, tombstones
                assert {h.doc_id for h in who.search_embeddings(qs, qm, k=50, where=fin)} == {"d0", "d2", "d3", "d9"}
                after = {(h.doc_id, h.page): h.score for h in who.search_embeddings(qs, qm, k=50, exhaustive=True)}
                assert {key: after[key] for key in ids_before if key[0] != "d1"} == \
                    {key: s for key, s in ids_before.items() if key[0] != "d1"}  # nothing renumbered
            eng.compact()
            assert eng.verify()["documents"] == 8  # field records agree with the documents
            assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=50, where=fin)} == {"d0", "d2", "d3", "d9"}
            assert {h.doc_id for h in reader.search_embeddings(qs, qm, k=50, where={"n": {"$lt": 3}})} == {"d0", "d2"}
        finally:
            reader.close()
        with pytest.raises(InvalidInputError, match="not in the index"):
            eng.update_metadata("nope", {"a": 1})
        with pytest.raises(InvalidInputError, match="pages recorded by jevsearch"):
            eng.update_metadata("d0", {"pages": 4})
        with pytest.raises(InvalidInputError, match="metadata: expected a dict"):
            eng.update_metadata("d0", ["a"])
        del rng


@pytest.mark.parametrize("kind", KINDS)
def test_group_by_document(tmp_path, kind):
    corpus = {f"long{i}": make_doc(200 + i, 30, tokens=(8, 16)) for i in range(4)}
    corpus.update({f"short{i}": make_doc(300 + i, 1, tokens=(8, 16)) for i in range(12)})
    docs = {}
    with create(kind, tmp_path / "i", single_dim=DIM) as eng:
        for name, (s, m) in corpus.items():
            eng.add_embeddings(name, s, m, metadata={"long": name.startswith("long")})
        docs = _metas(eng)
        for qs, qm in queries({k: v for k, v in corpus.items() if k.startswith("long")}, 3, seed=5):
            pages = reference(corpus, docs, qs, qm, None, k=10**6)  # every page, exactly scored
            best: dict = {}
            for score, d, p in pages:
                best.setdefault(d, []).append((score, p))
            want = sorted(best, key=lambda d: (-best[d][0][0], d))[:6]
            got = eng.search_embeddings(qs, qm, k=6, exhaustive=True, group_by="document", pages_per_document=3)
            assert all(isinstance(h, DocHit) for h in got)
            assert [h.doc_id for h in got] == want
            for h in got:
                assert [p.page for p in h.pages] == [p for _, p in best[h.doc_id][:3]]
                assert h.score == pytest.approx(best[h.doc_id][0][0], abs=1e-4) == h.pages[0].score
                assert h.path == h.doc_id and h.metadata == docs[h.doc_id]["metadata"]
            # Two-stage: the first 6 candidates come from the long documents; stage 1 widens to fill 6.
            got = eng.search_embeddings(qs, qm, k=6, candidates=6, group_by="document", pages_per_document=2)
            assert len({h.doc_id for h in got}) == 6 and all(1 <= len(h.pages) <= 2 for h in got)
            assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
            got = eng.search_embeddings(qs, qm, k=20, group_by="document", where={"long": True})
            assert sorted(h.doc_id for h in got) == [f"long{i}" for i in range(4)]


def _numbered_index(path, docs: int):
    """An index of ``docs`` two-page documents d0, d1, ... with metadata {"i": their number}, closed;
    -> (the corpus, one query)."""
    corpus = {f"d{i}": make_doc(i, 2, tokens=(8, 16)) for i in range(docs)}
    with Index.create(path, single_dim=DIM) as eng:
        for i, (name, (s, m)) in enumerate(corpus.items()):
            eng.add_embeddings(name, s, m, metadata={"i": i})
    return corpus, queries(corpus, 1)[0]


def test_index_without_field_table_still_opens(tmp_path):
    """An index written before field records existed: readers compute them in memory, a writer
    builds the table once."""
    corpus, (qs, qm) = _numbered_index(tmp_path / "i", 5)
    store = PageStore(str(tmp_path / "i"))
    with store.write() as txn:  # make it look like an old index: no table, no flag
        txn.drop(store._db["fields"], delete=True)
        state = store.state(txn)
        del state["fields"]
        store.put_state(txn, state)
    store.close()
    want = {"d3", "d4"}
    with Index.open(tmp_path / "i", readonly=True) as eng:
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=9, where={"i": {"$gte": 3}})} == want
        assert eng.verify()["documents"] == 5
    with Index.open(tmp_path / "i") as eng:
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=9, where={"i": {"$gte": 3}})} == want
        eng.update_metadata("d0", {"i": 7})
    with Index.open(tmp_path / "i", readonly=True) as eng:
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=9, where={"i": {"$gte": 3}})} == want | {"d0"}
        assert eng.stats()["documents"] == 5
    store = PageStore(str(tmp_path / "i"))
    with store.read() as txn:  # the writer built the table, with a record per document
        state = store.state(txn)
        records = [rec for _, rec in store.iter_fields(txn)]
    store.close()
    assert state["fields"] == 1 and sorted(r["d"] for r in records) == sorted(corpus)
    assert next(r for r in records if r["d"] == "d0")["f"] == {"i": 7}


def test_glob_semantics():
    from jevsearch.search.filters import glob_regex

    cases = {
        "/data/**/x.pdf": (["/data/x.pdf", "/data/a/b/x.pdf"], ["/data/ax.pdf", "/other/x.pdf"]),
        "/data/*.pdf": (["/data/a.pdf"], ["/data/a/b.pdf", "/data/a.pdfx"]),
        "doc?.md": (["doc1.md", "/n/doc2.md"], ["doc12.md", "/n/xdoc1.md", "doc/.md"]),
        "reports/2024/**": (["/h/reports/2024/a.pdf", "reports/2024/q/b.md"], ["/h/reports/2023/a.pdf",
                                                                                "/h/myreports/2024/a.pdf"]),
        "[ab]*.txt": (["/n/a1.txt", "b.txt"], ["/n/c.txt"]),
        "[!ab]*.txt": (["/n/c.txt"], ["/n/a.txt"]),
        "a+b (1).pdf": (["/x/a+b (1).pdf"], ["/x/aab (1).pdf"]),
    }
    for pattern, (yes, no) in cases.items():
        rx = glob_regex(pattern)
        assert [p for p in yes if not rx.match(p)] == [] and [p for p in no if rx.match(p)] == [], pattern


def test_filter_parse_is_strict_about_types():
    assert parse(None) is None and parse({}) is None
    assert repr(parse({"a": 1, "b": {"$in": [1, "x", True]}})) == "Filter(and(eq(a, 1), in(b, (1, 'x', True))))"
    with pytest.raises(InvalidInputError, match="field name"):
        parse({"": 1})
    with pytest.raises(InvalidInputError, match="not a filterable type"):
        parse({"a": b"x"})


@pytest.mark.parametrize("kind", KINDS)
def test_filters_follow_rename_and_copy(tmp_path, kind):
    # /d35/: each old id and its new one route to the same one of 3 shards (a sharded index renames and
    # copies within a shard), and a.pdf and b.pdf to different ones.
    corpus = {f"/d35/{n}.pdf": make_doc(i, 2, tokens=(8, 16)) for i, n in enumerate("abc")}
    (qs, qm), = queries(corpus, 1)
    with create(kind, tmp_path / "i", single_dim=DIM) as eng, jevsearch.open(tmp_path / "i", read_only=True) as reader:
        for name, (s, m) in corpus.items():
            eng.add_embeddings(name, s, m, metadata={"team": "fin"})
        reader.search_embeddings(qs, qm, k=1)  # the reader's view is loaded before the changes
        eng.rename_document("/d35/a.pdf", "/d35/2024/z.pdf", metadata={"team": "ops"})
        assert eng.copy_document("/d35/b.pdf", "/d35/2024/b2.pdf") == 2
        for who in (eng, reader):
            assert {h.doc_id for h in who.search_embeddings(qs, qm, k=20, where={"path": {"$glob": "2024/*"}})} \
                == {"/d35/2024/z.pdf", "/d35/2024/b2.pdf"}
            assert {h.doc_id for h in who.search_embeddings(qs, qm, k=20, where={"team": "fin"})} == \
                {"/d35/b.pdf", "/d35/c.pdf", "/d35/2024/b2.pdf"}
            assert [h.doc_id for h in who.search_embeddings(qs, qm, k=20, where={"name": "z.pdf"})] == \
                ["/d35/2024/z.pdf"] * 2
        assert eng.verify()["documents"] == 4
        if kind == "sharded":  # across shards: refused, and nothing changed
            for call, dst in ((eng.rename_document, "/d35/2024/b2.pdf"), (eng.copy_document, "/d35/2024/c.pdf")):
                assert route("/d35/c.pdf", SHARDS) != route(dst, SHARDS)
                with pytest.raises(InvalidInputError, match="route to different shards.*hint: delete the document"):
                    call("/d35/c.pdf", dst)
            assert sorted(eng.documents()) == sorted(reader.documents()) and len(list(eng.documents())) == 4


def test_verify_finds_and_repairs_a_wrong_field_record(tmp_path):
    corpus, (qs, qm) = _numbered_index(tmp_path / "i", 3)
    store = PageStore(str(tmp_path / "i"))
    with store.write() as txn:  # a record that disagrees with its document (a bug, or a bad restore)
        store.put_fields(txn, 0, {"d": "d0", "p": 2, "f": {"i": 99}})
    store.close()
    with Index.open(tmp_path / "i") as eng:
        with pytest.raises(CorruptIndexError, match="fields: the record at page id 0"):
            eng.verify()
        assert "rebuilt the field index (3 documents)" in eng.verify(repair=True)["repaired"]
        assert {h.doc_id for h in eng.search_embeddings(qs, qm, k=9, where={"i": 0})} == {"d0"}
        assert eng.verify()["documents"] == 3
