"""`jevsearch search`/`explain` ask a running `jevsearch serve` of the same index (jevsearch.serve.client).

A real server (a `jevsearch serve -v` subprocess, tiny model) and the CLI as a subprocess: it must print
exactly what the local command prints, without importing torch; stale records, a server of another
index, a wrong token and --local all make it search locally.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")

from jevsearch import Engine
from jevsearch.cli import main as cli_main
from jevsearch.serve import discovery
from tests.ingest_corpus import tiny_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "quarterly revenue by region"
# The CLI in a fresh interpreter; its last stderr line names the heavy modules it imported.
RUN = ("import sys; from jevsearch.cli import main; rc = main(sys.argv[1:]); sys.stderr.write('imported: ' + "
       "' '.join(m for m in ('torch', 'transformers', 'numpy', 'fastapi') if m in sys.modules) + '\\n'); sys.exit(rc)")


@pytest.fixture(scope="module")
def site(tmp_path_factory, model):
    """root/docs (the example PDFs), root/idx (their index), root/rt (the runtime folder), a server of idx."""
    root = tmp_path_factory.mktemp("serve_cli")
    docs, rt = root / "docs", root / "rt"
    docs.mkdir()
    for name in ("report.pdf", "manual.pdf"):
        shutil.copy(os.path.join(REPO, "examples", name), docs / name)
    with Engine.create(root / "idx", model=model, max_pixels=128 * 28 * 28) as eng:
        eng.add([docs])
    env = dict(os.environ, PYTHONPATH=REPO, JEVSEARCH_RUNTIME_DIR=str(rt), COLUMNS="120")
    log = open(root / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "jevsearch", "serve", "-v", "--index", "idx", "--port", "0"],
                              cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        record = _wait_ready(root / "idx", env, server)
        yield {"root": root, "env": env, "record": record, "log": root / "server.log", "server": server}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
        log.close()
    assert not os.listdir(rt), "a clean shutdown removes the record"


def _wait_ready(index, env, server, timeout=180):
    os.environ["JEVSEARCH_RUNTIME_DIR"] = env["JEVSEARCH_RUNTIME_DIR"]  # record_path reads it
    try:
        path = discovery.record_path(index)
    finally:
        del os.environ["JEVSEARCH_RUNTIME_DIR"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert server.poll() is None, "the server exited"
        if os.path.exists(path):
            record = json.load(open(path))
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{record['port']}/api/status", timeout=5))
            if status["model"] == "ready":
                return record
        time.sleep(0.3)
    raise AssertionError("the server did not get ready")


def _cli(site, *args, cwd=None):
    r = subprocess.run([sys.executable, "-c", RUN, *args], cwd=cwd or site["root"], env=site["env"],
                       capture_output=True, text=True, timeout=300)
    err, _, imported = r.stderr.rpartition("imported: ")
    return r.returncode, r.stdout, err, imported.split()


def _local(site, monkeypatch, capsys, *args, cwd=None):
    """The command in this process with --local (the path without a server)."""
    monkeypatch.chdir(cwd or site["root"])
    monkeypatch.setenv("COLUMNS", "120")
    capsys.readouterr()
    rc = cli_main([*args, "--local"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _cli_requests(site) -> list[str]:
    """The server's access log lines of the CLI API so far."""
    return [line for line in open(site["log"]).read().splitlines() if "/api/cli/" in line]


def test_search_asks_the_server_prints_the_local_output_and_never_imports_torch(site, monkeypatch, capsys):
    for extra in ([], ["--json"], ["--documents"], ["--json", "--documents"], ["--mode", "lexical"]):
        args = ["search", QUERY, "--index", "idx", "-k", "4", *extra]
        before = len(_cli_requests(site))
        rc, out, err, imported = _cli(site, *args)
        assert (rc, err) == (0, ""), err
        assert not {"torch", "transformers", "numpy"} & set(imported), imported
        assert any("POST /api/cli/search" in line for line in _cli_requests(site)[before:])
        assert _local(site, monkeypatch, capsys, *args) == (0, out, "")
    assert "rank" in out and "score" in out


def test_explain_asks_the_server_same_lines_same_image_same_errors(site, monkeypatch, capsys):
    (site["root"] / "a").mkdir()
    (site["root"] / "b").mkdir()
    args = ["explain", QUERY, "--index", "../idx", "--hit", "2", "--out", "why.png"]
    rc, out, err, imported = _cli(site, *args, cwd=site["root"] / "a")
    assert rc == 0 and "torch" not in imported and "wrote why.png" in out and "\n  revenue 0." in out
    assert _local(site, monkeypatch, capsys, *args, cwd=site["root"] / "b") == (0, out, "")
    assert (site["root"] / "a" / "why.png").read_bytes() == (site["root"] / "b" / "why.png").read_bytes()
    for bad in (["--token", "nope"], ["--hit", "99"], ["--alpha", "7"]):
        rc, out, err, _ = _cli(site, *args, *bad, cwd=site["root"] / "a")
        assert rc == 1 and "Traceback" not in err
        assert _local(site, monkeypatch, capsys, *args, *bad, cwd=site["root"] / "b") == (rc, out, err)


def test_a_library_error_comes_back_as_the_local_command_says_it(site, monkeypatch, capsys):
    args = ["search", QUERY, "--index", "idx", "--where", '{"year": {"$near": 3}}']
    rc, out, err, imported = _cli(site, *args)
    assert rc == 1 and err.startswith("jevsearch: error: ") and "torch" not in imported
    assert _local(site, monkeypatch, capsys, *args) == (rc, out, err)


def test_local_and_another_model_search_here(site, monkeypatch, capsys):
    monkeypatch.setenv("JEVSEARCH_RUNTIME_DIR", site["env"]["JEVSEARCH_RUNTIME_DIR"])
    before = len(_cli_requests(site))
    rc, out, err = _local(site, monkeypatch, capsys, "search", QUERY, "--index", "idx", "-v")
    assert rc == 0 and "asking the jevsearch serve" not in err and out.startswith("rank")
    capsys.readouterr()
    assert cli_main(["search", QUERY, "--index", "idx", "-v", "--model", tiny_model_dir()]) == 0
    assert "it runs with another --model" in capsys.readouterr().err
    assert cli_main(["search", QUERY, "--index", "idx", "-v"]) == 0  # the same in this process asks the server
    assert "asking the jevsearch serve at http://127.0.0.1:" in capsys.readouterr().err
    assert len(_cli_requests(site)) == before + 2  # the hello and the search of the last command only


def _records(tmp_path, monkeypatch, index, record) -> str:
    monkeypatch.setenv("JEVSEARCH_RUNTIME_DIR", str(tmp_path / "rt"))
    path = discovery.record_path(index)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(record, f)
    return path


def test_stale_foreign_and_forged_records_are_not_used(site, tmp_path, monkeypatch, capsys):
    index, live = site["root"] / "idx", dict(site["record"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()

    def search(expect_note: str, target=index):
        capsys.readouterr()
        assert cli_main(["search", QUERY, "--index", str(target), "-v"]) == 0
        err = capsys.readouterr().err
        assert "asking the jevsearch serve" not in err and expect_note in err, err

    path = _records(tmp_path, monkeypatch, index, dict(live, pid=gone.pid))  # its server was killed
    search("removing the stale record")
    assert not os.path.exists(path)
    _records(tmp_path, monkeypatch, index, dict(live, token="not-the-token"))  # a forged or outdated token
    search("answered 403 without this server's proof")
    other = tmp_path / "other-idx"  # another index's record naming the live server of idx
    shutil.copytree(index, other)
    _records(tmp_path, monkeypatch, other, dict(live, index=os.path.realpath(other)))
    search("it holds another index folder", other)
    _records(tmp_path, monkeypatch, other, live)  # idx's record under other's name
    search("it records another index", other)
    os.chmod(_records(tmp_path, monkeypatch, index, live), 0o644)  # others may read its token
    search("others may read or write it")


def test_the_cli_api_needs_the_token_and_keeps_the_host_check(site):
    record = site["record"]
    url = f"http://127.0.0.1:{record['port']}/api/cli/hello"

    def status(headers):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    good = f"n1:{discovery.sign(record['token'], 'n1', 'client')}"
    assert status({discovery.AUTH_HEADER: good}) == 200
    assert status({}) == 403
    assert status({discovery.AUTH_HEADER: f"n1:{discovery.sign('guess', 'n1', 'client')}"}) == 403
    assert status({discovery.AUTH_HEADER: good, "Host": "evil.example"}) == 421


def test_the_client_imports_only_the_standard_library():
    code = ("import sys, jevsearch.cli, jevsearch.serve.client; "
            "print(sorted(m for m in ('torch', 'numpy', 'fastapi', 'PIL', 'lmdb', 'faiss') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
