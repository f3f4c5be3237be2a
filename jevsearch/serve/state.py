"""What the web app holds between requests: the read-only engine, its status, and small caches.

No web framework here (plain Python), so the rules are testable on their own.

- One engine, opened read-only on first use (an index that is not there yet is retried at the next
  request, so the app can be started before the index is built).
- One request at a time does engine work (``with state.work("searching") as eng``): the engine's
  model and caches are not meant for concurrent threads, and on a CPU parallel requests would only
  fight over the same cores. ``status()`` reads without waiting, so pages can show progress.
- Uploaded query images are kept (as the model sees them: at most the page pixel budget) under a short
  id, so a results page can link to heat-maps of an image query; a few recent explanations are kept so
  switching tokens does not recompute.

>>> state = AppState("indexes/papers", limits=Limits(max_k=50))   # nothing is opened yet
>>> state.limits.check_k("5"), state.limits.check_k(None), state.limits.check_query("revenue by region")
(5, 12, 'revenue by region')
>>> state.limits.check_k("500")
Traceback (most recent call last):
...
jevsearch.errors.InvalidInputError: k: '500' is out of range (hint: a whole number from 1 to 50)
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from contextlib import contextmanager

from jevsearch.errors import InvalidInputError, JevsearchError
from jevsearch.limits import Limits, UploadError
from jevsearch.serve.discovery import index_identity

log = logging.getLogger(__name__)


class _Lru:
    def __init__(self, size: int):
        self.size, self.items = size, collections.OrderedDict()

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


class AppState:
    """The engine and caches of one app (see the module docstring)."""

    def __init__(self, index_path, model=None, limits: Limits | None = None, dtype=None):
        self.index_path = str(index_path)
        self.model, self.dtype = model, dtype
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._eng = None
        self._status = {"model": "not loaded", "busy": None, "since": None}
        self._queries = _Lru(16)  # query image id -> prepared PIL image
        #: What authenticates the CLI's requests (set by jevsearch.serve.run; None: routes/cli.py is off).
        self.cli_token: str | None = None
        #: The index folder's identity (jevsearch.serve.discovery.index_identity) when the engine opened it.
        self.opened_identity: str | None = None
        self._explained = _Lru(8)  # (page id, query key) -> Explanation

    # -- the engine -------------------------------------------------------------------------------
    def _engine(self):
        """The engine (lock held); opened read-only on first use."""
        if self._eng is None:
            import jevsearch
            from jevsearch.errors import NotAnIndexError

            try:  # one index or a sharded one: the same surface
                self._eng = jevsearch.open(self.index_path, read_only=True, model=self.model, dtype=self.dtype)
                self.opened_identity = index_identity(self.index_path)
            except NotAnIndexError as e:
                raise NotAnIndexError(f"no index at {self.index_path}: {e}",
                                      cli_hint=f"jevsearch index PDFS --index {self.index_path}") from None
        return self._eng

    @contextmanager
    def work(self, what: str):
        """Run engine work alone (other requests wait; status() tells what is running)."""
        with self._lock:
            self._status.update(busy=what, since=time.monotonic())
            try:
                yield self._engine()
            finally:
                self._status.update(busy=None, since=None)

    def start_warm_up(self) -> threading.Thread:
        """Load the model in a background thread (status "loading" from now on until it is done)."""
        self._status["model"] = "loading"
        thread = threading.Thread(target=self.warm_up, name="jevsearch-warm-up", daemon=True)
        thread.start()
        return thread

    def warm_up(self) -> None:
        """Open the index and load its model."""
        self._status["model"] = "loading"
        try:
            with self.work("loading the model") as eng:
                if (eng.manifest.get("model") or {}).get("identity") is None:
                    self._status["model"] = "none (the index holds embeddings added by the caller)"
                    return
                _ = eng.encoder  # loads the model (a property)
                self._status["dtype"] = eng.model_dtype
                self._rehearse(eng)
            self._status["model"] = "ready"
        except JevsearchError as e:
            self._status["model"] = f"not loaded: {e}"
            log.warning("warm-up: %s", e)
        except Exception as e:
            self._status["model"] = f"failed: {type(e).__name__}: {e}"
            log.exception("warm-up failed")

    @staticmethod
    def _rehearse(eng) -> None:
        """One search and one explain, so the first user's do not pay for first calls (torch's text
        path, MuPDF's import, the first render; benchmarks/serve.py, benchmarks/RESULTS.md)."""
        hits = eng.search("warm up", k=1)
        if hits:
            try:
                eng.explain(hits[0], "warm up")
            except JevsearchError as e:  # e.g. that page's source file is gone: nothing to rehearse with
                log.info("warm-up explain: %s", e)

    def status(self) -> dict:
        """{"model": "ready" | "loading" | ..., "busy": what runs now or None, "seconds": for how long}."""
        s = dict(self._status)
        since = s.pop("since")
        s["seconds"] = round(time.monotonic() - since, 1) if since is not None else None
        return s

    def close(self) -> None:
        with self._lock:
            if self._eng is not None:
                self._eng.close()
                self._eng = None

    # -- requests ---------------------------------------------------------------------------------
    def remember_query_image(self, eng, img) -> tuple[str, object]:
        """(id, the image as the model sees it): kept for later heat-map requests of this query."""
        try:
            prepared = eng.page_image(img)
        except (ValueError, OSError) as e:
            raise UploadError(f"image: {e}") from None
        qid = hashlib.sha256(prepared.tobytes()).hexdigest()[:20]
        self._queries.put(qid, prepared)
        return qid, prepared

    def query_image(self, qid: str):
        img = self._queries.get(qid)
        if img is None:
            raise InvalidInputError("query image: no longer held by the server (it keeps the last 16) "
                                    "(hint: upload the image again)")
        return img

    def explanation(self, eng, page_id: int, query, query_key):
        """Engine.explain of the page for the query (cached for a few recent pages and queries)."""
        hit = eng.page_hit(page_id)  # PageNotFoundError first: a cached page may have left the index
        key = (page_id, query_key)
        ex = self._explained.get(key)
        if ex is None:
            ex = eng.explain(hit, query)
            self._explained.put(key, ex)
        return ex
