"""The LMDB layout's names and record shapes, shared by the store's readers and writers.

Tables (see :mod:`jevsearch.store.lmdbstore` for what each holds), page and document keys, the page
record, and the JSON encoding of records. Pure: no LMDB handle here.

    >>> page_key(7).hex()
    '0000000000000007'
"""

from __future__ import annotations

import hashlib
import json
import struct

from jevsearch.store import checksum, visual

DB_NAMES = ("meta", "docs", "pages", "single", "multi", "text", "tomb")
# Tables added after format version 1: an index without them still opens (its handle is None
# until a writer creates the table; readers treat the table as empty).
EXACT = "exact"
FDE = "fde"  # one float16 MUVERA encoding per page, when the manifest has an "fde" record (jevsearch.store.fde)
OPTIONAL_DB_NAMES = (visual.TABLE, "fields", EXACT, FDE)
PAGE_VALUE_TABLES = ("pages", "single", "multi", EXACT, "text", visual.TABLE, FDE)  # keyed by page id
UNSEALED = frozenset({"tomb"})  # empty markers: their keys are the data, so they carry no digest

MANIFEST_COPY = b"manifest.copy"
PAGE_KEY = struct.Struct(">Q")  # big-endian so LMDB key order == page id order
PAGE_REC = struct.Struct("<16sII")  # doc key, page number (1-based), token count


def manifest_of(raw) -> tuple[bool, dict] | None:
    """(checksums, manifest) of a stored manifest value, None when damaged."""
    if checksum.intact("meta", b"manifest", raw):
        manifest = load_json(raw[:-checksum.SIZE])
        if manifest.get("checksums") is True:
            return True, manifest
        return None
    try:
        manifest = load_json(raw)
    except ValueError:
        return None
    return (False, manifest) if isinstance(manifest, dict) and not manifest.get("checksums") else None


def doc_key(doc_id: str) -> bytes:
    """Fixed-size LMDB key of a document (doc ids are paths and may exceed LMDB's 511-byte keys)."""
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).digest()


def page_key(page_id: int) -> bytes:
    return PAGE_KEY.pack(page_id)


def page_numbers(doc: dict) -> list[int]:
    """The 1-based page numbers of a document record's pages (in page id order)."""
    return doc.get("page_numbers") or list(range(1, doc["pages"] + 1))


def dump_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def load_json(buf) -> dict:
    return json.loads(bytes(buf))
