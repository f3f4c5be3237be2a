"""The LMDB part of an index: the truth every other part can be rebuilt from.

One LMDB environment (``<index>/store-<n>/``, named by the file ``<index>/CURRENT``; n grows with
each compaction) with these named databases::

    meta    b"manifest" -> JSON (format version, dims, dtypes, HNSW parameters, model identity)
            b"manifest.copy" -> the same JSON, written in the same transactions: a damaged manifest is
                        read from its copy (and rewritten by the next writer); indexes from before it
                        get the copy when a writer opens them
            b"state"    -> JSON (next page id, generation, epoch, counters)
            b"failures" -> JSON {path: {sha256, reason}}: files ingest could not read (may be absent)
    docs    blake2b-128(doc_id) -> JSON {doc_id, first, pages, tokens, metadata, text}
    pages   u64be page id -> PAGE_REC (doc key, 1-based page number, token count)
    single  u64be page id -> single_dtype [D]     full single vector (HNSW can be rebuilt from it); its
                                                  first single_dim dims in format version 4 (codes only)
    multi   u64be page id -> codes of [T, dm]     per-token multi-vectors, T from the page record:
                                                  multi_dtype floats, or the manifest's codec
                                                  (jevsearch.search.codecs; format version 3)
    exact   u64be page id -> float16 [T, dm]      the same tokens as floats, when the manifest says
                                                  keep_exact (optional table, format version 3)
    text    u64be page id -> UTF-8 page text      (only when the caller gave texts)
    tomb    u64be page id -> b""                  deleted pages still present in the HNSW file
    visual  u64be page id -> grid layout + thumbnail (optional table: jevsearch.store.visual)
    fde     u64be page id -> float16 [F]          the page's MUVERA encoding (optional: jevsearch.store.fde)
    fields  u64be first page id -> JSON           a document's filterable fields (jevsearch.store.fields);
                                                  optional: indexes made before it lack it until a writer
                                                  opens them (state["fields"] says it is complete)

Format version 2 (``"checksums": true`` in the manifest): every value except the empty tombstone
markers ends with an 8-byte xxHash3 digest seeded by table and key (:mod:`jevsearch.store.checksum`);
the accessors below return the payload without it (a zero-copy slice) and raise ChecksumError when
it does not match. Version-1 stores carry no digests and are read as they are.

A document and all its pages are written in one write transaction, so readers (other processes
included) see all of it or nothing, and a crash loses at most the document being written. Page ids
come from a monotonic counter and a document's pages get consecutive ids, so "pages added since X"
is a cursor range. Values are raw little-endian arrays and JSON: nothing here can run code.

LMDB is used only inside ``with store.read() as txn`` / ``with store.write() as txn`` blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from jevsearch.errors import ChecksumError, CorruptIndexError, InvalidInputError
from jevsearch.store import checksum, visual
from jevsearch.store.schema import (
    EXACT,
    PAGE_KEY,
    PAGE_REC,
    PAGE_VALUE_TABLES,
    doc_key,
    dump_json,
    load_json,
    page_key,
    page_numbers,
)
from jevsearch.store.tablestore import TableStore


class PageStore(TableStore):
    """Typed access to the LMDB environment of one index (see the module docstring for the layout).

    ``checksums``: whether this store's values carry digests (format version 2), read from its
    manifest at open. Accessors of sealed values raise ChecksumError (a CorruptIndexError) when one
    fails; ``None`` still means absent.
    """

    # -- records --------------------------------------------------------------------------------

    def state(self, txn) -> dict:
        raw = self.get(txn, "meta", b"state")
        if raw is None:
            raise CorruptIndexError(f"{self.env_dir}: no state record (hint: restore the index)")
        return load_json(raw)

    def put_state(self, txn, state: dict) -> None:
        self.put(txn, "meta", b"state", dump_json(state))

    def document(self, txn, doc_id: str) -> dict | None:
        return self.document_by_key(txn, doc_key(doc_id))

    def existing_document(self, txn, doc_id: str) -> dict:
        """Document ``doc_id``'s record; InvalidInputError when the index has none."""
        doc = self.document(txn, doc_id)
        if doc is None:
            raise InvalidInputError(f"{doc_id}: not in the index (hint: documents() lists the indexed ids)")
        return doc

    def document_by_key(self, txn, key: bytes) -> dict | None:
        raw = self.get(txn, "docs", key)
        return None if raw is None else load_json(raw)

    def iter_documents(self, txn, damaged: list | None = None) -> Iterator[dict]:
        """Every document record; a damaged one (digest or JSON) raises ChecksumError, or, given a
        ``damaged`` list, is skipped and its key appended to it."""
        if damaged is None:
            for _, raw in self.items(txn, "docs"):
                yield load_json(raw)
            return
        for key, raw in self.items(txn, "docs", raw=True):
            try:
                doc = load_json(self.unseal("docs", key, raw))
            except (ChecksumError, ValueError):
                damaged.append(bytes(key))
                continue
            yield doc

    def page(self, txn, page_id: int) -> tuple[bytes, int, int] | None:
        """(doc key, 1-based page number, token count) of a live page, None if absent."""
        raw = self.get(txn, "pages", page_key(page_id))
        if raw is None:
            return None
        if len(raw) != PAGE_REC.size:
            raise CorruptIndexError(f"{self.env_dir}: page record of page id {page_id} has {len(raw)} bytes "
                                    "(hint: the store is damaged)")
        return PAGE_REC.unpack(raw)

    def text(self, txn, page_id: int) -> str | None:
        raw = self.get(txn, "text", page_key(page_id))
        return None if raw is None else bytes(raw).decode("utf-8", "replace")

    def multi_raw(self, txn, page_id: int):
        """A page's multi-vector bytes, checked (zero-copy, valid inside ``txn`` only). The search path
        reads them unchecked and checks them as it packs them (:meth:`page_check`)."""
        return self.get(txn, "multi", page_key(page_id))

    def single_raw(self, txn, page_id: int):
        """A page's stored single vector (``single_dtype`` values), checked; None if absent."""
        return self.get(txn, "single", page_key(page_id))

    def single(self, txn, page_id: int, dim: int | None) -> np.ndarray | None:
        """A page's single vector as float32 [dim] (a copy), None if absent or not ``dim`` values
        (None: any length); ChecksumError if it fails its checksum."""
        raw = self.single_raw(txn, page_id)
        dtype = self.single_dtype
        if raw is None or dim is not None and len(raw) != dim * dtype.itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype).astype(np.float32)

    def iter_pages(self, txn, start: int = 0, damaged: list | None = None) -> Iterator[tuple[int, bytes, int, int]]:
        """Live pages with id >= ``start`` in id order: (page id, doc key, page number, tokens).

        A page record that fails its checksum raises ChecksumError, or, given a ``damaged`` list, is
        skipped and its page id appended to it.
        """
        sealed = self.checksums
        for k, v in self.items(txn, "pages", page_key(start), raw=True):
            pid = PAGE_KEY.unpack(k)[0]
            if sealed:
                if not checksum.intact("pages", k, v):
                    if damaged is None:
                        raise self.checksum_error("pages", bytes(k))
                    damaged.append(pid)
                    continue
                v = v[:-checksum.SIZE]
            if len(v) != PAGE_REC.size:
                if damaged is None:
                    raise CorruptIndexError(f"{self.env_dir}: page record of page id {pid} has {len(v)} bytes "
                                            "(hint: the store is damaged)")
                damaged.append(pid)
                continue
            key, no, tokens = PAGE_REC.unpack(v)
            yield pid, key, no, tokens

    def view(self, txn, page_id: int) -> visual.PageView | None:
        """The page's visual record (grid layout, thumbnail), None if it has none."""
        raw = self.get(txn, visual.TABLE, page_key(page_id))
        return None if raw is None else visual.PageView.decode(raw)

    def iter_keys(self, txn, table: str) -> Iterator[int]:
        if self._db[table] is None:  # an optional table this index does not have
            return
        for k in txn.cursor(db=self._db[table]).iternext(keys=True, values=False):
            yield PAGE_KEY.unpack(k)[0]

    def tombstones(self, txn) -> np.ndarray:
        return np.fromiter(self.iter_keys(txn, "tomb"), dtype=np.int64)

    # -- writes (caller holds the writer lock and a write transaction) --------------------------

    def remove_document(self, txn, doc: dict) -> list[int]:
        """Delete a document's record and pages; their ids become tombstones. Returns the ids."""
        ids = list(range(doc["first"], doc["first"] + doc["pages"]))
        for pid in ids:
            k = page_key(pid)
            for table in PAGE_VALUE_TABLES:
                if self._db[table] is not None:
                    txn.delete(k, db=self._db[table])
            txn.put(k, b"", db=self._db["tomb"])
        txn.delete(doc_key(doc["doc_id"]), db=self._db["docs"])
        return ids

    def put_document(self, txn, doc: dict, singles, multis: list, texts: list[str] | None,
                     tokens: list[int] | None = None, exact: list | None = None, offset: int = 0) -> None:
        """Write one document whose pages get ids ``doc["first"] ...`` (all above existing ids); their
        page numbers are ``doc["page_numbers"]`` when the document has one (pages left out), else 1..P.

        ``singles`` [P, D] and ``multis`` (P arrays or buffers) in their stored form; ``tokens``: each
        page's token count (default: ``len`` of each multi, for [T, dm] arrays); ``exact``: P float16
        [T, dm] arrays for the ``exact`` table, or None. ``offset``: these are the document's pages from
        its ``offset``-th on (a long document stored in parts; the earlier ones are stored)."""
        dkey = doc_key(doc["doc_id"])
        numbers = page_numbers(doc)[offset:]
        tokens = [len(m) for m in multis] if tokens is None else tokens
        for i, m in enumerate(multis):
            k = page_key(doc["first"] + offset + i)
            # append=True: ids only grow, so each put lands at the B-tree's right edge.
            self.put(txn, "pages", k, PAGE_REC.pack(dkey, numbers[i], tokens[i]), append=True)
            self.put(txn, "single", k, np.ascontiguousarray(singles[i]), append=True)  # a buffer: no bytes copy
            self.put(txn, "multi", k, np.ascontiguousarray(m), append=True)
            if exact is not None:
                self.put(txn, EXACT, k, np.ascontiguousarray(exact[i]), append=True)
            if texts is not None:
                self.put(txn, "text", k, texts[i].encode("utf-8"), append=True)
        self.put(txn, "docs", dkey, dump_json(doc))

    def put_document_record(self, txn, doc: dict) -> None:
        """Rewrite a document's record (e.g. its metadata); its pages stay as they are."""
        self.put(txn, "docs", doc_key(doc["doc_id"]), dump_json(doc))

    # -- field records (see jevsearch.store.fields) -------------------------------------------

    def put_fields(self, txn, first: int, record: dict) -> None:
        self.put(txn, "fields", page_key(first), dump_json(record))

    def delete_fields(self, txn, first: int) -> None:
        self.delete(txn, "fields", page_key(first))

    def iter_fields(self, txn, start: int = 0, damaged: list | None = None) -> Iterator[tuple[int, dict]]:
        """(first page id, field record) of documents whose first page id is >= ``start``, in id order.
        A record failing its digest raises ChecksumError, or, given a ``damaged`` list, is skipped and
        its first page id appended to it."""
        keys, raws = [], []
        sealed = self.checksums
        for k, v in self.items(txn, "fields", page_key(start), raw=True):  # parsed 4096 at a time as one
            if sealed:                                                      # JSON array: ~2x faster than
                if not checksum.intact("fields", k, v):                     # a loads each
                    if damaged is None:
                        raise self.checksum_error("fields", bytes(k))
                    damaged.append(PAGE_KEY.unpack(k)[0])
                    continue
                v = v[:-checksum.SIZE]
            keys.append(PAGE_KEY.unpack(k)[0])
            raws.append(bytes(v))
            if len(raws) == 4096:
                yield from zip(keys, json.loads(b"[" + b",".join(raws) + b"]"))
                keys, raws = [], []
        if raws:
            yield from zip(keys, json.loads(b"[" + b",".join(raws) + b"]"))

    def put_views(self, txn, first: int, views: list[visual.PageView]) -> None:
        """Write the visual records of a document's pages (ids ``first ...``) just put by put_document."""
        for i, v in enumerate(views):
            if v.rows * v.cols or v.thumbnail:  # an empty view is no record: the page reads as having none
                self.put(txn, visual.TABLE, page_key(first + i), v.encode(), append=True)

    def rekey_document(self, txn, doc: dict, new_id: str, metadata: dict) -> None:
        """Move a document's record to ``new_id`` and point its page records at it; the vectors and page
        ids stay as they are. The caller has removed any document at ``new_id``."""
        new_key = doc_key(new_id)
        for pid in range(doc["first"], doc["first"] + doc["pages"]):
            rec = self.page(txn, pid)  # ChecksumError when damaged: a rename never certifies damage
            if rec is None:
                raise CorruptIndexError(f"{self.index_dir}: {doc['doc_id']}: page id {pid} missing "
                                        "(hint: Index.verify(deep=True) lists what is damaged)")
            self.put(txn, "pages", page_key(pid), PAGE_REC.pack(new_key, rec[1], rec[2]))
        self.delete(txn, "docs", doc_key(doc["doc_id"]))
        self.put(txn, "docs", new_key, dump_json(dict(doc, doc_id=new_id, metadata=metadata)))

    def failures(self, txn) -> dict:
        """Files that failed to ingest: {path: {"sha256", "reason"}} (none recorded: {})."""
        raw = self.get(txn, "meta", b"failures")
        return {} if raw is None else load_json(raw)

    def put_failures(self, txn, failures: dict) -> None:
        self.put(txn, "meta", b"failures", dump_json(failures))

    def clear_tombstones(self, txn) -> None:
        txn.drop(self._db["tomb"], delete=False)
