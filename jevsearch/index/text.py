"""The words side of an :class:`~jevsearch.index.Index`: its text index and hybrid search.

An index whose manifest says ``"text_index": true`` keeps a Tantivy index of its pages' text layers
and titles (:mod:`jevsearch.store.textindex`) in step with LMDB: every write that changes documents
tells it (:meth:`IndexText._text_changed`); its changes are committed at most every COMMIT_EVERY_S
seconds during a run of writes, at :meth:`flush`/close and before the writer's own search, so a
kill -9 can leave it behind LMDB: the next writer's open catches it up from LMDB (or rebuilds a
missing or damaged one). Readers follow the writer's commits; a lexical hit whose page LMDB no longer
holds is dropped, so they never serve a deleted page.

Hybrid search (:meth:`IndexText.search_hybrid`): the visual side (HNSW + MaxSim, as
:meth:`search_embeddings`) and the lexical side (BM25) each rank pages within the same filter; the
lexical side's pages are scored by MaxSim too, and the two rankings are fused by reciprocal rank
(:mod:`jevsearch.search.fusion`); the lexical side votes with the pages holding every part of the
query (see PARTIAL_MATCH). A query without such a match ranks as the visual side does.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from jevsearch import docresults
from jevsearch.errors import CorruptIndexError, InvalidInputError
from jevsearch.search import filters, fusion
from jevsearch.search.maxsim import pad_queries
from jevsearch.search.threads import torch_threads
from jevsearch.store import textindex, validate
from jevsearch.store.lmdbstore import EXACT
from jevsearch.store.verify import Problem

log = logging.getLogger(__name__)

MODES = ("hybrid", "lexical", "visual")
# Tantivy commits cost ~0.1 s (fsyncs, a new segment): a run of writes commits at most this often.
COMMIT_EVERY_S = 5.0
# What a lexical page lacking some of the query's words (or phrases) counts in the fusion: nothing. A
# paraphrase shares a few words with many pages, and RRF's flat top ranks (k=60) let any lexical vote
# outweigh the visual side's order among its first dozen pages; a page holding every word of the
# query (an exact code, a name, a clause number) counts fully.
PARTIAL_MATCH = 0.0
SPARE = 4  # hits built beyond k: one found damaged as it is built is dropped, the next served


class IndexText:
    """Text index upkeep and hybrid search (a mixin of :class:`~jevsearch.index.Index`)."""

    _text = None
    _text_problem: str | None = None

    @property
    def has_text_index(self) -> bool:
        """Whether the index keeps a text index (lexical and hybrid search)."""
        return bool(self._manifest.get("text_index"))

    # -- upkeep ---------------------------------------------------------------------------------

    def _open_text(self) -> None:
        """At open: the text index, caught up with LMDB (writer) or as it is (reader)."""
        self._text, self._text_problem = None, None
        if not self.has_text_index:
            return
        if not textindex.available():
            self._text_problem = "tantivy is not installed: lexical search is off (pip install -e \".[text]\")"
            log.warning("%s: %s", self.path, self._text_problem)
            return
        try:
            ti = textindex.TextIndex.open(self.path, self.readonly)
        except (ValueError, OSError) as e:
            ti, problem = None, f"the text index is missing or damaged ({e})"
        if self.readonly:
            self._text = ti
            if ti is None and not _writable(self.path):
                # Tantivy takes a lock file even to read: a folder this user may not write is searched
                # visually (nothing is wrong with the index).
                log.info("%s: not writable by this user: lexical search is off", self.path)
                return
            if ti is None:
                self._text_problem = problem
                log.warning("%s: %s; searching visually only until a writer rebuilds it", self.path, problem)
            return
        textindex.TextIndex.remove_stale(self.path)
        if ti is None:
            log.warning("%s: %s; rebuilding it from LMDB", self.path, problem)
            self._rebuild_text()
            return
        self._text = ti
        with self._store.read() as txn:
            behind = self._store.state(txn)["gen"] != ti.gen
        if behind:
            self._catch_up_text()

    def build_text_index(self) -> int:
        """Give the index a text index built from its stored text layers and titles (nothing is
        re-encoded); rebuilds one that exists. Returns the pages indexed. Needs tantivy (the ``text``
        extra). ``jevsearch index --text-index`` on the command line.

        >>> eng.build_text_index()                      # doctest: +SKIP
        """
        textindex.tantivy()  # MissingDependencyError with the install command
        with self._mutex:
            self._check_writable()
            if not self.has_text_index:
                with self._store.write() as txn:
                    manifest, state = self._store.manifest(txn), self._store.state(txn)
                    manifest["text_index"] = True
                    state["gen"] += 1
                    self._store.put_manifest(txn, manifest)
                    self._store.put_state(txn, state)
                self._manifest, self._view.gen = manifest, state["gen"]
            return self._rebuild_text()

    def _rebuild_text(self) -> int:
        if self._text is not None:
            self._text.close()
        with self._store.read() as txn:
            state = self._store.state(txn)
            self._text = textindex.TextIndex.create(self.path, -1, state["epoch"])
        self._text_problem = None
        return self._catch_up_text()

    def _catch_up_text(self) -> int:
        """Re-index the documents whose marker differs from LMDB, drop those LMDB no longer has, and
        commit at LMDB's generation; returns the pages (re)indexed."""
        ti, pages = self._text, 0
        with self._store.read() as txn, self._store.scanning():
            state = self._store.state(txn)
            markers = ti.markers()
            docs = {d["first"]: d for d in self._store.iter_documents(txn)}
            sigs = {f: textindex.document_sig(d, textindex.meta_text(d)) for f, d in docs.items()}
            ti.remove([f for f, sig in markers.items() if sigs.get(f) != sig])
            for first, doc in docs.items():
                if markers.get(first) != sigs[first]:
                    ti.add(doc, self._page_texts(txn, doc))
                    pages += doc["pages"]
            ti.commit(state["gen"], state["epoch"])
        if pages or len(markers) != len(docs):
            log.info("%s: text index caught up with LMDB (%d pages indexed)", self.path, pages)
        return pages

    def _page_texts(self, txn, doc: dict) -> list[str] | None:
        if not doc.get("text"):
            return None
        texts = []
        for pid in range(doc["first"], doc["first"] + doc["pages"]):
            try:
                texts.append(self._store.text(txn, pid) or "")
            except CorruptIndexError:
                texts.append("")  # a damaged text: verify names the page
        return texts

    def _text_changed(self, gone: list[int], doc_ids: list[str]) -> None:
        """After a writer's LMDB commit: documents (first page ids) ``gone`` and ``doc_ids`` (re)written."""
        ti = self._text
        if ti is None:
            return
        try:
            ti.remove(gone)
            if doc_ids:
                with self._store.read() as txn:
                    for doc_id in doc_ids:
                        doc = self._store.document(txn, doc_id)
                        if doc is not None:
                            ti.add(doc, self._page_texts(txn, doc))
            if time.monotonic() - ti.last_commit > COMMIT_EVERY_S:
                self._commit_text()
        except Exception as e:  # noqa: BLE001 - LMDB's commit stands; the text index is rebuilt from it
            self._text_failed(e)

    def _commit_text(self) -> None:
        ti = self._text
        if ti is None or not ti.pending:
            return
        try:
            with self._store.read() as txn:
                state = self._store.state(txn)
            ti.commit(state["gen"], state["epoch"])
        except Exception as e:  # noqa: BLE001
            self._text_failed(e)

    def _text_failed(self, e: Exception) -> None:
        log.warning("%s: updating the text index failed (%s); it is rebuilt from LMDB at the next open",
                    self.path, e)
        self._text.close()
        self._text, self._text_problem = None, f"the text index failed an update ({e})"

    def _text_after_compact(self) -> None:
        """Compaction: an index without a text index gets one (tantivy installed); one that has it
        records the new generation."""
        if not self.has_text_index:
            if textindex.available():
                self.build_text_index()
        elif self._text is None:
            self._rebuild_text()
        else:
            self._text.pending += 1
            self._commit_text()

    def _close_text(self) -> None:
        if self._text is not None:
            self._text.close()
            self._text = None

    def _text_reader(self):
        """The text index at its latest commit (a reader follows a rebuild to its new folder)."""
        ti = self._text
        if not self.has_text_index or (self.readonly and ti is None and not _writable(self.path)):
            return None
        if not self.readonly:
            if ti is not None and ti.pending:
                self._commit_text()
            return self._text
        try:
            pointer = textindex.TextIndex.read_pointer(self.path)
            if ti is None or pointer is None or pointer["dir"] != ti.pointer["dir"]:
                self._text = ti = textindex.TextIndex.open(self.path, readonly=True)
            else:
                ti.reload()
            self._text_problem = None
        except (ValueError, OSError) as e:
            self._text, self._text_problem = None, f"the text index is missing or damaged ({e})"
            log.warning("%s: %s; searching visually only", self.path, self._text_problem)
        return self._text

    def _text_problems(self, deep: bool) -> list[Problem]:
        """verify's findings about the text index (all fixable: it is rebuilt from LMDB)."""
        if not self.has_text_index or not textindex.available() or (self.readonly and not _writable(self.path)):
            return []  # a folder we may not write: Tantivy cannot open it to check
        ti = self._text_reader()
        if ti is None:
            return [Problem(f"text index: {self._text_problem}", fixable=True)]
        try:
            with self._store.read() as txn:
                if self.readonly and self._store.state(txn)["gen"] != ti.gen:
                    return []  # behind the writer, which commits it in batches: not a fault a reader can judge
                docs = {d["first"]: d for d in self._store.iter_documents(txn)}
                markers = ti.markers()
                stale = [f for f, s in markers.items()
                         if f not in docs or s != textindex.document_sig(docs[f], textindex.meta_text(docs[f]))]
                missing = [f for f in docs if f not in markers]
                out = []
                if stale or missing:
                    out.append(Problem(f"text index: {len(missing)} documents missing, {len(stale)} stale "
                                       "(it disagrees with LMDB)", fixable=True))
                if deep and not out:
                    want = [doc["first"] + i for doc in docs.values() for i, t in
                            enumerate(self._page_texts(txn, doc) or [""] * doc["pages"])
                            if t.strip() or textindex.meta_text(doc)]
                    if not np.array_equal(np.sort(np.array(want, np.int64)), ti.page_ids()):
                        out.append(Problem("text index: its pages differ from LMDB's", fixable=True))
        except Exception as e:  # noqa: BLE001 - whatever Tantivy raises on a damaged file
            return [Problem(f"text index: unreadable ({e})", fixable=True)]
        return out

    def _repair_text(self) -> list[str]:
        if not self.has_text_index or not textindex.available():
            return []
        pages = self._rebuild_text()
        return [f"rebuilt the text index from LMDB ({pages} pages)"]

    def text_stats(self) -> dict:
        """{"text_index": bool, "text_bytes": bytes on disk, "pages_without_text": pages with no
        text layer (scans: only their title finds them)}."""
        with self._mutex:
            self._check_open()
            ti = self._text_reader() if self.has_text_index else None
            empty = 0
            with self._store.read() as txn, self._store.scanning():
                for doc in self._store.iter_documents(txn):
                    texts = self._page_texts(txn, doc)
                    empty += doc["pages"] if texts is None else sum(not t.strip() for t in texts)
        return {"text_index": self.has_text_index, "text_bytes": ti.bytes() if ti is not None else 0,
                "pages_without_text": empty}

    # -- search ---------------------------------------------------------------------------------

    def search_hybrid(self, q_single, q_multi, text: str, k: int = 10, *, mode: str | None = None,
                      weights: dict | None = None, candidates: int | None = None, rescore: int | None = None,
                      where: dict | None = None, group_by: str | None = None, pages_per_document: int = 3):
        """Search with query embeddings and the query's ``text`` together (one query).

        mode: "hybrid" (the default when the index has a text index, else "visual"): both sides
        ranked, fused by reciprocal rank (:func:`jevsearch.search.fusion.fuse`, k=60; ``weights``
        {"visual": w, "lexical": w}, 1.0 each by default); "lexical": BM25 over the page text and
        titles only (q_single / q_multi may be None); "visual": :meth:`search_embeddings`. Hits carry
        ``score`` (the fused score; BM25 for "lexical") and ``scores`` {"visual": MaxSim or None,
        "lexical": BM25 or None}. ``where`` and ``group_by`` apply to both sides; the lexical side's
        pages get their MaxSim too. Only pages holding every word, phrase or code of ``text`` vote on
        the lexical side (partial matches keep their BM25 in ``scores``); none: the visual ranking. Other arguments as in
        :meth:`search_embeddings`.

        >>> hits = eng.search_hybrid(qs, qm, "INV-2024-08817", k=5)            # doctest: +SKIP
        >>> hits[0].scores                                                    # doctest: +SKIP
        {'visual': 0.41, 'lexical': 7.9}
        """
        mode = self._text_mode(mode)
        try:
            weights = fusion.check_weights(weights)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None
        if mode == "visual":
            return self.search_embeddings(q_single, q_multi, k=k, candidates=candidates, rescore=rescore,
                                          where=where, group_by=group_by, pages_per_document=pages_per_document)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"text: {text!r:.40} (hint: the query's words, a non-empty str)")
        k = validate.check_k(k)
        if group_by not in (None, "document"):
            raise InvalidInputError(f'group_by: {group_by!r} (hint: None for pages, or "document")')
        per_doc = validate.check_k(pages_per_document, "pages_per_document") if group_by else 0
        cand, rescore = self._layout.depth(k, candidates, rescore)
        # Lexical pages beyond these ranks add little to a fused rank, and each costs a MaxSim.
        pages = k * per_doc * 4 if per_doc else max(k + SPARE, 2 * k if mode == "hybrid" else 0)
        flt = filters.parse(where)
        with self._mutex:
            self._check_open()
            visual = []
            if mode == "hybrid":  # the visual side, as a visual search ranks it
                visual = self.search_embeddings(q_single, q_multi, k=max(rescore, k * per_doc), candidates=cand,
                                                rescore=rescore, where=where)
            ti = self._text_reader()
            with self._store.read() as txn:
                self._refresh(txn)
                scope = None if flt is None else self._fields.pages(flt.mask(self._fields))
                lex_ids, lex_scores, full = self._lexical(ti, txn, text, pages, scope)
                lexical = dict(zip(lex_ids.tolist(), lex_scores.tolist()))
                partial = {p: PARTIAL_MATCH for p in lex_ids[~full].tolist()}
                vis = {h.page_id: h.score for h in visual}
                extra = [p for p in lexical if p not in vis]
                if mode == "hybrid" and extra:
                    vis.update(self._maxsim(txn, q_multi, extra))
                if mode == "lexical":
                    ranked = list(lexical.items())
                else:
                    order = {h.page_id: i for i, h in enumerate(visual)}  # ties as the visual search breaks them
                    by_look = sorted(vis, key=lambda p: (-vis[p], order.get(p, len(order)), p))
                    ranked = fusion.fuse({"visual": by_look, "lexical": list(lexical)},
                                         weights, item_weights={"lexical": partial})
                ids = np.array([p for p, _ in ranked], dtype=np.int64)
                scores = np.array([s for _, s in ranked], dtype=np.float32)
                hits = self._hits(txn, ids[:len(ids) if per_doc else k + SPARE],
                                  scores[:len(ids) if per_doc else k + SPARE], len(ids))
        for h in hits:
            h.scores = {"visual": vis.get(h.page_id) if mode == "hybrid" else None,
                        "lexical": lexical.get(h.page_id)}
        return docresults.group(hits, k, per_doc) if per_doc else hits[:k]

    def _text_mode(self, mode: str | None) -> str:
        if mode is None:
            return "hybrid" if self.has_text_index else "visual"
        if mode not in MODES:
            raise InvalidInputError(f"mode: {mode!r} (hint: one of {', '.join(MODES)})")
        if mode != "visual" and not self.has_text_index:
            raise InvalidInputError(f"mode {mode!r}: {self.path} has no text index (hint: build it with "
                                    "build_text_index() or compact())",
                                    cli_hint=f"build it with: jevsearch index --text-index --index {self.path}")
        return mode

    def _lexical(self, ti, txn, text: str, n: int, scope) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The n best live pages (within ``scope``) by BM25; none when the text index is unusable."""
        none = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool)
        if ti is None:
            return none

        def accept(ids: np.ndarray) -> np.ndarray:
            ok = np.array([self._store.page(txn, p) is not None for p in ids.tolist()], dtype=bool)
            return ok & np.isin(ids, scope) if scope is not None else ok

        try:
            ids, scores, full = ti.search(text, n, accept)
        except Exception as e:  # noqa: BLE001 - a damaged Tantivy file: the visual side still answers
            self._text_problem = f"the text index failed a search ({e})"
            log.warning("%s: %s; searching visually only (verify --repair rebuilds it)", self.path,
                        self._text_problem)
            return none
        # Ties (equal BM25: pages with the same words) by (doc_id, page) as the visual search breaks
        # them, not by Tantivy's segment order, which depends on the index's history.
        names = self._page_names(txn, ids)
        order = sorted(range(len(ids)), key=lambda i: (not full[i], -round(float(scores[i]), 4), names[i]))
        return ids[order], scores[order], full[order]

    def _page_names(self, txn, ids: np.ndarray) -> list[tuple[str, int]]:
        docs: dict[bytes, str] = {}
        out = []
        for pid in ids.tolist():
            try:
                key, page_no, _ = self._store.page(txn, pid)
                if key not in docs:
                    docs[key] = (self._store.document_by_key(txn, key) or {}).get("doc_id", "")
                out.append((docs[key], page_no))
            except (CorruptIndexError, TypeError):
                out.append(("", pid))  # damaged: _hits notes it
        return out

    def _maxsim(self, txn, q_multi, page_ids: list[int]) -> dict[int, float]:
        """MaxSim of pages found only by their words (on the exact tokens when the index keeps them)."""
        queries = validate.check_query_multis(q_multi, self._manifest["multi_dim"])
        table = EXACT if self._layout.keep_exact else "multi"
        with torch.no_grad(), torch_threads(1):
            qt = pad_queries(queries, self._dtype, self._device)
            cand = np.array([page_ids], dtype=np.int64)
            (ids, scores), = self._rerank(txn, qt, [len(queries[0])], cand, len(page_ids), table)
        return dict(zip(ids.tolist(), scores.tolist()))


def _writable(path: str) -> bool:
    pointer = textindex.TextIndex.read_pointer_quiet(path)
    return os.access(os.path.join(path, pointer["dir"]) if pointer else path, os.W_OK)
