"""Damage in any stored value is found and named by document and page: by ``verify --deep``, by a
repair (which implies the checks it needs) and by ``compact`` (which drops what it can rebuild without
and names what it cannot carry over intact), in Python and on the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from _store_child import flip_value, make_doc, query_for

from jevsearch import CorruptIndexError, Index
from jevsearch.store.schema import page_key
from jevsearch.store.visual import PageView

DOCS = [("a.pdf", 3), ("b.pdf", 4), ("c.pdf", 2)]


def build(path: str) -> dict:
    out = {}
    with Index.create(path, single_dim=64, codec="fp16") as ix:
        for seed, (name, pages) in enumerate(DOCS):
            singles, multis = make_doc(seed, pages)
            views = [PageView(thumbnail=b"\xff\xd8 a picture " + bytes([i]) * 40) for i in range(pages)]
            ix.add_embeddings(name, singles, multis, page_views=views)
            out[name] = (singles, multis)
    return out


def flip(path: str, table: str, page_id: int, at: int = 12) -> None:
    """Flip a byte of page ``page_id``'s value in ``table`` (its digest stays as it was)."""
    flip_value(path, table, page_key(page_id), at)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jevsearch", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=300)


def test_a_damaged_thumbnail_is_named_by_verify_dropped_by_repair_and_compact(tmp_path):
    path = str(tmp_path / "idx")
    docs = build(path)
    flip(path, "visual", 4)  # b.pdf page 2
    with Index.open(path, readonly=True) as ix:
        qs, qm = query_for(docs["b.pdf"][1], docs["b.pdf"][0], page=1)
        hit = next(h for h in ix.search_embeddings(qs, qm, k=9) if (h.doc_id, h.page) == ("b.pdf", 2))
        with pytest.raises(CorruptIndexError, match="b.pdf page 2: its thumbnail/grid record is damaged"):
            ix.page_data(hit)
        with pytest.raises(CorruptIndexError, match="b.pdf: page 2 thumbnail/grid record fails its checksum"):
            ix.verify(deep=True)
    r = cli("verify", "--deep", "--index", path)
    assert r.returncode == 1 and "problem: b.pdf: page 2 thumbnail/grid record fails its checksum" in r.stdout
    r = cli("compact", "--index", path)
    assert r.returncode == 0, r.stderr
    assert "repaired: dropped 1 damaged thumbnail/grid records" in r.stdout
    with Index.open(path, readonly=True) as ix:
        ix.verify(deep=True)
        assert ix.page_data(hit)[1] is None  # no picture stored: the source file gives it
        assert ix.page_data(ix.page_hit(5))[1].thumbnail.startswith(b"\xff\xd8")  # the others kept


@pytest.mark.parametrize("table", ["multi", "single", "visual"])
def test_repair_without_deep_finds_damaged_values(tmp_path, table):
    path = str(tmp_path / "idx")
    build(path)
    flip(path, table, 7)  # c.pdf page 1
    r = cli("verify", "--repair", "--index", path)
    if table == "visual":  # rebuildable without: dropped, and said so
        assert r.returncode == 0 and "repaired: dropped 1 damaged thumbnail/grid records" in r.stdout, r.stdout
    else:
        assert r.returncode == 1, r.stdout
        assert f"problem: c.pdf: page 1 {table} vectors fail their checksum" in r.stdout
        assert "jevsearch delete DOC" in r.stderr and "c.pdf" in r.stderr


def test_repair_without_deep_relinks_unreachable_pages(tmp_path):
    path = str(tmp_path / "idx")
    build(path)
    with Index.open(path) as ix:
        graph = ix._state.view.settle()
        hnsw_entry = graph._level0()[3]
        from test_reachability import cut_off
        pid = cut_off(graph, next(r for r in range(graph.ntotal) if r != hnsw_entry))
        ix._state.view.clean = False
        ix.flush()
    with Index.open(path) as ix:
        assert pid in ix._state.view.graph.unreachable().tolist()
        report = ix.verify(repair=True)
        assert "rebuilt the HNSW from LMDB and saved it" in report["repaired"]
        assert ix._state.view.graph.unreachable().tolist() == []


def test_compact_names_damaged_multi_vectors_it_carries_over(tmp_path):
    path = str(tmp_path / "idx")
    build(path)
    flip(path, "multi", 2)  # a.pdf page 3
    with Index.open(path) as ix:
        report = ix.compact()
        assert report["redo"] == ["a.pdf"] and report["damaged"] == ["a.pdf: page 3 multi value fails its checksum"]
        with pytest.raises(CorruptIndexError, match="a.pdf: page 3 multi value fails"):
            ix.compact(codec="binary")  # a conversion would re-encode damage: refused, nothing changed
        assert "codec" not in ix.manifest  # still the fp16 layout of format 2
    r = cli("compact", "--index", path)
    assert r.returncode == 1
    assert "problem: a.pdf: page 3 multi value fails its checksum" in r.stdout
    assert "compacted" in r.stdout and "a.pdf" in r.stderr and "jevsearch delete DOC" in r.stderr


def test_damage_report_lists_no_problem_on_a_sound_index(tmp_path):
    path = str(tmp_path / "idx")
    build(path)
    with Index.open(path) as ix:
        assert ix.compact() == {"dropped": [], "damaged": [], "redo": []}
        assert np.isfinite(ix.verify(repair=True)["values_checked"])
