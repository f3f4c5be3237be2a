"""The ``jevsearch`` command through real subprocesses: output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ingest_corpus import make_pdf, make_truncated_pdf, picture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jevsearch(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "jevsearch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """make-tiny-model, then index a folder with one bad PDF: the shared state of the CLI tests."""
    tmp = tmp_path_factory.mktemp("cli")
    model = tmp / "tiny"
    made = jevsearch("make-tiny-model", model)
    assert made.returncode == 0, made.stderr
    corpus = tmp / "docs"
    (corpus / "sub").mkdir(parents=True)
    make_pdf(corpus / "alpha.pdf", 2, seed=1)
    make_pdf(corpus / "sub" / "beta.pdf", 1, seed=2, texts=["Invoice ledger audit for the harbor warehouse."])
    picture(200, 150).save(corpus / "sub" / "scan.png")
    make_truncated_pdf(corpus / "cut.pdf")
    index = tmp / "idx"
    run = jevsearch("index", corpus, "--index", index, "--model", model, cwd=tmp)
    return dict(tmp=tmp, model=model, corpus=corpus, index=index, made=made, run=run)


def test_make_tiny_model_says_weights_are_random(indexed):
    assert "RANDOM" in indexed["made"].stdout and (indexed["model"] / "config.json").is_file()


def test_index_reports_failures_with_exit_3_and_indexes_the_rest(indexed):
    run = indexed["run"]
    assert run.returncode == 3, run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "cut.pdf: damaged PDF" in failed[0]
    assert "added 3, skipped 0 unchanged, failed 1 (4 pages" in run.stdout
    again = jevsearch("index", indexed["corpus"] / "alpha.pdf", "--index", indexed["index"], "-q")
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""


def test_search_table_and_json(indexed):
    table = jevsearch("search", "harbor warehouse audit", "--index", indexed["index"], "-k", "3",
                      cwd=indexed["tmp"])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "file", "page", "snippet"] and len(lines) == 4
    ranks = [line.split()[0] for line in lines[1:]]
    assert ranks == ["1", "2", "3"]
    assert all(" docs/" in line for line in lines[1:])  # files relative to the working directory

    as_json = jevsearch("search", "harbor warehouse audit", "--index", indexed["index"], "-k", "10", "--json")
    rows = json.loads(as_json.stdout)
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    beta = next(r for r in rows if r["path"].endswith("beta.pdf"))
    assert beta["page"] == 1 and "harbor warehouse" in beta["snippet"]
    assert {os.path.basename(r["path"]) for r in rows} == {"alpha.pdf", "beta.pdf", "scan.png"}


def test_info_delete_verify(indexed, tmp_path):
    info = jevsearch("info", "--index", indexed["index"], "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["documents"] == 3 and data["pages"] == 4 and data["single_dim"] == 64
    assert data["model"] == str(indexed["model"])

    deleted = jevsearch("delete", "docs/alpha.pdf", "--index", indexed["index"], cwd=indexed["tmp"])
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted {indexed['corpus'] / 'alpha.pdf'}"
    assert json.loads(jevsearch("info", "--index", indexed["index"], "--json").stdout)["documents"] == 2
    missing = jevsearch("delete", "docs/alpha.pdf", "--index", indexed["index"], cwd=indexed["tmp"])
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert missing.stderr.startswith("jevsearch: error: ") and "not in the index" in missing.stderr

    ok = jevsearch("verify", "--index", indexed["index"])
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    bad = jevsearch("search", "q", "--index", tmp_path / "plain")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "not a jevsearch index" in bad.stderr
    usage = jevsearch("search", "q", "--index", tmp_path / "plain", "-k", "0")
    assert usage.returncode == 2 and "not a positive integer" in usage.stderr
    nomodel = jevsearch("index", tmp_path / "plain", "--index", tmp_path / "new", "--model", tmp_path / "nope")
    assert nomodel.returncode == 1 and nomodel.stderr.count("\n") == 1 and "nope" in nomodel.stderr
    assert not (tmp_path / "new").exists()  # nothing half-created
