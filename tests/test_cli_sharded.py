"""Every ``jevsearch`` command on a sharded index, as real processes with the tiny model.

The CLI opens any index with ``jevsearch.open``: a sharded one (``index --shards N``) must take
search (with --where and --documents), list, info, explain, eval, serve, delete, compact and verify
as one index does, and answer the same as one index holding the same documents.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.ingest_corpus import tiny_model_dir
from tests.test_eval import write_beir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "quarterly revenue by region"


def _env() -> dict:
    # HF_HUB_OFFLINE: a command that tried the hub instead of the recorded model would fail here.
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}


def jevsearch(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "jevsearch", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def ok(*args, **kw) -> str:
    run = jevsearch(*args, **kw)
    assert run.returncode == 0, (args, run.stderr)
    assert "Traceback" not in run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """A BEIR-style dataset whose corpus (plus a text file) is indexed twice: 2 shards, and one index."""
    tmp = tmp_path_factory.mktemp("cli-sharded")
    ds = write_beir(tmp / "ds")
    (tmp / "extra").mkdir()
    (tmp / "extra" / "notes.txt").write_text("Regional revenue notes.\n\nThe harbor warehouse audit, by quarter.\n")
    model = tiny_model_dir()
    for name, shards in (("sh", ["--shards", 2]), ("one", [])):
        ok("index", ds / "corpus", tmp / "extra", "--index", tmp / name, "--model", model, "-q", *shards)
    return {"tmp": tmp, "ds": ds, "sh": tmp / "sh", "one": tmp / "one"}


def _search(index, *options) -> list:
    rows = json.loads(ok("search", QUERY, "--index", index, "-k", "10", "--json", "--mode", "visual", *options))
    for row in rows:  # page ids name a page in its own index, and "added" its time: not comparable
        row["metadata"].pop("added")
        for part in [row, *row.get("pages", [])]:
            part.pop("page_id", None)
            part["score"] = round(part["score"], 4)
    return rows


def test_search_where_and_documents_equal_one_index(indexes):
    sh, one = indexes["sh"], indexes["one"]
    plain = _search(sh)
    assert plain == _search(one) and len(plain) == 7  # 3 + 2 + 1 pages, 1 passage
    assert {r["metadata"]["kind"] for r in plain} == {"pdf", "image", "text"}
    assert next(r for r in plain if r["metadata"]["kind"] == "text")["snippet"].startswith(("Regional", "The harbor"))
    pdfs = _search(sh, "--where", '{"kind": "pdf"}')
    assert [r["path"] for r in pdfs] == [r["path"] for r in plain if r["metadata"]["kind"] == "pdf"]
    docs = _search(sh, "--where", '{"kind": {"$ne": "image"}}', "--documents")
    assert docs == _search(one, "--where", '{"kind": {"$ne": "image"}}', "--documents")
    assert sorted(os.path.basename(d["path"]) for d in docs) == ["memo.pdf", "notes.txt", "report.pdf"]
    assert all(d["pages"] and d["score"] == d["pages"][0]["score"] for d in docs)
    table = ok("search", QUERY, "--index", sh, "-k", "2", "--documents")
    assert table.splitlines()[0].split() == ["rank", "score", "file", "page", "snippet"]


def test_list_info_explain_eval(indexes):
    sh, tmp = indexes["sh"], indexes["tmp"]
    listed = json.loads(ok("list", "--index", sh, "--json"))
    assert sorted(os.path.basename(r["path"]) for r in listed) == ["chart.png", "memo.pdf", "notes.txt", "report.pdf"]
    assert all(r["status"] == "present" for r in listed)
    info = json.loads(ok("info", "--index", sh, "--json"))
    assert (info["shards"], info["documents"], info["pages"]) == (2, 4, 7)
    assert info["model"] == tiny_model_dir()
    ranks = [r["metadata"]["kind"] for r in _search(sh)]
    rank = ranks.index("pdf") + 1  # explain draws page images
    out = ok("explain", QUERY, "--index", sh, "--hit", rank, "--out", tmp / "why.png")
    assert (tmp / "why.png").stat().st_size > 1000 and "page" in out and "score" in out
    # eval reads the index's recorded model (offline here: the hub would fail) and its shards.
    out = ok("eval", indexes["ds"], "--index", sh, "--out", tmp / "rep", "-k", "5", "--candidates", "2")
    report = json.loads((tmp / "rep" / "report.json").read_text())
    assert report["index"]["pages"] == 7 and out.startswith("setting")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read()


def test_serve(indexes):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jevsearch", "serve", "--index", str(indexes["sh"]), "--port",
                             str(port), "-q"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                status, body = _get(f"{base}/api/search?q=quarterly%20revenue&k=10")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(1)
        hits = json.loads(body)["hits"]
        assert status == 200 and len(hits) == 7 and len({h["page_id"] for h in hits}) == 7
        pdf = next(h for h in hits if h["metadata"]["kind"] == "pdf")
        for url in (pdf["thumbnail"], pdf["page_url"], pdf["document_url"].split("#")[0],
                    f"/heatmap/{pdf['page_id']}.png?q=revenue"):
            assert _get(base + url)[0] == 200, url
        assert json.loads(_get(f"{base}/api/info")[1])["pages"] == 7
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_delete_compact_verify(indexes):
    sh = indexes["sh"]
    chart = indexes["ds"] / "corpus" / "chart.png"
    assert ok("delete", chart, "--index", sh).strip() == f"deleted {chart}"
    missing = jevsearch("delete", chart, "--index", sh)
    assert missing.returncode == 1 and "not in the index" in missing.stderr
    assert "compacted: 3 documents, 6 pages" in ok("compact", "--index", sh)
    assert ok("verify", "--index", sh).startswith(f"{sh}: ok (2 shards, 3 documents")
    assert ok("verify", "--index", sh, "--deep", "--repair").startswith(f"{sh}: ok (2 shards")
    assert json.loads(ok("info", "--index", sh, "--json"))["pages"] == 6
    refused = jevsearch("index", indexes["ds"] / "corpus", "--index", sh, "--shards", 3, "-q")
    assert refused.returncode == 1 and "has 2 shards" in refused.stderr
