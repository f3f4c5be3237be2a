"""Rendering in a child process, streamed to the ingest pipeline over a pipe.

Why a process and not a thread: MuPDF holds the GIL for the whole of a page render (an encoder loop
runs slower beside a rendering thread, even with an idle core; benchmarks/RESULTS.md), which would starve
the thread that drives the encoder exactly when the encoder is fast (a GPU). A child process also turns
a crash inside MuPDF (a segfault on a hostile PDF) into one failed file instead of a dead ingest: the
file being rendered is reported and a new child goes on with the next one.

The child runs :func:`_child` in a fresh interpreter (no fork: nothing of the parent, such as the index's
lock file descriptor, leaks into it): it reads one JSON job from stdin (sources, known
hashes, raster geometry) and writes framed messages to stdout: a 4-byte big-endian length, a JSON header,
then for a page its raw RGB bytes and its thumbnail (:mod:`.thumbnail`, made here so it costs the
encoder nothing). It hashes each file, skips unchanged ones, checks the others against the hash their
plan expects (a file changed since it was planned fails, rather than be stored with one version's
vectors and another's hash), reads a PDF's own metadata while it is open, and renders the pages not
stored yet (a partial document resumes after its last stored page). When the parent dies, the child's
next write fails and it exits.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

from PIL import Image

from jevsearch.errors import DocumentError
from jevsearch.ingest import thumbnail
from jevsearch.ingest.pages import PageGeometry, open_document
from jevsearch.ingest.sources import Source, file_sha256, os_reason

# Messages put on the consumer's queue: (kind, source index, payload).
START, PAGE, END, SKIP, FAIL, DONE, MISSING = range(7)
_LEN = struct.Struct(">I")
#: Why a file whose content changed between planning and rendering is not indexed this time (not
#: recorded as a lasting failure: the next add plans it again).
CHANGED = "changed while being indexed (its SHA-256 is not the one planned) (hint: add it again)"


class RenderProcess:
    """Parent side: runs the child (restarting it after a crash) and feeds a bounded queue.

    ``expected`` maps a path to the SHA-256 its plan was made for; ``resume`` a path to the last page
    number already stored (a partial document: rendering starts after it).

    ``queue`` yields (START, i, (sha256, pages, resume after, PDF info)), (PAGE, i, (image, text, page
    number, thumbnail bytes)),
    (MISSING, i, (page number, reason)) for a page that cannot be rendered, (END, i, None), (SKIP, i, None),
    (FAIL, i, reason) and finally (DONE, -1, error or None). A document's pages come in order, each as
    PAGE or MISSING; END follows when at least one was rendered, else FAIL. ``render_seconds`` is the
    children's own time spent hashing, opening and rendering (``thumbnail_seconds`` of it thumbnails).
    """

    def __init__(self, sources: Sequence[Source], known: Mapping[str, str], geometry: PageGeometry,
                 queue_pages: int, expected: Mapping[str, str] | None = None, resume: Mapping[str, int] | None = None):
        self.queue: queue.Queue = queue.Queue(maxsize=queue_pages)
        self.render_seconds = 0.0
        self.thumbnail_seconds = 0.0  # of render_seconds: making thumbnails
        self._sources, self._known, self._geometry = sources, known, geometry
        self._expected, self._resume = expected or {}, resume or {}
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jevsearch-render-reader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the child and the reader (idempotent); what is queued is dropped."""
        self._stop.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        while self._thread.is_alive():
            _drain(self.queue)
            self._thread.join(timeout=0.05)
        _drain(self.queue)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        error = None
        start = 0
        try:
            while start < len(self._sources) and not self._stop.is_set():
                start = self._run_child(start)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            error = e
        self._put((DONE, -1, error))

    def _run_child(self, start: int) -> int:
        """Render sources[start:] in one child; -> where a new child must resume (len(sources) when done)."""
        job = {"sources": [[s.path, s.kind, self._expected.get(s.path), self._resume.get(s.path, 0)]
                           for s in self._sources[start:]], "offset": start,
               "known": {s.path: self._known[s.path] for s in self._sources[start:] if s.path in self._known},
               "geometry": [self._geometry.max_pixels, self._geometry.min_pixels, self._geometry.factor]}
        # The child imports this package from where this process found it (it may not be installed).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on it
        with self._lock:
            if self._stop.is_set():
                return len(self._sources)
            self._proc = proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from jevsearch.ingest.renderer import _child; sys.exit(_child())"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env)
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once: reported below like any crash
        current = start  # the source the child is working on
        out = proc.stdout
        try:
            while True:
                raw = out.read(_LEN.size)
                if len(raw) < _LEN.size:
                    break  # the child ended (or was killed) without saying it was done
                head = json.loads(out.read(_LEN.unpack(raw)[0]))
                kind, idx = head["t"], head.get("i", -1)
                if kind == "page":
                    data, thumb = out.read(head["n"]), out.read(head["tn"])
                    if len(data) < head["n"] or len(thumb) < head["tn"]:
                        break
                    item = (PAGE, idx, (Image.frombytes("RGB", (head["w"], head["h"]), data), head["text"], head["p"],
                                        thumb))
                elif kind == "done":
                    self.render_seconds += head["render_s"]
                    self.thumbnail_seconds += head["thumb_s"]
                    if head["error"]:
                        raise RuntimeError(f"render process failed: {head['error']}")
                    return len(self._sources)
                else:
                    current = idx
                    item = {"start": (START, idx, (head.get("sha"), head.get("pages"), head.get("from", 0),
                                                   head.get("info", {}))), "end": (END, idx, None),
                            "skip": (SKIP, idx, None), "fail": (FAIL, idx, head.get("reason")),
                            "missing": (MISSING, idx, (head.get("p"), head.get("reason")))}[kind]
                    if kind not in ("start", "missing"):
                        current = idx + 1
                if not self._put(item):
                    return len(self._sources)
        finally:
            out.close()
            code = proc.wait()
            errors.seek(0)
            err = errors.read().decode(errors="replace").strip()
            errors.close()
        if self._stop.is_set():
            return len(self._sources)
        # The child died inside a document (a MuPDF crash): that file fails, a new child goes on.
        why = f"renderer crashed (exit status {code})" + (f": {err.splitlines()[-1]}" if err else "")
        if current < len(self._sources):
            self._put((FAIL, current, why))
        return current + 1


def failure_reason(e: BaseException) -> str:
    """Why a file cannot be ingested, from what opening or rendering it raised: the same words from the
    render process and from a Ray render task (jevsearch.scale)."""
    if isinstance(e, DocumentError):
        return e.reason if e.page is None else f"page {e.page}: {e.reason}"
    if isinstance(e, MemoryError):
        return "out of memory while rendering"
    if isinstance(e, OSError):
        return os_reason(e)
    return f"cannot be read: {type(e).__name__}: {_first_line(e)}"


def unrendered_reason(kind: str, page_count: int, first: str) -> str:
    """Why a document none of whose pages could be rendered fails; ``first``: its first page's reason."""
    if kind == "image":
        return first
    every = "" if page_count == 1 else f"none of its {page_count} pages could be rendered; "
    return f"{every}page 1: {first}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


# ----- the child ---------------------------------------------------------------------------------
def _child() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    # The protocol gets a private copy of stdout; fd 1 then points at stderr, so a stray print (from
    # MuPDF or anything else) can never corrupt the stream.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.buffer.read())
    geometry = PageGeometry(*job["geometry"])
    known, offset = job["known"], job["offset"]
    spent = thumb_s = 0.0

    def send(head: dict, payload: bytes = b"") -> None:
        data = json.dumps(head).encode()
        out.write(_LEN.pack(len(data)) + data)
        if payload:
            out.write(payload)
        out.flush()

    error = None
    try:
        for k, (path, kind, expected, after) in enumerate(job["sources"]):
            idx = offset + k
            t0 = time.perf_counter()
            try:
                sha256 = file_sha256(path)
                if known.get(path) == sha256:
                    spent += time.perf_counter() - t0
                    send({"t": "skip", "i": idx})
                    continue
                if expected is not None and sha256 != expected:
                    spent += time.perf_counter() - t0
                    send({"t": "fail", "i": idx, "reason": CHANGED})
                    continue
                with open_document(Source(path, kind)) as doc:
                    spent += time.perf_counter() - t0
                    after = min(after, doc.page_count)
                    send({"t": "start", "i": idx, "sha": sha256, "pages": doc.page_count, "from": after,
                          "info": doc.info()})
                    missing = []
                    for i in range(after, doc.page_count):
                        t0 = time.perf_counter()
                        try:
                            image = doc.render(i, geometry)
                        except DocumentError as e:  # this page only: the others are still indexed
                            spent += time.perf_counter() - t0
                            missing.append(e.reason)
                            send({"t": "missing", "i": idx, "p": i + 1, "reason": e.reason})
                            continue
                        text = doc.text(i)
                        data = image.tobytes()
                        t1 = time.perf_counter()
                        thumb = thumbnail.encode(image)
                        thumb_s += time.perf_counter() - t1
                        spent += time.perf_counter() - t0
                        send({"t": "page", "i": idx, "p": i + 1, "w": image.width, "h": image.height,
                              "text": text, "n": len(data), "tn": len(thumb)}, data + thumb)
                if after or len(missing) < doc.page_count:  # pages stored before count as rendered
                    send({"t": "end", "i": idx})
                else:
                    send({"t": "fail", "i": idx, "reason": unrendered_reason(kind, doc.page_count, missing[0])})
            except BrokenPipeError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever one file provokes fails that file only
                send({"t": "fail", "i": idx, "reason": failure_reason(e)})
    except BrokenPipeError:
        return 0  # the parent is gone or stopped us: nothing to report to
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        error = f"{type(e).__name__}: {e}"
    try:
        send({"t": "done", "render_s": spent, "thumb_s": thumb_s, "error": error})
    except BrokenPipeError:
        pass
    return 0
