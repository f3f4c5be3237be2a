"""A sharded index: a folder of ordinary jevsearch indexes plus a shard manifest, searched by scatter/merge.

    indexes/big/
      shards.json     the shard manifest (written atomically): format, shard names, routing, model record
      shard-000/      an ordinary index (Engine.open("indexes/big/shard-000") works on its own)
      shard-001/ ...

A document goes to the shard ``route(doc_id)`` (:mod:`jevsearch.scale.shardfile`: SHA-256 of its id,
stable in every process and on every machine).

A search encodes the query once (here, :class:`~jevsearch.engine.ModelSearch`, as an Engine does),
sends its vectors to every shard, each runs its own two-stage search (a ``where`` filter before its
stage 1; ``group_by="document"`` within the shard, which holds every page of its documents), and the
per-shard top k are merged exactly by :mod:`jevsearch.search.merge`. A shard's top k are its k best,
so the merge is the global top k of what the shards found: with ``candidates`` >= each shard's page
count it equals exact MaxSim over the whole corpus, as one index gives.

>>> sh = ShardedEngine.create("indexes/big", shards=4, model="jinaai/jina-embeddings-v4")   # doctest: +SKIP
>>> sh.add(["corpus/"], ray="auto")                                                        # doctest: +SKIP
>>> hits = sh.search("quarterly revenue", k=10, candidates=100)                            # doctest: +SKIP
>>> sh = ShardedEngine.open("indexes/big", ray="auto")      # one read-only actor per shard   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from types import MappingProxyType

from jevsearch import modelinfo
from jevsearch.engine import Engine, ModelSearch, check_page_id
from jevsearch.errors import (
    CorruptIndexError,
    IndexExistsError,
    InvalidInputError,
    JevsearchError,
    PageNotFoundError,
    ReadOnlyIndexError,
    ShardError,
)
from jevsearch.scale.shardfile import (
    FORMAT,
    MAX_SHARDS,
    ROUTING,
    VERSION,
    fsync_dir,
    read_manifest,
    route,
    write_manifest,
)
from jevsearch.scale.shardmerge import Hits, merge_reports, merge_stats, merge_verify, why
from jevsearch.scale.shards import open_local, open_ray
from jevsearch.search.merge import merge_documents, merge_pages

log = logging.getLogger(__name__)

class ShardedEngine(ModelSearch):
    """An index split into shards by document id; the same search surface as :class:`Engine`
    (:class:`~jevsearch.surface.Searchable`: search with ``where``/``group_by``, explain, thumbnail,
    page_hit, list, delete, compact, verify, ...), results identical to one index holding the same
    documents. A hit's ``page_id`` is global: ``local id * shard count + shard number``.

    Create with :meth:`create`, open with :meth:`open`. Opened without ``ray``, the shards are ordinary
    indexes in this process (a writer holds each one's lock; ``readonly=True`` for readers) and a
    search asks them all at once on threads. With ``ray``, each shard is served by a long-lived Ray
    actor that holds it open read-only (writes raise ReadOnlyIndexError). Both give the same hits.

    A shard that is missing or fails is a :class:`~jevsearch.errors.ShardError`; with
    ``allow_partial=True`` the others answer and ``missing`` (and each result's ``.missing``) names it.
    """

    def __init__(self, path: str, manifest: dict, backend, missing: dict, allow_partial: bool, readonly: bool,
                 timeout: float | None, model_args: tuple):
        # Private: use ShardedEngine.create / ShardedEngine.open.
        self.path, self.readonly, self.allow_partial, self.timeout = path, readonly, allow_partial, timeout
        self._manifest, self._backend, self._missing = manifest, backend, dict(missing)
        self._encoder, self._model_args = None, model_args
        self._model_source = None  # shards load the recorded model (ModelSearch.encoder)
        self._model_shared = False  # every open shard Engine holds self._encoder (see _share_model)
        self._number = {name: i for i, name in enumerate(manifest["shards"])}
        self._index_manifest = None

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, shards: int = 4, model=None, single_dim: int | None = None,
               max_pixels: int | None = None, device=None, dtype=None, threads: int = 1,
               **index_args) -> ShardedEngine:
        """Create ``shards`` empty indexes and the shard manifest at ``path`` (must not exist or be empty).

        ``model`` (loaded once, recorded in every shard and the manifest), ``single_dim``, ``max_pixels``,
        ``device``, ``dtype``, and other index arguments: as in :meth:`Engine.create`. Without a model the
        shards take the caller's embeddings (``add_embeddings``). Built in a temporary sibling folder
        and renamed into place, so a crash never leaves half a sharded index. Returns it open for writing.
        """
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidInputError(f"shards: {shards!r} (hint: an integer from 1 to {MAX_SHARDS})")
        path = os.fspath(path)
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise IndexExistsError(f"{path}: already exists and is not empty (hint: open it, or pick a new path)")
        encoder, model_info = None, None
        if model is not None:
            # Loaded before anything is written: a bad model path leaves nothing behind.
            encoder, single_dim, model_info = modelinfo.prepare(model, single_dim, max_pixels, device, dtype)
            index_args["multi_dim"] = encoder.multi_dim
        elif max_pixels is not None:
            raise InvalidInputError("max_pixels: only with model= (hint: it sets how pages are rendered)")
        width = max(3, len(str(shards - 1)))
        names = [f"shard-{i:0{width}d}" for i in range(shards)]
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".jevsearch-create-", dir=parent)
        try:
            for name in names:
                Engine.create(os.path.join(tmp, name), single_dim=single_dim, model_info=model_info,
                              **index_args).close()
            write_manifest(tmp, {"format": FORMAT, "version": VERSION, "shards": names, "routing": ROUTING,
                                 "model": model_info})
            os.rename(tmp, path)  # replaces an empty directory atomically
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(parent)
        return cls.open(path, model=encoder, threads=threads, device=device, dtype=dtype)

    @classmethod
    def open(cls, path, *, readonly: bool = False, ray=None, allow_partial: bool = False, threads: int = 1,
             model=None, device=None, dtype=None, timeout: float | None = None,
             nodes: dict | None = None, repair: bool = False) -> ShardedEngine:
        """Open a sharded index.

        readonly / threads / model / device / dtype: as in :meth:`Engine.open`, for every shard.
        ray: ``"auto"`` or a cluster address: serve each shard from a Ray actor holding it open read-only
        (implies ``readonly``); ``nodes`` maps shard names to the Ray node ids that hold their files.
        allow_partial: open and search even when shards are missing or fail (see :attr:`missing`).
        timeout: seconds a shard may take to answer before it counts as failed (default: no limit).
        repair: as in :meth:`Engine.open`, for every shard (a writer; not with ``ray``).
        """
        path = os.fspath(path)
        manifest = read_manifest(path)
        names = manifest["shards"]
        if repair and (readonly or ray is not None):
            raise InvalidInputError("repair: needs a writer", hint="open without readonly=True and ray=")
        if nodes is not None and not set(nodes) <= set(names):
            raise InvalidInputError(f"nodes: unknown shards {sorted(set(nodes) - set(names))} (hint: {names[0]}, ...)")
        paths = {name: os.path.join(path, name) for name in names}
        encoder = None
        if ray is not None:
            backend, missing = open_ray(ray, paths, threads, nodes, timeout)
            readonly = True
        else:
            if model is not None:  # loaded once for every shard (each checks it is its model)
                encoder = modelinfo.load_encoder(model, device, dtype)
            backend, missing = open_local(paths, readonly=readonly, model=encoder, threads=threads, device=device,
                                          dtype=dtype, repair=repair)
        sh = cls(path, manifest, backend, missing, allow_partial, readonly, timeout, (device, dtype))
        if model is not None:
            if ray is not None:  # only queries are encoded here; the shard actors hold no model
                encoder = modelinfo.load_encoder(model, device, dtype)
                modelinfo.check_same_model(modelinfo.recorded_model(manifest), encoder)
            sh._encoder, sh._model_shared = encoder, ray is None
        if missing and not allow_partial:
            sh.close()
            raise sh._shard_error(missing)
        for name, e in missing.items():
            log.warning("%s: shard %s unavailable, searching the others: %s", path, name, e)
        return sh

    def close(self) -> None:
        """Close every shard (a writer flushes and releases its lock), or stop the shard actors. Idempotent."""
        if self._backend is not None:
            backend, self._backend = self._backend, None
            backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedEngine({self.path!r}, shards={len(self.shards)}, readonly={self.readonly})"

    # -- what it is -----------------------------------------------------------------------------
    @property
    def shards(self) -> list[str]:
        """The shard names, in routing order (shard i holds the documents with route(id) == i)."""
        return list(self._manifest["shards"])

    @property
    def missing(self) -> list[str]:
        """Shards that could not be opened (only with ``allow_partial=True``; else open raised)."""
        return sorted(self._missing)

    @property
    def manifest(self) -> MappingProxyType:
        """The shards' index manifest (format_version, dims, model, ...; the same for every shard)."""
        if self._index_manifest is None:
            answers = self._call("manifest", partial_ok=True)
            first = next(iter(answers.values()))
            self._index_manifest = json.loads(json.dumps(dict(first)))
        return MappingProxyType(self._index_manifest)

    def route(self, doc_id: str) -> str:
        """The name of the shard that holds (or will hold) ``doc_id``."""
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidInputError(f"doc_id: {doc_id!r} is not a non-empty string")
        return self._manifest["shards"][route(doc_id, len(self._manifest["shards"]))]

    # -- writes ---------------------------------------------------------------------------------
    def add(self, paths, *, metadata: dict | None = None, prune: bool = False, retry_failed: bool = False,
            progress: bool = False, found: tuple | None = None, ray=None, workers: int | None = None):
        """Index PDFs, images and text files into their shards; one IngestReport, as :meth:`Engine.add` gives.

        Files are routed by their document id (absolute path); each shard runs :meth:`Engine.add` on
        its own files (``prune``, ``retry_failed``: within that shard; a file renamed into another
        shard's share is encoded there, its old document pruned from the first). ``ray``/``workers``:
        as in :meth:`Engine.add` (an address, or an open EncoderPool); one pool of encoder actors serves
        every shard. Without ``ray`` the model is loaded once here and shared by the shards.
        """
        from jevsearch.ingest import IngestReport, discover
        from jevsearch.scale.ingest import EncoderPool

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        sources, failed = found if found is not None else discover(paths)
        groups: dict[str, list] = {name: [] for name in self.shards} if prune else {}
        for src in sources:
            groups.setdefault(self.route(src.path), []).append(src)
        for name in groups:
            self._writer(name)  # writable, present: checked before any model loads
        args = {"metadata": metadata, "prune": prune, "retry_failed": retry_failed, "progress": progress}

        def each(**kw) -> list:  # every shard sees all paths (for pruning) and finds only its own files
            return [self._writer(name).add(paths, found=(own, []), **args, **kw) for name, own in groups.items()]

        if isinstance(ray, EncoderPool):  # the caller's pool, left open
            reports = each(ray=ray, workers=workers)
        elif ray is not None:
            with EncoderPool(ray, modelinfo.recorded_model(self._manifest), workers) as pool:
                reports = each(ray=pool)
        else:
            if workers is not None:
                raise InvalidInputError("workers: only with ray=... (hint: ray=\"auto\" to use a Ray cluster)")
            if any(own for own in groups.values()):
                self._share_model()
            reports = each()
        order = {src.path: i for i, src in enumerate(sources)}
        return merge_reports(IngestReport(failed=list(failed)), reports, order)

    def add_embeddings(self, doc_id: str, singles, multis, metadata: dict | None = None,
                       page_texts: list[str] | None = None) -> int:
        """Add (or replace) a document in its shard; as :meth:`Index.add_embeddings`."""
        return self._writer(self.route(doc_id)).add_embeddings(doc_id, singles, multis, metadata, page_texts)

    def add_embeddings_many(self, docs) -> list[int]:
        """Add several documents: one commit per shard they route to (each shard's group all or nothing;
        not atomic across shards). Returns their page counts in the order given."""
        docs = list(docs)
        groups: dict[str, list[int]] = {}
        for i, doc in enumerate(docs):
            if not isinstance(doc, tuple) or not doc:
                raise InvalidInputError(f"docs[{i}]: expected a tuple (doc_id, singles, multis[, ...])")
            groups.setdefault(self.route(doc[0]), []).append(i)
        writers = {name: self._writer(name) for name in groups}
        counts = [0] * len(docs)
        for name, idx in groups.items():
            for i, n in zip(idx, writers[name].add_embeddings_many([docs[i] for i in idx])):
                counts[i] = n
        return counts

    def delete(self, doc_id: str) -> bool:
        """Delete a document from its shard; False if it was not there."""
        return self._writer(self.route(doc_id)).delete(doc_id)

    def update_metadata(self, doc_id: str, metadata: dict, merge: bool = True) -> dict:
        """As :meth:`Engine.update_metadata`, in the document's shard (``doc_id`` may also be a file's path
        relative to here); returns the new metadata."""
        if isinstance(doc_id, str) and doc_id and self.document(doc_id) is None:
            doc_id = os.path.abspath(doc_id)
        return self._writer(self.route(doc_id)).update_metadata(doc_id, metadata, merge)

    def rename_document(self, old: str, new: str, *, metadata: dict | None = None) -> None:
        """As :meth:`Index.rename_document` (nothing re-encoded) when ``old`` and ``new`` route to the same
        shard; InvalidInputError otherwise (the stored vectors cannot move between shards as they are)."""
        self._writer(self._same_shard("rename", old, new)).rename_document(old, new, metadata=metadata)

    def copy_document(self, src: str, dst: str, *, metadata: dict | None = None) -> int:
        """As :meth:`Index.copy_document` (the stored values copied, nothing re-encoded) when ``src`` and
        ``dst`` route to the same shard; InvalidInputError otherwise. Returns the page count."""
        return self._writer(self._same_shard("copy", src, dst)).copy_document(src, dst, metadata=metadata)

    def _same_shard(self, what: str, src: str, dst: str) -> str:
        """The shard of both ``src`` and ``dst``; InvalidInputError naming both when they differ."""
        here, there = self.route(src), self.route(dst)
        if here != there:
            raise InvalidInputError(f"{what} {src!r} -> {dst!r}: the ids route to different shards ({here}, {there}) "
                                    "and stored vectors do not move between shards",
                                    hint="delete the document and add the file under its new path: "
                                         "ShardedEngine.add encodes it in its shard")
        return here

    def flush(self) -> None:
        for name in self.shards:
            if name not in self._missing:
                self._writer(name).flush()

    def compact(self, **options) -> dict:
        """Compact every shard (``options``: codec, keep_exact, pool_factor, as :meth:`Index.compact`);
        returns their reports merged, each line naming its shard."""
        total: dict = {"dropped": [], "damaged": [], "redo": []}
        for name in self.shards:
            if name not in self._missing:
                report = self._writer(name).compact(**options)
                for key in ("dropped", "damaged"):
                    total[key] += [f"{name}: {line}" for line in report[key]]
                total["redo"] = sorted(set(total["redo"]) | set(report["redo"]))
        return total

    # -- reads ----------------------------------------------------------------------------------
    def _text_mode(self, mode: str | None) -> str:
        """Shards keep no text index yet: a sharded index searches visually."""
        if mode not in (None, "visual"):
            raise InvalidInputError(f"mode {mode!r}: a sharded index searches visually (hint: mode=None or "
                                    '"visual"; hybrid and lexical search need a single index)',
                                    cli_hint="--mode visual, or search a single index")
        return "visual"

    def search_hybrid(self, q_single, q_multi, text, k: int = 10, *, mode: str | None = None,
                      weights: dict | None = None, **options):
        """As :meth:`Index.search_hybrid` in its visual mode (the only one shards have): ``search_embeddings``."""
        self._text_mode(mode)
        return self.search_embeddings(q_single, q_multi, k=k, **options)

    def search_embeddings(self, q_single, q_multi, k: int = 10, candidates: int | None = None,
                          rescore: int | None = None, exhaustive: bool = False, *, where: dict | None = None,
                          group_by: str | None = None, pages_per_document: int = 3, stage1: str | None = None):
        """As :meth:`Index.search_embeddings` (one query or a batch; ``where``, ``group_by``, ``stage1``),
        over every shard, merged exactly (:mod:`jevsearch.search.merge`): a filter applies in each shard
        before its stage 1, and a document lives in one shard, so its pages group there. ``candidates``
        and ``rescore`` (default: the shards' codec's) per shard. Returns :class:`Hits` (``.missing``)."""
        answers = self._call("search_embeddings", q_single, q_multi, k=k, candidates=candidates, rescore=rescore,
                             exhaustive=exhaustive, where=where, group_by=group_by,
                             pages_per_document=pages_per_document, stage1=stage1, partial_ok=True)
        missing = set(self._missing) | (set(self.shards) - set(answers) - set(self._missing))
        for name, found in answers.items():
            self._globalise(name, found, batch=isinstance(q_multi, (list, tuple)))
        merge = merge_documents if group_by else merge_pages
        if isinstance(q_multi, (list, tuple)):
            return [Hits(merge([found[q] for found in answers.values()], k), missing) for q in range(len(q_multi))]
        return Hits(merge(answers.values(), k), missing)

    def search_singles(self, q_single, k: int = 10, *, exact: bool = False):
        """As :meth:`Index.search_singles` (single vectors only, e.g. for jevsearch.eval), over every
        shard, merged by the same rule."""
        answers = self._call("search_singles", q_single, k=k, exact=exact, partial_ok=True)
        missing = set(self.shards) - set(answers)
        batch = getattr(q_single, "ndim", 1) == 2
        for name, found in answers.items():
            self._globalise(name, found, batch)
        if batch:
            return [Hits(merge_pages([found[q] for found in answers.values()], k), missing)
                    for q in range(len(q_single))]
        return Hits(merge_pages(answers.values(), k), missing)

    def page_hit(self, page_id: int):
        """The live page ``page_id`` (a global id, from ``Hit.page_id``) as a Hit with score 0; as
        :meth:`Index.page_hit` (PageNotFoundError if no such page)."""
        page_id = check_page_id(page_id)
        name = self.shards[page_id % len(self.shards)]
        hit = self._call("page_hit", page_id // len(self.shards), only=name)[name]
        hit.page_id = page_id
        return hit

    def page_data(self, hit, *, vectors: bool = True):
        """As :meth:`Index.page_data`, from the hit's shard."""
        name = self.route(hit.doc_id)
        local = hit.page_id
        if local is not None:
            if local % len(self.shards) != self._number[name]:
                raise PageNotFoundError(f"{hit.doc_id}: page {hit.page} is not in the index under page id "
                                        f"{hit.page_id}", hint="search again")
            local //= len(self.shards)
        return self._call("page_data", dataclasses.replace(hit, page_id=local), vectors=vectors, only=name)[name]

    def _globalise(self, name: str, found, batch: bool) -> None:
        """Give the hits of shard ``name`` (and the pages of its DocHits) their global page ids."""
        n, i = len(self.shards), self._number[name]
        for results in found if batch else [found]:
            for hit in results:
                for page in getattr(hit, "pages", None) or [hit]:
                    if page.page_id is not None:
                        page.page_id = page.page_id * n + i

    def document(self, doc_id: str) -> dict | None:
        """A document's record, from its shard (None if absent)."""
        name = self.route(doc_id)
        return self._call("document", doc_id, only=name)[name]

    def documents(self):
        """Every document id, sorted (over the shards that answer)."""
        answers = self._call("documents", partial_ok=True)
        return iter(sorted(d for ids in answers.values() for d in ids))

    def document_list(self) -> list[dict]:
        """Every document as :meth:`document` gives it, sorted by id (over the shards that answer)."""
        answers = self._call("document_list", partial_ok=True)
        return sorted((d for docs in answers.values() for d in docs), key=lambda d: d["doc_id"])

    def failures(self) -> dict[str, dict]:
        """The files the shards' adds could not index, as recorded: {path: {"sha256", "reason"}}."""
        answers = self._call("failures", partial_ok=True)
        return {path: rec for recs in answers.values() for path, rec in recs.items()}

    def stats(self) -> dict:
        """:meth:`Index.stats` summed over the shards, plus ``shards`` (count) and ``missing`` (names)."""
        answers = self._call("stats", partial_ok=True)
        return merge_stats(self.shards, answers)

    def verify(self, *, deep: bool = False, repair: bool = False) -> dict:
        """Verify every shard (:meth:`Index.verify`, ``repair`` with a writer) and that each document is
        in the shard it routes to.

        Raises ShardError if a shard is missing (even with allow_partial: a partial index is not sound),
        CorruptIndexError listing the problems. Returns the counts checked, summed, plus ``shards`` (and
        ``repaired``: what was done, each line naming its shard).
        """
        if self._missing:
            raise self._shard_error(self._missing)
        if repair:
            reports = {name: self._writer(name).verify(deep=deep, repair=True) for name in self.shards}
        else:
            reports = self._call("verify", deep=deep)
        documents = self._call("documents")
        problems = [f"{name}: {doc!r} belongs in {self.route(doc)}" for name, ids in documents.items()
                    for doc in ids if self.route(doc) != name]
        if problems:
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise CorruptIndexError(f"{self.path}: documents in the wrong shard: " + "; ".join(problems[:20]) + more +
                                    " (hint: the shard folders were renamed or mixed up; restore them)")
        return merge_verify(self.shards, reports)

    # -- internals ------------------------------------------------------------------------------
    def _call(self, method: str, *args, only: str | None = None, partial_ok: bool = False, **kwargs) -> dict:
        """``method`` on the open shards (or just ``only``) -> {name: result}; failures raise ShardError,
        unless ``partial_ok`` and ``allow_partial`` (then the failed shards are left out, and logged)."""
        if self._backend is None:
            raise JevsearchError(f"{self.path}: sharded index is closed (hint: open it again)")
        if only is not None and only in self._missing:
            raise self._shard_error({only: self._missing[only]})
        answers = self._backend.call(method, *args, names=None if only is None else [only], timeout=self.timeout,
                                     **kwargs)
        failed = {name: e for name, e in answers.items() if isinstance(e, BaseException)}
        if failed:
            if isinstance(next(iter(failed.values())), (InvalidInputError, PageNotFoundError)):
                raise next(iter(failed.values()))  # the caller's mistake (the same on every shard), or a gone page
            if not (partial_ok and self.allow_partial) or len(failed) == len(answers):
                raise self._shard_error(failed)
            for name, e in failed.items():
                log.warning("%s: shard %s did not answer %s: %s", self.path, name, method, e)
        return {name: r for name, r in answers.items() if name not in failed}

    def _shard_error(self, failed: dict) -> ShardError:
        parts = "; ".join(f"{name}: {why(e)}" for name, e in sorted(failed.items()))
        return ShardError(f"{self.path}: {len(failed)} of {len(self.shards)} shards unavailable ({parts}) "
                          "(hint: restore them, or open with allow_partial=True to use the others)",
                          cli_hint="restore them (each is an ordinary index folder)")

    def _writer(self, name: str):
        if self._backend is None:
            raise JevsearchError(f"{self.path}: sharded index is closed (hint: open it again)")
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.path}: opened read-only (hint: ShardedEngine.open(path) without "
                                     "readonly=True or ray= to write; one writer at a time)")
        if name in self._missing:
            raise self._shard_error({name: self._missing[name]})
        return self._backend.opened[name]

    def _share_model(self) -> None:
        """Before a local add: every shard engine uses this process's one copy of the model (an Engine
        loads its own on first use; a shard opened without one is reopened with it, once)."""
        if self._model_shared:
            return
        encoder = self.encoder
        for name, eng in list(self._backend.opened.items()):
            shard_path, threads = eng.path, eng.threads
            eng.close()
            self._backend.opened[name] = Engine.open(shard_path, model=encoder, threads=threads)
        self._model_shared = True
