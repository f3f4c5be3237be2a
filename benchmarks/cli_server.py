"""`jevsearch search` per command: loading the model in the command (--local) vs asking a running
`jevsearch serve` of the same index (jevsearch.serve.client), in the same run.

    python benchmarks/cli_server.py                                   # examples/ PDFs, tiny checkpoint
    python benchmarks/cli_server.py --model /work/models/full --docs note.txt --runs 3   # full size (~12 GiB RAM)

Each command is a fresh `python -m jevsearch search ... --json` process timed from spawn to exit (what
a user waits for). First ``--runs`` local commands with no server running, then a server is started
(its time until its model is warm is reported: that is what the server pays once), then ``--runs``
commands that find it. One full model in memory at a time: the index is built in a child process, the
local commands run one after another, and the server starts after them. Both paths print the same
JSON (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._util import print_table
from tests.ingest_corpus import tiny_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "quarterly revenue by region"


def build(index: str, docs: str, model: str) -> None:
    code = ("import sys; from jevsearch import Engine\n"
            "with Engine.create(sys.argv[1], model=sys.argv[3]) as eng: eng.add([sys.argv[2]])")
    subprocess.run([sys.executable, "-c", code, index, docs, model], check=True, cwd=REPO)


def command(index: str, env: dict, *extra: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "jevsearch", "search", QUERY, "--index", index, "--json", *extra],
                       env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, r.stdout


def start_server(index: str, env: dict, timeout: float = 3600) -> tuple[subprocess.Popen, float]:
    """The server and its seconds from spawn until its model is warm (status "ready")."""
    t = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "jevsearch", "serve", "-q", "--index", index, "--port", "0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rt = env["JEVSEARCH_RUNTIME_DIR"]
    while time.perf_counter() - t < timeout:
        if server.poll() is not None:
            raise SystemExit("the server exited")
        files = os.listdir(rt) if os.path.isdir(rt) else []
        if files:
            port = json.load(open(os.path.join(rt, files[0])))["port"]
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=30))
            if status["model"] == "ready":
                return server, time.perf_counter() - t
        time.sleep(0.5)
    raise SystemExit("the server did not get ready")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the tiny test checkpoint)")
    p.add_argument("--docs", default=os.path.join(REPO, "examples"), help="what to index (default examples/)")
    p.add_argument("--runs", type=int, default=5, help="commands per path (default 5)")
    args = p.parse_args()
    model = args.model or tiny_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        index = os.path.join(tmp, "idx")
        env = dict(os.environ, PYTHONPATH=REPO, JEVSEARCH_RUNTIME_DIR=os.path.join(tmp, "rt"))
        build(index, args.docs, model)
        local = [command(index, env, "--local") for _ in range(args.runs)]
        server, ready = start_server(index, env)
        try:
            remote = [command(index, env) for _ in range(args.runs)]
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
    assert {out for _, out in local} == {out for _, out in remote}, "the two paths printed different results"
    lp50, rp50 = statistics.median(t for t, _ in local), statistics.median(t for t, _ in remote)
    print_table(f"jevsearch search per command ({os.path.basename(os.path.normpath(model))}, {args.runs} runs each)", [
        ("local (--local): p50", lp50, "s, spawn to exit: imports + model load + query"),
        ("local: min", min(t for t, _ in local), "s"),
        ("via jevsearch serve: p50", rp50, "s, spawn to exit: stdlib client, the server encodes the query"),
        ("via jevsearch serve: min", min(t for t, _ in remote), "s"),
        ("local / via server (p50)", lp50 / rp50, "x"),
        ("server start until its model is warm", ready, "s, paid once"),
    ])


if __name__ == "__main__":
    main()
