"""The command line speaks command line: CLI advice in errors, inputs checked first, no tracebacks, no
progress bars in logs, index folders that respect the umask. ``cli.main`` in this process unless the
exit status, a fresh interpreter's stderr or a second process matters."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from jevsearch import Engine, Index
from jevsearch.cli import main
from jevsearch.errors import IndexExistsError
from tests.ingest_corpus import make_pdf, tiny_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_ADVICE = ("Engine", "Index.", "readonly", "open it", "model=")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A small index made by the CLI (with the tiny model) and its folder."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    docs = tmp / "docs"
    docs.mkdir()
    make_pdf(docs / "a.pdf", 1, seed=1)
    make_pdf(docs / "b.pdf", 1, seed=2)
    (docs / "notes.csv").write_text("not a document")
    assert main(["index", str(docs), "--index", str(tmp / "idx"), "--model", tiny_model_dir(), "-q"]) == 0
    return tmp, docs, tmp / "idx"


def test_version(capsys):
    from jevsearch import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"jevsearch {__version__}"


def test_unexpected_errors_are_one_line_and_v_logs_the_traceback(indexed, capsys, monkeypatch):
    from jevsearch.cli import read

    def broken(args):  # stands in for any bug or untranslated library error
        raise RuntimeError("boom")

    monkeypatch.setattr(read, "cmd_info", broken)
    code, out, err = run(capsys, "info", "--index", indexed[2])
    assert (code, out) == (1, "") and err == "jevsearch: error: unexpected RuntimeError: boom (rerun with -v for details)\n"
    code, _, err = run(capsys, "info", "--index", indexed[2], "-v")
    assert code == 1 and "Traceback" in err and 'raise RuntimeError("boom")' in err


def test_cli_errors_give_cli_advice(indexed, capsys, tmp_path):
    tmp, docs, index = indexed
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    errors = []
    code, _, err = run(capsys, "search", "q", "--index", tmp_path / "plain")
    assert code == 1 and f"`jevsearch index FILES --index {tmp_path / 'plain'}` creates one" in err
    errors.append(err)
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "plain")
    assert code == 1 and "not a jevsearch index" in err and "pick a new or empty folder for --index" in err
    errors.append(err)
    with Engine.open(index):  # another writer holds it
        code, _, err = run(capsys, "index", docs, "--index", index)
    assert code == 1 and "another jevsearch command is writing to it: wait for it to finish and rerun" in err
    errors.append(err)
    code, _, err = run(capsys, "delete", "nope.pdf", "--index", index)
    assert code == 1 and f"`jevsearch list --index {index}`" in err
    errors.append(err)
    for err in errors:
        assert err.count("\n") == 1 and not any(advice in err for advice in PYTHON_ADVICE), err


def test_two_creates_at_once_say_another_process_is_creating_it(tmp_path):
    """Both pass the "is it empty" check; one loses at the final rename and says so."""
    for attempt in range(5):
        path = tmp_path / f"idx{attempt}"
        barrier, errors = threading.Barrier(2), []

        def create():
            barrier.wait()
            try:
                Index.create(path, single_dim=16).close()
            except IndexExistsError as e:
                errors.append(e)

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        race = [e for e in errors if "another process is creating an index here" in str(e)]
        if race:
            assert race[0].cli_message().endswith(
                "(hint: another jevsearch command is creating it: wait for it to finish and rerun)")
            assert not [n for n in os.listdir(tmp_path) if n.startswith(".jevsearch-create-")]
            Index.open(path, readonly=True).close()  # the winner's index is whole
            return
    pytest.fail("the two creates never raced in 5 attempts")


def test_a_changed_model_at_the_recorded_path_says_so(tmp_path, capsys):
    from jevsearch.model.tiny import write_tiny_checkpoint

    model = tmp_path / "model"
    write_tiny_checkpoint(model, seed=0)
    Engine.create(tmp_path / "idx", model=str(model)).close()
    write_tiny_checkpoint(tmp_path / "other", seed=1)  # the folder now holds another model
    os.rename(model, tmp_path / "old")
    os.rename(tmp_path / "other", model)
    code, out, err = run(capsys, "search", "q", "--index", tmp_path / "idx")
    assert code == 1 and out == ""
    assert f"the model at '{model}', recorded by this index, has changed since the index was built" in err
    assert "put the original model back there or pass where it is now with --model" in err
    assert "without a model" not in err and "omit --model" not in err
    os.rename(model, tmp_path / "newer")
    os.rename(tmp_path / "old", model)
    code, _, err = run(capsys, "search", "q", "--index", tmp_path / "idx", "--model", tmp_path / "newer")
    assert code == 1 and "omit --model to use the recorded model" in err and "Engine" not in err


def test_inputs_are_checked_before_any_model_or_index(tmp_path, capsys):
    new = tmp_path / "new"
    # No --model: the default is the hub model, which must not even be looked for.
    code, out, err = run(capsys, "index", tmp_path / "nope.pdf", "--index", new)
    assert code == 1 and out == "" and not new.exists()
    assert f"failed: {tmp_path / 'nope.pdf'}: no such file or directory" in err
    assert "nothing to index" in err and "hub" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "index", tmp_path / "empty", "--index", new)
    assert code == 1 and "empty: empty folder" in err and not new.exists()
    (tmp_path / "notes").mkdir()
    for name in ("a.csv", "b.csv", "c.docx", ".hidden.pdf"):
        (tmp_path / "notes" / name).write_text("x")
    code, _, err = run(capsys, "index", tmp_path / "notes", "--index", new)
    assert code == 1 and "no PDF, image or text files in it (found 2 .csv, 1 .docx, 1 hidden (skipped))" in err
    assert not new.exists()
    with pytest.raises(SystemExit) as usage:
        run(capsys, "index", tmp_path / "notes", "--index", "")
    assert usage.value.code == 2 and "--index: empty path" in capsys.readouterr().err


def test_index_dot_fills_the_working_folder_or_says_why_not(tmp_path, capsys, monkeypatch):
    make_pdf(tmp_path / "a.pdf", 1)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, out, err = run(capsys, "index", tmp_path / "a.pdf", "--index", ".", "--model", tiny_model_dir(), "-q")
    assert code == 0, err
    assert os.path.isfile(here / "CURRENT") and os.getcwd() == str(here)  # the folder itself, still here
    code, out, _ = run(capsys, "search", "x", "--index", ".", "--json")
    assert code == 0 and str(tmp_path / "a.pdf") in out
    monkeypatch.chdir(tmp_path)  # holds a.pdf and here/: not an index, not empty
    code, _, err = run(capsys, "index", tmp_path / "a.pdf", "--index", ".")
    assert code == 1 and err.count("\n") == 1 and "pick a new or empty folder for --index" in err
    assert ".jevsearch-create" not in err


def test_index_folders_follow_the_umask_and_keep_a_users_folder(tmp_path):
    for umask, want in ((0o002, 0o775), (0o022, 0o755)):
        old = os.umask(umask)
        try:
            Index.create(tmp_path / f"new{umask:o}" / "idx", single_dim=16).close()
        finally:
            os.umask(old)
        path = tmp_path / f"new{umask:o}" / "idx"
        assert stat.S_IMODE(os.stat(path).st_mode) == want
        assert stat.S_IMODE(os.stat(path / "writer.lock").st_mode) == want & 0o666
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o710)
    before = os.stat(mine)
    Index.create(mine, single_dim=16).close()
    after = os.stat(mine)
    assert stat.S_IMODE(after.st_mode) == 0o710 and after.st_ino == before.st_ino
    assert sorted(n for n in os.listdir(mine) if not n.startswith("store-")) == ["CURRENT", "fde.bin", "hnsw.bin",
                                                                                 "text-1", "text.json", "writer.lock"]


def test_no_progress_bars_off_a_terminal(tmp_path, capsys):
    make_pdf(tmp_path / "a.pdf", 2)
    code, out, err = run(capsys, "index", tmp_path / "a.pdf", "--index", tmp_path / "idx", "--model", tiny_model_dir())
    assert code == 0 and "added 1" in out
    assert err == ""  # captured stderr is not a terminal: no bars


def test_verbose_lists_skipped_files_without_library_noise(indexed):
    tmp, docs, index = indexed
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    rerun = subprocess.run([sys.executable, "-m", "jevsearch", "index", str(docs), "--index", str(index), "-v"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stderr.splitlines()
    assert f"jevsearch: {docs / 'a.pdf'}: unchanged, skipped" in lines
    assert f"jevsearch: {docs / 'b.pdf'}: unchanged, skipped" in lines
    assert f"jevsearch: {docs / 'notes.csv'}: skipped (not a PDF, image or text file)" in lines
    assert all(line.startswith("jevsearch: ") for line in lines), lines  # nothing from FAISS's loader
    assert "faiss" not in rerun.stderr.lower()


def test_verify_deep_lists_the_problems_and_exits_1(indexed, capsys, tmp_path):
    import shutil

    import lmdb

    index = tmp_path / "damaged"
    shutil.copytree(indexed[2], index)
    code, out, _ = run(capsys, "verify", "--index", index, "--deep")
    assert code == 0 and out.startswith(f"{index}: ok")
    env_dir = index / (index / "CURRENT").read_text().strip()
    env = lmdb.open(str(env_dir), max_dbs=16)
    with env.begin(write=True) as txn:  # a NaN in the first stored multi-vector, length unchanged
        db = env.open_db(b"multi", txn=txn)
        key, value = next(iter(txn.cursor(db=db)))
        txn.put(key, b"\x00\x7e" + value[2:], db=db)
    env.close()
    code, out, err = run(capsys, "verify", "--index", index, "--deep")
    problems = out.splitlines()
    assert code == 1 and problems and all(line.startswith("problem: ") for line in problems)
    assert any("a.pdf" in line or "b.pdf" in line for line in problems)
    assert err.count("\n") == 1 and err.startswith("jevsearch: error: ") and "Engine" not in err


def test_compact_drops_deleted_pages(indexed, capsys, tmp_path):
    import shutil

    index = tmp_path / "copy"
    shutil.copytree(indexed[2], index)
    assert run(capsys, "delete", indexed[1] / "a.pdf", "--index", index)[0] == 0
    with Index.open(index, readonly=True) as idx:
        assert idx.stats()["tombstones"] == 1
    code, out, err = run(capsys, "compact", "--index", index)
    assert code == 0 and out.startswith(f"{index}: compacted: 1 documents, 1 pages, ") and " MB -> " in out, err
    with Index.open(index, readonly=True) as idx:
        assert idx.stats()["tombstones"] == 0 and idx.stats()["hnsw_vectors"] == 1


def test_store_errors_speak_python_and_the_cli_maps_them_to_commands():
    """store/ raises with Python hints and fields; cli.cli_hint alone turns them into commands."""
    import pathlib
    import re

    from jevsearch.cli import cli_message
    from jevsearch.store.verify import Problem, describe

    store = pathlib.Path(__file__).resolve().parent.parent / "jevsearch" / "store"
    spelled = [f"{f.name}: {line.strip()}" for f in store.glob("*.py") for line in f.read_text().splitlines()
               if re.search(r"`jevsearch |jevsearch (verify|delete|compact|search|list|serve|info) |jevsearch index [A-Z-]", line)]
    assert spelled == []
    e = describe("idx", [Problem("hnsw: 1 live pages not indexed", fixable=True),
                         Problem("a.pdf p2: damaged", fixable=False, doc="a.pdf")])
    assert e.repairable and e.redo_documents == ("a.pdf",) and e.path == "idx"
    assert "verify(repair=True)" in str(e) and "jevsearch" not in e.hint
    assert cli_message(e).endswith("(hint: jevsearch verify --repair --index idx repairs what LMDB can rebuild; a "
                                   "repair cannot restore damaged pages of a.pdf: `jevsearch delete DOC --index idx`, "
                                   "then `jevsearch index DOC --index idx` for each)")
    assert not describe("idx", [Problem("x", fixable=True)], repairing=True).repairable
