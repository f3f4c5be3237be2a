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

import logging
import os
import time
from contextlib import contextmanager

from jevsearch import modelinfo
from jevsearch.errors import DiskFullError, InvalidInputError
from jevsearch.index import Hit, Index
from jevsearch.index.results import DocHit, to_json
from jevsearch.ingest import docinfo
from jevsearch.ingest.backends import LocalBackend, remote
from jevsearch.ingest.renderer import CHANGED
from jevsearch.ingest.thumbnail import WIDTH as THUMBNAIL_WIDTH
from jevsearch.ingest.thumbnail import mime_type as image_mime_type
from jevsearch.search.explain import ALPHA, THRESHOLD
from jevsearch.search.explain import legend as heatmap_legend
from jevsearch.search.threads import torch_threads
from jevsearch.store import fields, validate
from jevsearch.store.lmdbenv import free_bytes
from jevsearch.store.validate import check_page_id
from jevsearch.visuals import is_passage

__all__ = ["ALPHA", "THRESHOLD", "THUMBNAIL_WIDTH", "DocHit", "Engine", "Hit", "ModelSearch", "check_page_id", "filter_documents",
           "find_documents", "heatmap_legend", "image_mime_type", "is_passage", "page_count", "to_json"]

log = logging.getLogger(__name__)


class ModelSearch:
    """What a text or image query needs on top of ``search_embeddings``: the recorded model, query
    encoding, snippets, page pictures and heat-maps. One implementation for :class:`Engine` and
    :class:`~jevsearch.scale.ShardedEngine`, so the two search surfaces cannot drift apart.

    The host provides ``_manifest`` (with the ``model`` record), ``_encoder`` / ``_model_args`` /
    ``_model_source``, ``search_embeddings``, ``search_hybrid`` / ``_text_mode`` and ``page_data``.
    """

    @property
    def encoder(self):
        """The index's model (a JinaV4Encoder), loaded on first use and checked against the record."""
        if self._encoder is None:
            recorded = modelinfo.recorded_model(self._manifest)
            given = self._model_source is not None
            encoder = modelinfo.load_encoder(self._model_source if given else recorded["source"], *self._model_args,
                                             recorded=not given)
            modelinfo.check_same_model(recorded, encoder, given=given)
            self._encoder = encoder
        return self._encoder

    @property
    def model_dtype(self) -> str | None:
        """What the loaded model computes in ("float32", "bfloat16", "int8"); None until it is loaded."""
        return None if self._encoder is None else self._encoder.dtype_name

    @property
    def page_geometry(self):
        """How pages are rendered for this index's model (pixel budget, 28 px token grid)."""
        return modelinfo.page_geometry(self.encoder, self._manifest["model"])

    def search(self, query, k: int = 10, *, candidates: int | None = None, rescore: int | None = None,
               where: dict | None = None, group_by: str | None = None, pages_per_document: int = 3,
               mode: str | None = None, weights: dict | None = None) -> list[Hit] | list[DocHit]:
        """Search with a text (task retrieval, prompt "query") or a PIL image; best pages first.

        ``mode`` (a text query): "hybrid" (the default when the index has a text index) ranks pages
        by their look and by their words together; "lexical" by their words only (no model needed);
        "visual" by their look only (the default without a text index, and for an image query). See
        :meth:`Index.search_hybrid` (``weights``, ``Hit.scores``); in hybrid and lexical modes a
        page's snippet marks the query's words «like this» (a passage's snippet stays its whole text).

        Hits carry ``path``, ``page`` (1-based; a text document's passage number), ``score``
        (MaxSim), ``snippet`` (page text around the query's words; a passage's whole text),
        ``metadata``. ``candidates``, ``rescore``, ``where``, ``group_by``, ``pages_per_document``: as
        in :meth:`Index.search_embeddings` (the search's depth; a filter on metadata before stage 1;
        DocHits per document).

        >>> hits = eng.search("quarterly revenue by region", k=10, where={"year": {"$gte": 2023}})  # doctest: +SKIP
        >>> hits[0].path, hits[0].page, hits[0].score, hits[0].snippet   # doctest: +SKIP
        >>> docs = eng.search("revenue", k=5, group_by="document")       # doctest: +SKIP
        >>> hits = eng.search("INV-2024-08817", mode="lexical")          # doctest: +SKIP
        """
        from jevsearch.search.snippets import highlight, snippet

        text = query if isinstance(query, str) else None
        if text is None and mode not in (None, "visual"):
            raise InvalidInputError(f"mode {mode!r}: needs a text query (hint: an image query searches visually)")
        mode = self._text_mode(mode) if text is not None else "visual"
        args = {"k": k, "candidates": candidates, "rescore": rescore, "where": where, "group_by": group_by,
                "pages_per_document": pages_per_document}
        if mode == "lexical":
            results = self.search_hybrid(None, None, text, mode=mode, weights=weights, **args)
        else:
            emb = self.embed_query(query)
            results = self.search_hybrid(emb.single[0], emb.multi[0], text, mode=mode, weights=weights, **args)
        for hit in (p for d in results for p in d.pages) if group_by else results:
            if hit.metadata.get("kind") == "text":
                hit.snippet = hit.text or ""  # a passage's whole text, as stored
            else:
                hit.snippet = snippet(hit.text or "", text)
                if mode != "visual":
                    hit.snippet = highlight(hit.snippet, text)
        return results

    def embed_query(self, query):
        """A text or PIL image query as this index's model embeds it for search: an object with
        ``single`` [1, D] and ``multi`` [1][T, multi_dim] (as :meth:`search` scores it).

        >>> emb = eng.embed_query("revenue by region"); emb.multi[0].shape   # doctest: +SKIP
        """
        return modelinfo.encode_query(self.encoder, query, self.page_geometry)

    def page_image(self, image):
        """A PIL image prepared as this index's model sees a page or an image query (RGB, resized to
        the index's pixel budget on its 28-px grid); ValueError if it cannot be (e.g. too thin)."""
        from jevsearch.ingest.pages import prepare_image

        return prepare_image(image, self.page_geometry)

    def render(self, hit: Hit, dpi: float = 100):
        """The page of ``hit`` as a PIL image (from the file on disk), for display."""
        from jevsearch.ingest.pages import render_page

        return render_page(hit.path, hit.page, dpi, kind=hit.metadata.get("kind"))

    def explain(self, hit: Hit, query):
        """Why ``hit`` matched ``query`` (the text or PIL image searched with): an
        :class:`~jevsearch.search.explain.Explanation` with ``tokens`` (the query's tokens as text),
        ``maps`` (float32 [L, rows, cols]: each token's similarity with each 28x28-px patch of the page,
        on the vectors the index scored), ``token_scores``, ``summary()`` and ``overlay(token=None)``.
        A text passage's hit gives a :class:`~jevsearch.search.explain.PassageExplanation` instead
        (``ex.kind == "text"``): ``matches(token)`` names the passage word each query token matched.

        Pages indexed without a patch layout (older indexes) or whose stored rows are not one per patch
        are re-encoded from the source file (``ex.source == "recomputed"``, ``ex.note`` says why);
        DocumentError if that file is gone or changed. PageNotFoundError if the page left the index.

        >>> ex = eng.explain(hits[0], "revenue by region")                    # doctest: +SKIP
        >>> ex.maps.shape, ex.tokens[2], ex.overlay(token="revenue").size    # doctest: +SKIP
        ((32, 23), ' revenue', (827, 1169))
        """
        from jevsearch import visuals

        return visuals.explain(self, hit, query)

    def thumbnail(self, hit: Hit, width: int = 256):
        """A PIL image of ``hit``'s page, ``width`` px wide: the thumbnail stored at ingest (256 px; works
        when the source file has moved or changed), or for a larger width a fresh render of the source
        when it is still the file indexed (same SHA-256); else the stored one enlarged (logged)."""
        from jevsearch import visuals

        return visuals.thumbnail(self, hit, width)

    def display_image(self, hit: Hit, dpi: float = 100):
        """(picture of ``hit``'s page, note): rendered at ``dpi`` from the source when it is the file
        indexed, else the stored thumbnail (the note says why); a text passage: a card of its text.
        DocumentError when there is neither."""
        from jevsearch import visuals

        return visuals.display_image(self, hit, dpi=dpi)

    def open_source(self, hit: Hit):
        """``hit``'s source file open for reading (binary), checked to be exactly the file indexed (same
        SHA-256, read from this handle); DocumentError with the reason otherwise. The caller closes it."""
        from jevsearch import visuals

        return visuals.open_source(hit)

    def source_problem(self, hit: Hit) -> str | None:
        """None when ``hit``'s source file is the one indexed, else why not (gone, changed, no checksum)."""
        from jevsearch import visuals

        return visuals.source_problem(hit)


class Engine(ModelSearch, Index):
    """An index plus its model. Create with :meth:`create`, reopen with :meth:`open`; see :class:`Index`
    for writers, readers and the embedding-level API (bring-your-own-embeddings indexes need no model)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._encoder = None  # loaded on first use (Engine.encoder): info/delete/verify never need it
        self._model_args: tuple = (None, None)  # device, dtype for that load
        self._model_source = None  # Engine.open(model=path): load from there (checked) instead of the record

    @classmethod
    def create(cls, path, *, model=None, single_dim: int | None = None, max_pixels: int | None = None,
               device=None, dtype=None, model_info: dict | None = None, **index_args) -> Engine:
        """Create an empty index at ``path`` (which must not exist or be an empty directory).

        model: hub id, local snapshot path or loaded JinaV4Encoder; loaded now (device/dtype as in
        ``JinaV4Encoder.from_pretrained``). The manifest records its source, identity (fingerprint) and
        ``max_pixels`` (page pixel budget, default the model's); ``multi_dim`` comes from it and
        ``single_dim`` defaults to 128 if it is a Matryoshka dim of the model, else the largest one below.
        Without a model the index takes the caller's embeddings (add_embeddings); single_dim default 128.
        Other arguments (single_full_dim, multi_dim, codec, keep_exact, pool_factor, multi_dtype, HNSW
        parameters, threads): as in :meth:`Index.create`; pooling applies to the pages :meth:`add`
        encodes too. Returns the engine opened for writing.
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
             device=None, dtype=None, threads: int = 1, repair: bool = False) -> Engine:
        """Open an existing index (``readonly``, ``threads``, ``repair``: as in :meth:`Index.open`).

        The model recorded at create is loaded on first use (the first add or query), its vision tower
        at the first image. ``model``: use this snapshot instead (e.g. it moved), checked now by its
        files' fingerprint (no weights read): ModelMismatchError unless it is the recorded model.
        ``single_dim``, if given, must be the recorded truncation (else ModelMismatchError).
        ``device``/``dtype``: as in ``JinaV4Encoder.from_pretrained`` (``dtype="int8"``: weight-only
        int8 language model, opt-in, CPU).
        """
        eng = super().open(path, readonly=readonly, threads=threads, repair=repair)
        try:
            eng._model_args = (device, dtype)
            eng._encoder, eng._model_source = modelinfo.check_open(eng._manifest, model, single_dim)
        except BaseException:
            eng.close()
            raise
        return eng


    def add(self, paths, *, metadata: dict | None = None, prune: bool = False, retry_failed: bool = False,
            progress: bool = False, found: tuple | None = None, ray=None, workers: int | None = None):
        """Index PDFs, images and text files (files, or folders searched recursively); returns an IngestReport.

        A document's id is its absolute path; its metadata records sha256, kind, size, mtime_ns,
        ``added`` (UTC) and a PDF's own title, author and created (jevsearch.ingest.docinfo).
        ``metadata`` (a JSON object) is merged into every document of the call, unchanged, moved and
        copied ones included; a changed file keeps the metadata it had and takes the call's on top. Its
        names may not be those the ingest records. .txt/.md files become passage documents (each
        passage a "page": jevsearch.ingest.text). Unchanged files are skipped, changed ones replaced; a renamed or moved file is
        re-keyed and a copy gets the stored vectors, neither re-encoded (``report.moved``/``copied``);
        ``prune=True`` removes documents under ``paths`` whose files are gone (``report.pruned``).
        Bad files are reported in ``report.failed`` as (path, reason) while the rest goes on, and
        recorded: unchanged, they are not tried again (``report.not_retried``) unless ``retry_failed``.
        A page that cannot be rendered is left out (``report.missing_pages``; the document's metadata
        ``missing_pages``: [[page, reason], ...]) and its other pages keep their numbers;
        ``retry_failed`` retries those documents too. Files are checked before the model is loaded,
        and a run with nothing to encode never loads it. Each document is committed whole, a long one in
        parts (its metadata ``partial``: {"through": last page stored, "of": pages} until the last), so
        after a crash (even kill -9) rerunning the same call finishes the job without duplicates and
        a partial document resumes after its last stored page. ``progress``:
        bars on stderr when it is a terminal. ``found``: the
        result of ``discover(paths)`` when the caller has it already (the CLI checks inputs first).
        ``ray``: ``"auto"``, a cluster address or an open :class:`jevsearch.scale.ingest.EncoderPool`:
        render and encode on a Ray cluster instead (``workers`` encoder actors; ``pip install -e
        ".[ray]"`` and ``import jevsearch.scale``, which registers that backend:
        jevsearch.ingest.backends); everything else is as above, and so are the report and the index.

        >>> report = eng.add(["papers/", "scan.png"], prune=True)     # doctest: +SKIP
        >>> report.added, report.moved, report.pruned, report.failed  # doctest: +SKIP
        >>> eng.add(["notes/"], metadata={"team": "finance"})        # doctest: +SKIP
        """
        from jevsearch.ingest import IngestReport, discover
        from jevsearch.ingest.sync import make_plan

        user = self._check_add(metadata, ray, workers)
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        sources, failed = found if found is not None else discover(paths)
        docs = {d["doc_id"]: d["metadata"] for d in self.document_list()}
        failures = self.failures()
        plan = make_plan(sources, docs, failures, paths, prune=prune, retry_failed=retry_failed)
        pruned = set(plan.pruned)
        report = IngestReport(failed=[f for f in failed if f[0] not in pruned] + plan.failed,
                              skipped=plan.skipped, not_retried=plan.not_retried)
        for path in plan.skipped:
            log.info("%s: unchanged, skipped", path)
        self._follow_files(plan, docs, user, report)
        try:
            self._encode_plan(plan, docs, user, report, ray=ray, workers=workers, progress=progress)
        except DiskFullError:
            raise  # what this run committed is in the error; the disk has no room for failure records
        except BaseException:
            try:  # what was learnt about failed files is kept, also after an interruption
                self._remember_failures(failures, plan, report, paths if prune else [])
            except Exception:
                log.warning("could not record the failed files", exc_info=True)
            raise
        try:
            self._remember_failures(failures, plan, report, paths if prune else [])
            for path in report.skipped if user else ():
                if any(docs[path].get(k) != v for k, v in user.items()):
                    self.update_metadata(path, user)  # an unchanged file still takes the call's metadata
            self.flush()
        except DiskFullError as e:
            raise self._disk_full(e, None, report, plan) from e
        return report

    def _check_add(self, metadata: dict | None, ray, workers) -> dict:
        """The checks an add makes before it reads a file: a writer, sound options, the caller's metadata
        (returned) free of the names the ingest records."""
        self._state.check_writable()
        if workers is not None and ray is None:
            raise InvalidInputError("workers: only with ray=... (hint: ray=\"auto\" to use a Ray cluster)")
        user = validate.check_metadata(metadata)
        taken = sorted(set(user) & set(fields.COMPUTED + docinfo.INGEST_FIELDS))
        if taken:
            raise InvalidInputError(f"metadata: {', '.join(taken)} set by jevsearch (hint: pick other names)")
        return user

    def _follow_files(self, plan, docs: dict, user: dict, report) -> None:
        """The plan's changes that need no encoding: moved files re-keyed, copies given the stored
        vectors, documents of files gone pruned."""
        for old, new in plan.moved:
            self.rename_document(old, new, metadata=dict(docs[old], **user, **_file_fields(plan.files[new])))
            report.moved.append((old, new))
            log.info("%s: moved from %s (not re-encoded)", new, old)
        origin = {new: old for old, new in plan.moved}  # a copy of a file moved in this same run
        for src, new in plan.copied:
            meta = docs[origin.get(src, src)]
            self.copy_document(src, new, metadata=dict(meta, **user, **_file_fields(plan.files[new]), added=_now()))
            report.copied.append((src, new))
            log.info("%s: a copy of %s (not re-encoded)", new, src)
        for doc_id in plan.pruned:
            self.delete(doc_id)
            report.pruned.append(doc_id)
            log.info("%s: file gone, removed from the index", doc_id)

    def _encode_plan(self, plan, docs: dict, user: dict, report, *, ray, workers, progress: bool) -> None:
        """Encode and commit the plan's new and changed files: pages on the ingest backend, text files
        here. A full disk raises the DiskFullError that names the file and what was committed."""
        from jevsearch import visuals
        from jevsearch.ingest.text import ingest_texts

        storing: list = [None]  # the file being committed: a full disk names it

        def store(doc) -> None:
            storing[0] = doc.path
            earlier = self.document(doc.path)["metadata"] if doc.after else docs.get(doc.path, {})
            views = None if doc.kind == "text" else visuals.page_views(encoder, geometry, doc)
            self._store_document(doc, earlier, user, plan.files[doc.path], views)
            storing[0] = None

        expected = {p: f.sha256 for p, f in plan.files.items()}
        resume = {s.path: docs[s.path]["partial"]["through"] for s in plan.encode
                  if "partial" in docs.get(s.path, {}) and docs[s.path].get("sha256") == expected[s.path]}
        try:
            visual = [s for s in plan.encode if s.kind != "text"]
            texts = [s for s in plan.encode if s.kind == "text"]
            if visual:
                with self._ingest_backend(ray, workers) as backend:
                    encoder, geometry = backend, backend.page_geometry  # page views need only its processor
                    backend.ingest(visual, store, progress=progress, report=report, expected=expected, resume=resume)
            if texts:  # encoded here, with ray= too: passages cost little next to page images
                encoder, geometry = self.encoder, self.page_geometry
                with torch_threads(modelinfo.ingest_threads(encoder)):
                    # Passages as long as a full page image of this index (jevsearch.ingest.text).
                    ingest_texts(texts, encoder, store, report=report, progress=progress,
                                 page_tokens=geometry.max_pixels // geometry.factor ** 2,
                                 hashes={p: f.sha256 for p, f in plan.files.items()})
        except DiskFullError as e:
            raise self._disk_full(e, storing[0], report, plan) from e

    def _store_document(self, doc, earlier: dict, user: dict, state, views) -> None:
        """Commit an encoded document (or a part of a long one: ``doc.after`` > 0 appends it) with the
        metadata the ingest records; ``earlier``: its stored metadata, ``state``: its file as planned."""
        kept = {k: v for k, v in earlier.items() if k not in docinfo.INGEST_FIELDS}
        missing = [[page, reason] for page, reason in doc.missing]
        if doc.after:  # a later part of a long document: the pages left out before stay recorded
            missing = earlier.get("missing_pages", []) + missing
        meta = {**kept, **user, "kind": doc.kind, **_file_fields(state), "sha256": doc.sha256,
                "added": earlier.get("added") if doc.after else _now(), **doc.info}
        if missing:
            meta["missing_pages"] = missing
        if not doc.complete:  # not served as complete: list/info show it, a rerun completes it
            meta["partial"] = {"through": doc.through, "of": doc.page_count}
        text = doc.kind == "text"
        item = (doc.path, doc.singles, doc.multis, meta, doc.texts, None if text else doc.page_numbers, views)
        if doc.after:
            self._extend(item, auto=docinfo.INGEST_FIELDS)
        else:
            self._add_many([item], auto=docinfo.INGEST_FIELDS)

    @contextmanager
    def _ingest_backend(self, ray, workers):
        """The backend that renders and encodes this add's pages: here (the index's model, torch's
        threads set for it), or the remote one ``ray`` names (registered by jevsearch.scale)."""
        if ray is None:
            encoder = self.encoder
            with torch_threads(modelinfo.ingest_threads(encoder)):
                yield LocalBackend(encoder, self.page_geometry, encoder.max_batch_tokens)
            return
        with remote("ray", ray, modelinfo.recorded_model(self._manifest), workers) as backend:
            yield backend

    def _disk_full(self, e: DiskFullError, path: str | None, report, plan) -> DiskFullError:
        """The error of an add stopped by a full disk: which file, what this run committed, what to do."""
        doc = self.document(path) if path else None
        kept = doc["metadata"].get("partial") if doc else None
        done = {*report.added, *report.skipped, *(p for p, _ in report.failed), path}
        untried = sum(1 for s in plan.encode if s.path not in done)
        what = (f"{path}: not stored" + (f" beyond its pages 1-{kept['through']} of {kept['of']} (kept as a partial "
                                          "document)" if kept else "")) if path else "the index's graph file: not saved"
        text = (f"{what}: no space left on the index's disk ({free_bytes(self.path) // 1024} KiB free); committed "
                f"before it: {len(report.added)} "
                f"documents ({report.pages} pages); {untried} more files not tried")
        again = "then run the same add again: it skips what is stored and completes a partial document"
        return DiskFullError(f"{text} (hint: free disk space, or Index.compact() to shrink the index; {again})",
                             path=path, report=report,
                             cli_hint=f"free disk space, or `jevsearch compact --index {self.path}` to shrink the "
                             "index; "
                             f"{again.replace('add', '`jevsearch index` command')}")

    def update_metadata(self, doc_id: str, metadata: dict, merge: bool = True) -> dict:
        """As :meth:`Index.update_metadata`; ``doc_id`` may also be a file's path relative to here.

        >>> eng.update_metadata("reports/q3.pdf", {"status": "final"})   # doctest: +SKIP
        """
        if isinstance(doc_id, str) and doc_id and self.document(doc_id) is None:
            doc_id = os.path.abspath(doc_id)
        return super().update_metadata(doc_id, metadata, merge)

    def _remember_failures(self, failures: dict, plan, report, pruned_roots: list) -> None:
        """Record this run's failed files (with their hash: unchanged, they are not retried) and forget
        the records of files now indexed or gone."""
        from jevsearch.ingest.sync import stale_failures

        done = {*report.added, *report.skipped, *(n for _, n in report.moved), *(n for _, n in report.copied)}
        changes: dict = {p: None for p in failures if p in done}
        changes.update(dict.fromkeys(stale_failures(failures, pruned_roots), None))
        changes.update({p: {"sha256": plan.files[p].sha256, "reason": r} for p, r in report.failed
                        if p in plan.files and _lasting(r)})
        if changes:
            self.set_failures(changes)

def _file_fields(state) -> dict:
    """What a document's metadata records of its file (list compares them cheaply before hashing)."""
    return {"sha256": state.sha256, "size": state.size, "mtime_ns": state.mtime_ns}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _lasting(reason: str) -> bool:
    """A failure the same file would meet again (not a lack of memory, not a killed renderer, not a
    file that changed while it was indexed)."""
    return ("out of memory" not in reason and not reason.startswith("renderer crashed (exit status -9)")
            and reason != CHANGED)


# -- what the layers above need besides an engine (tests/test_layering.py): the apps (serve/, eval/,
# integrations/) import only jevsearch, jevsearch.engine and jevsearch.index, and scale/ never store/.
# ALPHA, THRESHOLD, heatmap_legend, THUMBNAIL_WIDTH, image_mime_type, is_passage, to_json and
# check_page_id are imported above for them.
def find_documents(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """(files :meth:`Engine.add` would index under ``paths``, as absolute paths in its order; (path,
    reason) of those it could not)."""
    from jevsearch.ingest import discover

    sources, failed = discover([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
    return [s.path for s in sources], failed


def page_count(path: str) -> int:
    """The pages of the PDF at ``path``; DocumentError when it cannot be read."""
    from jevsearch.ingest.pages import PdfDocument

    with PdfDocument(path) as doc:
        return doc.page_count


def filter_documents(docs: list[dict], where: dict) -> list[dict]:
    """The records of ``docs`` (as :meth:`Engine.document_list` gives them) whose fields match ``where``,
    by the search filters' own evaluator (computed fields doc_id, path, name, pages included)."""
    from jevsearch.search import filters

    flt = filters.parse(where)
    if flt is None:
        return docs
    table = fields.FieldView(None)
    table._append([(row, fields.record(d["doc_id"], d["pages"], d["metadata"])) for row, d in enumerate(docs)])
    return [d for d, keep in zip(docs, flt.mask(table)) if keep]
