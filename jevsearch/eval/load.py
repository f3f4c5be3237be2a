"""Which layout a dataset folder holds, and reading it with that layout's loader.

Its own module so that :mod:`jevsearch.eval.datasets` (the BEIR folder and shared helpers) and
:mod:`jevsearch.eval.vidore` (Parquet) do not import each other.
"""

from __future__ import annotations

import glob
import os

from jevsearch.errors import DatasetError
from jevsearch.eval import vidore
from jevsearch.eval.datasets import IMAGES_DIR, LAYOUT_HINT, Dataset, load_folder


def load_dataset(path, *, split: str = "test", images_dir: str | None = None) -> Dataset:
    """Read a dataset folder (layouts in the module docstring); raises DatasetError saying what is wrong.

    split: the qrels file (``qrels/<split>.tsv``) or ViDoRe split to read. images_dir: where ViDoRe
    page images are written (default ``<path>/jevsearch-corpus``).

    >>> ds = load_dataset("datasets/papers")        # doctest: +SKIP
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such folder (hint: {LAYOUT_HINT})")
    if os.path.exists(os.path.join(path, "queries.jsonl")):
        return load_folder(path, split)
    images_dir = os.path.abspath(images_dir or os.path.join(path, IMAGES_DIR))
    files = [f for f in sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
             if not f.startswith(images_dir + os.sep)]
    if not files:
        raise DatasetError(f"{path}: neither queries.jsonl nor Parquet files found (hint: {LAYOUT_HINT})")
    return vidore.load(path, files, split, images_dir)
