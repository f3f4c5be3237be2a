"""The search path of an :class:`~jevsearch.index.Index` (functions over its
:class:`~jevsearch.index.state.IndexState`): stage 1 in the HNSW, stage 2 MaxSim over
the candidates' stored multi-vectors (the index's codec), stage 3 (an index that keeps exact tokens)
exact float16 MaxSim over the best ``rescore`` of them, and the hits.

Every stored value a query reads is verified: multi-vectors against their checksums as the scorer
packs them (``PageStore.page_check``), page and document records and texts as they are read. A page
that fails, or whose MaxSim no unit vectors can give (``rerank.implausible``: damaged vectors in an
index without checksums), is skipped and noted once in the index's
:class:`~jevsearch.store.damage.DamageLog`. ``k`` and ``candidates`` are capped to the live pages,
and a search whose candidates reach the live page count scores every page exactly.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from jevsearch.errors import CorruptIndexError, InvalidInputError
from jevsearch.index.results import Hit, document_candidates, group
from jevsearch.index.state import IndexState
from jevsearch.search import filters, rerank
from jevsearch.search.maxsim import pad_queries, top_with_ties
from jevsearch.search.threads import torch_threads
from jevsearch.store import validate
from jevsearch.store.fetch import WHAT, fetch, value
from jevsearch.store.hnsw import truncate_normalize
from jevsearch.store.lmdbstore import EXACT
from jevsearch.store.manifest import stored_single_dim

SPARE_HITS = 4
STAGE1 = ("union", "single")  # stage 1 options: see _stage1


def search_embeddings(st: IndexState, q_single, q_multi, k: int = 10, candidates: int | None = None,
                      rescore: int | None = None, exhaustive: bool = False, *, where: dict | None = None,
                      group_by: str | None = None, pages_per_document: int = 3,
                      stage1: str | None = None) -> list[Hit] | list[list[Hit]]:
    """Index.search_embeddings: stage 1, the codes' MaxSim, the exact rescore, the hits."""
    k = validate.check_k(k)
    union = _stage1_kind(st, stage1) == "union"
    adaptive = rescore is None
    candidates, rescore = st.layout.depth(k, candidates, rescore)
    flt = filters.parse(where)
    if group_by not in (None, "document"):
        raise InvalidInputError(f'group_by: {group_by!r} (hint: None for pages, or "document")')
    per_doc = validate.check_k(pages_per_document, "pages_per_document") if group_by else 0
    batch = isinstance(q_multi, (list, tuple))
    queries = validate.check_query_multis(q_multi, st.manifest["multi_dim"])
    singles = validate.check_query_singles(q_single, len(queries), batch, st.manifest["single_dim"],
                                           required=not exhaustive)
    with st.mutex:
        st.check_open()
        # One torch thread: the scorer's own workers (st.threads of them) are the parallelism.
        with st.store.read() as txn, torch.no_grad(), torch_threads(1):
            live = st.refresh(txn)["pages"]
            scope = None if flt is None else st.fields.pages(flt.mask(st.fields))  # matching pages
            if scope is not None:
                live = len(scope)
            # Capped before anything is sized by them: a huge k costs nothing on a small index.
            k, candidates, rescore = (min(x, max(live, 1)) for x in (k, candidates, rescore))
            qt = pad_queries(queries, st.dtype, st.device)  # [Q, L, d]
            q_lens = [len(x) for x in queries]
            exact = st.layout.keep_exact
            # A codes pass (stage 2) before the exact one, unless it would keep every candidate.
            codes_first = exact and not per_doc and rescore < candidates
            # A few more than k reach the hits: a page whose record turns out damaged there is
            # dropped and the next one served (the first k are the same either way).
            best = sys.maxsize if per_doc else k + SPARE_HITS  # grouped: every page
            # The default window widens (_rescore): every candidate's codes score is kept for it.
            keep = (candidates if adaptive else rescore) if codes_first else best
            table = "multi" if codes_first or not exact else EXACT
            if exhaustive:
                found = _exhaustive(st, txn, qt, q_lens, best, scope, EXACT if exact else "multi")
            else:
                fdes = st.fde.queries(queries) if union else None
                found = _stage1(st, txn, qt, q_lens, singles, k, keep, candidates, live, scope, per_doc, table, fdes)
                if codes_first and adaptive:
                    found = rescore_window(st, txn, qt, q_lens, found, k, best, rescore)
                elif codes_first:
                    found = rerank_candidates(st, txn, qt, q_lens, _padded(found), best, EXACT)
            results = [group(hits_of(st, txn, ids, scores, len(ids)), k, per_doc) if per_doc
                       else hits_of(st, txn, ids, scores, k) for ids, scores in found]
    return results if batch else results[0]


def search_singles(st: IndexState, q_single, k: int = 10, *, exact: bool = False):
    """Index.search_singles: the HNSW's (or an exact scan's) single-vector hits."""
    from jevsearch.search.singles import exact_top

    k = validate.check_k(k)
    qs = np.asarray(q_single.detach().float().cpu() if hasattr(q_single, "detach") else q_single)
    batch = qs.ndim == 2
    singles = validate.check_query_singles(qs, len(qs) if batch else 1, batch, st.manifest["single_dim"],
                                           required=True)
    with st.mutex:
        st.check_open()
        with st.store.read() as txn, torch.no_grad(), torch_threads(st.threads):
            k = min(k, max(st.refresh(txn)["pages"], 1))  # capped before FAISS sizes anything by it
            dim, full = st.manifest["single_dim"], stored_single_dim(st.manifest)
            prefix = st.layout.single_prefix
            if exact:
                if not prefix and full is not None and singles.shape[1] != full:
                    raise InvalidInputError(f"q_single: {singles.shape[1]} dims, but the stored singles have "
                                            f"{full} (hint: pass the full query vector for exact=True)")
                q = truncate_normalize(singles, prefix) if prefix else singles
                with st.store.scanning():
                    found = exact_top(_singles(st, txn, (pid for pid, _, _, _ in st.store.iter_pages(txn))),
                                      q, q.shape[1], k, st.store.single_dtype, normalize=bool(prefix))
            else:
                q = truncate_normalize(singles, dim)
                found = []
                for qi, row in enumerate(st.view.search(q, k)):
                    live = list(_singles(st, txn, row[row >= 0].tolist()))  # deleted meanwhile: left out
                    ids = np.array([pid for pid, _ in live], dtype=np.int64)
                    vecs = [np.frombuffer(raw, dtype=st.store.single_dtype, count=full) for _, raw in live]
                    scores = truncate_normalize(np.stack(vecs), dim) @ q[qi] if vecs else np.zeros(0, np.float32)
                    found.append((ids, scores))
            results = [hits_of(st, txn, ids, scores, k) for ids, scores in found]
    return results if batch else results[0]


def _singles(st: IndexState, txn, page_ids):
    """(page id, stored single vector) of the live pages among ``page_ids``; damaged ones noted, left out."""
    for pid in page_ids:
        try:
            raw = st.store.single_raw(txn, pid)
        except CorruptIndexError:
            st.damage.note(st.store, txn, pid, "its single vector fails its checksum")
            continue
        if raw is not None:
            yield pid, raw


def _stage1_kind(st: IndexState, stage1: str | None) -> str:
    """"union" (the singles' HNSW and the FDE graph) or "single" (the singles' HNSW alone)."""
    has_fde = bool(st.manifest.get("fde"))
    if stage1 is None:
        return "union" if has_fde else "single"
    if stage1 not in STAGE1:
        raise InvalidInputError(f"stage1: {stage1!r} (hint: one of {', '.join(STAGE1)}, or None for the index's)")
    if stage1 == "union" and not has_fde:
        raise InvalidInputError(f"{st.path}: stage1='union' needs the index's FDEs, which it does not keep "
                                "(hint: Index.compact(stage1='union') adds them)")
    return stage1


def _stage1(st: IndexState, txn, qt: torch.Tensor, q_lens: list[int], singles: np.ndarray, k: int, keep: int,
            candidates: int, live: int, scope: np.ndarray | None, per_doc: int, table: str,
            fdes: np.ndarray | None = None):
    """Per query, the ``keep`` best of its ``candidates`` (within ``scope``, a filter's pages) by the
    MaxSim of ``table``'s values; every live page is a candidate when ``candidates`` reach their
    count (no page can hide in the graph). ``per_doc``: candidates widened to cover k documents.
    ``fdes``: the queries' FDEs [Q, F] for the union stage 1: half the candidates from the singles'
    HNSW and half from the FDE graph (each at least k)."""
    if candidates >= live:
        return _exhaustive(st, txn, qt, q_lens, keep, scope, table)
    qsingle = truncate_normalize(singles, st.manifest["single_dim"])
    n_single = candidates if fdes is None else max(k, (candidates + 1) // 2)
    cand = st.view.search(qsingle, n_single, within=scope)  # [Q, n_single]
    if per_doc:
        cand = document_candidates(st.store, st.view, txn, qsingle, cand, k, n_single, scope, per_doc)
    if fdes is not None:
        cand = _union(cand, st.fde_view.search(fdes, max(k, candidates - n_single), within=scope))
    return rerank_candidates(st, txn, qt, q_lens, cand, keep, table)


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the page ids of ``a`` [Q, n] then those of ``b`` [Q, m] not in it -> [Q, n + m], -1 padded."""
    out = np.full((len(a), a.shape[1] + b.shape[1]), -1, dtype=np.int64)
    for q in range(len(a)):
        row = np.concatenate([a[q], b[q]])
        row = row[row >= 0]
        _, first = np.unique(row, return_index=True)
        out[q, : len(first)] = row[np.sort(first)]
    return out


def rerank_candidates(st: IndexState, txn, qt: torch.Tensor, q_lens: list[int], cand: np.ndarray, keep: int,
                      table: str):
    """Per query, the ``keep`` best (with ties) of its own candidates ``cand`` [Q, n] (-1: none) by the
    MaxSim of their values in ``table`` ("multi": the codes; "exact") -> Q pairs (ids, scores)."""
    union = np.unique(cand[cand >= 0])
    if len(union) * len(cand) > 2 * int((cand >= 0).sum()):
        # Little overlap between the queries' candidates: scoring the union against every query
        # would multiply the work by ~Q (measured: 433 ms instead of ~30 ms per query at Q=50).
        out = []
        for q in range(len(cand)):
            ids, raws, lens = _fetch(st, txn, cand[q][cand[q] >= 0], table)
            ids, scores = _score(st, txn, qt[q:q + 1, : q_lens[q]], q_lens[q:q + 1], ids, raws, lens, table)
            sel = top_with_ties(scores[0], keep)
            out.append((ids[sel], scores[0, sel]))
        return out
    ids, raws, lens = _fetch(st, txn, union, table)  # overlapping candidates are fetched and scored once
    return rerank.select_candidates(cand, *_score(st, txn, qt, q_lens, ids, raws, lens, table), keep)


def rescore_window(st: IndexState, txn, qt: torch.Tensor, q_lens: list[int], found: list, k: int, best: int,
                   window: int):
    """Stage 3 with an adaptive window: per query, the exact MaxSim of its ``window`` best candidates
    by the codes (``found``: per query (ids, codes scores) of every candidate), then of twice as many
    while :func:`rerank.rescore_more` says one not yet rescored could still reach the k-th exact
    score (every candidate at most) -> Q pairs (ids, exact scores), the ``best`` (with ties) of each."""
    ranked = []
    for ids, scores in found:
        order = np.argsort(-scores, kind="stable")
        ranked.append((ids[order], scores[order]))
    stop = [min(window, len(ids)) for ids, _ in ranked]
    done, exact = [0] * len(ranked), [{} for _ in ranked]
    todo = [q for q in range(len(ranked)) if stop[q]]
    while todo:
        cand = _padded([(ranked[q][0][done[q]:stop[q]], None) for q in todo])
        scored = rerank_candidates(st, txn, qt[todo], [q_lens[q] for q in todo], cand, cand.shape[1], EXACT)
        widen = []
        for q, (ids, scores) in zip(todo, scored):
            exact[q].update(zip(ids.tolist(), scores.tolist()))
            done[q] = stop[q]
            ids_q, codes_q = ranked[q]
            seen = np.array([exact[q].get(pid, np.nan) for pid in ids_q[:done[q]].tolist()])
            kept = ~np.isnan(seen)  # damaged pages are dropped by _rerank
            if rerank.rescore_more(codes_q[:done[q]][kept], seen[kept], codes_q[done[q]:], k):
                stop[q] = min(len(ids_q), 2 * done[q])
                widen.append(q)
        todo = widen
    out = []
    for scores in exact:
        ids, values = np.array(list(scores), dtype=np.int64), np.array(list(scores.values()), dtype=np.float32)
        sel = top_with_ties(values, best)
        out.append((ids[sel], values[sel]))
    return out


def _score(st: IndexState, txn, qt: torch.Tensor, q_lens: list[int], ids: np.ndarray, raws: list, lens: list[int],
           table: str = "multi"):
    """MaxSim [Q, C] of the fetched pages, without the damaged ones (checksum, impossible score)."""
    failed: list[int] = []
    check = st.store.page_check(failed, table)
    scores = st.scorers[table].score(qt, raws, lens, st.threads,
                                        check and (lambda c: check(int(ids[c]), raws[c])))
    bad = rerank.implausible(scores, q_lens)
    if bad.any():
        st.damage.note_scored(st.store, txn, ids[bad].tolist(), failed, WHAT[table])
        ids, scores = ids[~bad], scores[:, ~bad]
    return ids, scores


def _exhaustive(st: IndexState, txn, qt: torch.Tensor, q_lens: list[int], k: int, scope: np.ndarray | None = None,
                table: str = "multi"):
    bad, failed = [], []
    if scope is None:  # every page, read in key order as they are scored
        pages = ((pid, found[0], tokens) for pid, _, _, tokens in st.store.iter_pages(txn, damaged=bad)
                 if (found := value(st.store, txn, st.damage, pid, tokens, table,
                                                  st.layout.bytes_per_token[table])) is not None)
    else:  # a filter's matching pages: scattered, fetched first (read ahead in threads when cold)
        pages = zip(*_fetch(st, txn, np.sort(scope), table))
    with st.store.scanning() if scope is None else contextlib.nullcontext():
        found, implausible = rerank.exhaustive(pages, qt, k, st.scorers[table], st.threads, q_lens,
                                               st.store.page_check(failed, table))
    for pid in bad:
        st.damage.note(st.store, txn, pid, "its page record fails its checksum")
    st.damage.note_scored(st.store, txn, implausible, failed, WHAT[table])
    return found


def hits_of(st: IndexState, txn, ids: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
    docs: dict[bytes, dict] = {}
    hits = []
    for pid, score in zip(ids.tolist(), scores.tolist()):
        try:
            key, page_no, _ = st.store.page(txn, pid)
            doc = docs.get(key) or docs.setdefault(key, st.store.document_by_key(txn, key))
            text = st.store.text(txn, pid) if doc and doc["text"] else None
        except CorruptIndexError:
            doc = None
        if doc is None:  # also a page no document owns (an orphan: verify lists it, repair drops it)
            st.damage.note(st.store, txn, pid, "its document record or text is missing or damaged")
            continue
        hits.append(Hit(doc["doc_id"], page_no, score, doc["metadata"], text, page_id=pid))
    hits.sort(key=lambda h: (-h.score, h.doc_id, h.page))
    return hits[:k]


def _fetch(st: IndexState, txn, page_ids: np.ndarray, table: str = "multi"):
    return fetch(st.store, txn, st.damage, page_ids, table, st.layout.bytes_per_token[table])


def _padded(found: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each query's page ids as one [Q, n] array, -1 after a query's own ids."""
    out = np.full((len(found), max((len(ids) for ids, _ in found), default=0)), -1, dtype=np.int64)
    for q, (ids, _) in enumerate(found):
        out[q, : len(ids)] = ids
    return out
