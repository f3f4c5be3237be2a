"""A bounded LRU of query embeddings, so a repeated query (the web app, eval reruns) is not re-encoded.

Keys name everything the embedding depends on: the model's fingerprint, the weights' dtype, the task,
the prompt (or the image's pixel budget) and a sha256 of the text or of the image's pixels.

>>> cache = QueryCache(max_entries=2)
>>> key = text_key("f" * 64, "float32", "retrieval", "query", "revenue")
>>> cache.get(key) is None, cache.misses
(True, 1)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

#: Default bounds of the process-wide cache: entries, and bytes of vectors held.
MAX_ENTRIES = 1024
MAX_BYTES = 64 << 20


def text_key(fingerprint: str, dtype: str, task: str, prompt: str, text: str) -> tuple:
    return ("text", fingerprint, dtype, task, prompt, hashlib.sha256(text.encode()).hexdigest())


def image_key(fingerprint: str, dtype: str, task: str, max_pixels: int, image) -> tuple:
    """Key of a PIL image: its mode, size and pixels (not its file name or metadata)."""
    h = hashlib.sha256(f"{image.mode}\0{image.size}\0".encode())
    h.update(image.tobytes())
    return ("image", fingerprint, dtype, task, int(max_pixels), h.hexdigest())


class QueryCache:
    """Thread-safe LRU of (single row, multi rows) per key, bounded by entries and by bytes.

    Cached arrays are read-only: a caller that wants to change one copies it first.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: tuple, single: np.ndarray, multi: np.ndarray) -> None:
        single, multi = _frozen(single), _frozen(multi)
        size = single.nbytes + multi.nbytes
        if self.max_entries < 1 or size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[0].nbytes + old[1].nbytes
            self._items[key] = (single, multi)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (s, m) = self._items.popitem(last=False)
                self._bytes -= s.nbytes + m.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float32, copy=True)
    a.flags.writeable = False
    return a


#: The process-wide cache encoders use unless given their own.
QUERY_CACHE = QueryCache()
