"""The search path of an :class:`~jevsearch.index.Index`: stage 1 in the HNSW, stage 2 MaxSim over
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
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from jevsearch import docresults
from jevsearch.errors import CorruptIndexError, InvalidInputError
from jevsearch.search import filters, rerank
from jevsearch.search.maxsim import pad_queries, top_with_ties
from jevsearch.search.threads import torch_threads
from jevsearch.store import validate
from jevsearch.store.hnsw import truncate_normalize
from jevsearch.store.lmdbstore import EXACT, page_key
from jevsearch.store.manifest import stored_single_dim

# A fetch whose gets have taken this long, and this long per value, is reading from disk: the rest
# of its values are read ahead in parallel (see _fetch). Measured: a warm 100-candidate fetch takes
# ~0.3 ms; pages cached but not yet mapped in this process (a new process) 10-20 us per fp16 value;
# from disk ~0.2 ms per binary value (4 pages), ~2.4 ms per exact or fp16 value (48 pages).
COLD_FETCH_S, COLD_PER_VALUE_S = 0.002, 50e-6
SPARE_HITS = 4

@dataclass
class Hit:
    """One search result: a page of a document.

    ``page`` is 1-based; ``metadata`` is the document's metadata; ``text`` the page text given to
    ``add_embeddings(page_texts=...)``, or None when none was stored; ``snippet`` (set by
    :meth:`Engine.search`) a short window of it around the query's words; ``path`` the document's file;
    ``page_id`` the page's id in the index (ids are never reused: a re-added document's pages get new ones);
    ``scores`` (hybrid and lexical search) each side's score: {"visual": MaxSim, "lexical": BM25}, None
    for a side that did not find the page.
    """

    doc_id: str
    page: int
    score: float
    metadata: dict = field(default_factory=dict)
    text: str | None = None
    snippet: str = ""
    page_id: int | None = None
    scores: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The document's file: a document added by :meth:`Engine.add` has its absolute path as id."""
        return self.doc_id

    def to_dict(self) -> dict:
        """The hit as JSON-ready data (``jevsearch search --json``, the web app's API): score, path,
        page, snippet, metadata, page_id, and ``scores`` (each side's) after a hybrid or lexical search.

        >>> Hit("/d/a.pdf", 2, 0.5, {"kind": "pdf"}, page_id=7).to_dict()["page"]
        2
        """
        return {"score": self.score, "path": self.path, "page": self.page, "snippet": self.snippet,
                "metadata": self.metadata, "page_id": self.page_id, **({"scores": self.scores} if self.scores else {})}


class IndexSearch:
    """The search methods of :class:`~jevsearch.index.Index` (a mixin: it uses the index's store,
    graph view, scorer and damage log)."""

    def search_embeddings(self, q_single, q_multi, k: int = 10, candidates: int | None = None,
                          rescore: int | None = None, exhaustive: bool = False, *, where: dict | None = None,
                          group_by: str | None = None, pages_per_document: int = 3) -> list[Hit] | list[list[Hit]]:
        """Search with query embeddings.

        One query: q_single [D] (D >= single_dim; may be None when exhaustive) and q_multi
        [L, multi_dim] -> list[Hit]. A batch: q_single [Q, D] and q_multi a list of Q [L_i, multi_dim]
        -> list of Q lists (scored together).
        Stage 1: the ``candidates`` nearest pages in the HNSW (truncated singles); stage 2: their MaxSim
        on the stored codes (the index's codec); stage 3, in an index that keeps exact tokens: exact
        float16 MaxSim of the best pages of stage 2, which gives the hits and their scores (elsewhere
        ``rescore`` does nothing). ``rescore`` None (the default) is an adaptive window: 30 pages (at
        least 3k), doubled while :func:`rerank.rescore_more` says a page not yet rescored could still
        reach the k-th exact score; a number is a fixed window. Default candidates: the index codec's
        (:meth:`Layout.depth`: 200 where codes cheaper than fp16 rank like it (binary with exact tokens;
        int8 where the CPU's int8 matmul is exact), else 100). ``exhaustive=True``: MaxSim of every
        page (the exact tokens when kept, else the codes), streamed in chunks; a search whose
        ``candidates`` reach the live page count skips stage 1 the same way.
        Hits are sorted by score, ties broken by (doc_id, page); at most k (fewer if the index has
        fewer pages). ``candidates`` and ``rescore`` below k are raised to k, all three capped to the
        live pages; ``rescore`` above ``candidates`` is an InvalidInputError. Every value read is
        verified: a damaged page (checksum, impossible score) is skipped and noted once.

        where: a metadata filter (see :mod:`jevsearch.search.filters`), e.g. ``{"team": "finance",
        "year": {"$gte": 2023}}``, applied before stage 1: only matching pages are candidates, so
        min(k, matching pages) hits come back. group_by="document": :class:`~jevsearch.docresults.DocHit`
        results instead, k distinct documents ranked by their best page's score, each with its best
        pages (at most ``pages_per_document``); stage 1 widens until its candidates cover k documents,
        and every candidate is scored on the exact tokens when the index keeps them.
        Example: ``eng.search_embeddings(qs, qm, k=5, where={"kind": "pdf"}, group_by="document")``,
        ``eng.search_embeddings(qs, qm, k=10, candidates=400, rescore=40)``.
        """
        k = validate.check_k(k)
        adaptive = rescore is None
        candidates, rescore = self._layout.depth(k, candidates, rescore)
        flt = filters.parse(where)
        if group_by not in (None, "document"):
            raise InvalidInputError(f'group_by: {group_by!r} (hint: None for pages, or "document")')
        per_doc = validate.check_k(pages_per_document, "pages_per_document") if group_by else 0
        batch = isinstance(q_multi, (list, tuple))
        queries = validate.check_query_multis(q_multi, self._manifest["multi_dim"])
        singles = validate.check_query_singles(q_single, len(queries), batch, self._manifest["single_dim"],
                                               required=not exhaustive)
        with self._mutex:
            self._check_open()
            # One torch thread: the scorer's own workers (self.threads of them) are the parallelism.
            with self._store.read() as txn, torch.no_grad(), torch_threads(1):
                live = self._refresh(txn)["pages"]
                scope = None if flt is None else self._fields.pages(flt.mask(self._fields))  # matching pages
                if scope is not None:
                    live = len(scope)
                # Capped before anything is sized by them: a huge k costs nothing on a small index.
                k, candidates, rescore = (min(x, max(live, 1)) for x in (k, candidates, rescore))
                qt = pad_queries(queries, self._dtype, self._device)  # [Q, L, d]
                q_lens = [len(x) for x in queries]
                exact = self._layout.keep_exact
                # A codes pass (stage 2) before the exact one, unless it would keep every candidate.
                codes_first = exact and not per_doc and rescore < candidates
                # A few more than k reach the hits: a page whose record turns out damaged there is
                # dropped and the next one served (the first k are the same either way).
                best = sys.maxsize if per_doc else k + SPARE_HITS  # grouped: every page
                # The default window widens (_rescore): every candidate's codes score is kept for it.
                keep = (candidates if adaptive else rescore) if codes_first else best
                table = "multi" if codes_first or not exact else EXACT
                if exhaustive:
                    found = self._exhaustive(txn, qt, q_lens, best, scope, EXACT if exact else "multi")
                else:
                    found = self._stage1(txn, qt, q_lens, singles, k, keep, candidates, live, scope, per_doc, table)
                    if codes_first and adaptive:
                        found = self._rescore(txn, qt, q_lens, found, k, best, rescore)
                    elif codes_first:
                        found = self._rerank(txn, qt, q_lens, _padded(found), best, EXACT)
                results = [docresults.group(self._hits(txn, ids, scores, len(ids)), k, per_doc) if per_doc
                           else self._hits(txn, ids, scores, k) for ids, scores in found]
        return results if batch else results[0]

    def search_singles(self, q_single, k: int = 10, *, exact: bool = False) -> list[Hit] | list[list[Hit]]:
        """Search with single vectors only (no MaxSim): for measuring stage 1, e.g. by jevsearch.eval.

        ``exact=False``: the HNSW over the singles truncated to ``single_dim``, i.e. the first k
        candidates a two-stage search would rerank. ``exact=True``: the inner product with every live
        page's stored single vector, a scan of the store (no cache: slow on large indexes, meant for
        evaluation): the full vectors (``single_full_dim`` dims), or, in a codes-only index, which
        stores their first ``single_dim`` dims, those renormalised (the ideal stage 1). Hit scores are
        the inner products of the (truncated, renormalised) vectors; ties broken by (doc_id, page) as
        in :meth:`search_embeddings`. q_single: [D] -> list[Hit], or [Q, D] -> Q lists; D >= single_dim,
        and D == single_full_dim when exact on full vectors.

        >>> hits = eng.search_singles(q_single, k=10)               # doctest: +SKIP
        >>> exact = eng.search_singles(q_single, k=10, exact=True)  # doctest: +SKIP
        """
        from jevsearch.search.singles import exact_top

        k = validate.check_k(k)
        qs = np.asarray(q_single.detach().float().cpu() if hasattr(q_single, "detach") else q_single)
        batch = qs.ndim == 2
        singles = validate.check_query_singles(qs, len(qs) if batch else 1, batch, self._manifest["single_dim"],
                                               required=True)
        with self._mutex:
            self._check_open()
            with self._store.read() as txn, torch.no_grad(), torch_threads(self.threads):
                k = min(k, max(self._refresh(txn)["pages"], 1))  # capped before FAISS sizes anything by it
                dim, full = self._manifest["single_dim"], stored_single_dim(self._manifest)
                prefix = self._layout.single_prefix
                if exact:
                    if not prefix and full is not None and singles.shape[1] != full:
                        raise InvalidInputError(f"q_single: {singles.shape[1]} dims, but the stored singles have "
                                                f"{full} (hint: pass the full query vector for exact=True)")
                    q = truncate_normalize(singles, prefix) if prefix else singles
                    with self._store.scanning():
                        found = exact_top(self._singles(txn, (pid for pid, _, _, _ in self._store.iter_pages(txn))),
                                          q, q.shape[1], k, self._store.single_dtype, normalize=bool(prefix))
                else:
                    q = truncate_normalize(singles, dim)
                    found = []
                    for qi, row in enumerate(self._view.search(q, k)):
                        live = list(self._singles(txn, row[row >= 0].tolist()))  # deleted meanwhile: left out
                        ids = np.array([pid for pid, _ in live], dtype=np.int64)
                        vecs = [np.frombuffer(raw, dtype=self._store.single_dtype, count=full) for _, raw in live]
                        scores = truncate_normalize(np.stack(vecs), dim) @ q[qi] if vecs else np.zeros(0, np.float32)
                        found.append((ids, scores))
                results = [self._hits(txn, ids, scores, k) for ids, scores in found]
        return results if batch else results[0]

    def _singles(self, txn, page_ids):
        """(page id, stored single vector) of the live pages among ``page_ids``; damaged ones noted, left out."""
        for pid in page_ids:
            try:
                raw = self._store.single_raw(txn, pid)
            except CorruptIndexError:
                self._damage.note(self._store, txn, pid, "its single vector fails its checksum")
                continue
            if raw is not None:
                yield pid, raw

    def _stage1(self, txn, qt: torch.Tensor, q_lens: list[int], singles: np.ndarray, k: int, keep: int,
                candidates: int, live: int, scope: np.ndarray | None, per_doc: int, table: str):
        """Per query, the ``keep`` best of its ``candidates`` (within ``scope``, a filter's pages) by the
        MaxSim of ``table``'s values; every live page is a candidate when ``candidates`` reach their
        count (no page can hide in the graph). ``per_doc``: candidates widened to cover k documents."""
        if candidates >= live:
            return self._exhaustive(txn, qt, q_lens, keep, scope, table)
        qsingle = truncate_normalize(singles, self._manifest["single_dim"])
        cand = self._view.search(qsingle, candidates, within=scope)  # [Q, candidates]
        if per_doc:
            cand = docresults.document_candidates(self._store, self._view, txn, qsingle, cand, k, candidates,
                                                  scope, per_doc)
        return self._rerank(txn, qt, q_lens, cand, keep, table)

    def _rerank(self, txn, qt: torch.Tensor, q_lens: list[int], cand: np.ndarray, keep: int, table: str):
        """Per query, the ``keep`` best (with ties) of its own candidates ``cand`` [Q, n] (-1: none) by the
        MaxSim of their values in ``table`` ("multi": the codes; "exact") -> Q pairs (ids, scores)."""
        union = np.unique(cand[cand >= 0])
        if len(union) * len(cand) > 2 * int((cand >= 0).sum()):
            # Little overlap between the queries' candidates: scoring the union against every query
            # would multiply the work by ~Q (measured: 433 ms instead of ~30 ms per query at Q=50).
            out = []
            for q in range(len(cand)):
                ids, raws, lens = self._fetch(txn, cand[q][cand[q] >= 0], table)
                ids, scores = self._score(txn, qt[q:q + 1, : q_lens[q]], q_lens[q:q + 1], ids, raws, lens, table)
                sel = top_with_ties(scores[0], keep)
                out.append((ids[sel], scores[0, sel]))
            return out
        ids, raws, lens = self._fetch(txn, union, table)  # overlapping candidates are fetched and scored once
        return rerank.select_candidates(cand, *self._score(txn, qt, q_lens, ids, raws, lens, table), keep)

    def _rescore(self, txn, qt: torch.Tensor, q_lens: list[int], found: list, k: int, best: int, window: int):
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
            scored = self._rerank(txn, qt[todo], [q_lens[q] for q in todo], cand, cand.shape[1], EXACT)
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

    def _score(self, txn, qt: torch.Tensor, q_lens: list[int], ids: np.ndarray, raws: list, lens: list[int],
               table: str = "multi"):
        """MaxSim [Q, C] of the fetched pages, without the damaged ones (checksum, impossible score)."""
        failed: list[int] = []
        check = self._store.page_check(failed, table)
        scores = self._scorers[table].score(qt, raws, lens, self.threads,
                                            check and (lambda c: check(int(ids[c]), raws[c])))
        bad = rerank.implausible(scores, q_lens)
        if bad.any():
            self._damage.note_scored(self._store, txn, ids[bad].tolist(), failed, _WHAT[table])
            ids, scores = ids[~bad], scores[:, ~bad]
        return ids, scores

    def _exhaustive(self, txn, qt: torch.Tensor, q_lens: list[int], k: int, scope: np.ndarray | None = None,
                    table: str = "multi"):
        bad, failed = [], []
        if scope is None:  # every page, read in key order as they are scored
            pages = ((pid, found[0], tokens) for pid, _, _, tokens in self._store.iter_pages(txn, damaged=bad)
                     if (found := self._multi(txn, pid, tokens, table)) is not None)
        else:  # a filter's matching pages: scattered, fetched first (read ahead in threads when cold)
            pages = zip(*self._fetch(txn, np.sort(scope), table))
        with self._store.scanning() if scope is None else contextlib.nullcontext():
            found, implausible = rerank.exhaustive(pages, qt, k, self._scorers[table], self.threads, q_lens,
                                                   self._store.page_check(failed, table))
        for pid in bad:
            self._damage.note(self._store, txn, pid, "its page record fails its checksum")
        self._damage.note_scored(self._store, txn, implausible, failed, _WHAT[table])
        return found

    def _multi(self, txn, pid: int, tokens: int | None, table: str = "multi"):
        """A page's stored multi-vectors (codes, or the exact tokens: ``table``), unchecked (the scorer
        checks them as it packs them: PageStore.page_check), and their token count; None (noted) when
        known damaged, missing or of the wrong size. ``tokens`` None: the count the value's size gives,
        and a missing value means the page is gone (deleted with its record in one commit)."""
        if pid in self._damage:
            return None
        raw = self._store.get(txn, table, page_key(pid), raw=True)
        if raw is None and tokens is None:
            return None
        per_token = self._layout.bytes_per_token[table]
        size = 0 if raw is None else self._store.payload_size(raw)
        if raw is None or (size % per_token if tokens is None else size != tokens * per_token):
            self._damage.note(self._store, txn, pid, f"its {_WHAT[table]} are missing or of the wrong size")
            return None
        return raw, size // per_token

    def _fetch(self, txn, page_ids: np.ndarray, table: str = "multi"):
        """Zero-copy values of ``table`` (unchecked, see _multi) of the pages still live in ``txn``, and
        their token counts (from the values' sizes: no page records read, ~5 us per candidate).

        Once the gets have taken COLD_FETCH_S, over COLD_PER_VALUE_S per value (a cold cache: ~50 us per
        page read from disk), the rest are read ahead by threads (PageStore.prefetch), their disk reads
        in parallel."""
        ids, raws, lens = [], [], []
        todo, ahead, started = page_ids.tolist(), None, time.perf_counter()
        try:
            for i, pid in enumerate(todo):
                spent = time.perf_counter() - started
                if ahead is None and i + 1 < len(todo) and spent > COLD_FETCH_S and spent > i * COLD_PER_VALUE_S:
                    ahead = self._store.prefetch((table,), todo[i + 1:])
                if (found := self._multi(txn, pid, None, table)) is not None:
                    ids.append(pid)
                    raws.append(found[0])
                    lens.append(found[1])
        finally:
            if ahead is not None:
                ahead.wait()
        return np.array(ids, dtype=np.int64), raws, lens

    def _hits(self, txn, ids: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
        docs: dict[bytes, dict] = {}
        hits = []
        for pid, score in zip(ids.tolist(), scores.tolist()):
            try:
                key, page_no, _ = self._store.page(txn, pid)
                doc = docs.get(key) or docs.setdefault(key, self._store.document_by_key(txn, key))
                text = self._store.text(txn, pid) if doc and doc["text"] else None
            except CorruptIndexError:
                doc = None
            if doc is None:  # also a page no document owns (an orphan: verify lists it, repair drops it)
                self._damage.note(self._store, txn, pid, "its document record or text is missing or damaged")
                continue
            hits.append(Hit(doc["doc_id"], page_no, score, doc["metadata"], text, page_id=pid))
        hits.sort(key=lambda h: (-h.score, h.doc_id, h.page))
        return hits[:k]


_WHAT = {"multi": "multi-vectors", EXACT: "exact tokens"}


def _padded(found: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each query's page ids as one [Q, n] array, -1 after a query's own ids."""
    out = np.full((len(found), max((len(ids) for ids, _ in found), default=0)), -1, dtype=np.int64)
    for q, (ids, _) in enumerate(found):
        out[q, : len(ids)] = ids
    return out
