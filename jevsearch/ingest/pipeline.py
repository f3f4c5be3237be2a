"""The streaming ingest pipeline: render in a child process, encode in the caller's thread, store in another.

    render process                    caller's thread                          store thread
    hash file, check the planned  ->  batch pages by tokens -> encoder   ->   sink(document or part)
    hash, open, render pages          collect each document's pages           (e.g. LMDB + HNSW)
               [queue_pages rasters]                             [2 documents or parts]

The queues are bounded: at most ``queue_pages`` rasters wait, one token batch is encoded, two documents
(or parts) wait for the sink, so memory is bounded whatever the corpus (never a whole PDF's rasters). A
short document reaches ``sink`` once all its pages are encoded; a long one in parts (``PART_PAGES``,
``PART_SECONDS``), so an interruption keeps what was encoded. A document that fails part-way is reported
(its parts handed over stay, marked partial by the sink) and the batch goes on. Rendering and storing
overlap encoding: rendering in its own process
because MuPDF holds the GIL while it renders (see :mod:`.renderer`); storing in a thread because LMDB
commits, FAISS inserts and array conversions release it.

>>> report = ingest(sources, encoder, sink=lambda doc: store(doc), geometry=geom)   # doctest: +SKIP
>>> report.added, report.skipped, report.failed
(['/data/a.pdf'], [], [('/data/broken.pdf', 'corrupt PDF: ...')])
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from jevsearch.errors import DocumentError, InvalidInputError
from jevsearch.ingest.pages import PageGeometry
from jevsearch.ingest.renderer import DONE, END, FAIL, MISSING, PAGE, SKIP, START, RenderProcess
from jevsearch.ingest.sources import Source

log = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    """What the pipeline needs of an encoder (``jevsearch.model.JinaV4Encoder`` is one)."""

    def encode_images(self, images, task: str = ..., truncate_dim=None, max_pixels=None): ...


@dataclass
class EncodedDocument:
    """One document, every page that could be rendered encoded: what the sink receives."""

    path: str
    kind: str
    sha256: str
    singles: np.ndarray  # [P, D] float32, one L2-normalised vector per page
    multis: list[np.ndarray]  # P arrays [T_i, multi_dim], L2-normalised rows
    texts: list[str]  # P page text layers ("" for scans and images)
    sizes: list[tuple[int, int]]  # P raster sizes (w, h) the encoder saw
    page_numbers: list[int] = field(default_factory=list)  # P 1-based page numbers in the file
    missing: list[tuple[int, str]] = field(default_factory=list)  # (page number, reason) of pages not rendered
    thumbnails: list[bytes] = field(default_factory=list)  # P thumbnails (jevsearch.ingest.thumbnail)
    # A long document comes in parts: ``after`` is the last page number of the parts handed over (or
    # stored by an earlier, interrupted run) before this one (0: this part starts the document);
    # ``complete`` is False while more parts are to come. ``page_count``: pages in the file.
    after: int = 0
    complete: bool = True
    page_count: int = 0
    info: dict = field(default_factory=dict)  # a PDF's own title, author, created (jevsearch.ingest.docinfo)

    @property
    def pages(self) -> int:
        return len(self.texts)

    @property
    def through(self) -> int:
        """The last page number this part covers (rendered or missing)."""
        return max([self.after] + self.page_numbers + [p for p, _ in self.missing])


@dataclass
class IngestReport:
    """What an ingest did. ``failed`` holds ``(path, reason)``; one bad file never stops a batch.

    ``missing_pages``: ``(path, page, reason)`` of pages that could not be rendered in documents that
    were added with their other pages. :meth:`Engine.add` also fills ``moved`` ``(old, new)`` (a renamed
    file re-keyed without encoding), ``copied`` ``(indexed, new)`` (a copy given the stored vectors),
    ``pruned`` (documents whose files are gone) and ``not_retried`` ``(path, reason)`` (files that
    failed before and are unchanged).
    """

    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing_pages: list[tuple[str, int, str]] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    copied: list[tuple[str, str]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    not_retried: list[tuple[str, str]] = field(default_factory=list)
    pages: int = 0  # pages encoded and handed to the sink
    tokens: int = 0  # visual tokens encoded
    # Seconds: render (in the render process: hashing, opening, rendering, thumbnails), of it thumbnail,
    # encode, store (the sink), wall.
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("render", "thumbnail", "encode", "store", "wall"), 0.0))

    def __str__(self) -> str:
        partial = len({path for path, _, _ in self.missing_pages})
        parts = [f"added {len(self.added)}" + (f" ({partial} with missing pages)" if partial else "")]
        parts += [f"moved {len(self.moved)}"] + [f"copied {len(self.copied)}"] * bool(self.copied)
        parts += [f"pruned {len(self.pruned)}"]
        parts += [f"skipped {len(self.skipped)} unchanged", f"failed {len(self.failed) + len(self.not_retried)}"]
        return ", ".join(parts) + f" ({self.pages} pages in {self.timings['wall']:.1f} s)"


@dataclass
class _Pending:
    """A document whose pages are being encoded (those of this run: after ``after``)."""

    sha256: str
    page_count: int  # pages in the file
    after: int = 0  # the last page number stored already (by an earlier part or run)
    info: dict = field(default_factory=dict)
    singles: list = field(default_factory=list)
    multis: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    numbers: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    thumbnails: list = field(default_factory=list)
    handed: int = 0  # pages (encoded or missing) handed over in parts already
    since: float = field(default_factory=time.monotonic)  # when the last part was handed over
    rendered_all: bool = False

    @property
    def complete(self) -> bool:
        todo = self.page_count - self.after + self.handed  # pages of this run (self.after moves with each part)
        return self.rendered_all and self.handed + len(self.texts) + len(self.missing) == todo

    def part(self, path: str, kind: str, complete: bool) -> EncodedDocument:
        """The pages held so far as an EncodedDocument, and forget them (a partial one keeps the pages
        missing after its last encoded page for the next part, so parts cover page ranges in order)."""
        last = self.numbers[-1] if self.numbers and not complete else None
        missing = [m for m in self.missing if last is None or m[0] < last]
        self.missing = [m for m in self.missing if m not in missing]
        doc = EncodedDocument(
            path, kind, self.sha256,
            np.stack(self.singles).astype(np.float32, copy=False) if self.singles else np.zeros((0, 0), np.float32),
            self.multis, self.texts, self.sizes, self.numbers, missing, self.thumbnails,
            after=self.after, complete=complete, page_count=self.page_count, info=self.info)
        self.handed += doc.pages + len(missing)
        self.after = doc.through
        self.singles, self.multis, self.texts, self.sizes, self.numbers, self.thumbnails = [], [], [], [], [], []
        self.since = time.monotonic()
        return doc


#: A document still being encoded is handed over (committed as a partial document that a rerun
#: completes) once it holds this many encoded pages or this many seconds passed since its last part.
PART_PAGES = 256
PART_SECONDS = 10.0


def ingest(
    sources: Sequence[Source],
    encoder: ImageEncoder,
    sink: Callable[[EncodedDocument], None],
    *,
    geometry: PageGeometry,
    known: Mapping[str, str] | None = None,
    task: str = "retrieval",
    batch_tokens: int = 8192,
    queue_pages: int = 8,
    progress: bool = False,
    report: IngestReport | None = None,
    expected: Mapping[str, str] | None = None,
    resume: Mapping[str, int] | None = None,
    part_pages: int | None = None,
    part_seconds: float | None = None,
) -> IngestReport:
    """Render, encode and hand over ``sources`` one complete document at a time.

    ``known`` maps a path to the SHA-256 already stored for it: an unchanged file is skipped without
    rendering. A page that cannot be rendered is left out (``doc.missing``, ``report.missing_pages``) and
    the document keeps its other pages; one with no page rendered fails. ``sink(doc)`` stores a
    document; a DocumentError or InvalidInputError from it fails that
    document only. Errors of the encoder or other sink errors stop the ingest (after the worker stops)
    and propagate: they are not about one file. Pass ``report`` to extend an existing one (e.g. with
    discovery failures already in it). ``progress``: bars on stderr when it is a terminal.

    ``expected`` maps a path to the SHA-256 its plan was made for: a file whose content differs when it
    is rendered fails (``renderer.CHANGED``) instead of being stored under the wrong hash. A long
    document is handed over in parts (``doc.complete`` False until its last; every ``part_pages``
    encoded pages or ``part_seconds``), so an interrupted run keeps what was encoded; ``resume`` maps
    a path to the last page number stored by such a run: its rendering starts after that page and its
    first part has ``doc.after`` set.

    Memory: besides the bounded queues, the embeddings of a document's current part are held until
    it is handed over (at most ``part_pages`` pages).
    """
    if batch_tokens < 1 or queue_pages < 1:
        raise InvalidInputError(f"ingest: batch_tokens={batch_tokens}, queue_pages={queue_pages} (hint: both >= 1)")
    report = report if report is not None else IngestReport()
    t_wall = time.perf_counter()
    renderer = RenderProcess(sources, known or {}, geometry, queue_pages, expected, resume)
    run = _Run(sources, encoder, sink, report, geometry=geometry, task=task, batch_tokens=batch_tokens,
               progress=progress, part_pages=PART_PAGES if part_pages is None else part_pages,
               part_seconds=PART_SECONDS if part_seconds is None else part_seconds)
    try:
        run.loop(renderer.queue)
    finally:
        renderer.close()
        report.timings["render"] += renderer.render_seconds
        report.timings["thumbnail"] += renderer.thumbnail_seconds
        run.close()  # complete documents already handed over are still stored
        report.timings["wall"] += time.perf_counter() - t_wall
    return report


class _Run:
    """One :func:`ingest` call's state in the caller's thread: the documents being encoded, the token
    batch, the progress bars and the store thread."""

    def __init__(self, sources: Sequence[Source], encoder: ImageEncoder, sink, report: IngestReport, *,
                 geometry: PageGeometry, task: str, batch_tokens: int, progress: bool, part_pages: int,
                 part_seconds: float):
        from tqdm.auto import tqdm

        self.sources, self.encoder, self.report, self.geometry, self.task = sources, encoder, report, geometry, task
        self.batch_tokens, self.part_pages, self.part_seconds = batch_tokens, part_pages, part_seconds
        self.pending: dict[int, _Pending] = {}
        self.batch: list[tuple[int, object]] = []  # (source index, rendered page)
        self.batch_tok = 0
        # Two bars: documents (total known up front, so a real ETA) and pages encoded (total grows as
        # documents are opened; its rate is the throughput). disable=None: only when stderr is a terminal,
        # as redrawn bars in a log file are noise.
        off = None if progress else True
        self.docs_bar = tqdm(total=len(sources), unit="doc", desc="documents", disable=off, dynamic_ncols=True)
        self.bar = tqdm(total=0, unit="page", desc="pages encoded", disable=off, dynamic_ncols=True, position=1)
        self.done_before = len(report.added) + len(report.skipped) + len(report.failed)
        self.storer = _StoreThread(sink, report)

    def loop(self, q: queue.Queue) -> None:
        """Take the render process's messages until it is done; store what is left."""
        while True:
            try:
                kind, idx, payload = q.get_nowait()
            except queue.Empty:
                self.encode_batch()  # nothing rendered right now: encode what we have rather than wait idle
                kind, idx, payload = q.get()
            if kind == DONE:
                if payload is not None:  # the worker itself broke: not one file's fault
                    raise payload
                self.encode_batch()
                break
            self.take(kind, idx, payload)
        self.storer.close()
        self.storer.check()
        self.show_docs()

    def take(self, kind, idx: int, payload) -> None:
        """One message of the render process about document ``idx`` (see :mod:`.renderer`)."""
        report, bar = self.report, self.bar
        if kind == PAGE:
            tok = self.geometry.tokens(*payload[0].size)
            if self.batch and self.batch_tok + tok > self.batch_tokens:
                self.encode_batch()
            self.batch.append((idx, payload))
            self.batch_tok += tok
        elif kind == MISSING:
            self.pending[idx].missing.append(payload)
            bar.total -= 1
            bar.refresh()
        elif kind == START:
            sha256, page_count, after, info = payload
            self.pending[idx] = _Pending(sha256, page_count, after, info)
            bar.total += page_count - after
            bar.refresh()
        elif kind == END:
            doc = self.pending[idx]
            doc.rendered_all = True
            if doc.complete:
                self.finish(idx)
        elif kind == SKIP:
            report.skipped.append(self.sources[idx].path)
            self.show_docs()
        elif kind == FAIL:
            doc = self.pending.pop(idx, None)
            if doc is not None:
                in_batch = sum(1 for i, _ in self.batch if i == idx)
                bar.total -= doc.page_count - doc.after - len(doc.texts) - len(doc.missing) - in_batch
                bar.refresh()
            report.failed.append((self.sources[idx].path, payload))
            log.info("%s: %s", self.sources[idx].path, payload)
            self.show_docs()

    def encode_batch(self) -> None:
        """Encode the token batch and add each page to its document; hand over what is complete or due."""
        batch, report, pending = self.batch, self.report, self.pending
        if not batch:
            return
        images = [page[0] for _, page in batch]
        t0 = time.perf_counter()
        out = self.encoder.encode_images(images, task=self.task, max_pixels=self.geometry.max_pixels)
        report.timings["encode"] += time.perf_counter() - t0
        if len(out.multi) != len(batch) or out.single.shape[0] != len(batch):
            raise RuntimeError(f"encoder returned {out.single.shape[0]} vectors for {len(batch)} pages")
        report.tokens += self.batch_tok
        self.storer.check()
        for j, (idx, (image, text, page_no, thumb)) in enumerate(batch):
            doc = pending.get(idx)
            if doc is None:  # the document failed after this page was rendered
                continue
            doc.singles.append(out.single[j])
            multi = out.multi[j]
            # A view would keep the encoder's whole padded batch alive until the document is stored.
            doc.multis.append(multi.copy() if multi.base is not None else multi)
            doc.texts.append(text)
            doc.sizes.append(image.size)
            doc.numbers.append(page_no)
            doc.thumbnails.append(thumb)
            if doc.complete:
                self.finish(idx)
            elif len(doc.texts) >= self.part_pages:
                self.hand_part(idx)
        self.bar.update(len(batch))
        for idx in sorted({idx for idx, _ in batch if idx in pending}):
            if time.monotonic() - pending[idx].since >= self.part_seconds:
                self.hand_part(idx)
        self.batch, self.batch_tok = [], 0
        self.show_docs()

    def finish(self, idx: int) -> None:
        src = self.sources[idx]
        self.storer.put(self.pending.pop(idx).part(src.path, src.kind, complete=True))

    def hand_part(self, idx: int) -> None:
        """Hand over a long document's pages so far (it holds part_pages, or did for part_seconds)."""
        doc, src = self.pending[idx], self.sources[idx]
        if doc.texts:
            self.storer.put(doc.part(src.path, src.kind, complete=False))

    def show_docs(self) -> None:
        report = self.report
        self.docs_bar.n = len(report.added) + len(report.skipped) + len(report.failed) - self.done_before
        self.docs_bar.refresh()

    def close(self) -> None:
        self.storer.close()
        self.bar.close()
        self.docs_bar.close()


class _StoreThread:
    """Runs the sink on its own thread, one document at a time in hand-over order, so storing
    overlaps encoding. Document errors go to the report; any other error is re-raised by check()."""

    def __init__(self, sink: Callable[[EncodedDocument], None], report: IngestReport, depth: int = 2):
        self._sink, self._report = sink, report
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="jevsearch-store", daemon=True)
        self._thread.start()

    def put(self, doc: EncodedDocument) -> None:
        while True:
            self.check()
            try:
                self._q.put(doc, timeout=0.1)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Store what is queued, then stop the thread (idempotent)."""
        while self._thread.is_alive():
            try:
                self._q.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def _run(self) -> None:
        report = self._report
        while (doc := self._q.get()) is not None:
            if self.error is not None:
                continue  # after a failure, only drain until close()
            t0 = time.perf_counter()
            try:
                self._sink(doc)
                report.pages += doc.pages
                if doc.complete:
                    report.added.append(doc.path)
                report.missing_pages += [(doc.path, page, reason) for page, reason in doc.missing]
                for page, reason in doc.missing:
                    log.info("%s: page %d not indexed: %s", doc.path, page, reason)
            except (DocumentError, InvalidInputError) as e:
                report.failed.append((doc.path, getattr(e, "reason", None) or str(e)))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by check()
                self.error = e
            finally:
                report.timings["store"] += time.perf_counter() - t0
