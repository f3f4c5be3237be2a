"""Checksums of stored values (on-disk format version 2): xxHash3-64, seeded by table and key.

Every value of an index's LMDB tables (except the empty tombstone markers) ends with an 8-byte
little-endian digest of its payload::

    value = payload | u64le xxh3_64(payload, seed=xxh3_64(key, seed=xxh3_64(table name)))

The seed binds the digest to where the value belongs: a value copied under another key or into
another table fails as surely as a flipped byte. xxHash3 is fast next to the rest of a search (a
100-candidate rerank's worth of multi-vectors hashes in a fraction of a millisecond), so every read on the
search path is verified. A manifest with ``"checksums": true`` says the values carry digests;
version-1 indexes have none and are read as before until ``compact`` adds them.

>>> raw = seal("text", b"k", b"hello")
>>> bytes(unseal("text", b"k", raw)), len(raw)
(b'hello', 13)
>>> unseal("text", b"other key", raw)
Traceback (most recent call last):
...
jevsearch.errors.ChecksumError: text value 6f74686572206b6579: checksum mismatch (hint: the value is damaged)
"""

from __future__ import annotations

import functools
import struct

import numpy as np
import xxhash

from jevsearch.errors import ChecksumError

SIZE = 8
_DIGEST = struct.Struct("<Q")


@functools.cache
def _table_seed(table: str) -> int:
    return xxhash.xxh3_64_intdigest(table.encode())


def digest(table: str, key: bytes, payload) -> int:
    """The digest of ``payload`` (any contiguous buffer) stored under ``key`` in ``table``."""
    return xxhash.xxh3_64_intdigest(payload, seed=xxhash.xxh3_64_intdigest(key, seed=_table_seed(table)))


def seal(table: str, key: bytes, payload) -> bytes:
    """``payload`` with its digest appended (one copy; for small values such as JSON records)."""
    return bytes(payload) + _DIGEST.pack(digest(table, key, payload))


def unseal(table: str, key: bytes, raw):
    """The payload of a sealed value, as a zero-copy slice of ``raw``; ChecksumError if it fails."""
    view = raw if isinstance(raw, memoryview) else memoryview(raw)  # LMDB gives memoryviews already
    n = len(view) - SIZE
    payload = view[:n]
    if n < 0 or digest(table, key, payload) != _DIGEST.unpack_from(view, n)[0]:
        raise ChecksumError(table, bytes(key))
    return payload


def intact(table: str, key: bytes, raw) -> bool:
    """True when ``raw`` is a sealed value whose digest matches."""
    view = memoryview(raw)
    return len(view) >= SIZE and digest(table, key, view[:-SIZE]) == _DIGEST.unpack_from(view, len(view) - SIZE)[0]


class Sealer:
    """Seals large values (page vectors) in a reused buffer: one copy of the payload per value, no
    fresh allocation (fresh large buffers cost page faults on every write). The result is valid until
    the next call; LMDB copies it at ``put``.

    >>> s = Sealer()
    >>> v = s.seal("multi", b"k", np.ones(4, np.float16))
    >>> bytes(unseal("multi", b"k", v)) == np.ones(4, np.float16).tobytes()
    True
    """

    def __init__(self):
        self._buf = np.empty(0, dtype=np.uint8)

    def seal(self, table: str, key: bytes, payload) -> np.ndarray:
        view = memoryview(payload).cast("B")  # payload must be C-contiguous (numpy arrays here are)
        n = len(view)
        if len(self._buf) < n + SIZE:
            self._buf = np.empty(max(n + SIZE, int(len(self._buf) * 1.5)), dtype=np.uint8)
        out = self._buf[: n + SIZE]
        out[:n] = np.frombuffer(view, dtype=np.uint8)
        out[n:] = np.frombuffer(_DIGEST.pack(digest(table, key, view)), dtype=np.uint8)
        return out
