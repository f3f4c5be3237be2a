"""`jevsearch mcp` driven as an agent would: started as a subprocess and spoken to with the official MCP
SDK's stdio client (and its streamable-HTTP client for --http), on a real index built with the tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from tests.ingest_corpus import EXAMPLES_QUERY as QUERY

pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent, TextContent

TOOLS = {"search", "get_page", "list_documents", "explain"}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(example_corpus):
    """The example corpus and its index (tests/conftest.py): read only."""
    return example_corpus


def _server(index, *extra) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "jevsearch", "mcp", "--index", str(index), *extra],
                                 env={"PYTHONPATH": REPO}, cwd=REPO)


def _session(server, scenario):
    """Run ``scenario(client)`` against a running server; returns its result."""
    async def go():
        async with Client(server, read_timeout_seconds=120) as client:
            return await scenario(client)

    return asyncio.run(go())


def _png(block) -> Image.Image:
    assert isinstance(block, ImageContent) and block.mime_type == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(block.data)))


def test_every_tool_answers_over_stdio(corpus):
    chart = corpus / "docs" / "chart.png"

    async def scenario(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        out = {"tools": tools}
        out["search"] = await client.call_tool("search", {"query": QUERY, "k": 3})
        out["where"] = await client.call_tool("search", {"query": QUERY, "k": 6, "where": {"team": "finance"}})
        out["docs_mode"] = await client.call_tool("search", {"query": QUERY, "k": 2, "mode": "documents"})
        image = base64.b64encode(chart.read_bytes()).decode()
        out["image"] = await client.call_tool("search", {"image": image, "k": 2})
        out["list"] = await client.call_tool("list_documents", {})
        out["list_ops"] = await client.call_tool("list_documents", {"where": {"team": "ops", "kind": "pdf"}})
        first = out["search"].structured_content["hits"][0]["page_id"]
        out["page"] = await client.call_tool("get_page", {"page_id": first, "width": 500})
        out["explain"] = await client.call_tool("explain", {"page_id": first, "query": QUERY})
        return out

    out = _session(_server(corpus / "idx"), scenario)
    assert set(out["tools"]) == TOOLS
    assert all(t.annotations.read_only_hint for t in out["tools"].values())
    for name in ("search", "where", "docs_mode", "image", "list", "list_ops", "page", "explain"):
        assert not out[name].is_error, (name, out[name].content)

    from jevsearch import Engine

    with Engine.open(corpus / "idx", readonly=True) as eng:
        want = eng.search(QUERY, k=3)
        finance = eng.search(QUERY, k=6, where={"team": "finance"})
        page = eng.page_hit(want[0].page_id)
        thumb = eng.thumbnail(page, width=500)
    hits = out["search"].structured_content["hits"]
    assert [(h["path"], h["page"], h["page_id"]) for h in hits] == [(h.path, h.page, h.page_id) for h in want]
    assert [round(h["score"], 5) for h in hits] == [round(h.score, 5) for h in want]
    assert hits[0]["metadata"]["team"] == want[0].metadata["team"] and "snippet" in hits[0]
    assert [h["page_id"] for h in out["where"].structured_content["hits"]] == [h.page_id for h in finance]
    docs = out["docs_mode"].structured_content["documents"]
    assert len(docs) == 2 and all(d["pages"] for d in docs) and docs[0]["score"] >= docs[1]["score"]
    assert out["image"].structured_content["hits"][0]["path"] == str(chart)  # the same picture finds itself

    listed = out["list"].structured_content["documents"]
    assert sorted(d["doc_id"] for d in listed) == sorted(str(corpus / "docs" / n)
                                                         for n in ("report.pdf", "manual.pdf", "chart.png"))
    assert [d["doc_id"] for d in out["list_ops"].structured_content["documents"]] == [str(corpus / "docs" / "manual.pdf")]

    picture, about = out["page"].content
    assert _png(picture).size == thumb.size and _png(picture).tobytes() == thumb.convert(_png(picture).mode).tobytes()
    about = json.loads(about.text)
    assert (about["path"], about["page"], about["text"]) == (page.path, page.page, page.text)
    heat, tokens = out["explain"].content
    assert _png(heat).width > 100
    tokens = json.loads(tokens.text)
    assert tokens["page_id"] == hits[0]["page_id"] and any("revenue" in t["token"] for t in tokens["tokens"])


def test_bad_arguments_and_unknown_pages_are_refused_as_mcp_errors(corpus):
    calls = [
        ("search", {"query": "x" * 1001}, "1001 characters"),
        ("search", {"query": QUERY, "k": 0}, "k: 0 is out of range"),
        ("search", {"query": QUERY, "k": 101}, "k: 101 is out of range"),
        ("search", {"query": "   "}, "query: empty"),
        ("search", {}, "query: empty"),
        ("search", {"query": QUERY, "where": {"year": {"$regex": "x"}}}, "where"),
        ("search", {"query": QUERY, "mode": "sideways"}, "mode"),
        ("search", {"image": "not base64!"}, "image: not base64"),
        ("search", {"image": base64.b64encode(b"GIF8 not really").decode()}, "image: not a readable image"),
        ("search", {"query": QUERY, "image": "aGk="}, "not both"),
        ("get_page", {"page_id": 10**6}, "not in the index"),
        ("get_page", {"page_id": -1}, "page"),
        ("get_page", {"page_id": "../../etc/passwd"}, "page_id"),
        ("get_page", {"page_id": 0, "width": 100_000}, "width"),
        ("explain", {"page_id": 10**6, "query": QUERY}, "not in the index"),
        ("explain", {"page_id": 0}, "query"),
        ("list_documents", {"where": "team=ops"}, "where"),
        ("no_such_tool", {}, "no_such_tool"),
    ]

    async def scenario(client):
        results = [await client.call_tool(name, args) for name, args, _ in calls]
        results.append(await client.call_tool("search", {"query": QUERY, "k": 2}))  # still serving
        return results

    results = _session(_server(corpus / "idx"), scenario)
    for (name, args, message), result in zip(calls, results):
        assert result.is_error, (name, args)
        text = " ".join(b.text for b in result.content if isinstance(b, TextContent))
        assert message in text, (name, args, text)
        assert "Traceback" not in text
    assert not results[-1].is_error and len(results[-1].structured_content["hits"]) == 2


def test_no_index_is_a_one_line_cli_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jevsearch", "mcp", "--index", str(tmp_path / "none")],
                       check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                       timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert "jevsearch index" in r.stderr  # the CLI's advice


def test_http_transport_serves_the_same_tools(corpus):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jevsearch", "mcp", "--index", str(corpus / "idx"), "--http",
                             str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)

        async def scenario(client):
            tools = {t.name for t in (await client.list_tools()).tools}
            return tools, await client.call_tool("search", {"query": QUERY, "k": 2})

        tools, result = _session(f"http://127.0.0.1:{port}/mcp", scenario)
        assert tools == TOOLS and not result.is_error and len(result.structured_content["hits"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
