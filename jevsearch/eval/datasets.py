"""Evaluation datasets: queries, graded relevance judgements (qrels) and the corpus they point into.

:func:`load_dataset` reads two layouts from a folder (nothing is fetched):

**BEIR-style folder**::

    DATASET/queries.jsonl    {"_id": "q1", "text": "quarterly revenue"}   or   {"_id": "q2", "image": "queries/chart.png"}
    DATASET/qrels/test.tsv   a header line, then  query-id <TAB> corpus-id <TAB> score  (graded: 0, 1, 2, ...)
    DATASET/corpus/...       the documents. A corpus id is a file's path relative to corpus/ ("reports/q3.pdf",
                             "scan.png"), or "reports/q3.pdf#4" for page 4 of a PDF.

**ViDoRe** (Parquet files as downloaded from the benchmark's dataset pages, e.g.
``hf download vidore/esg_reports_v2 --repo-type dataset --local-dir DATASET``, read with pyarrow):

* BEIR configs (ViDoRe v1 ``*_beir`` sets, v2, v3): ``corpus/*.parquet`` (corpus-id, image),
  ``queries/*.parquet`` (query-id, query), ``qrels/*.parquet`` (query-id, corpus-id, score); the
  ``corpus_id``/``query_id`` spellings of v3 too.
* QA sets (ViDoRe v1, e.g. ``vidore/docvqa_test_subsampled``): ``*.parquet`` rows of (query, image,
  image_filename), one page image per row with its query or null. Queries are deduplicated (ids
  ``q0, q1, ...`` in order of appearance) and each is relevant (grade 1) to every image it was asked
  of; a corpus id is the image_filename.

The page images inside the Parquet files are written out as files (``DATASET/jevsearch-corpus/``, or
``images_dir=``) the first time :meth:`Dataset.corpus_paths` is called, since an index holds files.

>>> ds = load_dataset("datasets/papers")            # doctest: +SKIP
>>> len(ds.queries), ds.qrels["q1"]                 # doctest: +SKIP
(50, {'reports/q3.pdf#4': 2, 'reports/q3.pdf#5': 1})
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from jevsearch.errors import DatasetError, MissingDependencyError

log = logging.getLogger(__name__)

IMAGES_DIR = "jevsearch-corpus"  # where ViDoRe page images are written, inside the dataset folder
INSTALL = "pip install 'jevsearch[eval]'"
_IMAGE_EXT = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp"}
LAYOUT_HINT = ("a BEIR-style folder holds queries.jsonl, qrels/<split>.tsv and corpus/; a ViDoRe download "
                "holds Parquet files")


@dataclass
class Query:
    """One query: a ``text``, an ``image`` (path of an image file), or pre-computed embeddings
    (``single`` [D] and ``multi`` [L, d], as for ``Index.search_embeddings``; no model needed)."""

    id: str
    text: str | None = None
    image: str | None = None
    single: np.ndarray | None = None
    multi: np.ndarray | None = None


class Dataset:
    """Queries, qrels ``{query id: {corpus id: grade}}`` and where the corpus lives.

    corpus_root: the folder whose files are the corpus (their index document ids are their absolute
    paths); None when the corpus ids are the index's own document ids (``doc_id`` for a whole document,
    ``doc_id#3`` for its page 3), e.g. for an index filled with ``add_embeddings``:

    >>> ds = Dataset([Query("q1", single=s, multi=m)], {"q1": {"doc7#3": 1}})   # doctest: +SKIP

    Queries without a positive judgement are dropped (counted in ``skipped``); qrels naming an unknown
    query, or a corpus id that is not in ``corpus_files``, raise DatasetError, as does a set with no
    query left. corpus_files: ``{file key: corpus id}`` (a path relative to corpus_root, or a file name
    without its extension); page_counts: corpus id -> its number of pages (None if it has no pages to
    name), to check ``file.pdf#p`` ids. extract: called once by :meth:`corpus_paths` to write the files.
    """

    def __init__(self, queries: Iterable[Query], qrels: Mapping[str, Mapping[str, int]], *,
                 corpus_root: str | None = None, corpus_files: Mapping[str, str] | None = None,
                 page_counts: Callable[[str], int | None] | None = None, name: str = "",
                 extract: Callable[[], None] | None = None):
        queries = list(queries)
        self.name = name
        self.corpus_root = None if corpus_root is None else os.path.abspath(corpus_root)
        self._files = dict(corpus_files or {})
        self._known = set(self._files.values())
        self._extract = extract
        by_id: dict[str, Query] = {}
        for q in queries:
            if q.id in by_id:
                raise DatasetError(f"{name or 'queries'}: query id {q.id!r} given twice (hint: ids must be unique)")
            by_id[q.id] = q
        for qid, rel in qrels.items():
            bad = [g for g in rel.values() if isinstance(g, bool) or not isinstance(g, (int, np.integer))]
            if bad:
                raise DatasetError(f"{name or 'qrels'}: query {qid!r} has grade {bad[0]!r} (hint: integer grades, "
                                   "0 for not relevant)")
            if qid not in by_id:
                raise DatasetError(f"{name or 'qrels'}: qrels name query {qid!r}, which is not among the "
                                   f"{len(by_id)} queries (hint: check the query ids of both files)")
        if corpus_files is not None:
            _check_corpus_ids(qrels, self._known, page_counts or (lambda cid: None), name)
        self.qrels = {qid: dict(rel) for qid, rel in qrels.items() if any(g > 0 for g in rel.values())}
        self.queries = [q for q in queries if q.id in self.qrels]
        self.skipped = len(queries) - len(self.queries)
        if self.skipped:
            log.info("%s: %d of %d queries have no relevant document in the qrels and are skipped",
                     name or "dataset", self.skipped, len(queries))
        if not self.queries:
            raise DatasetError(f"{name or 'dataset'}: no query with a relevant document ({len(queries)} queries, "
                               f"{len(qrels)} judged) (hint: qrels need lines with a score above 0 for listed queries)")

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self.queries)} queries, corpus {self.corpus_root!r})"

    def corpus_paths(self) -> list[str]:
        """What to index for this dataset (``Engine.add(ds.corpus_paths())``); ViDoRe page images are
        written out as files on the first call."""
        if self.corpus_root is None:
            raise DatasetError(f"{self.name or 'dataset'}: its corpus is the index's own documents "
                               "(hint: add them with add_embeddings)")
        if self._extract is not None:
            self._extract()
            self._extract = None
        return [self.corpus_root]

    def document_corpus_id(self, doc_id: str) -> str | None:
        """The corpus id of the index document ``doc_id`` as a whole, or None if it is not in the corpus."""
        if self.corpus_root is None:
            return doc_id
        rel = os.path.relpath(doc_id, self.corpus_root) if os.path.isabs(doc_id) else None
        if rel is None or rel.startswith(".."):
            return None
        rel = rel.replace(os.sep, "/")
        return self._files.get(rel) or self._files.get(os.path.splitext(rel)[0])

    def whole(self, cid: str) -> str:
        """The corpus id of the whole document a corpus id names (``file.pdf`` for ``file.pdf#3``)."""
        if cid in self._known:
            return cid
        base, _, page = cid.rpartition("#")
        return base if base and page.isdigit() else cid

    def run_id(self, doc_id: str, page: int, relevant: Mapping[str, int]) -> str:
        """The corpus id a hit on page ``page`` of ``doc_id`` counts as, for a query judged ``relevant``.

        ``file.pdf#p`` when the query's qrels name that page; ``file.pdf`` when they name the whole
        file (its pages then count once, at the best rank); otherwise ``file.pdf#p`` (a distinct miss).
        """
        base = self.document_corpus_id(doc_id) or doc_id
        paged = f"{base}#{page}"
        if paged not in relevant and base in relevant:
            return base
        return paged


# ----- BEIR-style folder -------------------------------------------------------------------------
def load_folder(path: str, split: str) -> Dataset:
    from jevsearch.engine import find_documents, page_count

    queries_file, corpus = os.path.join(path, "queries.jsonl"), os.path.join(path, "corpus")
    qrels_file = os.path.join(path, "qrels", f"{split}.tsv")
    if not os.path.isfile(qrels_file):
        raise DatasetError(f"{qrels_file}: missing (hint: {LAYOUT_HINT})")
    if not os.path.isdir(corpus):
        raise DatasetError(f"{corpus}: missing folder (hint: {LAYOUT_HINT})")
    queries = list(_read_queries(queries_file, path))
    qrels = _read_qrels(qrels_file)
    found, failed = find_documents([corpus])
    for p, reason in failed:
        log.warning("%s: %s", p, reason)
    rels = (os.path.relpath(path, corpus).replace(os.sep, "/") for path in found)
    files = {rel: rel for rel in rels}

    def pages_of(cid: str) -> int | None:
        if not cid.lower().endswith(".pdf"):
            return None
        from jevsearch.errors import DocumentError

        try:
            return page_count(os.path.join(corpus, cid))
        except DocumentError as e:
            raise DatasetError(f"{qrels_file}: qrels name pages of {cid!r}, which cannot be read: {e.reason} "
                               "(hint: fix or remove the file and its qrels)") from None

    return Dataset(queries, qrels, corpus_root=corpus, corpus_files=files, page_counts=pages_of, name=path)


def _read_queries(file: str, root: str) -> Iterable[Query]:
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: not JSON ({e.msg}) (hint: one JSON object per line)") from None
            if not isinstance(obj, dict) or "_id" not in obj:
                raise DatasetError(f'{where}: no "_id" (hint: {{"_id": "q1", "text": "..."}} per line)')
            text, image = obj.get("text"), obj.get("image")
            if image is not None:
                if text:
                    raise DatasetError(f'{where}: both "text" and "image" (hint: a query is one or the other)')
                image_path = os.path.join(root, str(image))
                if not os.path.isfile(image_path):
                    raise DatasetError(f"{where}: image {image!r}: no such file (hint: image paths are relative "
                                       f"to the dataset folder {root})")
                yield Query(str(obj["_id"]), image=image_path)
            elif isinstance(text, str) and text.strip():
                yield Query(str(obj["_id"]), text=text)
            else:
                raise DatasetError(f'{where}: no "text" and no "image" (hint: give the query\'s text, or an '
                                   "image path relative to the dataset folder)")


def _read_qrels(file: str) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(file, encoding="utf-8") as f:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if lines and _grade(lines[0][1].split("\t")[-1]) is None:
        lines = lines[1:]  # the header line (query-id, corpus-id, score)
    for n, line in lines:
        fields = line.split("\t")
        grade = _grade(fields[-1]) if len(fields) == 3 else None
        if grade is None:
            raise DatasetError(f"{file}:{n}: {line[:80]!r} is not query-id<TAB>corpus-id<TAB>integer score "
                               "(hint: tab-separated, one judgement per line, after one header line)")
        qid, cid = fields[0].strip(), fields[1].strip()
        if cid in qrels.setdefault(qid, {}):
            raise DatasetError(f"{file}:{n}: query {qid!r} and {cid!r} judged twice (hint: keep one line)")
        qrels[qid][cid] = grade
    return qrels


def _grade(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _check_corpus_ids(qrels, known: set[str], page_count: Callable[[str], int | None], name: str) -> None:
    """Every judged corpus id is a corpus file, or ``file#p`` with p a page of that PDF."""
    for qid, rel in qrels.items():
        for cid in rel:
            if cid in known:
                continue
            base, _, page = cid.rpartition("#")
            pages = page_count(base) if base in known and page.isdigit() else None
            if pages is None:
                raise DatasetError(f"{name}: qrels of query {qid!r} name {cid!r}, which is not in the corpus "
                                   "(hint: a corpus id is a file's path under corpus/, or file.pdf#PAGE)")
            if not 1 <= int(page) <= pages:
                raise DatasetError(f"{name}: qrels of query {qid!r} name {cid!r}, but {base} has {pages} pages "
                                   "(hint: pages count from 1)")


def require(module: str, what: str):
    """Import an optional dependency of jevsearch.eval, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{what}: needs the Python package {module.split('.')[0]!r}, not installed "
                                     f"({e}) (hint: {INSTALL})") from None


def write_image(data: bytes | None, folder: str, stem: str, what: str) -> None:
    """Write an image held in memory as ``folder/stem.<its format>``, unless that file is already there
    with the same size. Written under a dot-name and renamed, so an interrupted run leaves no torn image
    for the index (dot-files are never indexed)."""
    from PIL import Image

    if not data:
        raise DatasetError(f"{what}: no image bytes (hint: the Parquet file must hold the images themselves)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            ext = _IMAGE_EXT.get(img.format or "")
            if ext is None:  # GIF, BMP, ...: converted once to a format the index reads
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
                data, ext = buf.getvalue(), ".png"
    except (OSError, ValueError) as e:
        raise DatasetError(f"{what}: not a readable image ({e}) (hint: re-download the dataset)") from None
    target = os.path.join(folder, stem + ext)
    if os.path.exists(target) and os.path.getsize(target) == len(data):
        return
    tmp = os.path.join(folder, f".tmp-{stem}{ext}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def file_stems(ids: Iterable[str]) -> dict[str, str]:
    """``{file stem: corpus id}``: a file name for every corpus id (unsafe characters replaced, an image
    suffix dropped since the written file gets its own, made unique)."""
    stems: dict[str, str] = {}
    taken: set[str] = set()  # case-insensitively: two ids must not share a file on macOS/Windows
    for cid in ids:
        base = re.sub(r"\.(png|jpe?g|tiff?|webp|gif|bmp)$", "", cid, flags=re.IGNORECASE)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:120].lstrip(".") or "page"
        unique, n = stem, 1
        while unique.lower() in taken:
            unique, n = f"{stem}~{n}", n + 1
        taken.add(unique.lower())
        stems[unique] = cid
    return stems
