"""Retrieval metrics, computed by pytrec_eval (trec_eval's own code); this module only builds its inputs.

A run is each query's ranked corpus ids, best first. trec_eval orders a run by score and breaks ties by
document id, so the scores handed to it encode our ranks (n, n-1, ...): the order it evaluates is ours.
Queries it gets no result for count as 0 in the means (the means are over every judged query).

>>> qrels = {"q1": {"a": 1, "b": 2}}
>>> {m: round(v, 4) for m, v in compute(qrels, {"q1": ["x", "a", "b"]}, k=10).items()}
{'nDCG@5': 0.6199, 'nDCG@10': 0.6199, 'recall@10': 1.0, 'recall@100': 1.0, 'MRR@10': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RECALL_DEPTH = 100  # recall@100 is always reported, so runs are at least this deep


def names(k: int) -> list[str]:
    """The metric columns for cutoff ``k``: nDCG@5, nDCG@k, recall@k, recall@100, MRR@k (no repeats)."""
    return list(dict.fromkeys(["nDCG@5", f"nDCG@{k}", f"recall@{k}", f"recall@{RECALL_DEPTH}", f"MRR@{k}"]))


def compute(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]], k: int,
            per_query: dict | None = None) -> dict[str, float]:
    """Mean of each metric of :func:`names` over the queries of ``qrels``.

    run: query id -> ranked corpus ids (best first, no repeats). per_query: if given, filled with
    {query id: {metric: value}}.
    """
    from jevsearch.eval.datasets import require

    pytrec_eval = require("pytrec_eval", "computing retrieval metrics")
    judged = {q: {c: int(g) for c, g in rel.items()} for q, rel in qrels.items()}
    ranked = {q: _scored(run.get(q, ())) for q in judged}
    top_k = {q: _scored(run.get(q, ())[:k]) for q in judged}
    cuts = sorted({5, k})
    trec = pytrec_eval.RelevanceEvaluator(
        judged, {"ndcg_cut." + ",".join(map(str, cuts)), f"recall.{k},{RECALL_DEPTH}"}).evaluate(ranked)
    # trec_eval's recip_rank has no cutoff: MRR@k is recip_rank of the run cut to its first k.
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top_k)
    keys = {"nDCG@5": "ndcg_cut_5", f"nDCG@{k}": f"ndcg_cut_{k}", f"recall@{k}": f"recall_{k}",
            f"recall@{RECALL_DEPTH}": f"recall_{RECALL_DEPTH}"}
    values = {q: {m: trec.get(q, {}).get(key, 0.0) for m, key in keys.items()} for q in judged}
    for q in judged:
        values[q][f"MRR@{k}"] = rr.get(q, {}).get("recip_rank", 0.0)
    if per_query is not None:
        per_query.update(values)
    return {m: sum(v[m] for v in values.values()) / len(values) for m in names(k)}


def _scored(ids: Sequence[str]) -> dict[str, float]:
    return {cid: float(len(ids) - rank) for rank, cid in enumerate(ids)}
