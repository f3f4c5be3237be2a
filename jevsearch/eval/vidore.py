"""The ViDoRe benchmark's Parquet layouts (see :mod:`jevsearch.eval.datasets` for what is read).

Only the id and text columns are read at load; the page images are read (in batches) and written out
as files when the corpus is first indexed (:meth:`Dataset.corpus_paths`).
"""

from __future__ import annotations

import os

from jevsearch.errors import DatasetError
from jevsearch.eval.datasets import Dataset, Query, file_stems, require, write_image

SUBSETS = ("corpus", "queries", "qrels")
# Column spellings: ViDoRe v1 (BEIR) and v2 use dashes, v3 underscores.
COLUMNS = {"corpus-id": ("corpus-id", "corpus_id"), "query-id": ("query-id", "query_id")}
BATCH_ROWS = 64  # page images held in memory at once while writing them out


def load(path: str, files: list[str], split: str, images_dir: str) -> Dataset:
    """A ViDoRe download at ``path`` whose Parquet files are ``files``."""
    pq = require("pyarrow.parquet", "reading ViDoRe Parquet files")
    subsets = {name: _split_files([f for f in files if _top(path, f) == name], split) for name in SUBSETS}
    if all(subsets.values()):
        return _load_beir(pq, path, subsets, images_dir)
    return _load_qa(pq, path, _split_files(files, split), images_dir)


def _top(root: str, file: str) -> str:
    return os.path.relpath(file, root).replace(os.sep, "/").split("/")[0]


def _split_files(files: list[str], split: str) -> list[str]:
    """The files of ``split`` (HF names them ``<split>-00000-of-00001.parquet`` or puts them in a
    ``<split>/`` folder), or all of them when none is named after it (a single-split download)."""
    named = [f for f in files if os.path.basename(f).startswith(f"{split}-")
             or f"{os.sep}{split}{os.sep}" in f or os.path.basename(f) == f"{split}.parquet"]
    return named or files


def _column(pq, files: list[str], want: str) -> str:
    names = set(pq.read_schema(files[0]).names)
    for name in COLUMNS.get(want, (want,)):
        if name in names:
            return name
    raise DatasetError(f"{files[0]}: no column {want!r} (it has: {', '.join(sorted(names))}) "
                       "(hint: ViDoRe layouts are corpus/queries/qrels Parquet files, or rows of query, image, "
                       "image_filename)")


def _read(pq, files: list[str], columns: list[str]) -> list[list]:
    """The given columns of all ``files``, as Python lists."""
    out: list[list] = [[] for _ in columns]
    for f in files:
        table = pq.read_table(f, columns=columns)
        for i, name in enumerate(columns):
            out[i].extend(table.column(name).to_pylist())
    return out


def _load_beir(pq, path: str, subsets: dict, images_dir: str) -> Dataset:
    cid_col = _column(pq, subsets["corpus"], "corpus-id")
    _column(pq, subsets["corpus"], "image")
    qid_col, text_col = _column(pq, subsets["queries"], "query-id"), _column(pq, subsets["queries"], "query")
    rq, rc, rs = (_column(pq, subsets["qrels"], c) for c in ("query-id", "corpus-id", "score"))
    (corpus_ids,) = _read(pq, subsets["corpus"], [cid_col])
    qids, texts = _read(pq, subsets["queries"], [qid_col, text_col])
    queries = [Query(str(q), text=t) for q, t in zip(qids, texts)]
    qrels: dict[str, dict[str, int]] = {}
    for q, c, s in zip(*_read(pq, subsets["qrels"], [rq, rc, rs])):
        qrels.setdefault(str(q), {})[str(c)] = int(s)
    stems = file_stems(str(c) for c in corpus_ids)
    to_stem = {cid: stem for stem, cid in stems.items()}

    def extract() -> None:
        os.makedirs(images_dir, exist_ok=True)
        for f in subsets["corpus"]:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=[cid_col, "image"]):
                for cid, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    write_image(_bytes(image), images_dir, to_stem[str(cid)], f"{f}: corpus id {cid}")

    return Dataset(queries, qrels, corpus_root=images_dir, corpus_files=stems, name=path, extract=extract)


def _load_qa(pq, path: str, files: list[str], images_dir: str) -> Dataset:
    for col in ("query", "image", "image_filename"):
        _column(pq, files, col)
    texts, names = _read(pq, files, ["query", "image_filename"])
    qid_of: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for text, name in zip(texts, names):
        if text is None:
            continue  # a page without a query: part of the corpus only
        qid = qid_of.setdefault(text, f"q{len(qid_of)}")
        qrels.setdefault(qid, {})[str(name)] = 1
    queries = [Query(qid, text=text) for text, qid in qid_of.items()]
    stems = file_stems(dict.fromkeys(str(n) for n in names))  # each page once, in order of appearance
    to_stem = {cid: stem for stem, cid in stems.items()}

    def extract() -> None:
        os.makedirs(images_dir, exist_ok=True)
        done: set[str] = set()
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=["image_filename", "image"]):
                for name, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if str(name) not in done:
                        write_image(_bytes(image), images_dir, to_stem[str(name)], f"{f}: image {name}")
                        done.add(str(name))

    return Dataset(queries, qrels, corpus_root=images_dir, corpus_files=stems, name=path, extract=extract)


def _bytes(image) -> bytes | None:
    """The bytes of a Hugging Face ``Image`` cell (a struct {bytes, path}), or of a plain binary cell."""
    return image.get("bytes") if isinstance(image, dict) else image
