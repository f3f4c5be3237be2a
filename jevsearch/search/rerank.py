"""Stage 2 of a search: MaxSim over fetched pages, top-k per query. Pure functions (no I/O).

Pages arrive as raw stored buffers (zero-copy LMDB views) with their token counts; the engine fetches
them, these functions pack and score them in bounded blocks and keep the best.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from jevsearch.search.maxsim import block_tokens, maxsim, top_with_ties
from jevsearch.search.pack import PagePacker


def score_pages(qt: torch.Tensor, raws: list, lens: list[int], packer: PagePacker) -> np.ndarray:
    """MaxSim of queries qt [Q, L, d] against stored pages -> float32 [Q, C], in bounded blocks."""
    out = np.empty((qt.shape[0], len(raws)), dtype=np.float32)
    budget = block_tokens(qt.shape[0] * qt.shape[1])
    start = 0
    while start < len(raws):
        # Padded size C * T (T = longest page in the block) stays within the budget.
        stop = start + 1
        longest = lens[start]
        while stop < len(raws) and max(longest, lens[stop]) * (stop - start + 1) <= budget:
            longest = max(longest, lens[stop])
            stop += 1
        pages = packer.pack(raws[start:stop], lens[start:stop])  # [C, T, d]
        out[:, start:stop] = maxsim(qt, pages).cpu().numpy()
        start = stop
    return out


def select_candidates(cand: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int):
    """Per query, the top k (with ties) of its own candidates.

    cand [Q, n]: each query's stage-1 page ids (-1 = none); ids [U]: the pages scored (union of all
    queries' candidates still live); scores [Q, U]. -> Q pairs (page ids, scores).
    """
    out = []
    for q in range(cand.shape[0]):
        own = np.isin(ids, cand[q])  # rerank only this query's candidates
        sel = np.flatnonzero(own)[top_with_ties(scores[q, own], k)]
        out.append((ids[sel], scores[q, sel]))
    return out


def exhaustive(pages: Iterable[tuple[int, object, int]], qt: torch.Tensor, k: int, packer: PagePacker):
    """Exact top k (with ties) over every page of ``pages`` ((page id, raw, tokens) tuples), streamed in
    chunks of bounded size. -> Q pairs (page ids, scores)."""
    nq = qt.shape[0]
    best = [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(nq)]
    budget = block_tokens(qt.shape[0] * qt.shape[1])  # page tokens per streamed chunk
    ids, raws, lens, chunk_tokens = [], [], [], 0

    def score_chunk():
        s = score_pages(qt, raws, lens, packer)
        cid = np.array(ids, dtype=np.int64)
        for q in range(nq):
            all_ids = np.concatenate([best[q][0], cid])
            all_s = np.concatenate([best[q][1], s[q]])
            keep = top_with_ties(all_s, k)
            best[q] = (all_ids[keep], all_s[keep])

    for pid, raw, tokens in pages:
        ids.append(pid)
        raws.append(raw)
        lens.append(tokens)
        chunk_tokens += tokens
        if chunk_tokens >= budget:
            score_chunk()
            ids, raws, lens, chunk_tokens = [], [], [], 0
    if ids:
        score_chunk()
    return best
