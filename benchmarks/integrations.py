"""What the integrations cost on top of the engine: the LangChain and LlamaIndex retrievers vs
``Engine.search`` on the same open engine, and an MCP ``search`` round trip to a warm ``jevsearch mcp``
(stdio, the official SDK's client) vs the engine's own search (query encode included) in this process.

    python benchmarks/integrations.py                               # examples/, tiny checkpoint
    python benchmarks/integrations.py --model /models/jina-embeddings-v4 --docs examples/ -n 30

"search replayed": the retriever over the hits Engine.search found before, i.e. only what the retriever
adds (its ratio: that cost over a search). Each variant: the median and the fastest of ``-n`` calls per
query over the same rotating queries, the variants interleaved call by call (a shared machine's noise hits
them alike; the fastest call is the least disturbed by it). Targets: retrievers <= 1.05x Engine.search;
MCP round trip <= 1.5x Engine.search.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._util import print_grid
from jevsearch import Engine
from tests.ingest_corpus import tiny_model_dir

QUERIES = ["quarterly revenue by region", "circuit diagram", "harbor contract invoice", "enzyme voltage",
           "warehouse schematic", "basalt region summary"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ms(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t) * 1e3


class _Replay:
    """An engine stand-in whose search returns the hits Engine.search found before: a retriever over it
    costs only its own work (documents, nodes, callbacks), free of the search's noise."""

    def __init__(self, eng, k: int):
        self.hits = {q: eng.search(q, k=k) for q in QUERIES}

    def search(self, query, k, **options):
        return self.hits[query]


def retrievers(eng, n: int, k: int, replay: bool = False) -> dict[str, list[float]]:
    """Engine.search and the two retrievers (over the engine, or ``replay``: over its hits found before)."""
    from jevsearch.integrations.langchain import JevsearchRetriever as LangChain
    from jevsearch.integrations.llamaindex import JevsearchRetriever as LlamaIndex

    source, note = (_Replay(eng, k), ", search replayed") if replay else (eng, "")
    calls = {"Engine.search": lambda q: eng.search(q, k=k), f"LangChain invoke{note}": LangChain(index=source, k=k).invoke,
             f"LlamaIndex retrieve{note}": LlamaIndex(source, k=k).retrieve}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n * len(QUERIES) + len(QUERIES)):  # the first round of queries is a warm-up
        for name, call in calls.items():
            ms = _ms(call, QUERIES[i % len(QUERIES)])
            if i >= len(QUERIES):
                times[name].append(ms)
    return times


def mcp_round_trips(eng, index: str, n: int, k: int) -> dict[str, list[float]]:
    from mcp import Client, StdioServerParameters

    server = StdioServerParameters(command=sys.executable, args=["-m", "jevsearch", "mcp", "--index", index],
                                   env={"PYTHONPATH": REPO}, cwd=REPO)
    times: dict[str, list[float]] = {"Engine.search": [], "MCP search round trip": []}

    async def go():
        async with Client(server, read_timeout_seconds=300) as client:
            for i in range(n * len(QUERIES) + len(QUERIES)):
                q = QUERIES[i % len(QUERIES)]
                base = _ms(eng.search, q, k=k)
                t = time.perf_counter()
                result = await client.call_tool("search", {"query": q, "k": k})
                trip = (time.perf_counter() - t) * 1e3
                assert not result.is_error, result.content
                if i >= len(QUERIES):
                    times["Engine.search"].append(base)
                    times["MCP search round trip"].append(trip)

    asyncio.run(go())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model for the index (default: the tiny checkpoint)")
    ap.add_argument("--docs", default=os.path.join(REPO, "examples"), help="documents to index")
    ap.add_argument("-n", type=int, default=20, help="timed calls per query per variant (default 20)")
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jevsearch-bench-integrations-") as tmp:
        index = os.path.join(tmp, "idx")
        with Engine.create(index, model=args.model or tiny_model_dir()) as eng:
            eng.add([args.docs])
        with Engine.open(index, readonly=True) as eng:
            rows = []
            for times in (retrievers(eng, args.n, args.k), retrievers(eng, args.n, args.k, replay=True),
                          mcp_round_trips(eng, index, args.n, args.k)):
                base, fastest = statistics.median(times["Engine.search"]), min(times["Engine.search"])
                for name, values in times.items():
                    med, low = statistics.median(values), min(values)
                    rows.append((name, [med, med / base, low, low / fastest, len(values)],
                                 "baseline" if name == "Engine.search" else ""))
    print_grid(f"integrations, k={args.k} (ms; ratios to the Engine.search of the same block)",
               ["median", "ratio", "min", "ratio", "calls"], rows)


if __name__ == "__main__":
    main()
