"""Stage 2 of a search: MaxSim over fetched pages, top-k per query. No I/O.

Pages arrive as raw stored buffers (zero-copy LMDB views) with their token counts; the engine fetches
them, a :class:`Scorer` packs and scores them in bounded blocks, and the functions below keep the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from jevsearch.errors import InvalidInputError
from jevsearch.search import codecs
from jevsearch.search.maxsim import (
    block_tokens,
    maxsim,
    maxsim_concat,
    maxsim_concat_hamming,
    maxsim_concat_int8,
    top_with_ties,
)
from jevsearch.search.pack import ConcatPacker, PagePacker


def _one_thread() -> None:
    # OpenMP's thread count is per thread: a fresh worker would run oneDNN's matmul with every core
    # and oversubscribe the machine (2 workers were no faster than 1 until each set 1 thread).
    torch.set_num_threads(1)


class Scorer:
    """MaxSim of queries against stored pages, in blocks of bounded size, on one device.

    ``codec``: how the pages are stored (:mod:`~jevsearch.search.codecs`: a codec, its name, or a
    manifest's ``multi_dtype``). CPU: pages unpacked end to end in cache-sized blocks and scored by
    :func:`~jevsearch.search.maxsim.maxsim_concat` (or ``maxsim_concat_int8`` for the codecs whose
    ``kernel`` is int8, against the queries quantised once per call), the blocks shared among
    ``workers`` threads (the caller's and ``workers - 1`` helpers), each with its own buffers. GPU: large padded blocks unpacked on the
    device (:func:`~jevsearch.search.maxsim.maxsim`) on the calling thread.
    Not thread-safe: one call at a time (the engine serialises them).

    >>> import numpy as np, torch
    >>> s = Scorer(dim=2, codec="fp16", device=torch.device("cpu"), dtype=torch.float32)
    >>> page = np.array([[1, 0], [0.6, 0.8]], np.float16).tobytes()
    >>> s.score(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), [page], [2]).round(3)
    array([[1.8]], dtype=float32)
    """

    def __init__(self, dim: int, codec, device: torch.device, dtype: torch.dtype):
        self.dim, self.device, self.dtype = dim, device, dtype
        self.codec = codecs.get(codec, dim)
        self._packers: list = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @property
    def has_hamming(self) -> bool:
        """Whether :meth:`score` offers ``hamming=True`` (``binary`` pages, scored on the CPU)."""
        return self.device.type == "cpu" and self.codec.name == "binary"

    def score(self, qt: torch.Tensor, raws: list, lens: list[int], workers: int = 1,
              open_page: Callable[[int], object] | None = None, hamming: bool = False) -> np.ndarray:
        """MaxSim of queries qt [Q, L, d] against pages ``raws`` of ``lens`` tokens -> float32 [Q, C].

        On the CPU, the caller runs this with torch set to 1 intra-op thread: the parallelism is the
        ``workers`` threads, one block at a time each.

        ``open_page(c)``: the bytes of page c (e.g. ``raws[c]`` checked against its checksum) or None
        when the page is damaged (its scores are then NaN). Called by the worker that packs the page,
        just before it does: the check reads the bytes into the cache the copy then reads them from
        (checking them all up front would read every page twice from memory).

        ``hamming=True`` (only where :attr:`has_hamming`): the binary-binary MaxSim of the queries'
        signs instead (:func:`~jevsearch.search.maxsim.maxsim_concat_hamming`), a cheaper, rougher pass.
        """
        if hamming and not self.has_hamming:
            raise InvalidInputError(f"hamming: needs binary pages scored on the CPU, not {self.codec.name} "
                                    f"on {self.device.type} (hint: check Scorer.has_hamming)")
        out = np.empty((qt.shape[0], len(raws)), dtype=np.float32)
        if not raws:
            return out
        cpu = self.device.type == "cpu"
        nq, rows = qt.shape[0], qt.shape[0] * qt.shape[1]
        integer = cpu and self.codec.kernel == "int8" and not hamming
        blocks = _blocks(lens, block_tokens(rows, cpu, integer), padded=not cpu)
        workers = max(1, min(workers if cpu else 1, len(blocks)))
        while len(self._packers) < workers:
            self._packers.append(ConcatPacker(self.dim, self.codec) if cpu
                                 else PagePacker(self.dim, self.codec, self.device, self.dtype))
        if integer:  # quantised once, shared by every block and worker
            q_codes, q_scales = codecs.quantize_rows(qt.reshape(rows, -1), self.codec.query_parts)
            q_scales = (q_scales * self.codec.token_scale).numpy()
        elif hamming:
            flat = qt.reshape(rows, -1).numpy()
            word = np.dtype(f"<u{math.gcd(self.dim // 8, 8)}")  # the widest word a row's bytes divide into
            q_words = self.codec.encode(flat).view(word).reshape(rows, -1)  # [Q*L, W]
            q_weights = np.where(flat.any(axis=1), 1 / self.dim, 0).astype(np.float32)  # padding rows: 0

        todo = iter(blocks)  # shared: a worker takes the next block when free, so a busy core takes fewer
        damaged: list[int] = []

        def opened(start: int, stop: int):
            """The block's pages, each opened as the packer reaches it (a generator on the CPU: the
            check of one page and its copy then share the L2 cache)."""
            if open_page is None:
                return raws[start:stop]
            pages = (_open(c) for c in range(start, stop))
            return pages if cpu else list(pages)

        def _open(c: int):
            page = open_page(c)
            if page is None:
                damaged.append(c)
                page = bytes(lens[c] * self.codec.bytes_per_token)  # scored, then set to NaN
            return page

        def run(w: int) -> None:
            packer = self._packers[w]
            for start, stop in todo:
                if hamming:
                    signs, starts = packer.pack_signs(opened(start, stop), lens[start:stop])  # [N, d/8], [C]
                    out[:, start:stop] = maxsim_concat_hamming(q_words, q_weights, nq, signs.view(word), starts,
                                                               packer.array)
                elif integer:
                    tokens, starts = packer.pack(opened(start, stop), lens[start:stop])  # int8 [N, d], [C]
                    sim = packer.sim(len(q_codes), tokens.shape[0], torch.int32)
                    out[:, start:stop] = maxsim_concat_int8(q_codes, q_scales, nq, tokens, starts, out=sim,
                                                            token_scales=packer.scales, buffer=packer.buffer)
                elif cpu:
                    tokens, starts = packer.pack(opened(start, stop), lens[start:stop])  # [N, d], [C]
                    sim = packer.sim(rows, tokens.shape[0])
                    out[:, start:stop] = maxsim_concat(qt, tokens, starts, out=sim, token_scales=packer.scales)
                else:
                    pages = packer.pack(opened(start, stop), lens[start:stop])  # [C, T, d]
                    out[:, start:stop] = maxsim(qt, pages).cpu().numpy()

        helpers = []
        if workers > 1:
            if self._pool_size < workers - 1:
                self.close()
                self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="jevsearch-maxsim",
                                                initializer=_one_thread)
                self._pool_size = workers - 1
            helpers = [self._pool.submit(run, w) for w in range(1, workers)]
        try:
            run(0)  # the calling thread is worker 0
        finally:
            for f in helpers:  # they write into ``out`` and use the packers: never return before them
                f.result()
        if damaged:
            out[:, damaged] = np.nan
        return out

    def close(self) -> None:
        """Stop the worker threads (started again on demand)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool, self._pool_size = None, 0


def _blocks(lens: list[int], budget: int, padded: bool) -> list[tuple[int, int]]:
    """Split pages into consecutive (start, stop) runs of at most ``budget`` tokens (C * longest page
    when ``padded``), one page at least."""
    blocks, start = [], 0
    while start < len(lens):
        stop, longest, total = start + 1, lens[start], lens[start]
        while stop < len(lens):
            longest, total = max(longest, lens[stop]), total + lens[stop]
            if (longest * (stop - start + 1) if padded else total) > budget:
                break
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


# MaxSim of unit vectors is a sum of L cosines, so |score| <= L (query tokens); the tolerance covers
# float16 storage (rows within ~1e-3 of unit norm) and float16 scoring on a GPU.
SCORE_TOLERANCE = 0.01


def implausible(scores: np.ndarray, q_lens: list[int]) -> np.ndarray:
    """Pages (columns of ``scores`` [Q, C]) whose score no unit vectors can give: NaN, or above the
    query's token count (x 1 + SCORE_TOLERANCE) for some query: damaged stored vectors -> bool [C].

    >>> implausible(np.array([[1.5, 2.5, np.nan]], np.float32), [2]).tolist()
    [False, True, True]
    """
    bound = np.asarray(q_lens, dtype=np.float32)[:, None] * (1 + SCORE_TOLERANCE)
    return ~(np.abs(scores) <= bound).all(axis=0)


# How far above the codes' fitted line a page's exact score may lie before the window widens: the
# line and the largest residual are measured on the pages already rescored, and twice that residual
# kept the exact top 10 on every corpus tried (the benchmark's, random tokens, few tokens per page,
# near-duplicate pages) where 1x missed pages on random tokens.
RESCORE_MARGIN = 2.0


def rescore_more(code_done: np.ndarray, exact_done: np.ndarray, code_rest: np.ndarray, k: int,
                 margin: float = RESCORE_MARGIN) -> bool:
    """Whether a candidate not yet rescored could still reach the k-th exact score: the adaptive window
    of a codes-then-exact search.

    ``code_done``/``exact_done``: the codes' and the exact scores of the pages rescored so far;
    ``code_rest``: the codes' scores of the others. The exact scores are fitted by a line in the codes'
    (least squares, on the pages rescored: the codes' error measured per query, so it holds however the
    corpus spreads its tokens), and a page could still enter the top k when its line value plus
    ``margin`` times the largest residual reaches the k-th exact score.

    >>> code = np.array([9.0, 8.0, 7.0, 6.0])
    >>> bool(rescore_more(code, code / 2, np.array([5.0]), k=2))  # the codes rank exactly: 2.5 < 4
    False
    >>> bool(rescore_more(code, np.array([4.0, 4.5, 3.0, 4.2]), np.array([5.9]), k=2))
    True
    """
    if not len(code_rest):
        return False
    if len(exact_done) < k:  # damaged pages dropped: fewer than k scored so far
        return True
    kth = np.partition(exact_done, len(exact_done) - k)[len(exact_done) - k]
    code_done, exact_done = code_done.astype(np.float64), exact_done.astype(np.float64)
    slope = 0.0
    if len(code_done) > 1 and np.ptp(code_done) > 0:
        slope = np.polyfit(code_done, exact_done, 1)[0]
    offset = float(np.mean(exact_done - slope * code_done))
    spread = float(np.max(exact_done - (slope * code_done + offset)))
    reach = slope * (code_rest.max() if slope >= 0 else code_rest.min()) + offset + margin * max(spread, 0.0)
    return bool(reach >= kth)


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


def exhaustive(pages: Iterable[tuple[int, object, int]], qt: torch.Tensor, k: int, scorer: Scorer,
               workers: int = 1, q_lens: list[int] | None = None,
               open_page: Callable[[int, object], object] | None = None):
    """Exact top k (with ties) over every page of ``pages`` ((page id, raw, tokens) tuples), streamed in
    chunks of bounded size. With ``q_lens`` (each query's token count), pages scoring
    :func:`implausible` are left out. ``open_page(page id, raw)``: as in :meth:`Scorer.score`.
    -> (Q pairs (page ids, scores), ids of the pages left out)."""
    nq = qt.shape[0]
    best = [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(nq)]
    budget = block_tokens(qt.shape[0] * qt.shape[1])  # page tokens per streamed chunk
    ids, raws, lens, chunk_tokens = [], [], [], 0
    dropped: list[int] = []

    def score_chunk():
        opener = None if open_page is None else (lambda c, ids=ids, raws=raws: open_page(ids[c], raws[c]))
        s = scorer.score(qt, raws, lens, workers, opener)
        cid = np.array(ids, dtype=np.int64)
        if q_lens is not None:
            bad = implausible(s, q_lens)
            if bad.any():
                dropped.extend(cid[bad].tolist())
                cid, s = cid[~bad], s[:, ~bad]
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
    return best, dropped
