"""Token pooling: fewer multi-vectors per page by clustering a page's own tokens. Pure; no I/O.

``pool_factor`` f in (1, 2, 3): 1 keeps every token as it is. 2 and 3 cluster each page's tokens,
L2-normalised, by agglomerative clustering with Ward linkage (``scipy.cluster.hierarchy``) cut at
``ceil(T / f)`` clusters, and keep each cluster's mean, renormalised to unit length (the jina-v4
multi-vectors are unit vectors; MaxSim scores stay on the cosine scale). Pages are pooled one by one,
so a pooled token never mixes two pages. Queries are never pooled.

Why Ward: the colpali-engine / LanceDB pooler this follows uses it (factor 2 reported as nearly
lossless, factor 3 keeping ~97.8% of ColPali's score); it merges the pair that least increases the
within-cluster variance, so near-duplicate patches (blank margins, repeated background) merge first.
Cost: O(T^2) time and memory per page (~0.3M distances at 770 tokens; time per page measured in
``benchmarks/codecs.py``).

>>> import numpy as np
>>> page = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99]], np.float32)
>>> pool_tokens(page, 2).astype(float).round(2).tolist()  # two clusters, in order of their first token
[[1.0, 0.07], [0.05, 1.0]]
>>> [len(p) for p in pool_pages([page, page[:3]], 3)]  # ceil(4 / 3), ceil(3 / 3): per page
[2, 1]
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from jevsearch.errors import InvalidInputError

POOL_FACTORS = (1, 2, 3)


def check_pool_factor(factor) -> int:
    """``factor`` as an int if it is one of :data:`POOL_FACTORS`, else InvalidInputError."""
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) \
            or int(factor) not in POOL_FACTORS:
        raise InvalidInputError(f"pool_factor: {factor!r} is not 1, 2 or 3 (hint: 1 keeps every token, "
                                "2 or 3 keeps about 1/2 or 1/3 of each page's tokens)")
    return int(factor)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)  # an all-zero token stays zero


def pool_tokens(tokens: np.ndarray, factor: int) -> np.ndarray:
    """One page's tokens [T, d] -> float32 [T', d], T' = ceil(T / factor) (fewer only if tokens are
    exact duplicates), clusters in the order of their first token. Deterministic.
    ``factor`` 1 returns the tokens unchanged (as float32)."""
    factor = check_pool_factor(factor)
    x = np.asarray(tokens, dtype=np.float32)
    if factor == 1:
        return x
    unit = _unit(x)  # [T, d]
    target = -(-len(x) // factor)
    if target >= len(x):  # a 1-token page: nothing to merge
        return unit
    labels = fcluster(linkage(unit, method="ward"), t=target, criterion="maxclust") - 1  # [T] in [0, k)
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, unit)  # [k, d]
    _, first = np.unique(labels, return_index=True)  # first token of each cluster, by label
    return _unit(sums[np.argsort(first, kind="stable")]).astype(np.float32)  # [k, d]; mean's direction


def pool_pages(pages: list, factor: int) -> list[np.ndarray]:
    """Each page of ``pages`` ([T_i, d] arrays) pooled on its own (:func:`pool_tokens`)."""
    factor = check_pool_factor(factor)
    return [pool_tokens(p, factor) for p in pages]
