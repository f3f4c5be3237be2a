"""The facade: the jina-embeddings-v4 model and the ingest pipeline on top of an :class:`Index`.

``Engine`` is an :class:`~jevsearch.index.Index` (every embedding-level method: add_embeddings,
search_embeddings, delete, compact, verify, stats, ...) that also knows its model: it indexes PDFs,
images and text files (:meth:`Engine.add`) and searches with text or image queries (:meth:`Engine.search`).

>>> with Engine.create("indexes/papers", model="jinaai/jina-embeddings-v4") as eng:   # doctest: +SKIP
...     report = eng.add(["papers/", "notes/"], metadata={"team": "finance"})
...     hits = eng.search("quarterly revenue by region", k=5, where={"kind": "pdf"})
...     docs = eng.search("quarterly revenue by region", k=5, group_by="document")
"""

from __future__ import annotations

import os

from jevsearch.docresults import DocHit
from jevsearch.errors import InvalidInputError
from jevsearch.index import Hit, Index
from jevsearch.ingest import docinfo, modelinfo
from jevsearch.search.threads import torch_threads
from jevsearch.store import fields, validate

__all__ = ["DocHit", "Engine", "Hit"]


class Engine(Index):
    """An index plus its model. Create with :meth:`create`, reopen with :meth:`open`; see :class:`Index`
    for writers, readers and the embedding-level API (bring-your-own-embeddings indexes need no model)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._encoder = None  # loaded on first use (Engine.encoder): info/delete/verify never need it
        self._model_args: tuple = (None, None)  # device, dtype for that load

    @classmethod
    def create(cls, path, *, model=None, single_dim: int | None = None, max_pixels: int | None = None,
               device=None, dtype=None, model_info: dict | None = None, **index_args) -> "Engine":
        """Create an empty index at ``path`` (which must not exist or be an empty directory).

        model: hub id, local snapshot path or loaded JinaV4Encoder; loaded now (device/dtype as in
        ``JinaV4Encoder.from_pretrained``). The manifest records its source, identity (fingerprint) and
        ``max_pixels`` (page pixel budget, default the model's); ``multi_dim`` comes from it and
        ``single_dim`` defaults to 128 if it is a Matryoshka dim of the model, else the largest one below.
        Without a model the index takes the caller's embeddings (add_embeddings); single_dim default 128.
        Other arguments (single_full_dim, multi_dim, multi_dtype, HNSW parameters, threads): as in
        :meth:`Index.create`. Returns the engine opened for writing.
        """
        encoder = None
        if model is not None:
            if model_info is not None:
                raise InvalidInputError("model_info: given with model= (hint: pass one of them)")
            # Loaded before anything is written: a bad model path leaves no half-made index.
            encoder, single_dim, model_info = modelinfo.prepare(model, single_dim, max_pixels, device, dtype)
            index_args["multi_dim"] = encoder.multi_dim
        elif max_pixels is not None:
            raise InvalidInputError("max_pixels: only with model= (hint: it sets how pages are rendered)")
        single_dim = modelinfo.DEFAULT_SINGLE_DIM if single_dim is None else single_dim
        eng = super().create(path, single_dim=single_dim, model_info=model_info, **index_args)
        eng._encoder, eng._model_args = encoder, (device, dtype)
        return eng

    @classmethod
    def open(cls, path, *, readonly: bool = False, model=None, single_dim: int | None = None,
             device=None, dtype=None, threads: int = 1) -> "Engine":
        """Open an existing index (``readonly``, ``threads``: as in :meth:`Index.open`).

        The model recorded at create is loaded on first use (add/search). ``model``: load this one now
        instead (e.g. the snapshot moved); ModelMismatchError unless it is the recorded model (same
        fingerprint). ``single_dim``, if given, must be the recorded truncation (else ModelMismatchError).
        """
        eng = super().open(path, readonly=readonly, threads=threads)
        try:
            eng._model_args = (device, dtype)
            eng._encoder = modelinfo.check_open(eng._manifest, model, single_dim, device, dtype)
        except BaseException:
            eng.close()
            raise
        return eng


    @property
    def encoder(self):
        """The index's model (a JinaV4Encoder), loaded on first use and checked against the record."""
        if self._encoder is None:
            recorded = modelinfo.recorded_model(self._manifest)
            encoder = modelinfo.load_encoder(recorded["source"], *self._model_args, recorded=True)
            modelinfo.check_same_model(recorded, encoder)
            self._encoder = encoder
        return self._encoder

    @property
    def page_geometry(self):
        """How pages are rendered for this index's model (pixel budget, 28 px token grid)."""
        return modelinfo.page_geometry(self.encoder, self._manifest["model"])

    def add(self, paths, *, metadata: dict | None = None, progress: bool = False):
        """Index PDFs, images and text files (files, or folders searched recursively); returns an IngestReport.

        A document's id is its absolute path. ``metadata`` (a JSON object) is merged into every
        document of the call, unchanged ones included (a changed file keeps the metadata it had, and
        takes the call's on top); the ingest adds its own fields (kind, sha256,
        bytes, mtime, and a PDF's title/author/created: jevsearch.ingest.docinfo), whose names the
        caller's metadata may not use. .txt/.md files become passage documents (each passage a
        "page": jevsearch.ingest.text). Unchanged files are skipped (by SHA-256), changed ones replaced,
        bad ones reported in ``report.failed`` as (path, reason) while the rest goes on. Each document
        is committed whole, so after a crash (even kill -9) rerunning the same call finishes the job
        without duplicates.

        >>> report = eng.add(["papers/", "scan.png", "notes/"], metadata={"team": "finance"})  # doctest: +SKIP
        >>> report.added, report.skipped, report.failed         # doctest: +SKIP
        """
        from jevsearch.ingest import IngestReport, discover, ingest
        from jevsearch.ingest.text import ingest_texts

        self._check_writable()
        user = validate.check_metadata(metadata)
        taken = sorted(set(user) & set(fields.COMPUTED + docinfo.INGEST_FIELDS))
        if taken:
            raise InvalidInputError(f"metadata: {', '.join(taken)} set by jevsearch (hint: pick other names)")
        encoder, geometry = self.encoder, self.page_geometry
        sources, failed = discover(paths)
        known, kept = {}, {}
        for src in sources:
            doc = self.document(src.path)
            if doc is not None and "sha256" in doc["metadata"]:
                known[src.path] = doc["metadata"]["sha256"]
            if doc is not None:  # a changed file keeps the metadata its user gave it
                kept[src.path] = {k: v for k, v in doc["metadata"].items() if k not in docinfo.INGEST_FIELDS}

        def store(doc) -> None:
            meta = {**kept.get(doc.path, {}), **user, **docinfo.file_fields(doc.path, doc.kind, doc.sha256)}
            self._add_many([(doc.path, doc.singles, doc.multis, meta, doc.texts)], auto=docinfo.INGEST_FIELDS)

        report = IngestReport(failed=failed)
        with torch_threads(modelinfo.ingest_threads(encoder)):
            visual = [s for s in sources if s.kind != "text"]
            if visual:
                ingest(visual, encoder, store, geometry=geometry, known=known, progress=progress, report=report,
                       batch_tokens=encoder.max_batch_tokens)
            texts = [s for s in sources if s.kind == "text"]
            if texts:  # passages as long as a full page image of this index (see jevsearch.ingest.text)
                ingest_texts(texts, encoder, store, known=known, report=report, progress=progress,
                             page_tokens=geometry.max_pixels // geometry.factor ** 2)
        for path in report.skipped if user else ():
            if any(self.document(path)["metadata"].get(k) != v for k, v in user.items()):
                self.update_metadata(path, user)  # an unchanged file still takes the call's metadata
        self.flush()
        return report

    def update_metadata(self, doc_id: str, metadata: dict, merge: bool = True) -> dict:
        """As :meth:`Index.update_metadata`; ``doc_id`` may also be a file's path relative to here.

        >>> eng.update_metadata("reports/q3.pdf", {"status": "final"})   # doctest: +SKIP
        """
        if isinstance(doc_id, str) and doc_id and self.document(doc_id) is None:
            doc_id = os.path.abspath(doc_id)
        return super().update_metadata(doc_id, metadata, merge)

    def search(self, query, k: int = 10, *, candidates: int = 100, where: dict | None = None,
               group_by: str | None = None, pages_per_document: int = 3) -> list[Hit] | list[DocHit]:
        """Search with a text (task retrieval, prompt "query") or a PIL image; best pages first.

        Hits carry ``path``, ``page`` (1-based; a text document's passage number), ``score``
        (MaxSim), ``snippet`` (page text around the query's words; a passage's whole text),
        ``metadata``. ``where``, ``group_by``, ``pages_per_document``: as in
        :meth:`Index.search_embeddings` (a filter on metadata before stage 1; DocHits per document).

        >>> hits = eng.search("quarterly revenue by region", k=10, where={"year": {"$gte": 2023}})  # doctest: +SKIP
        >>> hits[0].path, hits[0].page, hits[0].score, hits[0].snippet   # doctest: +SKIP
        >>> docs = eng.search("revenue", k=5, group_by="document")       # doctest: +SKIP
        """
        from jevsearch.search.snippets import snippet

        emb = modelinfo.encode_query(self.encoder, query, self.page_geometry)
        results = self.search_embeddings(emb.single[0], emb.multi[0], k=k, candidates=candidates, where=where,
                                         group_by=group_by, pages_per_document=pages_per_document)
        for hit in (p for d in results for p in d.pages) if group_by else results:
            if hit.metadata.get("kind") == "text":
                hit.snippet = hit.text or ""
            else:
                hit.snippet = snippet(hit.text or "", query if isinstance(query, str) else None)
        return results

    def render(self, hit: Hit, dpi: float = 100):
        """The page of ``hit`` as a PIL image (from the file on disk), for display."""
        from jevsearch.ingest.pages import render_page

        return render_page(hit.path, hit.page, dpi, kind=hit.metadata.get("kind"))
