"""Checks on embeddings where they enter the index, and their conversion to the stored form; every
failure is an InvalidInputError (a ValueError).

Model outputs in bf16/fp16 are only approximately unit norm, so vectors whose L2 norm is within
``NORM_TOLERANCE`` of 1 are renormalised; anything further off (unnormalised output, a wrong layer,
garbage) is refused rather than silently "fixed".

>>> import numpy as np
>>> check_singles(np.full((1, 4), 0.5), 4).tolist()
[[0.5, 0.5, 0.5, 0.5]]
>>> check_singles(np.ones((1, 4)), 4)
Traceback (most recent call last):
...
jevsearch.errors.InvalidInputError: singles: row 0 has L2 norm 2 (must be 1 +- 0.05) (hint: L2-normalise the model output)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from jevsearch.errors import InvalidInputError
from jevsearch.store import visual
from jevsearch.store.hnsw import truncate_normalize

NORM_TOLERANCE = 0.05


def _as_float_array(x, what: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly bf16 / on a GPU
        x = x.detach().float().cpu().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what}: not an array ({e}) (hint: pass a numpy array or tensor)") from e
    if a.dtype.kind not in "fiu" or a.dtype.kind == "f" and a.dtype.itemsize < 2:
        raise InvalidInputError(f"{what}: dtype {a.dtype} is not a float array (hint: pass float32/float16)")
    if a.ndim != ndim:
        raise InvalidInputError(f"{what}: expected a {ndim}-d array, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _unit_rows(a: np.ndarray, what: str) -> np.ndarray:
    """Finite check + renormalise rows of float32 ``a`` [N, d] within NORM_TOLERANCE (copies)."""
    # One pass over the data: a NaN or Inf anywhere in a row makes its sum of squares non-finite.
    sq = np.einsum("ij,ij->i", a, a)
    if not np.isfinite(sq).all():
        bad = int(np.argmax(~np.isfinite(sq)))
        raise InvalidInputError(f"{what}: row {bad} has NaN or Inf (hint: check the model output dtype)")
    norms = np.sqrt(sq)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise InvalidInputError(f"{what}: row {i} has L2 norm {norms[i]:.4g} (must be 1 +- {NORM_TOLERANCE}) "
                                "(hint: L2-normalise the model output)")
    return a / norms[:, None]


def check_singles(singles, min_dim: int, full_dim: int | None = None, what: str = "singles") -> np.ndarray:
    """Validate [P, D] page (or query) single vectors -> float32 unit rows.

    ``min_dim``: the index's truncation; ``full_dim``: the D fixed by the first document (if any).
    """
    a = _as_float_array(singles, what, 2)
    if a.shape[0] == 0:
        raise InvalidInputError(f"{what}: no rows (hint: a document needs at least one page)")
    d = a.shape[1]
    if d < min_dim:
        raise InvalidInputError(f"{what}: dimension {d} is below the index's single_dim {min_dim} "
                                "(hint: pass the full model output; the index truncates)")
    if full_dim is not None and d != full_dim:
        raise InvalidInputError(f"{what}: dimension {d} but this index stores {full_dim}-d single vectors "
                                "(hint: use the same model and output for every document)")
    return _unit_rows(a, what)


def check_multis(multis, pages: int, dim: int) -> list[np.ndarray]:
    """Validate P per-page token matrices [T_i, dim] -> list of float32 arrays with unit rows."""
    if isinstance(multis, np.ndarray) or hasattr(multis, "detach"):
        if multis.ndim != 3:
            raise InvalidInputError(f"multis: expected a list of [T, {dim}] arrays or a [P, T, {dim}] array, "
                                    f"got shape {tuple(multis.shape)}")
        multis = list(multis)
    if not isinstance(multis, Sequence):
        raise InvalidInputError(f"multis: expected a list of {pages} arrays, got {type(multis).__name__}")
    if len(multis) != pages:
        raise InvalidInputError(f"multis: {len(multis)} pages but singles has {pages} "
                                "(hint: one multi-vector matrix per page, in page order)")
    out = []
    for i, m in enumerate(multis):
        a = _as_float_array(m, f"multis[{i}]", 2)
        if a.shape[1] != dim:
            raise InvalidInputError(f"multis[{i}]: token dimension {a.shape[1]} but the index stores {dim} "
                                    "(hint: pass the model's multi-vector output)")
        if a.shape[0] == 0:
            raise InvalidInputError(f"multis[{i}]: page {i + 1} has no tokens (hint: drop empty pages "
                                    "before adding, or render them)")
        out.append(_unit_rows(a, f"multis[{i}]"))
    return out


def check_query_multis(q_multi, dim: int) -> list[np.ndarray]:
    """A query's token matrix [L, dim], or a list of them for a batch -> list of float32 arrays."""
    if isinstance(q_multi, (list, tuple)):
        if not q_multi:
            raise InvalidInputError("q_multi: empty query batch")
        return [_unit_rows(_check_tokens(m, f"q_multi[{i}]", dim), f"q_multi[{i}]")
                for i, m in enumerate(q_multi)]
    return [_unit_rows(_check_tokens(q_multi, "q_multi", dim), "q_multi")]


def check_query_singles(q_single, queries: int, batch: bool, min_dim: int, required: bool) -> np.ndarray | None:
    """A query's single vector [D], or [Q, D] for a batch -> float32 [Q, D] unit rows (None if allowed)."""
    if q_single is None:
        if required:
            raise InvalidInputError("q_single: required for two-stage search (hint: or exhaustive=True)")
        return None
    qs = np.asarray(q_single.detach().float().cpu() if hasattr(q_single, "detach") else q_single)
    if qs.ndim != (2 if batch else 1):
        raise InvalidInputError(f"q_single: shape {qs.shape}; expected [D] with q_multi [L, d], or "
                                "[Q, D] with q_multi a list of Q arrays")
    singles = check_singles(np.atleast_2d(qs), min_dim, what="q_single")
    if len(singles) != queries:
        raise InvalidInputError(f"q_single: {len(singles)} queries but q_multi has {queries}")
    return singles


def _check_tokens(m, what: str, dim: int) -> np.ndarray:
    a = _as_float_array(m, what, 2)
    if a.shape[1] != dim or a.shape[0] == 0:
        raise InvalidInputError(f"{what}: shape {a.shape}, expected [tokens >= 1, {dim}] "
                                "(hint: pass the model's multi-vector query output)")
    return a


def check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"{name}: {k!r} is not a positive integer")
    return int(k)


def check_page_id(page_id) -> int:
    if isinstance(page_id, bool) or not isinstance(page_id, (int, np.integer)) or not 0 <= page_id < 1 << 63:
        raise InvalidInputError(f"page_id: {page_id!r} is not a page id (hint: take it from Hit.page_id)")
    return int(page_id)


def check_doc_id(doc_id) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidInputError(f"doc_id: {doc_id!r} is not a non-empty string (hint: use the PDF's path)")
    return doc_id


def check_texts(page_texts, pages: int) -> list[str] | None:
    if page_texts is None:
        return None
    if isinstance(page_texts, str) or not isinstance(page_texts, Sequence) or len(page_texts) != pages \
            or not all(isinstance(t, str) for t in page_texts):
        raise InvalidInputError(f"page_texts: expected a list of {pages} strings (one per page) or None")
    return list(page_texts)


def check_page_numbers(page_numbers, pages: int) -> list[int] | None:
    """P increasing 1-based page numbers (a document whose unreadable pages were left out), or None
    for pages 1..P (also returned when the numbers given are exactly those)."""
    if page_numbers is None:
        return None
    numbers = list(page_numbers) if isinstance(page_numbers, Sequence) and not isinstance(page_numbers, str) else None
    if numbers is None or len(numbers) != pages or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n < 2**32 for n in numbers) \
            or any(a >= b for a, b in zip(numbers, numbers[1:])):
        raise InvalidInputError(f"page_numbers: expected {pages} increasing page numbers >= 1 (one per page) "
                                "or None")
    numbers = [int(n) for n in numbers]
    return None if numbers == list(range(1, pages + 1)) else numbers


def check_metadata(metadata) -> dict:
    """Metadata must be a JSON object (stored as JSON: no pickle, so nothing that could run code)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata: expected a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"metadata: not JSON-serialisable ({e}) (hint: use str/int/float/list/dict values)") from e
    return metadata


def prepare_documents(docs, manifest: dict) -> list[dict]:
    """Check a batch of ``(doc_id, singles, multis[, metadata[, page_texts[, page_numbers[, page_views]]]])``
    tuples against the index ``manifest`` (no I/O): a list of dicts with doc_id, metadata, singles
    [P, D] float32, multis (P float32 [T_i, multi_dim] arrays of unit rows; the index encodes them in
    its codec), texts, truncated [P, dim], numbers (the pages' 1-based numbers, or None for 1..P),
    views (P PageView or None).

    Everything is checked before the caller writes anything; a doc id repeated in the batch is
    refused; the first document fixes D when the index has none yet.
    """
    docs = list(docs)
    out, seen, full = [], set(), manifest["single_full_dim"]
    for i, doc in enumerate(docs):
        if not isinstance(doc, tuple) or not 3 <= len(doc) <= 7:
            raise InvalidInputError(f"docs[{i}]: expected a tuple (doc_id, singles, multis[, metadata"
                                    f"[, page_texts[, page_numbers[, page_views]]]]), got {type(doc).__name__}")
        try:
            item = _prepare(*doc, manifest=manifest, full_dim=full)
        except InvalidInputError as e:
            if len(docs) == 1:
                raise
            raise InvalidInputError(f"docs[{i}] ({doc[0]!r}): {e}") from e
        if item["doc_id"] in seen:
            raise InvalidInputError(f"docs[{i}]: document {item['doc_id']!r} appears twice in one batch "
                                    "(hint: pass each document once)")
        seen.add(item["doc_id"])
        full = item["singles"].shape[1]
        out.append(item)
    return out


def _prepare(doc_id, singles, multis, metadata=None, page_texts=None, page_numbers=None, page_views=None, *,
             manifest, full_dim) -> dict:
    doc_id = check_doc_id(doc_id)
    metadata = check_metadata(metadata)
    singles = check_singles(singles, manifest["single_dim"], full_dim)
    multis = check_multis(multis, singles.shape[0], manifest["multi_dim"])
    texts = check_texts(page_texts, singles.shape[0])
    numbers = check_page_numbers(page_numbers, singles.shape[0])
    return {"doc_id": doc_id, "metadata": metadata, "singles": singles, "texts": texts, "numbers": numbers,
            "views": visual.check_views(page_views, multis),
            "multis": multis,
            "truncated": truncate_normalize(singles, manifest["single_dim"])}
