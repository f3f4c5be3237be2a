"""The index manifest: what an index is (format, dims, dtypes, HNSW parameters, model) and its checks.

Stored as one JSON record in LMDB (:class:`~jevsearch.store.lmdbstore.PageStore`), written with the
index's first commit and changed only in whole-record commits.

>>> m = new_manifest(single_dim=128, single_full_dim=None, multi_dim=128, multi_dtype="float16",
...                  hnsw_m=32, ef_construction=200, ef_search=128, model_info=None)
>>> check_manifest(m); m["format_version"], m["checksums"], m["hnsw"]["M"]
(2, True, 32)
"""

from __future__ import annotations

import time

from jevsearch.errors import FormatVersionError, InvalidInputError, NotAnIndexError
from jevsearch.store import validate

FORMAT_NAME = "jevsearch-index"
# 1: the first format. 2: every stored value carries a checksum ("checksums": true; see
# jevsearch.store.checksum). Version-1 indexes are read as they are; compact() upgrades them.
FORMAT_VERSION = 2
MULTI_DTYPES = ("float16", "float32")


def new_manifest(*, single_dim: int, single_full_dim: int | None, multi_dim: int, multi_dtype: str,
                 hnsw_m: int, ef_construction: int, ef_search: int, model_info: dict | None) -> dict:
    """The manifest of a new index, every parameter checked (InvalidInputError names the bad one)."""
    for name, v in (("single_dim", single_dim), ("multi_dim", multi_dim), ("hnsw_m", hnsw_m),
                    ("ef_construction", ef_construction), ("ef_search", ef_search)):
        validate.check_k(v, name)
    if single_full_dim is not None and validate.check_k(single_full_dim, "single_full_dim") < single_dim:
        raise InvalidInputError(f"single_full_dim: {single_full_dim} < single_dim {single_dim} "
                                "(hint: the index truncates the full vectors to single_dim)")
    if multi_dtype not in MULTI_DTYPES:
        raise InvalidInputError(f"multi_dtype: {multi_dtype!r} (hint: 'float16' or 'float32')")
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "checksums": True, "created": time.time(),
            "single_dim": single_dim, "single_full_dim": single_full_dim, "single_dtype": "float32",
            "multi_dim": multi_dim, "multi_dtype": multi_dtype, "metric": "inner_product",
            "hnsw": {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search},
            "model": None if model_info is None else validate.check_metadata(model_info)}


def check_manifest(m: dict) -> None:
    """Refuse what this version cannot read: NotAnIndexError, FormatVersionError."""
    if m.get("format") != FORMAT_NAME:
        raise NotAnIndexError(f"manifest: format {m.get('format')!r} is not {FORMAT_NAME!r} "
                              "(hint: this is not a jevsearch index)")
    v = m.get("format_version")
    if isinstance(v, int) and not isinstance(v, bool) and v > FORMAT_VERSION:
        raise FormatVersionError(f"index format version {v!r} is newer than this jevsearch reads "
                                 f"({FORMAT_VERSION}) (hint: upgrade jevsearch)")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or bool(m.get("checksums")) != (v >= 2):
        raise FormatVersionError(f"index format version {v!r} (checksums {m.get('checksums')!r}) is not one "
                                 f"this jevsearch reads (hint: the manifest is damaged; restore the index)")


def upgraded(m: dict) -> dict:
    """The manifest of ``m``'s index rewritten in the current format (see jevsearch.store.rewrite).

    >>> upgraded({"format_version": 1, "single_dim": 8})
    {'format_version': 2, 'single_dim': 8, 'checksums': True}
    """
    return dict(m, format_version=FORMAT_VERSION, checksums=True)
