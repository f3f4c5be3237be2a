"""Hybrid search of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`).

The visual side (HNSW + MaxSim, as :func:`jevsearch.index.search.search_embeddings`) and the lexical
side (BM25 over the text index, :mod:`jevsearch.index.text`) each rank pages within the same filter;
the lexical side's pages are scored by MaxSim too, and the two rankings are fused by reciprocal rank
(:mod:`jevsearch.search.fusion`); the lexical side votes with the pages holding every part of the
query (see PARTIAL_MATCH). A query without such a match ranks as the visual side does.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from jevsearch.errors import CorruptIndexError, InvalidInputError
from jevsearch.index import search
from jevsearch.index.results import group
from jevsearch.index.state import IndexState
from jevsearch.index.text import reader as text_reader
from jevsearch.search import filters, fusion
from jevsearch.search.maxsim import pad_queries
from jevsearch.search.threads import torch_threads
from jevsearch.store import validate
from jevsearch.store.lmdbstore import EXACT

log = logging.getLogger(__name__)

MODES = ("hybrid", "lexical", "visual")
# What a lexical page lacking some of the query's words (or phrases) counts in the fusion: nothing. A
# paraphrase shares a few words with many pages, and RRF's flat top ranks (k=60) let any lexical vote
# outweigh the visual side's order among its first dozen pages; a page holding every word of the
# query (an exact code, a name, a clause number) counts fully.
PARTIAL_MATCH = 0.0
SPARE = 4  # hits built beyond k: one found damaged as it is built is dropped, the next served


def search_hybrid(st: IndexState, q_single, q_multi, text: str, k: int = 10, *, mode: str | None = None,
                  weights: dict | None = None, candidates: int | None = None, rescore: int | None = None,
                  where: dict | None = None, group_by: str | None = None, pages_per_document: int = 3):
    """Index.search_hybrid: the visual and lexical rankings fused."""
    mode = text_mode(st, mode)
    try:
        weights = fusion.check_weights(weights)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None
    if mode == "visual":
        return search.search_embeddings(st, q_single, q_multi, k=k, candidates=candidates, rescore=rescore,
                                      where=where, group_by=group_by, pages_per_document=pages_per_document)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"text: {text!r:.40} (hint: the query's words, a non-empty str)")
    k = validate.check_k(k)
    if group_by not in (None, "document"):
        raise InvalidInputError(f'group_by: {group_by!r} (hint: None for pages, or "document")')
    per_doc = validate.check_k(pages_per_document, "pages_per_document") if group_by else 0
    cand, rescore = st.layout.depth(k, candidates, rescore)
    # Lexical pages beyond these ranks add little to a fused rank, and each costs a MaxSim.
    pages = k * per_doc * 4 if per_doc else max(k + SPARE, 2 * k if mode == "hybrid" else 0)
    flt = filters.parse(where)
    with st.mutex:
        st.check_open()
        visual = []
        if mode == "hybrid":  # the visual side, as a visual search ranks it
            visual = search.search_embeddings(st, q_single, q_multi, k=max(rescore, k * per_doc), candidates=cand,
                                            rescore=rescore, where=where)
        ti = text_reader(st)
        with st.store.read() as txn:
            st.refresh(txn)
            scope = None if flt is None else st.fields.pages(flt.mask(st.fields))
            lex_ids, lex_scores, full = _lexical(st, ti, txn, text, pages, scope)
            lexical = dict(zip(lex_ids.tolist(), lex_scores.tolist()))
            partial = {p: PARTIAL_MATCH for p in lex_ids[~full].tolist()}
            vis = {h.page_id: h.score for h in visual}
            extra = [p for p in lexical if p not in vis]
            if mode == "hybrid" and extra:
                vis.update(_maxsim(st, txn, q_multi, extra))
            if mode == "lexical":
                ranked = list(lexical.items())
            else:
                order = {h.page_id: i for i, h in enumerate(visual)}  # ties as the visual search breaks them
                by_look = sorted(vis, key=lambda p: (-vis[p], order.get(p, len(order)), p))
                ranked = fusion.fuse({"visual": by_look, "lexical": list(lexical)},
                                     weights, item_weights={"lexical": partial})
            ids = np.array([p for p, _ in ranked], dtype=np.int64)
            scores = np.array([s for _, s in ranked], dtype=np.float32)
            hits = search.hits_of(st, txn, ids[:len(ids) if per_doc else k + SPARE],
                              scores[:len(ids) if per_doc else k + SPARE], len(ids))
    for h in hits:
        h.scores = {"visual": vis.get(h.page_id) if mode == "hybrid" else None,
                    "lexical": lexical.get(h.page_id)}
    return group(hits, k, per_doc) if per_doc else hits[:k]


def text_mode(st: IndexState, mode: str | None) -> str:
    if mode is None:
        return "hybrid" if st.has_text_index else "visual"
    if mode not in MODES:
        raise InvalidInputError(f"mode: {mode!r} (hint: one of {', '.join(MODES)})")
    if mode != "visual" and not st.has_text_index:
        raise InvalidInputError(f"mode {mode!r}: {st.path} has no text index (hint: build it with "
                                "build_text_index() or compact())",
                                cli_hint=f"build it with: jevsearch index --text-index --index {st.path}")
    return mode


def _lexical(st: IndexState, ti, txn, text: str, n: int, scope) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n best live pages (within ``scope``) by BM25; none when the text index is unusable."""
    none = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
    if ti is None:
        return none

    def accept(ids: np.ndarray) -> np.ndarray:
        ok = np.array([st.store.page(txn, p) is not None for p in ids.tolist()], dtype=bool)
        return ok & np.isin(ids, scope) if scope is not None else ok

    try:
        ids, scores, full = ti.search(text, n, accept)
    except Exception as e:  # noqa: BLE001 - a damaged Tantivy file: the visual side still answers
        st.text_problem = f"the text index failed a search ({e})"
        log.warning("%s: %s; searching visually only (verify --repair rebuilds it)", st.path,
                    st.text_problem)
        return none
    # Ties (equal BM25: pages with the same words) by (doc_id, page) as the visual search breaks
    # them, not by Tantivy's segment order, which depends on the index's history.
    names = _page_names(st, txn, ids)
    order = sorted(range(len(ids)), key=lambda i: (not full[i], -round(float(scores[i]), 4), names[i]))
    return ids[order], scores[order], full[order]


def _page_names(st: IndexState, txn, ids: np.ndarray) -> list[tuple[str, int]]:
    docs: dict[bytes, str] = {}
    out = []
    for pid in ids.tolist():
        try:
            key, page_no, _ = st.store.page(txn, pid)
            if key not in docs:
                docs[key] = (st.store.document_by_key(txn, key) or {}).get("doc_id", "")
            out.append((docs[key], page_no))
        except (CorruptIndexError, TypeError):
            out.append(("", pid))  # damaged: _hits notes it
    return out


def _maxsim(st: IndexState, txn, q_multi, page_ids: list[int]) -> dict[int, float]:
    """MaxSim of pages found only by their words (on the exact tokens when the index keeps them)."""
    queries = validate.check_query_multis(q_multi, st.manifest["multi_dim"])
    table = EXACT if st.layout.keep_exact else "multi"
    with torch.no_grad(), torch_threads(1):
        qt = pad_queries(queries, st.dtype, st.device)
        cand = np.array([page_ids], dtype=np.int64)
        (ids, scores), = search.rerank_candidates(st, txn, qt, [len(queries[0])], cand, len(page_ids), table)
    return dict(zip(ids.tolist(), scores.tolist()))
