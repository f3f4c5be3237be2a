"""MUVERA fixed dimensional encodings (FDE): one vector per page whose inner product with a query's
approximates their MaxSim (Dhulipala et al. 2024, "MUVERA: Multi-Vector Retrieval via Fixed
Dimensional Encodings").

Per repetition, SimHash of ``bits`` random hyperplanes puts each token in one of 2^bits buckets. A
page's bucket vector is the mean of its tokens there (an empty bucket takes the token nearest in
Hamming distance), a query's the sum of its tokens there, so the inner product of the two sums, over
the query's tokens, the similarity to the page's tokens in the same bucket: MaxSim where the hashing
groups a query token with its best page tokens. Each bucket vector is projected to ``proj`` dims by a
random +-1 matrix; the repetitions are concatenated: ``reps * 2^bits * proj`` dims.

The hyperplanes and projections come from ``seed`` alone (no training on the data), so the
parameters recorded in an index's manifest (:data:`DEFAULT`) make every writer encode alike, and
adds and deletes never make stored encodings stale.

>>> enc = Fde.of({"dim": 8, "reps": 2, "bits": 2, "proj": 4, "seed": 0})
>>> rng = np.random.default_rng(1)
>>> page, query = rng.standard_normal((5, 8)), rng.standard_normal((3, 8))
>>> enc.pages([page]).shape, enc.queries([query]).shape
((1, 32), (1, 32))
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from jevsearch.errors import InvalidInputError

# reps x 2^bits x proj = 2,560 dims: 5 KB a page in float16 (benchmarks/stage1.py measured it).
DEFAULT = {"reps": 10, "bits": 4, "proj": 16, "seed": 0}


def params(dim: int, **given) -> dict:
    """The manifest record of an encoder for ``dim``-d tokens: DEFAULT with ``given`` values, checked.

    >>> params(128)["out"]
    2560
    """
    p = dict(DEFAULT, **given, dim=dim)
    for name in ("dim", "reps", "bits", "proj"):
        v = p[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidInputError(f"fde {name}: {v!r} (hint: a positive integer)")
    if p["bits"] > 8:
        raise InvalidInputError(f"fde bits: {p['bits']} (hint: at most 8, 256 buckets per repetition)")
    return dict(p, out=p["reps"] * (1 << p["bits"]) * p["proj"])


class Fde:
    """The encoder of one parameter record (:func:`params`); immutable, shared by every writer."""

    def __init__(self, p: dict):
        self.p = p
        rng = np.random.default_rng(p["seed"])
        reps, bits, proj, dim = p["reps"], p["bits"], p["proj"], p["dim"]
        self.reps, self.bits, self.buckets = reps, bits, 1 << bits
        # Drawn in the benchmark's order (benchmarks/stage1.py measured these encodings).
        planes = rng.standard_normal((reps, dim, bits)).astype(np.float32)
        self.planes = np.ascontiguousarray(planes.transpose(1, 0, 2).reshape(dim, reps * bits))
        self.signs = (rng.integers(0, 2, (reps, dim, proj)) * 2 - 1).astype(np.float32) / np.float32(np.sqrt(proj))
        self.dim = p["out"]
        self._planes, self._signs = torch.from_numpy(self.planes), torch.from_numpy(self.signs)
        self._weights = (1 << np.arange(bits)).astype(np.int64)
        codes = (np.arange(self.buckets)[:, None] >> np.arange(bits)) & 1  # [buckets, bits]
        self._codes = codes.astype(bool)

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _cached(key: tuple) -> Fde:
        return Fde(dict(key))

    @classmethod
    def of(cls, record: dict) -> Fde:
        """The encoder of a manifest's ``fde`` record (made once per record in a process)."""
        return cls._cached(tuple(sorted(params(record["dim"], **{k: record[k] for k in DEFAULT}).items())))

    def pages(self, pages) -> np.ndarray:
        """Page encodings float32 [P, out] of P token arrays [T, dim] (float tokens, before pooling)."""
        return self._encode(pages, query=False)

    def queries(self, queries) -> np.ndarray:
        """Query encodings float32 [Q, out] of Q token arrays [L, dim]."""
        return self._encode(queries, query=True)

    def _encode(self, arrays, query: bool) -> np.ndarray:
        out = np.zeros((len(arrays), self.dim), np.float32)
        for i, tokens in enumerate(arrays):
            t = np.asarray(tokens.detach().float().cpu() if hasattr(tokens, "detach") else tokens, np.float32)
            if len(t):
                out[i] = self._one(t, query)
        return out

    def _one(self, t: np.ndarray, query: bool) -> np.ndarray:
        # In torch (the caller's torch threads): numpy's small matmuls go through OpenBLAS, whose
        # thread team made this 5x slower on a busy machine.
        reps, nb = self.reps, self.buckets
        tokens = torch.from_numpy(t)
        h = (torch.mm(tokens, self._planes) > 0).numpy().reshape(len(t), reps, self.bits)  # [T, reps, bits]
        bucket = torch.from_numpy(h.astype(np.int64) @ self._weights + nb * np.arange(reps))  # [T, reps]
        sums = torch.zeros(reps * nb, t.shape[1])
        for r in range(reps):  # a scatter-add per repetition: faster than a one-hot matmul
            sums.index_add_(0, bucket[:, r].contiguous(), tokens)
        if not query:
            count = torch.bincount(bucket.reshape(-1), minlength=reps * nb).float()
            empty = np.flatnonzero(count.numpy() == 0)
            if len(empty):  # each empty bucket takes the token nearest its code in Hamming distance
                r, b = empty // nb, empty % nb
                dist = (h[:, r, :] != self._codes[b][None]).sum(2)  # [T, empty]
                sums[torch.from_numpy(empty)] = tokens[torch.from_numpy(np.argmin(dist, axis=0))]
                count[torch.from_numpy(empty)] = 1
            sums /= count[:, None]
        return torch.bmm(sums.reshape(reps, nb, -1), self._signs).reshape(-1).numpy()
