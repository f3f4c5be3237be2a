"""A full disk during ``jevsearch index``: a real one (a small tmpfs where this user may mount, else a
file size limit on the process, RLIMIT_FSIZE), not a mocked error. The run names the file, says what
was committed and what to do, exits 3 as other partial runs do; after space is freed the same command
finishes the job without duplicates."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from jevsearch import Engine
from tests.ingest_corpus import make_pdf, tiny_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS, PAGES = 8, 6


def _mount_tmpfs(where, size: str) -> bool:
    os.makedirs(where, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """(folder on a small disk, how to give it room) - a tmpfs, else a process file size limit."""
    mnt = tmp_path / "disk"
    if _mount_tmpfs(mnt, "2200k"):
        yield mnt, None, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        subprocess.run(["umount", str(mnt)], capture_output=True)
        return
    mnt.mkdir(exist_ok=True)

    def limit():  # the data file may not grow past this: writes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_200_000, 1_200_000))

    yield mnt, limit, lambda: None


def test_disk_full_names_the_file_and_what_was_committed_then_a_rerun_finishes(tmp_path, small_disk):
    mnt, limit, make_room = small_disk
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(DOCS):
        make_pdf(corpus / f"d{i}.pdf", PAGES, seed=i)
    cmd = [sys.executable, "-m", "jevsearch", "index", str(corpus), "--index", str(mnt / "idx"), "--model",
           tiny_model_dir(), "--codec", "fp16", "--no-keep-exact", "-q"]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    full = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    err = full.stderr
    assert full.returncode == 3, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{corpus}{os.sep}d" in err and "no space left" in err and "committed before it: " in err, err
    assert "jevsearch compact --index" in err and "free disk space" in err, err
    committed = int(err.split("committed before it: ")[1].split(" documents")[0])
    assert committed < DOCS

    make_room()
    with Engine.open(mnt / "idx", readonly=True) as eng:  # what was committed is intact
        eng.verify(deep=True)
        assert eng.stats()["documents"] >= committed
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    with Engine.open(mnt / "idx", readonly=True) as eng:
        eng.verify(deep=True)
        assert eng.stats()["documents"] == DOCS and eng.stats()["pages"] == DOCS * PAGES  # no duplicates
        assert not [d for d in eng.document_list() if "partial" in d["metadata"]]
