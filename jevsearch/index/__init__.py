"""The embedding-level index: a persistent store of page embeddings and its two-stage search.

No model and no PDFs here (that is :class:`jevsearch.engine.Engine`, which adds them on top): callers
bring their own embeddings.

An index is a directory::

    <index>/CURRENT      names the live LMDB directory (replaced atomically by compact)
    <index>/store-<n>/   LMDB: the truth (vectors, pages, documents, manifest) -- jevsearch.store.lmdbstore
    <index>/hnsw.bin     FAISS HNSW over truncated single vectors, a rebuildable cache -- jevsearch.store.hnsw
    <index>/writer.lock  flock held by the one writer -- jevsearch.store.lock

>>> import numpy as np, tempfile, os
>>> rng = np.random.default_rng(0)
>>> unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.standard_normal(s))
>>> path = os.path.join(tempfile.mkdtemp(), "demo")
>>> with Index.create(path, single_dim=64) as eng:
...     eng.add_embeddings("a.pdf", unit(2, 256), [unit(5, 128), unit(7, 128)], metadata={"title": "A"})
...     eng.add_embeddings("b.pdf", unit(1, 256), [unit(4, 128)], page_texts=["hello"])
...     hits = eng.search_embeddings(unit(256), unit(3, 128), k=2)
2
1
>>> len(hits), hits[0].page >= 1
(2, True)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import MappingProxyType

import numpy as np

from jevsearch.errors import StorageError
from jevsearch.index import hybrid, lifecycle, pages, search, text, upkeep, writes
from jevsearch.index import metadata as meta
from jevsearch.index.results import DocHit, Hit
from jevsearch.index.state import IndexState
from jevsearch.store import validate
from jevsearch.store.manifest import check_manifest
from jevsearch.store.visual import PageView

log = logging.getLogger(__name__)

__all__ = ["DocHit", "Hit", "Index"]


class Index:
    """A persistent page index with two-stage search (HNSW candidates, MaxSim rerank).

    Create with :meth:`create`, reopen with :meth:`open`. One writer per index (another raises
    IndexLockedError); any number of ``readonly=True`` readers, in this or other processes, see
    whole documents only and pick up the writer's commits at their next search.
    Its parts are collaborators over one :class:`~jevsearch.index.state.IndexState` (``_state``):
    search, hybrid, writes, metadata, upkeep, text, pages (modules of this package).
    Not for concurrent use from several threads beyond what its internal lock serialises.
    """

    def __init__(self, path: str, store, lock, threads: int):
        # Private: use Index.create / Index.open (or Engine's).
        self._state = st = IndexState(path, store, lock, validate.check_k(threads, "threads"))
        with store.read() as txn:
            manifest = store.manifest(txn)
            check_manifest(manifest)
            st.use_layout(manifest)
            st.manifest = manifest
            old = not st.refresh(txn).get("fields")
        if old and not st.readonly:
            meta.build_field_table(st)
        text.open_text(st)
        if not st.readonly and not all(v.clean for v in st.views()):
            self.flush()  # repaired at open: persist so the next open is fast

    @property
    def path(self) -> str:
        """The index directory."""
        return self._state.path

    @property
    def readonly(self) -> bool:
        """Opened as a reader (no writer lock; writes raise ReadOnlyIndexError)."""
        return self._state.readonly

    @property
    def threads(self) -> int:
        """CPU threads for the engine's tensor work (see :meth:`open`); settable, e.g. ``eng.threads = 2``."""
        return self._state.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._state.threads = validate.check_k(n, "threads")

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, single_dim: int = 128, single_full_dim: int | None = None, multi_dim: int = 128,
               codec: str | None = None, keep_exact: bool | None = None, pool_factor: int | None = None,
               multi_dtype: str | None = None, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
               model_info: dict | None = None, threads: int = 1, text_index: bool | None = None,
               stage1: str = "union"):
        """Create an empty index at ``path`` (which must not exist or be an empty directory).

        single_dim: truncation of the single vectors indexed in the HNSW (Matryoshka); the full
        vectors are kept in LMDB (only their first single_dim dims when keeping codes alone: codec
        int8 or binary without keep_exact). single_full_dim: their D (>= single_dim), or None to take
        it from the first document; later documents must match it. multi_dim: per-token vector size.
        codec: how the per-token vectors are stored: "binary" (the default: 16 B per 128-d token),
        "int8" (132 B) or "fp16" (256 B, the storage of indexes before codecs); keep_exact: also keep
        each page's float16 tokens for the final exact MaxSim (default True for int8 and binary: hits
        and scores as with fp16); pool_factor: 1 (default), 2 or 3 pools each page's tokens at ingest to
        ~1/f of them. The index remembers them (``compact(codec=...)`` converts it); see
        :mod:`jevsearch.index.layout`. multi_dtype: "float16" or "float32" instead of a codec, the
        layout of indexes before codecs.
        hnsw_m / ef_construction / ef_search: HNSW parameters (the search beam is raised to 4x the
        number of candidates asked for, see jevsearch.store.hnsw). model_info: JSON object describing
        the encoder, kept in the manifest. threads: CPU threads for the index's own tensor work (see
        :meth:`open`). text_index: keep a full-text index of the pages' text for lexical and hybrid
        search (:mod:`jevsearch.index.text`); default: when tantivy is installed (the ``text`` extra).
        stage1: "union" (default) keeps each page's MUVERA encoding and a graph of them for stage 1
        beside the singles' HNSW (:mod:`jevsearch.store.fde`); "single": the singles' HNSW alone.
        The index is built in a temporary directory and moved into place, so a crash never leaves a
        half-created index. A new directory gets the mode the umask gives; an empty directory the user
        made is filled in place and keeps its mode and owner. Returns the index opened for writing.
        """
        path = lifecycle.create_dir(path, single_dim, single_full_dim, multi_dim, codec, keep_exact, pool_factor,
                                    multi_dtype, hnsw_m, ef_construction, ef_search, model_info, text_index,
                                    stage1)
        return cls.open(path, threads=threads)

    @classmethod
    def open(cls, path, *, readonly: bool = False, threads: int = 1, repair: bool = False):
        """Open an existing index; ``readonly=True`` for readers (no lock, writes raise ReadOnlyIndexError).

        threads: CPU threads for the index's own tensor work: worker threads sharing a search's MaxSim
        blocks, and torch intra-op threads while add_embeddings converts (restored after each call).
        1 by default: on a small shared machine the other cores may be busy (torch's OpenMP team on 2
        busy cores once made reranks 3x slower). Set it to the cores you can spare for searching.
        FAISS uses 1 thread per query.

        A writer repairs the HNSW from LMDB when they disagree (after a crash). ``repair=True`` (a
        writer): also restore a lost CURRENT file when exactly one store directory holds a whole LMDB
        file (then :meth:`verify` with ``repair=True``). Raises NotAnIndexError, FormatVersionError,
        IndexLockedError (another writer), CorruptIndexError (a damaged index: see its message).
        """
        path = lifecycle.index_path(path)
        threads = validate.check_k(threads, "threads")
        store, lock = lifecycle.open_store(path, readonly, repair)
        try:
            return cls(path, store, lock, threads)
        except BaseException:
            store.close()
            if lock is not None:
                lock.release()
            raise

    def close(self) -> None:
        """Persist the HNSW (writer), release the lock and the LMDB handle. Idempotent."""
        st = self._state
        with st.mutex:
            if st.store is None:
                return
            try:
                if not st.readonly:
                    writes.flush(st)
            finally:
                lifecycle.close(st)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
            return
        try:  # the error in flight says what happened; one from saving the HNSW must not hide it
            self.close()
        except StorageError:
            log.warning("%s: the HNSW file could not be saved; it is rebuilt from LMDB at the next open", self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, readonly={self.readonly})"

    def flush(self) -> None:
        """Write the in-memory HNSW to disk (atomically) and commit the text index. LMDB commits are
        already durable."""
        writes.flush(self._state)

    # -- manifest -------------------------------------------------------------------------------

    @property
    def manifest(self) -> MappingProxyType:
        """Read-only view of the manifest: format_version, single_dim, single_full_dim, single_dtype,
        multi_dim, codec / keep_exact / pool_factor (format version 3; before: multi_dtype), hnsw {M,
        ef_construction, ef_search}, model (the encoder identity or None)."""
        return MappingProxyType(json.loads(json.dumps(self._state.manifest)))

    @property
    def _manifest(self) -> dict:
        # The manifest itself, for ModelSearch (jevsearch.surface), which Engine mixes in.
        return self._state.manifest

    def set_model_info(self, model_info: dict) -> None:
        """Record the encoder identity (a JSON object) in the manifest."""
        writes.set_model_info(self._state, model_info)

    # -- writes ---------------------------------------------------------------------------------

    def add_embeddings(self, doc_id: str, singles, multis, metadata: dict | None = None,
                       page_texts: list[str] | None = None, page_numbers: list[int] | None = None,
                       page_views: list | None = None) -> int:
        """Add (or atomically replace) a document; returns its page count.

        singles: float [P, D], one L2-normalised vector per page; D >= single_dim, and the same D for
            every document of the index (fixed by the first one).
        multis: P float arrays [T_i, multi_dim] (or one [P, T, multi_dim] array), L2-normalised rows.
        metadata: JSON object returned on hits. page_texts: optional P strings, returned as Hit.text.
        page_numbers: optional P increasing 1-based numbers, returned as Hit.page (default 1..P), for a
        document whose unreadable pages were left out.
        page_views: optional P :class:`~jevsearch.store.visual.PageView` (or None): where each page's
            multi-vector rows sit on the page (for :meth:`page_data` / heat-maps) and its thumbnail.
        Vectors within validate.NORM_TOLERANCE of unit norm are renormalised; anything else invalid
        raises InvalidInputError and writes nothing. One LMDB commit per call (the document is durable
        and visible to readers when this returns); the in-memory HNSW takes the new pages in one batch
        before the next search/flush, and its file is saved every SAVE_EVERY_PAGES pages and on
        flush()/close() (a crash is repaired from LMDB at open). Many small documents commit faster
        together: :meth:`add_embeddings_many`.
        Example: ``eng.add_embeddings("report.pdf", singles, multis, metadata={"title": "Q3"})``.
        """
        return self.add_embeddings_many([(doc_id, singles, multis, metadata, page_texts, page_numbers,
                                          page_views)])[0]

    def add_embeddings_many(self, docs) -> list[int]:
        """Add (or replace) several documents in ONE commit; returns their page counts.

        docs: iterable of ``(doc_id, singles, multis[, metadata[, page_texts[, page_numbers[, page_views]]]])``
        tuples, each as in
        :meth:`add_embeddings`, with distinct doc ids. Every document is validated before anything is
        written, and the commit is all or nothing: a bad document (or a crash) leaves none of the batch
        in the index. One fsync for the batch instead of one per document, so small documents are
        written faster (measured 1.1-1.7x at 10 pages x 770 tokens per document: benchmarks/search.py).
        Example: ``eng.add_embeddings_many([("a.pdf", s_a, m_a), ("b.pdf", s_b, m_b, {"title": "B"})])``.
        """
        return writes.add_many(self._state, docs)

    def _add_many(self, docs, auto: tuple = ()) -> list[int]:
        """add_embeddings_many; ``auto``: metadata keys recorded by the ingest (not the caller's to
        change with update_metadata)."""
        return writes.add_many(self._state, docs, auto)

    def _extend(self, doc, auto: tuple = ()) -> None:
        """Append pages to a stored document (a long one committed in parts, jevsearch.ingest.pipeline)
        and replace its metadata; ``doc``: as an add_embeddings_many tuple. Its pages keep their ids when
        none were added after them, else it is rewritten whole from its stored values (no re-encoding)."""
        writes.extend(self._state, doc, auto)

    def delete(self, doc_id: str) -> bool:
        """Delete a document; returns False if it was not there. Its pages become tombstones that
        search skips until :meth:`compact`."""
        return writes.delete(self._state, doc_id)

    def rename_document(self, old: str, new: str, *, metadata: dict | None = None) -> None:
        """Give document ``old`` the id ``new`` (its file was renamed or moved), keeping its pages and
        vectors: nothing is re-encoded, and its pages keep their ids and HNSW entries. A document
        already at ``new`` is replaced. ``metadata`` replaces the document's (default: kept). One commit.

        >>> eng.rename_document("/docs/a.pdf", "/docs/2024/a.pdf")      # doctest: +SKIP
        """
        writes.rename_document(self._state, old, new, metadata=metadata)

    def copy_document(self, src: str, dst: str, *, metadata: dict | None = None) -> int:
        """Add document ``dst`` with the stored vectors, texts and page numbers of ``src`` (a copy of
        its file: no encoding needed); ``metadata`` default: src's. Returns the page count. The stored
        values are copied as they are (codes, exact tokens, pooled pages: nothing is encoded again).

        >>> eng.copy_document("/docs/a.pdf", "/backup/a.pdf")             # doctest: +SKIP
        """
        return writes.copy_document(self._state, src, dst, metadata=metadata)

    def update_metadata(self, doc_id: str, metadata: dict, merge: bool = True) -> dict:
        """Change a document's metadata without re-encoding it; returns the new metadata.

        merge=True sets the keys of ``metadata`` and keeps the others; merge=False replaces the
        caller's metadata with ``metadata`` (what the ingest recorded, e.g. sha256, kind, title,
        stays). One atomic commit: readers, in other processes too, see the old metadata or the new,
        and their next search filters on it. The computed fields (doc_id, path, name, pages) and the
        ingest's cannot be set. Raises InvalidInputError if the document is not indexed.
        Example: ``eng.update_metadata("/data/q3.pdf", {"status": "final"})``.
        """
        return meta.update_metadata(self._state, doc_id, metadata, merge)

    def failures(self) -> dict[str, dict]:
        """Files :meth:`Engine.add` could not index, as recorded: {path: {"sha256", "reason"}}."""
        return writes.failures(self._state)

    def set_failures(self, changes: dict[str, dict | None]) -> None:
        """Record failed files ({path: {"sha256", "reason"}}), or forget them (value None); one commit."""
        writes.set_failures(self._state, changes)

    # -- search ---------------------------------------------------------------------------------

    def search_embeddings(self, q_single, q_multi, k: int = 10, candidates: int | None = None,
                          rescore: int | None = None, exhaustive: bool = False, *, where: dict | None = None,
                          group_by: str | None = None, pages_per_document: int = 3,
                          stage1: str | None = None) -> list[Hit] | list[list[Hit]]:
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
        min(k, matching pages) hits come back. group_by="document": :class:`~jevsearch.index.results.DocHit`
        results instead, k distinct documents ranked by their best page's score, each with its best
        pages (at most ``pages_per_document``); stage 1 widens until its candidates cover k documents,
        and every candidate is scored on the exact tokens when the index keeps them.
        stage1: "union" (the default of an index with FDEs, see :mod:`jevsearch.store.fde`): half the
        candidates from the singles' HNSW and half from the graph of the pages' MUVERA encodings,
        which see every token; "single" (the default of an index without FDEs): the singles' HNSW alone.
        Example: ``eng.search_embeddings(qs, qm, k=5, where={"kind": "pdf"}, group_by="document")``,
        ``eng.search_embeddings(qs, qm, k=10, candidates=400, rescore=40)``.
        """
        return search.search_embeddings(self._state, q_single, q_multi, k, candidates, rescore, exhaustive, where=where,
                                        group_by=group_by, pages_per_document=pages_per_document, stage1=stage1)

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
        return search.search_singles(self._state, q_single, k, exact=exact)

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
        return hybrid.search_hybrid(self._state, q_single, q_multi, text, k, mode=mode, weights=weights,
                                    candidates=candidates, rescore=rescore, where=where, group_by=group_by,
                                    pages_per_document=pages_per_document)

    def _text_mode(self, mode: str | None) -> str:
        # The search mode a text query gets, for ModelSearch (jevsearch.surface), which Engine mixes in.
        return hybrid.text_mode(self._state, mode)

    @property
    def has_text_index(self) -> bool:
        """Whether the index keeps a text index (lexical and hybrid search)."""
        return self._state.has_text_index

    def build_text_index(self) -> int:
        """Give the index a text index built from its stored text layers and titles (nothing is
        re-encoded); rebuilds one that exists. Returns the pages indexed. Needs tantivy (the ``text``
        extra). ``jevsearch index --text-index`` on the command line.

        >>> eng.build_text_index()                      # doctest: +SKIP
        """
        return text.build(self._state)

    def text_stats(self) -> dict:
        """{"text_index": bool, "text_bytes": bytes on disk, "pages_without_text": pages with no
        text layer (scans: only their title finds them)}."""
        return text.stats(self._state)

    # -- upkeep ---------------------------------------------------------------------------------

    def compact(self, *, codec: str | None = None, keep_exact: bool | None = None,
                pool_factor: int | None = None, stage1: str | None = None) -> dict:
        """Rebuild the HNSW from live pages (dropping tombstones, every page reachable) and shrink
        the LMDB file; an older format is rewritten with checksums (1 -> 2) after a deep check
        (CorruptIndexError naming the documents to re-add, nothing changed, when vectors are damaged).

        ``codec`` / ``keep_exact`` / ``pool_factor`` (each None: as it is; a new codec's keep_exact
        defaults as at create): convert the index to that storage, re-encoding every page from its
        float tokens (fp16 codes or kept exact tokens; InvalidInputError when the index has none, or
        to pool tokens pooled already). Crash-safe: a kill at any point leaves the old index or the
        new one, never a mix; readers switch at their next call.

        Every stored value's digest is checked on the way: damaged thumbnail/grid records are dropped
        (the pages show pictures from their source files until their documents are re-added); other
        damaged values cannot be rebuilt and are carried over as they are (still skipped by searches).
        Returns ``{"dropped": [what was dropped], "damaged": [each value left damaged, by document and
        page], "redo": [the documents to delete and re-add]}``; a conversion refuses damaged values
        (CorruptIndexError naming their documents, nothing changed).

        ``stage1``: "union" gives an index without FDEs its pages' MUVERA encodings (from the stored
        float tokens: the exact ones when kept) and their graph, "single" drops them; None: "union"
        for an index made before FDEs existed, else as it is.

        >>> eng.compact(codec="binary", keep_exact=True)                # doctest: +SKIP
        {'dropped': [], 'damaged': [], 'redo': []}
        """
        return upkeep.compact(self._state, codec=codec, keep_exact=keep_exact, pool_factor=pool_factor,
                              stage1=stage1)

    def stats(self) -> dict:
        """Counts and bytes on disk: documents, pages, tokens, tombstones, hnsw_vectors, damaged_pages
        (found damaged and skipped by this process: see :meth:`verify`), the storage (codec,
        keep_exact, pool_factor, single_dtype), bytes {"lmdb_file", "hnsw_file", plus LMDB pages used
        per table: multi, exact, single, ...} and bytes_per_page (live page) of each part: multi_codes,
        exact, singles, hnsw, fde (the FDE table and graph file), other (the rest of the LMDB file:
        records, texts, free pages).

        >>> eng.stats()["bytes_per_page"]      # doctest: +SKIP
        {'multi_codes': 12368.0, 'exact': 197140.0, 'singles': 4104.0, 'hnsw': 1004.0, 'other': 1372.0}
        """
        return upkeep.stats(self._state)

    def verify(self, *, deep: bool = False, repair: bool = False) -> dict:
        """Check the index is consistent; raises CorruptIndexError listing the problems.

        Checks every document's pages, vector sizes, counters, orphans, that the HNSW holds every live
        page, and the pages searches found damaged. ``deep=True`` also reads every value: checksums,
        finite unit vectors, and the graph (every node reachable from its entry point, every node's
        vector the one LMDB holds for its id). ``repair=True`` (a writer) first fixes what LMDB can
        rebuild (:func:`jevsearch.store.verify.repair_records`, then :meth:`compact`) and checks again;
        what remains (damaged pages: re-add their documents) is raised, its ``cli_hint`` giving the
        commands. ``repair`` implies ``deep``. Returns the counts checked (and ``repaired``: what was done).
        """
        return upkeep.verify_index(self._state, deep=deep, repair=repair)

    # -- inspection -----------------------------------------------------------------------------

    def document(self, doc_id: str) -> dict | None:
        """{"doc_id", "pages", "tokens", "metadata"} of a document, or None if it is not indexed."""
        return pages.document(self._state, doc_id)

    def page_hit(self, page_id: int) -> Hit:
        """The live page ``page_id`` (e.g. from ``Hit.page_id``) as a Hit with score 0.

        Raises PageNotFoundError if no such page is indexed (page ids are never reused, so an id from
        before a document was deleted or re-added finds nothing rather than another page).
        """
        return pages.page_hit(self._state, page_id)

    def page_data(self, hit: Hit, *, vectors: bool = True) -> tuple[np.ndarray | None, PageView | None]:
        """The page of ``hit`` as the index scores it: (its multi-vectors as float32 [T, multi_dim]: the
        exact tokens when the index keeps them, else its codes decoded (binary: +-1/sqrt(d) signs),
        or None if not ``vectors``; its
        :class:`~jevsearch.store.visual.PageView` (grid layout, thumbnail), or None if the page has
        none, e.g. it was indexed before views were recorded).

        Raises PageNotFoundError if the page is no longer indexed, or its document was re-added since
        the hit was found (the hit's metadata no longer matches).
        """
        return pages.page_data(self._state, hit, vectors=vectors)

    def documents(self) -> Iterator[str]:
        """The indexed document ids, sorted (damaged document records left out, with a warning)."""
        return iter([d["doc_id"] for d in self.document_list()])

    def document_list(self) -> list[dict]:
        """Every document as :meth:`document` gives it, sorted by id, read in one snapshot. A damaged
        document record is left out with a warning (:meth:`verify` names it; a repair removes it)."""
        return pages.document_list(self._state)
