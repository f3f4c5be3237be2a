"""The LangChain and LlamaIndex retrievers (jevsearch.integrations) on a real index built with the tiny
model, through the frameworks' own entry points (invoke/ainvoke/batch, chains, retrieve/aretrieve)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jevsearch import Engine
from jevsearch.errors import InvalidInputError, JevsearchError, NotAnIndexError
from jevsearch.integrations import require
from tests.ingest_corpus import EXAMPLES_QUERY as QUERY

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from jevsearch.integrations import langchain as jlc
from jevsearch.integrations import llamaindex as jli

WORDS = ["revenue", "circuit", "warehouse", "enzyme", "region", "voltage", "basalt", "harbor", "diagram",
         "contract", "schematic", "invoice", "quarterly", "growth", "summary", "chart"]
QUERIES = [f"{a} {b}" for a, b in zip(WORDS, WORDS[3:] + WORDS[:3])]  # 16 different queries


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(example_corpus):
    """The example corpus and its index (tests/conftest.py), shared with the web app's tests: read only."""
    return example_corpus


@pytest.fixture(scope="module")
def engine(corpus):
    with Engine.open(corpus / "idx", readonly=True) as eng:
        yield eng


def _key(hits):
    return [(h.path, h.page, round(float(h.score), 5)) for h in hits]


def _decode_png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


# ----- LangChain -----------------------------------------------------------------------------------
def test_langchain_invoke_gives_the_engine_hits_with_their_metadata(corpus, engine):
    retriever = jlc.JevsearchRetriever(index=str(corpus / "idx"), k=4)
    docs = retriever.invoke(QUERY)
    hits = engine.search(QUERY, k=4)
    assert len(docs) == 4
    assert [(d.metadata["path"], d.metadata["page"], round(d.metadata["score"], 5)) for d in docs] == _key(hits)
    for doc, hit in zip(docs, hits):
        assert doc.id == str(hit.page_id) and doc.metadata["page_id"] == hit.page_id
        assert doc.metadata["source"] == hit.path and doc.metadata["doc_id"] == hit.doc_id
        assert doc.page_content == (hit.text or hit.snippet)
        # The document's metadata round-trips: what add() was given and what the ingest recorded.
        for key in ("team", "year", "kind", "sha256"):
            assert doc.metadata[key] == hit.metadata[key]
        assert "image_b64" not in doc.metadata
    assert any(d.page_content for d in docs)  # the PDFs' text layers
    retriever.close()


def test_langchain_where_is_honoured_and_overridable_per_call(corpus):
    retriever = jlc.JevsearchRetriever(index=corpus / "idx", k=6, where={"team": "finance"})
    docs = retriever.invoke(QUERY)
    assert docs and {d.metadata["path"] for d in docs} == {str(corpus / "docs" / "report.pdf")}
    assert {d.metadata["team"] for d in docs} == {"finance"}
    ops = retriever.invoke(QUERY, where={"team": "ops"}, k=2)
    assert len(ops) == 2 and {d.metadata["team"] for d in ops} == {"ops"}
    recent = retriever.invoke(QUERY, where={"year": {"$lt": 2024}})
    assert {d.metadata["year"] for d in recent} == {2023}
    retriever.close()


def test_langchain_ainvoke_batch_and_16_concurrent_queries_match_sequential_calls(corpus, engine):
    retriever = jlc.JevsearchRetriever(index=engine, k=3)  # an open engine: used as it is
    sequential = [_doc_key(retriever.invoke(q)) for q in QUERIES]
    assert sequential == [_key(engine.search(q, k=3)) for q in QUERIES]
    assert [_doc_key(d) for d in retriever.batch(QUERIES, config={"max_concurrency": 8})] == sequential

    async def gathered():
        return await asyncio.gather(*(retriever.ainvoke(q) for q in QUERIES))

    assert [_doc_key(d) for d in asyncio.run(gathered())] == sequential
    retriever.close()
    assert engine.search(QUERY, k=1)  # not closed: the caller's engine


def _doc_key(docs):
    return [(d.metadata["path"], d.metadata["page"], round(d.metadata["score"], 5)) for d in docs]


def test_langchain_page_images_for_a_vision_model(corpus, engine):
    retriever = jlc.JevsearchRetriever(index=corpus / "idx", k=2, include_image=True, image_width=600)
    docs = retriever.invoke(QUERY)
    for doc in docs:
        assert doc.metadata["image_mime_type"] == "image/png"
        img = _decode_png(doc.metadata["image_b64"])
        assert img.width == 600  # rendered from the unchanged source, not the 256 px thumbnail enlarged
        want = engine.thumbnail(engine.page_hit(doc.metadata["page_id"]), width=600)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), np.asarray(want.convert("RGB")))
    retriever.close()


def test_langchain_chain_formats_the_documents_into_a_prompt(corpus):
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    retriever = jlc.JevsearchRetriever(index=corpus / "idx", k=3)

    def format_docs(docs):
        return "\n\n".join(f"[{d.metadata['path'].rsplit('/', 1)[-1]} p.{d.metadata['page']}] {d.page_content}"
                           for d in docs)

    prompt = ChatPromptTemplate.from_template("Answer from these pages:\n{context}\n\nQuestion: {question}")
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt
    text = chain.invoke(QUERY).to_messages()[0].content
    docs = retriever.invoke(QUERY)
    assert text.endswith(f"Question: {QUERY}")
    for d in docs:
        assert f"{d.metadata['path'].rsplit('/', 1)[-1]} p.{d.metadata['page']}]" in text
        assert d.page_content in text
    retriever.close()


def test_retrievers_refuse_bad_arguments_with_clear_errors(corpus, tmp_path):
    for k in (0, 101, "x"):
        # LangChain's retriever is a pydantic model: a non-int k is pydantic's ValidationError (a ValueError).
        with pytest.raises(InvalidInputError if k != "x" else ValueError, match="k"):
            jlc.JevsearchRetriever(index=corpus / "idx", k=k)
        with pytest.raises(InvalidInputError, match="k:"):
            jli.JevsearchRetriever(corpus / "idx", k=k)
    with pytest.raises(InvalidInputError, match="width:"):
        jli.JevsearchRetriever(corpus / "idx", include_image=True, image_width=10_000)
    with pytest.raises(NotAnIndexError):
        jlc.JevsearchRetriever(index=tmp_path / "nothing-here")
    retriever = jlc.JevsearchRetriever(index=corpus / "idx")
    with pytest.raises(InvalidInputError, match="query: 1001 characters"):
        retriever.invoke("x" * 1001)
    with pytest.raises(InvalidInputError, match="query: empty"):
        retriever.invoke("  ")
    retriever.close()


def test_a_missing_framework_names_its_extra_and_the_core_never_imports_one():
    with pytest.raises(JevsearchError, match=r"no_such_framework is not installed \(hint: pip install "
                                             r"'jevsearch\[mcp\]'\)"):
        require("no_such_framework", "mcp", "jevsearch mcp")
    code = ("import sys, jevsearch, jevsearch.engine, jevsearch.cli, jevsearch.serve.state, jevsearch.integrations\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index', 'mcp')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ----- LlamaIndex ----------------------------------------------------------------------------------
def test_llamaindex_retrieve_gives_scored_nodes_best_first(corpus, engine):
    from llama_index.core.schema import NodeWithScore, TextNode

    retriever = jli.JevsearchRetriever(str(corpus / "idx"), k=5)
    nodes = retriever.retrieve(QUERY)
    hits = engine.search(QUERY, k=5)
    assert all(isinstance(n, NodeWithScore) and type(n.node) is TextNode for n in nodes)
    assert [(n.node.metadata["path"], n.node.metadata["page"], round(n.score, 5)) for n in nodes] == _key(hits)
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True)
    for n, hit in zip(nodes, hits):
        assert n.node.node_id == f"jevsearch-page-{hit.page_id}" and n.node.ref_doc_id == hit.path
        assert n.node.text == (hit.text or hit.snippet) and n.node.metadata["team"] == hit.metadata["team"]
        assert "sha256" not in n.node.get_content(metadata_mode="llm")  # bookkeeping kept from the LLM
    finance = jli.JevsearchRetriever(corpus / "idx", k=6, where={"team": "finance"}).retrieve(QUERY)
    assert {n.node.metadata["team"] for n in finance} == {"finance"}
    retriever.close()


def test_llamaindex_aretrieve_16_concurrent_queries_match_sequential(corpus, engine):
    retriever = jli.JevsearchRetriever(engine, k=3)
    sequential = [[(n.node.metadata["path"], n.node.metadata["page"], round(n.score, 5))
                   for n in retriever.retrieve(q)] for q in QUERIES]
    assert sequential == [_key(engine.search(q, k=3)) for q in QUERIES]

    async def gathered():
        return await asyncio.gather(*(retriever.aretrieve(q) for q in QUERIES))

    got = [[(n.node.metadata["path"], n.node.metadata["page"], round(n.score, 5)) for n in nodes]
           for nodes in asyncio.run(gathered())]
    assert got == sequential


def test_llamaindex_image_nodes_and_an_image_query(corpus, engine):
    from llama_index.core.schema import ImageNode, QueryBundle

    retriever = jli.JevsearchRetriever(corpus / "idx", k=3, include_image=True, image_width=512)
    nodes = retriever.retrieve(QUERY)
    assert nodes and all(isinstance(n.node, ImageNode) for n in nodes)
    for n in nodes:
        assert n.node.image_mimetype == "image/png" and _decode_png(n.node.image).width == 512
    chart = corpus / "docs" / "chart.png"
    found = retriever.retrieve(QueryBundle(query_str="", image_path=str(chart)))
    assert found[0].node.metadata["path"] == str(chart)  # the same picture finds itself
    want = np.asarray(engine.thumbnail(engine.page_hit(found[0].node.metadata["page_id"]), width=512).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(_decode_png(found[0].node.image).convert("RGB")), want)
    retriever.close()
