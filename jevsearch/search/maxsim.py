"""Late-interaction scoring as pure tensor functions (no I/O).

score(q, d) = sum_i max_j q_i . d_j over the query's tokens i and the page's tokens j.

Queries [Q, L, d] are zero-padded along L and flattened to [Q*L, d]: max_j 0 . d_j = 0, so a padding
token adds exactly 0. Pages arrive stored by a codec (:mod:`jevsearch.search.codecs`) and are unpacked
block by block. Kernels, per device:

* :func:`maxsim_concat` (CPU): pages laid end to end, [N, d]; one matmul, then the per-page max by
  ``np.maximum.reduceat`` over each page's run of columns. No padding is written or scored: blocks of
  ~4k tokens stay cache-resident where one padded [C, T, d] batch makes the matmul memory-bound, padding
  a page costs more than copying it, and ``reduceat`` beats ``amax`` over a padded axis and
  ``scatter_reduce``/``segment_reduce`` (benchmarks/RESULTS.md).
* :func:`maxsim_concat_int8` (CPU, the ``binary`` and ``int8`` codecs): the same layout with int8
  pages and int8 query rows (in one or two parts), an exact int32 matmul, the pages' per-token scales
  (``int8``) applied before the max and the query rows' scales after it.
* :func:`maxsim_concat_hamming` (CPU, ``binary`` pages, optional cheaper pass): the query's signs
  against the pages' signs, XOR + popcount.
* :func:`maxsim` (GPU, and the reference): pages [C, T, d] padded by repeating one of the page's own
  tokens (a duplicate never changes a max), one batched matmul + ``amax`` + ``sum``.

Both multiply queries against pages transposed so the max runs over the contiguous last axis
(``amax`` over a middle axis costs a large share of the matmul). ``einsum`` is avoided: in bf16 it is
much slower than ``matmul`` + ``amax`` + ``sum``.

>>> import numpy as np, torch
>>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])          # [Q=1, L=2, d=2]
>>> pages = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])      # [C=1, T=2, d=2]
>>> maxsim(q, pages)                                       # max(1, .6) + max(0, .8)
tensor([[1.8000]])
>>> maxsim_concat(q, pages[0], np.array([0]))             # the same page, laid end to end
array([[1.8]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import torch

# Bounds on one scoring block, whatever the number of queries and candidates: elements of the
# [Q*L, N] similarity matrix and page tokens N packed (C * T when padded). On a GPU one big block:
# ~32 MB of similarities, ~64 MB of fp32 tokens at d=128 (~170 average pages, so a 100-candidate
# rerank is one launch); BLOCK_TOKENS also bounds the pages streamed per chunk by an exhaustive
# search. On the CPU, cache-sized blocks: ~4k tokens (2 MB in fp32; best of 1k-8k for one query)
# and ~4 MB of similarities (faster than 32 MB for a batch of queries scored exhaustively). Int8
# blocks hold twice the tokens in half the bytes: 8k tokens, so the fixed cost per block (packing,
# reduceat calls) is paid half as often (figures: benchmarks/RESULTS.md).
SIM_BLOCK_ELEMENTS = 8 * 1024 * 1024
BLOCK_TOKENS = 128 * 1024
CPU_SIM_ELEMENTS = 1024 * 1024
CPU_BLOCK_TOKENS = 4 * 1024
CPU_INT8_BLOCK_TOKENS = 8 * 1024


def maxsim(queries: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
    """MaxSim of every query against every page -> float32 [Q, C].

    queries: [Q, L, d], zero-padded along L.
    pages:   [C, T, d], padded along T with copies of a real token of the same page.
    Both in the same dtype and on the same device; sums are taken in float32.
    """
    q, l, d = queries.shape
    c, t, _ = pages.shape
    sim = torch.matmul(queries.reshape(q * l, d), pages.reshape(c * t, d).T)  # [Q*L, C*T]
    best = sim.view(q * l, c, t).amax(dim=2)  # [Q*L, C]
    return best.view(q, l, c).sum(dim=1, dtype=torch.float32)  # [Q, C]


def maxsim_concat(queries: torch.Tensor, tokens: torch.Tensor, starts: np.ndarray,
                  out: torch.Tensor | None = None, token_scales: torch.Tensor | None = None) -> np.ndarray:
    """MaxSim of every query against pages laid end to end (CPU, float32) -> float32 [Q, C].

    queries: [Q, L, d], zero-padded along L.
    tokens:  [N, d], the pages' token rows one page after another.
    starts:  [C], the first row of each page in ``tokens`` (increasing; a page runs to the next start).
    out:     optional reused [Q*L, N] float32 buffer for the similarity matrix.
    token_scales: optional float32 [N]: page token n is ``token_scales[n] * tokens[n]`` (int8 codes).
    """
    q, l, d = queries.shape
    sim = torch.mm(queries.reshape(q * l, d), tokens.T, out=out)  # [Q*L, N]
    if token_scales is not None:
        sim.mul_(token_scales)  # before the max: the scales differ per token
    best = np.maximum.reduceat(sim.numpy(), starts, axis=1)  # [Q*L, C]
    return best.reshape(q, l, len(starts)).sum(axis=1, dtype=np.float32)  # [Q, C]


def maxsim_concat_int8(q_codes: torch.Tensor, q_scales: np.ndarray, n_queries: int, tokens: torch.Tensor,
                       starts: np.ndarray, out: torch.Tensor | None = None, token_scales: torch.Tensor | None = None,
                       buffer=None) -> np.ndarray:
    """MaxSim of int8 query rows against int8 pages laid end to end (CPU) -> float32 [Q, C].

    q_codes:  [P*Q*L, d] int8, the queries' rows quantised in P parts (``codecs.quantize_rows``), zero
              rows as padding.
    q_scales: [Q*L] float32, each row's scale (times the codec's ``token_scale``).
    tokens:   [N, d] int8, the pages' unpacked codes one page after another; starts [C] as in
              :func:`maxsim_concat`; out: optional reused [P*Q*L, N] int32 buffer.
    token_scales: optional float32 [N], each page token's scale (``int8`` pages).
    buffer:   ``buffer(name, dtype, numel)`` -> a reused 1-d tensor (``ConcatPacker.buffer``), for
              P = 2 or token scales.

    The dot products are exact int32, and so is combining two parts (127 * high + low: below 2^31 for
    d <= 1024). A row's scale is positive, so it is applied after the max: ``max_j (s_i * a_ij) =
    s_i * max_j a_ij``; a token's scale differs along j, so it is applied before.

    >>> q = torch.tensor([[2, 0], [0, 1]], dtype=torch.int8)
    >>> pages = torch.tensor([[1, 1], [-1, 1], [1, -1]], dtype=torch.int8)
    >>> maxsim_concat_int8(q, np.array([0.5, 1.0], np.float32), 1, pages, np.array([0, 2]))
    array([[2., 0.]], dtype=float32)
    """
    rows, n = len(q_scales), tokens.shape[0]
    scratch = buffer or (lambda name, dtype, numel: torch.empty(numel, dtype=dtype))
    sim = torch._int_mm(q_codes, tokens.T, out=out)  # [P*Q*L, N] int32
    if len(q_codes) == 2 * rows:
        combined = scratch("combined", torch.int32, rows * n)[: rows * n].view(rows, n)
        torch.add(sim[rows:], sim[:rows], alpha=127, out=combined)  # 127 * high + low, [Q*L, N]
        sim = combined
    if token_scales is not None:
        scaled = scratch("scaled", torch.float32, rows * n)[: rows * n].view(rows, n)
        sim = torch.mul(sim, token_scales, out=scaled)  # [Q*L, N] float32
    best = np.maximum.reduceat(sim.numpy(), starts, axis=1)  # [Q*L, C]
    scored = np.multiply(best, q_scales[:, None], dtype=np.float32)  # [Q*L, C]; one part's int32 < 2^24: exact
    return scored.reshape(n_queries, rows // n_queries, len(starts)).sum(axis=1, dtype=np.float32)  # [Q, C]


def maxsim_concat_hamming(q_words: np.ndarray, q_weights: np.ndarray, n_queries: int, words: np.ndarray,
                          starts: np.ndarray, scratch) -> np.ndarray:
    """Binary-binary MaxSim (CPU): sum_i w_i * max_j (d - 2 popcount(q_i XOR p_j)) -> float32 [Q, C].

    q_words:   [Q*L, W] unsigned ints, each query row's sign bits in the ``binary`` codec's layout.
    q_weights: [Q*L] float32: 1/d for a query row (so a term is the cosine of the two sign vectors),
               0 for a padding row.
    words:     [N, W], the pages' sign bits one page after another (same word type); starts [C] as in
               :func:`maxsim_concat`.
    scratch:   ``scratch(name, dtype, shape)`` -> a reused array (``ConcatPacker.array``).

    >>> q = np.array([[0b1100], [0b0000]], np.uint8)                 # d = 8; row 2 is padding
    >>> pages = np.array([[0b1100], [0b0011], [0b1111]], np.uint8)   # pages [0, 1] and [2]
    >>> scratch = lambda name, dtype, shape: np.empty(shape, dtype)
    >>> maxsim_concat_hamming(q, np.array([1 / 8, 0], np.float32), 1, pages, np.array([0, 2]), scratch)
    array([[1. , 0.5]], dtype=float32)
    """
    rows, width = q_words.shape
    bits = width * q_words.itemsize * 8  # d
    dist = scratch("dist", np.uint8 if bits < 256 else np.uint16, (rows, len(words)))  # [Q*L, N]
    ones = scratch("ones", np.uint8, (rows, len(words)))
    xor = scratch("xor", q_words.dtype, (rows, len(words)))
    by_word = scratch("by_word", words.dtype, (width, len(words)))
    by_word[...] = words.T  # [W, N]: XOR reads each word contiguously (faster than strided)
    for k in range(width):
        np.bitwise_xor(q_words[:, k:k + 1], by_word[k], out=xor)
        np.bitwise_count(xor, out=dist if k == 0 else ones)
        if k:
            np.add(dist, ones, out=dist)
    nearest = np.minimum.reduceat(dist, starts, axis=1)  # [Q*L, C]: fewest differing signs per page
    scored = (bits - 2 * nearest.astype(np.float32)) * q_weights[:, None]  # [Q*L, C]
    return scored.reshape(n_queries, rows // n_queries, len(starts)).sum(axis=1, dtype=np.float32)  # [Q, C]


def block_tokens(query_rows: int, cpu: bool = False, int8: bool = False) -> int:
    """Page tokens (padded: C * T) one block may hold when Q*L = ``query_rows`` (``int8``: CPU blocks
    unpacked to int8)."""
    if cpu:
        return max(1, min(CPU_SIM_ELEMENTS // max(1, query_rows), CPU_INT8_BLOCK_TOKENS if int8 else CPU_BLOCK_TOKENS))
    return max(1, min(SIM_BLOCK_ELEMENTS // max(1, query_rows), BLOCK_TOKENS))


def pad_queries(queries: list[np.ndarray], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """List of Q float32 arrays [L_i, d] -> zero-padded tensor [Q, max L_i, d]."""
    longest = max(len(x) for x in queries)
    out = np.zeros((len(queries), longest, queries[0].shape[1]), dtype=np.float32)  # [Q, L, d]
    for i, x in enumerate(queries):
        out[i, : len(x)] = x
    return torch.from_numpy(out).to(device=device, dtype=dtype)


def top_with_ties(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores plus every score tied with the k-th (any order).

    Keeping the ties lets the caller apply its own deterministic tie-break (doc id, page) so that
    the chosen k do not depend on scan order or chunking. NaN ranks below every number: one NaN
    score (a damaged page) must not push the k-th score to NaN, which nothing is ``>=``.

    >>> sorted(top_with_ties(np.array([0.5, np.nan, 0.9, 0.1], np.float32), 2).tolist())
    [0, 2]
    """
    if len(scores) <= k:
        return np.arange(len(scores))
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    kth = np.partition(ranked, len(ranked) - k)[len(ranked) - k]
    return np.flatnonzero(ranked >= kth)


def scoring_device() -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype to score.

    CUDA: float16 (the storage dtype, tensor cores). CPU: float32 -- bf16 and fp16 matmuls are far
    slower without native support (benchmarks/RESULTS.md), and fp32 is exact to ~1e-6 against a
    float64 reference.
    """
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32
