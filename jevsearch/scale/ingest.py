"""Distributed ingest on Ray: render tasks and a pool of encoder actors; the driver stays the one writer.

    driver (this process)                 Ray cluster                              driver
    discover, hash, skip unchanged  ->  render tasks (CPU): bytes -> rasters  ->  assemble documents,
    file bytes -> object store          encoder actors (GPU or CPU): vectors      sink(document) = commit

:meth:`EncoderPool.ingest` takes the place of :func:`jevsearch.ingest.ingest` (the local render process
and encoder) and has the same contract: the caller's ``sink`` receives each complete document once, in the caller's
process; errors of one document (DocumentError, InvalidInputError from the sink) fail that document
only; the report is the same. :meth:`Engine.add` does everything else exactly as for a local add.

In between, a document's bytes go to the object store (workers need no shared file system); render
tasks turn ranges of its pages into rasters, which travel from the object store to an encoder actor
without passing the driver; only the vectors come back. Rasters waiting for an actor are bounded (a
few batches per actor), as are the documents open at once, so memory stays bounded whatever the corpus.

Faults. A render task whose worker dies is retried once, then fails that file only ("renderer crashed");
a bad file fails alone, as locally. An encoder actor that dies is restarted by Ray and its calls retried;
if it cannot be, the driver gives its page ranges (still in the object store) to a new actor. Vectors
only ever reach the sink through the driver, once per document, so a retry can never store a document
twice; a killed driver leaves the stored documents whole, and rerunning skips them.

>>> report = eng.add(["papers/"], ray="auto", workers=2)          # doctest: +SKIP
>>> with EncoderPool("auto", recorded, workers=2) as pool:       # doctest: +SKIP
...     pool.ingest(sources, sink, report=report)                # several ingests, one model load per actor
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from jevsearch.errors import ClusterError, DocumentError, InvalidInputError
from jevsearch.ingest import EncodedDocument, IngestReport, backends
from jevsearch.ingest.renderer import CHANGED, unrendered_reason
from jevsearch.ingest.sources import Source, os_reason
from jevsearch.scale.cluster import Session, encoder_pool, require_ray

log = logging.getLogger(__name__)

TASK = "retrieval"
DEPTH = 2  # encode calls queued per actor: one running, one ready to start the moment it finishes
MAX_RANGE_PAGES = 16  # pages per render task (so at most this many rasters per object)
MAX_OPEN_BYTES = 256 << 20  # file bytes put in the object store and not yet fully rendered


class EncoderPool:
    """A Ray session plus encoder actors with the index's model loaded: open it once for several ingests.

    ``address``: as in :mod:`jevsearch.scale.cluster`; ``recorded``: the index's model record (each actor
    loads its ``source`` and checks its fingerprint); ``workers``: actors (default: one per GPU, else
    one per CPU but one). Each actor is single-threaded on a CPU. Nothing starts until the first
    document needs encoding (a rerun that skips everything never touches the cluster). Close it (or
    use ``with``) to free the actors.
    """

    def __init__(self, address, recorded: dict, workers: int | None = None):
        require_ray()  # a missing install is said now, not after the files are hashed
        self.address, self.recorded, self.requested = address, dict(recorded), workers
        self.actors: list = []
        self._session: Session | None = None

    def start(self) -> None:
        """Join the cluster and start the actors (waits for their model loads); idempotent."""
        if self._session is not None:
            return
        self._session = Session(self.address)
        try:
            self._start(self._session.ray)
        except BaseException:
            self.close()
            raise

    def _start(self, ray) -> None:
        from jevsearch.scale.workers import EncoderWorker, render_range

        self.ray = ray
        self.workers, actor_opts, render_opts = encoder_pool(ray, self.requested)
        device = "cuda" if "num_gpus" in actor_opts else "cpu"
        # Ray restarts a dead actor and re-sends its calls; past that, a run replaces it (replace()).
        self._actor = ray.remote(EncoderWorker).options(max_restarts=2, max_task_retries=2, **actor_opts)
        self._actor_args = (self.recorded, device, 1)
        self.render = ray.remote(render_range).options(num_returns=2, max_retries=1, **render_opts)
        self.actors = [self._actor.remote(*self._actor_args) for _ in range(self.workers)]
        try:  # waits for every model load: a model missing on a node is one clear error, up front
            info = ray.get([a.info.remote() for a in self.actors])[0]
        except ray.exceptions.RayActorError as e:
            raise ClusterError(f"encoder actors: could not start: {_cause(e)} (hint: the model recorded in the "
                               "index must load on every node: the same path, or a hub id)") from e
        self.geometry = tuple(info["geometry"])
        self.batch_tokens = info["batch_tokens"]
        self._processor = info["processor"]
        max_page_tokens = max(1, self.geometry[0] // (self.geometry[2] ** 2))
        self.range_pages = max(1, min(MAX_RANGE_PAGES, self.batch_tokens // max_page_tokens))
        log.info("ray: %d encoder actors on %s, up to %d pages per render task", self.workers, info["device"],
                 self.range_pages)

    @property
    def processor(self):
        """The model's processor (tokenizer, image rules; no weights), from an actor: a started pool stands
        in for the encoder where only that is needed (jevsearch.visuals.page_views)."""
        self.start()
        return self._processor

    @property
    def page_geometry(self):
        """How pages are rendered for the pool's model and page budget."""
        from jevsearch.ingest import PageGeometry

        self.start()
        return PageGeometry(*self.geometry)

    def ingest(self, sources: Sequence[Source], sink: Callable[[EncodedDocument], None], *,
               known: Mapping[str, str] | None = None, progress: bool = False,
               report: IngestReport | None = None, expected: Mapping[str, str] | None = None,
               resume: Mapping[str, int] | None = None) -> IngestReport:
        """Render and encode ``sources`` on the cluster, handing each complete document to ``sink`` here.

        As :func:`jevsearch.ingest.ingest` (``known``, ``expected``, ``progress``, ``report``, the sink's
        contract, the report's entries in the order of ``sources``), with this pool in place of the render
        process and the encoder (an :class:`~jevsearch.ingest.backends.IngestBackend`). ``resume`` is
        ignored: a partial document is encoded whole again, and replaces the partial one.
        """
        report = report if report is not None else IngestReport()
        before = {name: len(getattr(report, name)) for name in ("added", "skipped", "failed", "missing_pages")}
        _Run(self, sources, known or {}, sink, progress, report, expected or {}).run()
        order = {src.path: i for i, src in enumerate(sources)}
        for name, start in before.items():
            entries = getattr(report, name)
            entries[start:] = sorted(entries[start:],
                                     key=lambda e: order.get(e if isinstance(e, str) else e[0], -1))
        return report

    def check_model(self, recorded: dict) -> None:
        """Refuse to encode for an index recorded with another model or page budget than the pool's."""
        mine = (self.recorded["identity"]["fingerprint"], self.recorded.get("max_pixels"))
        if (recorded["identity"]["fingerprint"], recorded.get("max_pixels")) != mine:
            raise InvalidInputError("ray pool: its actors hold another model or page pixel budget than this "
                                    "index records (hint: one EncoderPool per model; or pass ray=\"auto\")")

    def replace(self, actor):
        """A new actor in place of a dead one -> the new actor."""
        self.actors.remove(actor)
        self.ray.kill(actor)
        new = self._actor.remote(*self._actor_args)
        self.actors.append(new)
        return new

    def close(self) -> None:
        """Stop the actors and leave the Ray session (idempotent)."""
        if self._session is None:
            return
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        session, self._session = self._session, None
        session.close()

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def open_pool(cluster, recorded: dict, workers: int | None = None):
    """``with open_pool(ray, recorded, workers) as pool:`` a started EncoderPool for an index whose model
    record is ``recorded``: ``cluster`` itself if it is an EncoderPool (checked to hold that model; left
    open), else a new one on the cluster at that address (closed at the end)."""
    if isinstance(cluster, EncoderPool):
        if workers is not None:
            raise InvalidInputError("workers: the EncoderPool given has its own (hint: omit workers)")
        cluster.check_model(recorded)
        cluster.start()
        yield cluster
        return
    with EncoderPool(cluster, recorded, workers) as pool:
        pool.start()
        yield pool


@dataclass
class _Doc:
    source: Source
    sha256: str
    data: object  # ObjectRef of the file's bytes, dropped once every range is rendered
    size: int
    page_count: int | None = None
    ranges_left: int = 1  # render tasks not yet returned
    pages_done: int = 0  # pages encoded
    missing: list = field(default_factory=list)  # (page number, reason) of pages that could not be rendered
    parts: dict = field(default_factory=dict)  # range start -> (singles, multis, its render meta)
    info: dict = field(default_factory=dict)  # a PDF's own title, author, created (from its first range)


@dataclass(order=True)
class _Range:
    idx: int  # source index first: earlier documents finish (and free memory) first
    start: int
    pages: int = field(compare=False)
    tokens: int = field(compare=False)
    rasters: object = field(compare=False)  # ObjectRef
    meta: dict = field(compare=False)


class _Run:
    """One ingest: the driver's event loop over render tasks, encode calls and the sink."""

    def __init__(self, pool: EncoderPool, sources: Sequence[Source], known: Mapping[str, str],
                 sink: Callable[[EncodedDocument], None], progress: bool, report: IngestReport,
                 expected: Mapping[str, str]):
        self.pool, self.ray = pool, None  # the pool starts when the first document needs it
        self.expected = expected
        self.sources, self.known, self.sink, self.progress, self.report = sources, known, sink, progress, report
        self.calls: dict = {}  # actor -> encode calls in flight
        self.docs: dict[int, _Doc] = {}  # admitted, not yet stored or failed
        self.rendering: dict = {}  # meta ref -> (source index, first page, rasters ref)
        self.encoding: dict = {}  # result ref -> (actor, [_Range])
        self.ready: list[_Range] = []  # heap: rendered ranges waiting for an actor
        self.to_render: list[tuple[int, int]] = []  # heap of (source index, first page)
        self.next_source = 0
        self.open_bytes = 0
        self.buffered = 0  # pages being rendered or waiting for an actor
        self.deaths = 0
        self.done_before = len(report.added) + len(report.skipped) + len(report.failed)
        self.docs_bar = self.pages_bar = None

    def run(self) -> None:
        from tqdm.auto import tqdm

        t_wall = time.perf_counter()
        # As a local ingest's: documents (a real ETA) and pages encoded (its rate is the throughput);
        # disable=None: only when stderr is a terminal.
        off = None if self.progress else True
        self.docs_bar = tqdm(total=len(self.sources), unit="doc", desc="documents", disable=off, dynamic_ncols=True)
        self.pages_bar = tqdm(total=0, unit="page", desc="pages encoded", disable=off, dynamic_ncols=True,
                              position=1)
        try:
            while True:
                self._admit()
                self._submit_renders()
                self._dispatch()
                waiting = list(self.rendering) + list(self.encoding)
                if not waiting:
                    if self.next_source == len(self.sources) and not (self.ready or self.to_render):
                        break
                    if not self.docs:  # nothing open: everything admitted was skipped or failed
                        continue
                    raise RuntimeError(f"ray ingest stalled with {len(self.docs)} documents open (a bug)")
                done, _ = self.ray.wait(waiting, num_returns=1)
                done, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)  # all ready now
                for ref in done:
                    if ref in self.rendering:
                        self._rendered(ref)
                    else:
                        self._encoded(ref)
        finally:
            self._stop()
            self.report.timings["wall"] += time.perf_counter() - t_wall

    # -- stages --------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Read, hash and hand over new documents while the bounds allow (always at least one)."""
        while self.next_source < len(self.sources) and (self.ray is None or len(self.docs) < self.max_docs
                                                        and (not self.docs or self.open_bytes < MAX_OPEN_BYTES)
                                                        and self.buffered < self.max_buffered):
            idx, src = self.next_source, self.sources[self.next_source]
            self.next_source += 1
            try:
                with open(src.path, "rb") as f:
                    data = f.read()
            except OSError as e:
                self._fail(idx, os_reason(e))
                continue
            sha256 = hashlib.sha256(data).hexdigest()
            if self.known.get(src.path) == sha256:
                self.report.skipped.append(src.path)
                self._show_docs()
                continue
            if self.expected.get(src.path, sha256) != sha256:  # the bytes read are not those planned
                self._fail(idx, CHANGED)
                continue
            if self.ray is None:
                self._start_pool()
            self.docs[idx] = _Doc(src, sha256, self.ray.put(data), len(data))
            self.open_bytes += len(data)
            heapq.heappush(self.to_render, (idx, 0))

    def _start_pool(self) -> None:
        self.pool.start()
        self.ray = self.pool.ray
        self.calls = dict.fromkeys(self.pool.actors, 0)
        self.max_buffered = (DEPTH + 1) * self.pool.workers * self.pool.range_pages  # every actor busy, no more
        self.max_docs = 2 * self.pool.workers + 2

    def _submit_renders(self) -> None:
        step = self.pool.range_pages
        while self.to_render and self.buffered < self.max_buffered:
            idx, start = heapq.heappop(self.to_render)
            doc = self.docs.get(idx)
            if doc is None:  # failed meanwhile
                continue
            meta, rasters = self.pool.render.remote(doc.data, doc.source.path, doc.source.kind, self.pool.geometry,
                                                    start, start + step)
            self.rendering[meta] = (idx, start, rasters)
            self.buffered += step

    def _rendered(self, ref) -> None:
        idx, start, rasters = self.rendering.pop(ref)
        step = self.pool.range_pages
        self.buffered -= step
        try:
            meta = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # raised while rendering this file: its fault alone
            meta = {"error": f"cannot render: {_cause(e)}", "seconds": 0.0}
        except self.ray.exceptions.RayError as e:  # the worker died, twice (a MuPDF crash on this file)
            meta = {"error": f"renderer crashed: {_cause(e)}", "seconds": 0.0}
        self.report.timings["render"] += meta["seconds"]
        self.report.timings["thumbnail"] += meta["thumb_seconds"]
        doc = self.docs.get(idx)
        if doc is None:
            return
        if meta["error"] is not None:
            self._fail(idx, meta["error"])
            return
        doc.ranges_left -= 1
        if start == 0:
            doc.page_count, doc.info = meta["page_count"], meta.get("info") or {}
            later = range(step, doc.page_count, step)
            doc.ranges_left += len(later)
            for s in later:
                heapq.heappush(self.to_render, (idx, s))
            self.pages_bar.total += doc.page_count
        doc.missing += meta["missing"]
        self.pages_bar.total -= len(meta["missing"])
        self.pages_bar.refresh()
        if doc.ranges_left == 0:  # every page rendered: the bytes can leave the object store
            doc.data = None
            self.open_bytes -= doc.size
        pages = len(meta["texts"])
        if pages:
            heapq.heappush(self.ready, _Range(idx, start, pages, meta["tokens"], rasters, meta))
            self.buffered += pages
        self._check_complete(idx)

    def _dispatch(self) -> None:
        """Give ready page ranges to the least busy actors, about one token budget per call."""
        while self.ready:
            actor = min(self.calls, key=self.calls.get)
            if self.calls[actor] >= DEPTH:
                return
            batch, tokens = [], 0
            while self.ready and (not batch or tokens + self.ready[0].tokens <= self.pool.batch_tokens):
                item = heapq.heappop(self.ready)
                if item.idx in self.docs:
                    batch.append(item)
                    tokens += item.tokens
                else:  # its document failed in another range
                    self.buffered -= item.pages
            if batch:
                ref = actor.encode.remote(TASK, *[item.rasters for item in batch])
                self.encoding[ref] = (actor, batch)
                self.calls[actor] += 1

    def _encoded(self, ref) -> None:
        actor, batch = self.encoding.pop(ref)
        if actor in self.calls:
            self.calls[actor] -= 1
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            self._lost(actor, batch, e)
            return
        self.report.timings["encode"] += out["seconds"]
        for item, (singles, multis) in zip(batch, out["vectors"]):
            self.buffered -= item.pages
            self.report.tokens += item.tokens
            self.pages_bar.update(item.pages)
            doc = self.docs.get(item.idx)
            if doc is None:  # the document failed in another range
                continue
            doc.parts[item.start] = (singles, multis, item.meta)
            doc.pages_done += item.pages
            self._check_complete(item.idx)

    def _check_complete(self, idx: int) -> None:
        """Store the document once every page is encoded or known to be missing; fail it if none rendered."""
        doc = self.docs[idx]
        if doc.ranges_left or doc.pages_done + len(doc.missing) < doc.page_count:
            return
        doc.missing.sort()
        if not doc.pages_done:
            self._fail(idx, unrendered_reason(doc.source.kind, doc.page_count, doc.missing[0][1]))
        else:
            self._store(idx)

    def _store(self, idx: int) -> None:
        """Assemble a finished document and hand it to the sink (the caller's commit), once."""
        doc = self.docs.pop(idx)
        parts = [doc.parts[s] for s in sorted(doc.parts)]
        meta = lambda key: [x for p in parts for x in p[2][key]]  # noqa: E731 - the ranges' lists, in page order
        encoded = EncodedDocument(doc.source.path, doc.source.kind, doc.sha256,
                                  np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False),
                                  [m for p in parts for m in p[1]], meta("texts"), [tuple(s) for s in meta("sizes")],
                                  meta("numbers"), [tuple(m) for m in doc.missing], meta("thumbnails"),
                                  page_count=doc.page_count, info=doc.info)
        t0 = time.perf_counter()
        try:
            self.sink(encoded)
        except (DocumentError, InvalidInputError) as e:
            self.report.failed.append((encoded.path, getattr(e, "reason", None) or str(e)))
        else:
            self.report.added.append(encoded.path)
            self.report.pages += encoded.pages
            self.report.missing_pages += [(encoded.path, page, reason) for page, reason in encoded.missing]
            for page, reason in encoded.missing:
                log.info("%s: page %d not indexed: %s", encoded.path, page, reason)
        finally:
            self.report.timings["store"] += time.perf_counter() - t0
        self._show_docs()

    # -- faults and bookkeeping ----------------------------------------------------------------
    def _lost(self, actor, batch: list[_Range], error) -> None:
        """An actor died beyond Ray's restarts: its ranges (still in the object store) go back in line."""
        for item in batch:
            heapq.heappush(self.ready, item)
        if actor not in self.calls:  # already replaced (its other calls fail too)
            return
        self.deaths += 1
        if self.deaths > 2 * self.pool.workers:
            raise ClusterError(f"encoder actors: {self.deaths} died in this ingest, last: {_cause(error)} "
                               "(hint: check the Ray logs for out-of-memory kills or a broken node)") from error
        log.warning("encoder actor died (%s); a new one takes its %d page range(s)", _cause(error), len(batch))
        del self.calls[actor]
        self.calls[self.pool.replace(actor)] = 0

    def _fail(self, idx: int, reason: str) -> None:
        path = self.sources[idx].path
        doc = self.docs.pop(idx, None)
        if doc is not None:
            if doc.data is not None:
                self.open_bytes -= doc.size
            if doc.page_count is not None:
                self.pages_bar.total -= doc.page_count - doc.pages_done - len(doc.missing)
                self.pages_bar.refresh()
        self.report.failed.append((path, reason))
        log.info("%s: %s", path, reason)
        self._show_docs()

    def _show_docs(self) -> None:
        r = self.report
        self.docs_bar.n = len(r.added) + len(r.skipped) + len(r.failed) - self.done_before
        self.docs_bar.refresh()

    def _stop(self) -> None:
        # After an error or an interrupt: leave nothing running for nobody.
        for ref in self.rendering if self.ray is not None else ():
            self.ray.cancel(ref, force=True)
        for bar in (self.pages_bar, self.docs_bar):
            if bar is not None:
                bar.close()


def _cause(error) -> str:
    """The last line of a Ray error (its message carries the remote traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


backends.register("ray", open_pool)  # Engine.add(ray=...) finds the pool here, importing nothing above it
