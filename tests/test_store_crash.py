"""kill -9 at several points of a writer: the index opens, verify() passes, and at most the
document being written is lost. A reader process searches while a writer adds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from _store_child import CONVERTED, make_doc, query_for

from jevsearch import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "_store_child.py")


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILD, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _committed_and_deleted(lines: list[str]) -> tuple[set[str], set[str]]:
    done, deleted = set(), set()
    for line in lines:
        word, _, name = line.partition(" ")
        if word == "committed":
            done.add(name)
            deleted.discard(name)
        elif word == "deleted":
            deleted.add(name)
            done.discard(name)
    return done, deleted


def _check_recovered(path: str, lines: list[str]) -> None:
    done, _ = _committed_and_deleted(lines)
    with Engine.open(path) as eng:  # the writer lock of the dead process is gone with it
        eng.verify(deep=True)
        present = set(eng.documents()) - {"after-crash"}
        # Everything acknowledged is there, except at most the one document whose add (or delete)
        # was in flight at the kill.
        assert len(done ^ present) <= 1, (done ^ present, lines[-4:])
        for name in present:
            i = int(name.split("-")[1])
            singles, multis = make_doc(i, pages=2 + i % 3, tokens=(200, 400))
            assert eng.document(name)["pages"] == len(multis)
            qs, qm = query_for(multis, singles, page=len(multis) - 1)
            top = eng.search_embeddings(qs, qm, k=1, candidates=20)[0]
            assert (top.doc_id, top.page) == (name, len(multis))
        eng.add_embeddings("after-crash", *make_doc(99, 2))  # and it takes writes again
        eng.verify()
    leftovers = [f for f in os.listdir(path) if ".tmp" in f or f.startswith("store-")]
    assert len(leftovers) == 1 and leftovers[0].startswith("store-"), leftovers  # stale copies removed


@pytest.mark.parametrize("point", ["mid_txn", "after_commit", "mid_save", "mid_compact", "mid_copy", "after_swap"])
def test_kill9_at_injected_points(tmp_path, point):
    path = str(tmp_path / "idx")
    proc = _child("write", path, "--docs", "8", "--crash", point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    lines = out.split("\n")
    assert "done" not in lines
    _check_recovered(path, [x for x in lines if x])


@pytest.mark.parametrize("point", ["mid_rewrite", "mid_copy", "after_swap"])
def test_kill9_while_compact_upgrades_a_version_1_index(tmp_path, point):
    """The store rewrite (format upgrade) leaves the old store or the new one, never a mix."""
    path = str(tmp_path / "idx")
    proc = _child("upgrade", path, "--docs", "6", "--crash", point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    assert "done" not in out.split("\n")
    with Engine.open(path) as eng:
        version = eng.manifest["format_version"]
        assert version == (2 if point == "after_swap" else 1), version
        eng.verify(deep=True)
        assert list(eng.documents()) == [f"doc-{i}" for i in range(6)]
        for i in range(6):
            singles, multis = make_doc(i, pages=2 + i % 3, tokens=(200, 400))
            qs, qm = query_for(multis, singles, page=0)
            top = eng.search_embeddings(qs, qm, k=1, candidates=5)[0]
            assert (top.doc_id, top.page) == (f"doc-{i}", 1)
        eng.compact()  # a rerun finishes the upgrade
        assert eng.manifest["format_version"] == 2 and eng.manifest["checksums"]
        eng.verify(deep=True)
    # One store left: the interrupted copy (or the old store) was removed.
    assert [f for f in os.listdir(path) if f.startswith("store-")] == ["store-3" if point == "after_swap" else "store-2"]


@pytest.mark.parametrize("point", ["mid_rewrite", "mid_fill", "mid_copy", "after_swap"])
def test_kill9_while_compact_converts_to_a_codec(tmp_path, point):
    """compact(codec=...) re-encodes (and pools) every page into a new store: a kill leaves the fp16
    index or the converted one, never a mix, and a rerun finishes the conversion."""
    path = str(tmp_path / "idx")
    proc = _child("convert", path, "--docs", "6", "--crash", point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    assert "done" not in out.split("\n")
    docs = {f"doc-{i}": make_doc(i, pages=2 + i % 3, tokens=(200, 400)) for i in range(6)}
    for attempt in ("after the kill", "after a rerun"):
        with Engine.open(path) as eng:
            m = eng.manifest
            converted = point == "after_swap" or attempt == "after a rerun"
            assert (m["format_version"], m.get("codec"), m.get("pool_factor")) == \
                ((3, "binary", 2) if converted else (2, None, None)), (attempt, m)
            eng.verify(deep=True)
            assert list(eng.documents()) == sorted(docs)
            for name, (singles, multis) in docs.items():
                tokens = sum(-(-len(t) // 2) if converted else len(t) for t in multis)
                assert eng.document(name)["tokens"] == tokens, (attempt, name)
                qs, qm = query_for(multis, singles, page=0)
                top = eng.search_embeddings(qs, qm, k=1, candidates=5)[0]
                assert (top.doc_id, top.page) == (name, 1)
            eng.compact(**CONVERTED)  # a rerun converts (or, converted already, just compacts)
    assert len([f for f in os.listdir(path) if f.startswith("store-")]) == 1


def test_kill9_at_random_moments(tmp_path):
    path = str(tmp_path / "idx")
    rng = random.Random(5)
    lines: list[str] = []
    for _round in range(2):
        proc = _child("write", path, "--docs", "12")
        got = []
        # Each round re-adds doc-0..: kill after a random number of acknowledged commits + a random delay.
        target = rng.randint(1, 9)
        while sum(x.startswith("committed") for x in got) < target:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            got.append(line.strip())
        time.sleep(rng.uniform(0, 0.05))
        proc.kill()
        proc.wait()
        got += [x for x in proc.stdout.read().split("\n") if x]
        lines += [x for x in got if x != "ready"]
        _check_recovered(path, lines)
        lines = [f"committed {d}" for d in sorted(Engine.open(path, readonly=True).documents())
                 if d.startswith("doc-")]


def test_reader_process_while_writer_adds(tmp_path):
    path = str(tmp_path / "idx")
    with Engine.create(path, single_dim=64) as eng:
        eng.add_embeddings("seed", *make_doc(1000, 2), metadata={"pages": 2})
        reader = _child("read", path, "--until", "25")
        assert reader.stdout.readline() == "ready\n", reader.stderr.read()
        for i in range(24):
            singles, multis = make_doc(i, pages=1 + i % 4, tokens=(100, 300))
            eng.add_embeddings(f"w{i}", singles, multis, metadata={"pages": len(multis)})
            if i % 6 == 5:
                eng.delete(f"w{i - 3}")  # deletes are seen too
                eng.add_embeddings(f"w{i - 3}", singles, multis, metadata={"pages": len(multis)})
            if i == 12:
                eng.compact()  # the reader must follow CURRENT to the new LMDB directory
            time.sleep(0.02)
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, (out, err)
    # The reader observed the index growing (several distinct document counts), never a half document.
    assert out.startswith("ok ") and int(out.split()[1]) >= 3, out
