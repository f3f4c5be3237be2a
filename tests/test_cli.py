"""The ``jevsearch`` command: output and exit codes.

make-tiny-model, index, search --json and an error run as real subprocesses (``python -m jevsearch``);
the other commands go through ``cli.main`` in this process (the same code the console script runs),
which spares a fresh interpreter's torch/transformers import per command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ingest_corpus import make_bad_page_count_pdf, make_pdf, make_truncated_pdf, picture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jevsearch(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "jevsearch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_main(capsys, *args):
    from jevsearch.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """make-tiny-model, then index a folder with one bad PDF and one missing a page: the shared state
    of the CLI tests."""
    tmp = tmp_path_factory.mktemp("cli")
    model = tmp / "tiny"
    made = jevsearch("make-tiny-model", model)
    assert made.returncode == 0, made.stderr
    corpus = tmp / "docs"
    (corpus / "sub").mkdir(parents=True)
    make_pdf(corpus / "alpha.pdf", 2, seed=1)
    make_pdf(corpus / "sub" / "beta.pdf", 1, seed=2, texts=["Invoice ledger audit for the harbor warehouse."])
    picture(200, 150).save(corpus / "sub" / "scan.png")
    make_truncated_pdf(corpus / "cut.pdf")  # page 1 cannot be rendered, pages 2 and 3 can
    make_bad_page_count_pdf(corpus / "bad.pdf")
    index = tmp / "idx"
    run = jevsearch("index", corpus, "--index", index, "--model", model, cwd=tmp)
    return dict(tmp=tmp, model=model, corpus=corpus, index=index, made=made, run=run)


def test_make_tiny_model_says_weights_are_random(indexed):
    assert "RANDOM" in indexed["made"].stdout and (indexed["model"] / "config.json").is_file()


def test_index_reports_failures_with_exit_3_and_indexes_the_rest(indexed, capsys):
    run = indexed["run"]
    assert run.returncode == 3, run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "bad.pdf: corrupt PDF: cannot count its pages" in failed[0]
    missing = [line for line in run.stderr.splitlines() if line.startswith("missing page: ")]
    assert len(missing) == 1 and "cut.pdf: page 1: damaged PDF" in missing[0]
    assert "added 4 (1 with missing pages), moved 0, pruned 0, skipped 0 unchanged, failed 1 (6 pages" in run.stdout
    assert "Traceback" not in run.stderr
    code, out, err = run_main(capsys, "index", indexed["corpus"] / "alpha.pdf", "--index", indexed["index"], "-q")
    assert (code, out, err) == (0, "", "")  # unchanged: skipped, quietly


def test_search_json_through_subprocess(indexed):
    as_json = jevsearch("search", "harbor warehouse audit", "--index", indexed["index"], "-k", "10", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert len(rows) == 6 and [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]  # k bounded by the 6 pages
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    beta = next(r for r in rows if r["path"].endswith("beta.pdf"))
    assert beta["page"] == 1 and "harbor warehouse" in beta["snippet"]
    assert {os.path.basename(r["path"]) for r in rows} == {"alpha.pdf", "beta.pdf", "scan.png", "cut.pdf"}
    assert sorted(r["page"] for r in rows if r["path"].endswith("cut.pdf")) == [2, 3]  # the pages' true numbers


def test_a_reader_that_goes_away_ends_the_command_quietly(indexed):
    """`jevsearch list | head -1`: the pipe closes under us; no 'Broken pipe' error line, exit 141."""
    read, write = os.pipe()
    os.close(read)  # the reader is already gone: the first write fails with EPIPE
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "jevsearch", "list", "--index", str(indexed["index"])],
                              stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_search_table(indexed, capsys, monkeypatch):
    monkeypatch.chdir(indexed["tmp"])
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = run_main(capsys, "search", "harbor warehouse audit", "--index", indexed["index"], "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "score", "file", "page", "snippet"] and len(lines) == 4
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert all(" docs/" in line for line in lines[1:])  # files relative to the working directory
    assert all(len(line) <= 120 for line in lines)


def test_info_delete_verify(indexed, capsys, monkeypatch, tmp_path):
    import shutil

    index = tmp_path / "copy"  # a private copy: the other tests keep their index
    shutil.copytree(indexed["index"], index)
    code, out, err = run_main(capsys, "info", "--index", index, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["documents"] == 4 and data["pages"] == 6 and data["single_dim"] == 64
    assert data["documents_with_missing_pages"] == 1 and data["failed_files"] == 1
    assert data["model"] == str(indexed["model"])
    code, out, _ = run_main(capsys, "info", "--index", index)
    assert code == 0 and any(line.split()[:2] == ["documents", "4"] for line in out.splitlines())

    monkeypatch.chdir(indexed["tmp"])
    code, out, err = run_main(capsys, "delete", "docs/alpha.pdf", "--index", index)
    assert code == 0, err
    assert out.strip() == f"deleted {indexed['corpus'] / 'alpha.pdf'}"
    code, out, err = run_main(capsys, "delete", "docs/alpha.pdf", "--index", index)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("jevsearch: error: docs/alpha.pdf: not in the index")
    code, out, err = run_main(capsys, "verify", "--index", index)
    assert code == 0 and out.startswith(f"{index}: ok"), err
    code, out, _ = run_main(capsys, "info", "--index", index, "--json")
    assert json.loads(out)["documents"] == 3


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    bad = jevsearch("search", "q", "--index", tmp_path / "plain")  # a real process: exit status, stderr
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "not a jevsearch index" in bad.stderr
    with pytest.raises(SystemExit) as usage:
        run_main(capsys, "search", "q", "--index", tmp_path / "plain", "-k", "0")
    assert usage.value.code == 2 and "not a positive integer" in capsys.readouterr().err
    make_pdf(tmp_path / "one.pdf", 1)
    code, out, err = run_main(capsys, "index", tmp_path / "one.pdf", "--index", tmp_path / "new",
                              "--model", tmp_path / "nope")
    assert code == 1 and err.count("\n") == 1 and "nope" in err
    assert not (tmp_path / "new").exists()  # nothing half-created
