"""Fusing rankings: reciprocal-rank fusion (RRF) of the visual and the lexical side of a hybrid search.

Pure functions, no I/O. RRF (Cormack, Clarke & Büttcher, SIGIR 2009) scores each item
``sum(weight_s / (RRF_K + rank_s))`` over the rankings ``s`` it appears in (ranks from 1). It needs
no score calibration between BM25 and MaxSim, whose scales have nothing in common. ``RRF_K = 60``
is the paper's constant: it damps the difference between the first ranks, so an item that both
sides rank well beats one that a single side ranks first.

>>> [(i, round(s, 5)) for i, s in fuse({"visual": [10, 11, 12], "lexical": [12, 13]})]
[(12, 0.03227), (10, 0.01639), (11, 0.01613), (13, 0.01613)]
>>> [i for i, _ in fuse({"visual": [10, 11], "lexical": [11]}, weights={"visual": 1.0, "lexical": 0.0})]
[10, 11]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RRF_K = 60


def fuse(rankings: Mapping[str, Sequence[int]], weights: Mapping[str, float] | None = None,
         k: float = RRF_K, item_weights: Mapping[str, Mapping[int, float]] | None = None) -> list[tuple[int, float]]:
    """Items of every ranking (best first) as (item, fused score), best first; ties go to the item
    ranked best by the first ranking that has it, then the smaller item. ``weights``: per ranking
    name (default 1.0 each); ``item_weights``: per ranking, a factor for some of its items (default 1).

    >>> [i for i, _ in fuse({"v": [1, 2], "l": [2]}, item_weights={"l": {2: 0.0}})]
    [1, 2]
    """
    scores: dict[int, float] = {}
    order: dict[int, tuple[int, int]] = {}
    for s, (name, items) in enumerate(rankings.items()):
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        factor = (item_weights or {}).get(name, {})
        for rank, item in enumerate(items, 1):
            scores[item] = scores.get(item, 0.0) + w * factor.get(item, 1.0) / (k + rank)
            order.setdefault(item, (s, rank))
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]], kv[0]))


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    """``weights`` as floats, or ValueError naming what is wrong (keys: "visual", "lexical"; >= 0)."""
    if weights is None:
        return None
    if not isinstance(weights, Mapping) or not set(weights) <= {"visual", "lexical"}:
        raise ValueError(f"weights: {weights!r} (hint: e.g. {{'visual': 1.0, 'lexical': 0.5}})")
    out = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
            raise ValueError(f"weights[{name!r}]: {w!r} (hint: a number >= 0)")
        out[name] = float(w)
    return out
