"""Ray: distributed ingest and Ray-served shards, on a real local Ray cluster (2 CPUs, one per module).

The tiny model (random weights), generated PDFs with bad files mixed in, real LMDB + FAISS. Faults are
real: ``ray.kill`` of an encoder actor or a shard actor mid-run, SIGKILL of a ``jevsearch index --ray``
driver process connected to the same cluster.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import sys
import time

import numpy as np
import pytest
import ray  # the [dev] extra installs it: these tests always run

from jevsearch import Engine, InvalidInputError, ShardedEngine, ShardError, modelinfo
from jevsearch.ingest import discover, ingest
from jevsearch.scale.ingest import EncoderPool
from jevsearch.search.threads import torch_threads
from tests.ingest_corpus import (
    kill_after_documents,
    make_bad_page_count_pdf,
    make_broken_png,
    make_encrypted_pdf,
    make_fake_pdf,
    make_pdf,
    make_truncated_pdf,
    make_zero_page_pdf,
    picture,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 128 * 28 * 28  # ~128 visual tokens per page: 16 pages per render task


@pytest.fixture(scope="module")
def cluster():
    # Ray runs its workers at nice 15; on this shared 2-core machine they would then wait behind every
    # other process, and the module would take minutes.
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    try:
        ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    finally:
        if niceness is None:
            del os.environ["RAY_worker_niceness"]
        else:
            os.environ["RAY_worker_niceness"] = niceness
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, model):
    """Two single-threaded encoder actors with the tiny model, shared by the tests (started on first use)."""
    with EncoderPool("auto", modelinfo.record(model, model, MAX_PIXELS), workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "corpus"
    (root / "deep").mkdir(parents=True)
    make_pdf(root / "long.pdf", 17, seed=1, rotate={3: 90})  # two render ranges
    for i in range(4):
        make_pdf(root / "deep" / f"doc{i}.pdf", 1 + i % 3, seed=10 + i)
    picture(320, 240, seed=4).save(root / "chart.png")
    make_encrypted_pdf(root / "locked.pdf")
    make_zero_page_pdf(root / "deep" / "empty.pdf")
    make_truncated_pdf(root / "deep" / "cut.pdf")  # page 1 cannot be rendered: added without it
    make_fake_pdf(root / "fake.pdf")
    make_bad_page_count_pdf(root / "count.pdf")  # raises outside DocumentError: fails that file only
    make_broken_png(root / "deep" / "broken.png")
    return root


@pytest.fixture(scope="module")
def local(corpus, model):
    """The local pipeline's documents and report: what every Ray run must reproduce."""
    sources, failed = discover([corpus])
    docs = {}
    geometry = modelinfo.page_geometry(model, {"max_pixels": MAX_PIXELS})
    with torch_threads(1):  # as Engine.add on 2 cores: torch's 2-thread team stalls beside the renderer
        report = ingest(sources, model, lambda d: docs.setdefault(d.path, d), geometry=geometry)
    return sources, docs, report


def _same_documents(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for path, w in want.items():
        g = got[path]
        assert (g.kind, g.sha256, g.texts, g.sizes, g.page_numbers, g.missing, g.thumbnails) == \
            (w.kind, w.sha256, w.texts, w.sizes, w.page_numbers, w.missing, w.thumbnails)
        np.testing.assert_allclose(g.singles, w.singles, atol=2e-5)
        assert [m.shape for m in g.multis] == [m.shape for m in w.multis]
        np.testing.assert_allclose(np.concatenate(g.multis), np.concatenate(w.multis), atol=2e-5)


def test_ray_ingest_gives_the_local_documents_and_report(tmp_path, corpus, local, pool, model):
    sources, want, local_report = local
    got = {}
    report = pool.ingest(sources, lambda d: got.setdefault(d.path, d) and None)
    _same_documents(got, want)
    assert (report.added, report.failed, report.missing_pages) == \
        (local_report.added, local_report.failed, local_report.missing_pages)
    assert (report.pages, report.tokens) == (local_report.pages, local_report.tokens) and report.pages == 27
    assert sorted(os.path.basename(p) for p, _ in report.failed) == \
        ["broken.png", "count.pdf", "empty.pdf", "fake.pdf", "locked.pdf"]
    assert [(os.path.basename(p), page) for p, page, _ in report.missing_pages] == [("cut.pdf", 1)]

    # Through Engine.add: the local report, the same documents, and a rerun skips everything.
    with Engine.create(tmp_path / "ray", model=model, max_pixels=MAX_PIXELS) as eng:
        r = eng.add([corpus], ray=pool)
        assert (r.added, r.skipped, r.failed, r.missing_pages, r.pages) == \
            (local_report.added, [], local_report.failed, local_report.missing_pages, 27)
        assert list(eng.documents()) == sorted(want)
        for path, doc in want.items():
            record = eng.document(path)
            assert (record["metadata"]["sha256"], record["metadata"]["kind"], record["pages"]) == \
                (doc.sha256, doc.kind, doc.pages)
            assert record["metadata"].get("missing_pages", []) == [list(m) for m in doc.missing]
        eng.verify(deep=True)
        again = eng.add([corpus], ray=pool)
        assert sorted(again.skipped) == sorted(r.added) and again.added == [] and again.failed == []
        assert [p for p, _ in again.not_retried] == [p for p, _ in r.failed]  # remembered, as locally
        with pytest.raises(InvalidInputError, match="workers: only with ray"):
            eng.add([corpus], workers=2)


def test_killed_encoder_actor_loses_and_duplicates_nothing(local, pool, caplog):
    sources, want, _ = local
    stored = []

    def sink(doc):
        if not stored:  # the first commit: other documents are being encoded on both actors
            ray.kill(pool.actors[0], no_restart=True)
        stored.append(doc)

    with caplog.at_level(logging.WARNING, logger="jevsearch.scale.ingest"):
        report = pool.ingest(sources, sink)
    assert "encoder actor died" in caplog.text  # the fault happened mid-run and was recovered from
    counts = collections.Counter(d.path for d in stored)
    assert counts == collections.Counter(list(want)) and max(counts.values()) == 1
    _same_documents({d.path: d for d in stored}, want)
    assert sorted(report.added) == sorted(want)


def test_sharded_add_and_ray_served_shards(tmp_path, corpus, local, pool, model, cluster):
    with ShardedEngine.create(tmp_path / "sh", shards=2, model=model, max_pixels=MAX_PIXELS) as sh:
        report = sh.add([corpus], ray=pool)
        assert report.added == local[2].added and report.failed == local[2].failed
        threaded = sh.search("quarterly revenue", k=6)
        q = sh.encoder.encode_texts(["quarterly revenue"], prompt_name="query")
        everything = sh.search_embeddings(q.single[0], q.multi[0], k=100)
    first_shard = [(h.path, h.page) for h in everything if sh.route(h.path) == "shard-000"][:6]
    node = ray.get_runtime_context().get_node_id()
    with ShardedEngine.open(tmp_path / "sh", ray="auto", nodes={"shard-000": node}) as served:
        hits = served.search("quarterly revenue", k=6)
        assert [(h.path, h.page, h.score, h.snippet) for h in hits] == \
            [(h.path, h.page, h.score, h.snippet) for h in threaded]
        assert served.stats()["documents"] == len(local[2].added) and served.verify()["shards"] == 2
        with pytest.raises(Exception, match="read-only"):
            served.delete(report.added[0])
        _kill(served._backend.actors["shard-001"])  # a shard that stops answering
        with pytest.raises(ShardError, match="shard-001"):
            served.search_embeddings(q.single[0], q.multi[0], k=6)
        served.allow_partial = True
        partial = served.search_embeddings(q.single[0], q.multi[0], k=6)
        assert partial.missing == ["shard-001"]
        assert [(h.path, h.page) for h in partial] == first_shard  # the other shard's best pages

    shutil.move(tmp_path / "sh" / "shard-001", tmp_path / "aside")  # a shard whose folder is gone
    with ShardedEngine.open(tmp_path / "sh", ray="auto", allow_partial=True) as served:
        assert served.missing == ["shard-001"]
        again = served.search_embeddings(q.single[0], q.multi[0], k=6)
        assert again.missing == ["shard-001"]
        assert [(h.path, h.page) for h in again] == first_shard
    with pytest.raises(ShardError, match="shard-001: missing"):
        ShardedEngine.open(tmp_path / "sh")  # the same error as through Ray (the threads path, cheaper)


def _kill(actor) -> None:
    """ray.kill, and wait until the actor is dead (the kill is asynchronous)."""
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.stats.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor outlived ray.kill")


def test_driver_killed_mid_ingest_then_rerun_finishes_without_duplicates(tmp_path, pool, model, cluster):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    total = 10
    for i in range(total):
        make_pdf(corpus / f"doc{i}.pdf", 3, seed=i)
    for name in ("crashed", "clean"):
        Engine.create(tmp_path / name, model=model, max_pixels=MAX_PIXELS).close()

    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jevsearch", "index", str(corpus), "--index", str(tmp_path / "crashed"),
           "--ray", address, "--workers", "1", "-q"]
    seen = kill_after_documents(cmd, tmp_path / "crashed", dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                                REPO, total)

    with Engine.open(tmp_path / "crashed") as eng:  # opens after the crash, repairs, verifies
        eng.verify()
        assert seen <= eng.stats()["documents"] < total
        rerun = eng.add([corpus], ray=pool)  # the pool's actors are idle: they hold no CPU
        assert len(rerun.skipped) >= seen and len(rerun.added) + len(rerun.skipped) == total
    with Engine.open(tmp_path / "clean") as clean:
        clean.add([corpus])
    with Engine.open(tmp_path / "crashed", readonly=True) as a, Engine.open(tmp_path / "clean", readonly=True) as b:
        a.verify(deep=True)
        assert list(a.documents()) == list(b.documents()) and len(list(a.documents())) == total
        assert a.stats()["pages"] == b.stats()["pages"] == 3 * total  # no duplicates
        ha, hb = a.search("quarterly revenue", k=10), b.search("quarterly revenue", k=10)
        assert [(h.path, h.page) for h in ha] == [(h.path, h.page) for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-4)
