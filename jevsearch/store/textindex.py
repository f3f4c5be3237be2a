"""The text index: Tantivy full-text search over each page's words, kept in step with LMDB.

LMDB is the truth (the pages' text layers and the documents' metadata); this index is a rebuildable
cache like the HNSW. On disk::

    <index>/text.json    {"dir", "gen", "epoch", "digest"}: the live Tantivy folder and the LMDB
                         generation it reflects (written atomically after each Tantivy commit)
    <index>/text-<n>/    the Tantivy index (a rebuild writes text-<n+1> and swaps text.json)

One Tantivy document per page (``page_id``, its document's ``first`` page id, ``body``: the page's
text layer or passage, ``meta``: the document's title and file name) and one marker per document
(``first``, ``sig``: a hash of what the document put in the index). A writer that finds the file's
generation behind LMDB's (a kill -9 between the LMDB commit and the Tantivy commit) compares the
markers with LMDB's documents and re-indexes only the documents that differ
(:meth:`TextIndex.reconcile`); a missing or damaged index is rebuilt from LMDB.

Words: Tantivy's ``simple`` tokenizer (Unicode letters and digits: Latin, Greek, Cyrillic, Hangul,
... words), lower-cased, accents folded (``ascii_fold``: café = cafe, Straße = strasse), tokens over
40 bytes dropped. Chinese and Japanese script (Han, kana) have no spaces: each such character is its
own token and a query's run of them becomes its overlapping character bigrams, each a phrase
(the CJK bigram scheme of Lucene's CJK analyzer, so 東京都 finds 東京都庁 but not 京東). A query's
word with inner punctuation (INV-2024-08817, 14.2) is a phrase of its parts; "quoted text" is one
phrase. Scores are BM25 over ``body`` and ``meta``.

>>> [t for t in query_tokens("INV-2024-08817 Café 東京都")]
[('word', ['inv', '2024', '08817']), ('word', ['cafe']), ('cjk', ['東', '京', '都'])]
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

import numpy as np
import xxhash

from jevsearch.errors import MissingDependencyError
from jevsearch.store.lmdbenv import write_atomic

log = logging.getLogger(__name__)

POINTER = "text.json"
DIR_PREFIX = "text-"
ANALYZER = "jevsearch"
HEAP_BYTES = 32 << 20  # Tantivy's writer buffer: segments are flushed when it fills
# Han, kana, CJK compatibility ideographs and extension A/B: scripts written without spaces.
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_PHRASE = re.compile(r'"([^"]*)"')


def tantivy():
    """The ``tantivy`` module, or MissingDependencyError naming the extra that installs it."""
    try:
        import tantivy as t
    except ImportError as e:
        raise MissingDependencyError("hybrid and lexical search need tantivy (hint: pip install -e \".[text]\")") from e
    return t


def available() -> bool:
    """Whether tantivy can be imported (a new index gets a text index when it can)."""
    try:
        tantivy()
    except MissingDependencyError:
        return False
    return True


def split_cjk(text: str) -> str:
    """``text`` with every Han/kana character set apart by spaces (so each is its own token)."""
    return _CJK.sub(r" \g<0> ", text)


def _analyzer():
    t = tantivy()
    return (t.TextAnalyzerBuilder(t.Tokenizer.simple()).filter(t.Filter.remove_long(40))
            .filter(t.Filter.lowercase()).filter(t.Filter.ascii_fold()).build())


_ANALYZER = None


def analyze(text: str) -> list[str]:
    """The index's tokens of ``text`` (CJK characters one by one)."""
    global _ANALYZER
    if _ANALYZER is None:
        _ANALYZER = _analyzer()
    return _ANALYZER.analyze(split_cjk(text))


def query_tokens(query: str) -> list[tuple[str, list[str]]]:
    """A query as its parts: ("phrase", tokens) for "quoted text", ("word", tokens) for a run of
    non-CJK tokens from one space-separated word (a phrase when several), ("cjk", characters) for a
    run of CJK characters."""
    parts: list[tuple[str, list[str]]] = []
    pos = 0
    for m in [*_PHRASE.finditer(query), None]:
        for chunk in query[pos: m.start() if m else len(query)].split():
            kind, run = None, []
            for tok in analyze(chunk):
                k = "cjk" if len(tok) == 1 and _CJK.match(tok) else "word"
                if k != kind and run:
                    parts.append((kind, run))
                    run = []
                kind = k
                run.append(tok)
            if run:
                parts.append((kind, run))
        if m:
            toks = analyze(m.group(1))
            if toks:
                parts.append(("phrase", toks))
            pos = m.end()
    return parts


def document_sig(doc: dict, meta_text: str) -> int:
    """What a document put in the index, hashed (its marker's ``sig``): reconcile compares it."""
    return xxhash.xxh64_intdigest(json.dumps([doc["doc_id"], doc["pages"], bool(doc.get("text")), meta_text]).encode())


def meta_text(doc: dict) -> str:
    """The metadata a document's pages are found by: its title and its file name."""
    title = doc["metadata"].get("title")
    name = os.path.basename(doc["doc_id"].rstrip("/")) or doc["doc_id"]
    return " ".join(x for x in (title if isinstance(title, str) else "", name) if x)


class TextIndex:
    """A Tantivy index of an index's pages (see the module docstring). Writer or reader."""

    def __init__(self, index_dir: str, pointer: dict, readonly: bool):
        t = tantivy()
        self.index_dir, self.readonly, self.pointer = index_dir, readonly, pointer
        self.dir = os.path.join(index_dir, pointer["dir"])
        self.gen = pointer["gen"]  # the LMDB generation the last commit reflects
        self._t = t
        self._index = t.Index.open(self.dir)
        self._index.register_tokenizer(ANALYZER, _analyzer())
        self.schema = self._index.schema
        self._writer = None
        self.pending = 0  # changes since the last commit
        self.last_commit = time.monotonic()

    # -- files ----------------------------------------------------------------------------------

    @staticmethod
    def read_pointer(index_dir: str) -> dict | None:
        """text.json, or None when it is missing; ValueError when it is damaged."""
        try:
            with open(os.path.join(index_dir, POINTER), "rb") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return None
        body = {k: raw.get(k) for k in ("dir", "gen", "epoch")}
        if raw.get("digest") != _digest(body) or not str(body["dir"]).startswith(DIR_PREFIX):
            raise ValueError(f"{POINTER} fails its checksum")
        return body

    @staticmethod
    def read_pointer_quiet(index_dir: str) -> dict | None:
        """text.json, or None when it is missing or damaged."""
        try:
            return TextIndex.read_pointer(index_dir)
        except (ValueError, OSError):
            return None

    @classmethod
    def open(cls, index_dir: str, readonly: bool) -> TextIndex:
        """Open the live text index; ValueError/OSError (callers rebuild) when missing or damaged."""
        pointer = cls.read_pointer(index_dir)
        if pointer is None:
            raise ValueError(f"{POINTER} is missing")
        return cls(index_dir, pointer, readonly)

    @classmethod
    def create(cls, index_dir: str, gen: int, epoch: int) -> TextIndex:
        """A new empty text index in a fresh folder, made live (the old one is removed)."""
        t = tantivy()
        try:
            old = cls.read_pointer(index_dir)
        except ValueError:
            old = None
        n = max([int(d[len(DIR_PREFIX):]) for d in os.listdir(index_dir)
                 if d.startswith(DIR_PREFIX) and d[len(DIR_PREFIX):].isdigit()] + [0]) + 1
        path = os.path.join(index_dir, f"{DIR_PREFIX}{n}")
        os.mkdir(path)
        sb = t.SchemaBuilder()
        sb.add_unsigned_field("page_id", stored=True, indexed=True, fast=True)
        sb.add_unsigned_field("first", stored=True, indexed=True, fast=True)
        sb.add_unsigned_field("sig", fast=True)
        sb.add_unsigned_field("marker", indexed=True)
        sb.add_text_field("body", tokenizer_name=ANALYZER)
        sb.add_text_field("meta", tokenizer_name=ANALYZER)
        t.Index(sb.build(), path=path)
        pointer = {"dir": os.path.basename(path), "gen": gen, "epoch": epoch}
        _write_pointer(index_dir, pointer)
        if old is not None:
            shutil.rmtree(os.path.join(index_dir, old["dir"]), ignore_errors=True)
        return cls(index_dir, pointer, readonly=False)

    @staticmethod
    def remove_stale(index_dir: str) -> None:
        """Remove text folders text.json does not name (a rebuild cut short). Writer only."""
        try:
            live = (TextIndex.read_pointer(index_dir) or {}).get("dir")
        except ValueError:
            return
        for d in os.listdir(index_dir):
            if d.startswith(DIR_PREFIX) and d != live and os.path.isdir(os.path.join(index_dir, d)):
                shutil.rmtree(os.path.join(index_dir, d), ignore_errors=True)

    def bytes(self) -> int:
        """Bytes of the live Tantivy folder."""
        return sum(e.stat().st_size for e in os.scandir(self.dir) if e.is_file())

    # -- writes ---------------------------------------------------------------------------------

    def _w(self):
        if self._writer is None:
            self._writer = self._index.writer(heap_size=HEAP_BYTES, num_threads=1)
        return self._writer

    def add(self, doc: dict, texts: list[str] | None) -> None:
        """Index a document (LMDB's record ``doc``) and its pages' ``texts`` (None: no text layer)."""
        t, w, meta = self._t, self._w(), meta_text(doc)
        first = doc["first"]
        marker = t.Document()
        marker.add_unsigned("first", first)
        marker.add_unsigned("sig", document_sig(doc, meta))
        marker.add_unsigned("marker", 1)
        w.add_document(marker)
        for i in range(doc["pages"]):
            body = split_cjk(texts[i]) if texts else ""
            if not body.strip() and not meta:
                continue
            page = t.Document()
            page.add_unsigned("page_id", first + i)
            page.add_unsigned("first", first)
            page.add_text("body", body)
            page.add_text("meta", split_cjk(meta))
            w.add_document(page)
        self.pending += 1

    def remove(self, firsts: list[int]) -> None:
        """Drop the documents whose first page ids are ``firsts`` (their pages and markers)."""
        if firsts:
            t = self._t
            q = t.Query.term_set_query(self.schema, "first", [int(f) for f in firsts])
            self._w().delete_documents_by_query(q)
            self.pending += 1

    def commit(self, gen: int, epoch: int) -> None:
        """Make the changes durable and visible, recording that they reflect LMDB generation ``gen``."""
        self._w().commit()
        # Merges finished and the writer let go: the files stay as committed (sizes, a reader's view).
        self._writer.wait_merging_threads()
        self._writer = None
        self.pointer = dict(self.pointer, gen=gen, epoch=epoch)
        _write_pointer(self.index_dir, self.pointer)
        self.gen, self.pending, self.last_commit = gen, 0, time.monotonic()
        self._index.reload()

    def close(self) -> None:
        """Drop the writer (uncommitted changes are lost: the next open catches up from LMDB)."""
        if self._writer is not None:
            self._writer.rollback()
            self._writer = None

    # -- reads ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """See the latest commit (a reader: maybe another process's)."""
        self._index.reload()

    def markers(self) -> dict[int, int]:
        """{first page id: sig} of every indexed document."""
        s = self._index.searcher()
        q = self._t.Query.term_query(self.schema, "marker", 1)
        hits = [a for _, a in s.search(q, max(s.num_docs, 1)).hits]
        return dict(zip(s.fast_field_values("first", hits), s.fast_field_values("sig", hits)))

    def page_ids(self) -> np.ndarray:
        """Every indexed page id, sorted (a scan: for verify)."""
        s = self._index.searcher()
        hits = [a for _, a in s.search(self._t.Query.all_query(), max(s.num_docs, 1)).hits]
        ids = [p for p in s.fast_field_values("page_id", hits) if p is not None]
        return np.sort(np.array(ids, dtype=np.int64))

    def query(self, text: str, every_part: bool = False):
        """The Tantivy query for the user's ``text`` (see the module docstring), or None when it has no
        words: pages matching any of its parts, or with ``every_part`` only pages matching all of them."""
        t = self._t
        subs = []
        for kind, toks in query_tokens(text):
            groups = [toks[i:i + 2] for i in range(max(len(toks) - 1, 1))] if kind == "cjk" else [toks]
            for g in groups:
                either = [(t.Occur.Should, t.Query.term_query(self.schema, field, g[0]) if len(g) == 1 else
                           t.Query.phrase_query(self.schema, field, g)) for field in ("body", "meta")]
                subs.append((t.Occur.Must if every_part else t.Occur.Should, t.Query.boolean_query(either)))
        return t.Query.boolean_query(subs) if subs else None

    def search(self, text: str, n: int, accept=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``n`` best pages for ``text`` -> (page ids, BM25 scores, whether each matches every part
        of the query): pages matching every part first, then the others, each by BM25; only pages for
        which ``accept(page_ids) -> bool mask`` holds (e.g. a filter's, the live ones)."""
        ids, scores = self._search(self.query(text, every_part=True), n, accept)
        more_ids, more_scores = self._search(self.query(text), n + len(ids), accept)
        rest = ~np.isin(more_ids, ids)
        full = np.r_[np.ones(len(ids), bool), np.zeros(int(rest.sum()), bool)][:n]
        return np.r_[ids, more_ids[rest]][:n], np.r_[scores, more_scores[rest]][:n], full

    def _search(self, q, n: int, accept) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best accepted pages for query ``q`` by BM25: asked for more until n are found or
        none are left."""
        if q is None or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        s = self._index.searcher()
        total, limit = s.num_docs, max(4 * n, 64)
        while True:
            found = s.search(q, min(limit, max(total, 1))).hits
            addrs = [a for _, a in found]
            ids = np.array([-1 if p is None else p for p in s.fast_field_values("page_id", addrs)], dtype=np.int64)
            scores = np.array([sc for sc, _ in found], dtype=np.float32)
            keep = ids >= 0
            if accept is not None and keep.any():
                keep[keep] = accept(ids[keep])
            if keep.sum() >= n or len(found) < limit or limit >= total:
                return ids[keep][:n], scores[keep][:n]
            limit *= 4


def _digest(body: dict) -> str:
    return xxhash.xxh64_hexdigest(json.dumps(body, sort_keys=True).encode())


def _write_pointer(index_dir: str, pointer: dict) -> None:
    write_atomic(os.path.join(index_dir, POINTER), json.dumps(dict(pointer, digest=_digest(pointer))).encode())
