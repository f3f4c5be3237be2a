"""The index manifest: what an index is (format, dims, dtypes, HNSW parameters, model) and its checks.

Stored as one JSON record in LMDB (:class:`~jevsearch.store.lmdbstore.PageStore`), written with the
index's first commit and changed only in whole-record commits.

Format versions:

* 1: the first format (no checksums).
* 2: every stored value carries a checksum (``"checksums": true``; :mod:`jevsearch.store.checksum`).
  Multi-vectors are plain floats (``"multi_dtype"``: float16 or float32), singles float32.
* 3: version 2 plus a multi-vector codec (``"codec"``: fp16, int8 or binary; the layouts are in
  :mod:`jevsearch.search.codecs`), ``"keep_exact"`` (each page's float16 tokens also kept in the
  ``exact`` table), ``"pool_factor"`` (1, 2 or 3: tokens pooled at ingest) and float16 singles
  (``"single_dtype"``). Only indexes that use these fields are version 3: an index of plain float16
  tokens and float32 singles stays version 2, so older jevsearch opens it; older jevsearch refuses a
  version-3 index (FormatVersionError: "newer than this jevsearch reads") instead of misreading codes
  as floats.
* 4: version 3 with each page's single vector stored as its first ``single_dim`` dims only
  (``"single_stored_dim"``), for layouts that keep no float tokens (codes only: the smallest index).
  The HNSW is rebuilt from that prefix exactly as from the full vector (Matryoshka truncation keeps
  a prefix); a larger ``single_dim`` would need the documents encoded again.

>>> m = new_manifest(single_dim=128, single_full_dim=None, multi_dim=128, multi_dtype="float16",
...                  hnsw_m=32, ef_construction=200, ef_search=128, model_info=None)
>>> check_manifest(m); m["format_version"], m["checksums"], m["hnsw"]["M"]
(2, True, 32)
>>> m3 = with_codec(m, "binary", keep_exact=True, pool_factor=1)
>>> check_manifest(m3); m3["format_version"], m3["codec"], m3["single_dtype"], "multi_dtype" in m3
(3, 'binary', 'float16', False)
"""

from __future__ import annotations

import time

from jevsearch.errors import FormatVersionError, InvalidInputError, NotAnIndexError
from jevsearch.store import validate

FORMAT_NAME = "jevsearch-index"
# The newest version this code reads and writes (see the module docstring). Version-1 indexes are
# read as they are; compact() upgrades them (to 2, or to 3 when converting them to a codec).
FORMAT_VERSION = 4
MULTI_DTYPES = ("float16", "float32")
CODEC_FIELDS = ("codec", "keep_exact", "pool_factor")


def new_manifest(*, single_dim: int, single_full_dim: int | None, multi_dim: int, multi_dtype: str, hnsw_m: int,
                 ef_construction: int, ef_search: int, model_info: dict | None) -> dict:
    """The manifest of a new index of plain ``multi_dtype`` floats (version 2), every parameter
    checked (InvalidInputError names the bad one); :func:`with_codec` makes it a codec's."""
    for name, v in (("single_dim", single_dim), ("multi_dim", multi_dim), ("hnsw_m", hnsw_m),
                    ("ef_construction", ef_construction), ("ef_search", ef_search)):
        validate.check_k(v, name)
    if single_full_dim is not None and validate.check_k(single_full_dim, "single_full_dim") < single_dim:
        raise InvalidInputError(f"single_full_dim: {single_full_dim} < single_dim {single_dim} "
                                "(hint: the index truncates the full vectors to single_dim)")
    m = {"format": FORMAT_NAME, "format_version": 2, "checksums": True, "created": time.time(),
         "single_dim": single_dim, "single_full_dim": single_full_dim, "single_dtype": "float32",
         "multi_dim": multi_dim, "metric": "inner_product",
         "hnsw": {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search},
         "model": None if model_info is None else validate.check_metadata(model_info)}
    if multi_dtype not in MULTI_DTYPES:
        raise InvalidInputError(f"multi_dtype: {multi_dtype!r} (hint: 'float16' or 'float32')")
    return dict(m, multi_dtype=multi_dtype)


def with_codec(m: dict, codec: str, keep_exact: bool, pool_factor: int, single_prefix: bool = False) -> dict:
    """``m`` describing a store of ``codec`` codes (format version 3, float16 singles; version 4 with
    ``single_prefix``: singles stored as their first ``single_dim`` dims).

    >>> sorted(with_codec({"format_version": 2, "multi_dtype": "float16"}, "int8", False, 2).items())
    [('codec', 'int8'), ('format_version', 3), ('keep_exact', False), ('pool_factor', 2), ('single_dtype', 'float16')]
    >>> m = with_codec({"format_version": 2, "single_dim": 128}, "binary", False, 1, single_prefix=True)
    >>> m["format_version"], m["single_stored_dim"]
    (4, 128)
    """
    m = {k: v for k, v in m.items() if k not in ("multi_dtype", "single_stored_dim")}
    m = dict(m, format_version=3, codec=codec, keep_exact=bool(keep_exact), pool_factor=int(pool_factor),
             single_dtype="float16")
    return dict(m, format_version=4, single_stored_dim=m["single_dim"]) if single_prefix else m


def stored_single_dim(m: dict) -> int | None:
    """How many dims of each page's single vector the index stores (None: the full vectors, before
    the first document fixes their size).

    >>> m = {"single_dim": 128, "single_full_dim": 2048}
    >>> stored_single_dim(m), stored_single_dim(dict(m, single_stored_dim=128))
    (2048, 128)
    """
    return m.get("single_stored_dim") or m["single_full_dim"]


def check_manifest(m: dict) -> None:
    """Refuse what this version cannot read: NotAnIndexError, FormatVersionError."""
    if m.get("format") != FORMAT_NAME:
        raise NotAnIndexError(f"manifest: format {m.get('format')!r} is not {FORMAT_NAME!r} "
                              "(hint: this is not a jevsearch index)")
    v = m.get("format_version")
    if isinstance(v, int) and not isinstance(v, bool) and v > FORMAT_VERSION:
        raise FormatVersionError(f"index format version {v!r} is newer than this jevsearch reads "
                                 f"({FORMAT_VERSION}) (hint: upgrade jevsearch)")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or bool(m.get("checksums")) != (v >= 2) \
            or ("codec" in m) != (v >= 3) or ("single_stored_dim" in m) != (v >= 4):
        raise FormatVersionError(f"index format version {v!r} (checksums {m.get('checksums')!r}, codec "
                                 f"{m.get('codec')!r}) is not one this jevsearch reads (hint: the manifest is "
                                 "damaged; restore the index)")


def upgraded(m: dict) -> dict:
    """The manifest of ``m``'s index rewritten with checksums (see jevsearch.store.rewrite): a
    version-1 index becomes version 2 (3 when ``m`` already names a codec).

    >>> upgraded({"format_version": 1, "single_dim": 8})
    {'format_version': 2, 'single_dim': 8, 'checksums': True}
    """
    return dict(m, format_version=3 if "codec" in m else 2, checksums=True)
