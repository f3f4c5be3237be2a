"""Running a dataset's queries through an index under several search settings: quality and latency.

Each query is encoded once with the engine's model (timed apart), then every setting searches with the
same query embeddings; only the search call is timed. A setting is a dict:

* ``{"mode": "single"}``: single vectors only, the HNSW over the index's truncation (stage 1 alone);
  ``{"mode": "single", "exact": True}``: exact inner products with the stored full single vectors.
* ``{"mode": "hybrid"}`` / ``{"mode": "lexical"}``: the query's words and look together, or its words
  only (:meth:`Index.search_hybrid`; an index with a text index, text queries); ``{"mode": "visual"}``
  is the two-stage search, as without a mode. Other keys go to the search as below (``weights`` too).
* anything else is passed to ``search_embeddings`` as keywords: ``{"candidates": 50}``,
  ``{"exhaustive": True}``, and any option it gains later, checked against its signature.
* ``"label"``: the row's name (default: made from the setting).

Searches are run ``max(k, 100)`` deep (recall@100 needs 100 results), except that a two-stage setting
returns no more than its ``candidates`` (raising ``candidates`` to the depth would change the setting):
its recall@100 is what that many candidates can reach. Latencies are of those searches.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jevsearch.errors import DatasetError, InvalidInputError
from jevsearch.eval import metrics
from jevsearch.eval.datasets import Dataset, Query
from jevsearch.eval.report import EvalReport

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = ({"mode": "single"}, {"mode": "single", "exact": True}, {"candidates": 20},
                    {"candidates": 50}, {"candidates": 100}, {"candidates": 200}, {"exhaustive": True})
_OURS = ("label", "mode", "exact")  # setting keys read here; the rest go to search_embeddings


@dataclass
class _Plan:
    label: str
    params: dict
    search: Callable  # (q_single, q_multi, text) -> list[Hit]


def evaluate(eng, ds: Dataset, k: int = 10, settings: Sequence[Mapping] | None = None, *,
             progress: bool = False) -> EvalReport:
    """Quality (nDCG@5, nDCG@k, recall@k, recall@100, MRR@k) and search latency (p50/p95) of each setting.

    eng: an Engine (text/image queries are encoded with its model) or an Index (queries must carry
    embeddings). ds: a :class:`Dataset`. settings: see the module docstring; default DEFAULT_SETTINGS.
    Raises InvalidInputError for a bad setting (before any search), DatasetError when the index does
    not hold the dataset's corpus.

    >>> report = evaluate(eng, load_dataset("DATASET"), k=10, settings=[{"mode": "single"}, {"candidates": 50}])  # doctest: +SKIP
    >>> print(report.table())                                                                                  # doctest: +SKIP
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k: {k!r} (hint: a positive int, e.g. 10)")
    depth = max(k, metrics.RECALL_DEPTH)
    plans = [_plan(eng, dict(s) if isinstance(s, Mapping) else s, k, depth)
             for s in (DEFAULT_SETTINGS if settings is None else settings)]
    if not plans:
        raise InvalidInputError("settings: empty (hint: e.g. [{'candidates': 100}], or None for the defaults)")
    labels = [p.label for p in plans]
    if len(set(labels)) < len(labels):
        raise InvalidInputError(f"settings: repeated label in {labels} (hint: give each setting its own 'label')")
    _check_corpus(eng, ds)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(ds.queries) * (len(plans) + 1), unit="query", desc="encoding queries",
               disable=not progress, dynamic_ncols=True)
    with bar:
        embedded, encode_ms = _embed(eng, ds.queries, bar)
        rows = []
        for plan in plans:
            bar.set_description(plan.label)
            plan.search(*embedded[0], ds.queries[0].text)  # warm-up, untimed: first-touch costs are not the setting's
            run, latency = {}, []
            for q, (single, multi) in zip(ds.queries, embedded):
                t = time.perf_counter()
                hits = plan.search(single, multi, q.text)
                latency.append((time.perf_counter() - t) * 1e3)
                run[q.id] = _ranked(ds, hits, ds.qrels[q.id])
                bar.update()
            per_query: dict = {}
            means = metrics.compute(ds.qrels, run, k, per_query)
            rows.append({"setting": plan.label, "params": plan.params, "metrics": means,
                         "latency_ms": _spread(latency), "per_query": per_query})
    stats, m = eng.stats(), eng.manifest
    index = {"path": eng.path, "documents": stats["documents"], "pages": stats["pages"],
             "single_dim": m["single_dim"], "single_full_dim": m["single_full_dim"],
             "model": (m.get("model") or {}).get("source"), "model_dtype": getattr(eng, "model_dtype", None)}
    return EvalReport(rows=rows, metric_names=metrics.names(k), k=k, depth=depth, queries=len(ds.queries),
                      skipped_queries=ds.skipped, encode_ms=_spread(encode_ms) if encode_ms else None,
                      dataset=ds.name, index=index)


def _plan(eng, setting, k: int, depth: int) -> _Plan:
    if not isinstance(setting, dict):
        raise InvalidInputError(f"settings: {setting!r} is not a dict (hint: e.g. {{'candidates': 100}})")
    params = {key: v for key, v in setting.items() if key != "label"}
    label = setting.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidInputError(f"settings: label {label!r} is not a str")
    mode, exact = setting.get("mode"), setting.get("exact", False)
    if mode not in (None, "single", "visual", "lexical", "hybrid"):
        raise InvalidInputError(f"settings: mode {mode!r} (hint: 'single', 'lexical', 'hybrid', or no mode for the "
                                "two-stage search)")
    if not isinstance(exact, bool) or (exact and mode != "single"):
        raise InvalidInputError(f"settings: exact={exact!r} (hint: exact=True goes with mode 'single')")
    m = eng.manifest
    if mode == "single":
        extra = sorted(set(setting) - set(_OURS))
        if extra:
            raise InvalidInputError(f"settings: {extra} with mode 'single' (hint: it takes only exact and label)")
        dims = f"{m['single_full_dim'] or 'full'} exact" if exact else f"{m['single_dim']} hnsw"
        return _Plan(label or f"single@{dims}", params,
                     lambda s, mv, text: eng.search_singles(s, depth, exact=exact))
    kwargs = {key: v for key, v in setting.items() if key not in _OURS}
    words = mode in ("lexical", "hybrid")
    if words and not getattr(eng, "has_text_index", False):
        raise InvalidInputError(f"settings: mode {mode!r}: the index has no text index (hint: build it with "
                                "eng.build_text_index(), or `jevsearch index --text-index --index DIR`)")
    options = inspect.signature(eng.search_hybrid if words else eng.search_embeddings).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in options.values()):
        accepted = sorted(set(options) - {"q_single", "q_multi", "k", "text", "mode"})
        for key in kwargs:
            if key not in accepted:
                raise InvalidInputError(f"settings: {key!r} is not a search_embeddings option "
                                        f"(hint: one of {accepted}, or mode/exact/label)")
    k_search = depth
    if not kwargs.get("exhaustive"):
        cand = kwargs.get("candidates", options["candidates"].default if "candidates" in options else depth)
        if isinstance(cand, int) and not isinstance(cand, bool):
            k_search = min(depth, max(cand, k))  # its own candidates at most: see the module docstring
    if label is None:
        names = [mode] if words else ["exhaustive"] if kwargs.get("exhaustive") else ["two-stage"]
        names += [f"{key}={v}" for key, v in kwargs.items() if key != "exhaustive"]
        label = " ".join(names).replace("two-stage candidates=", "two-stage c=")
    if words:
        return _Plan(label, params, lambda s, mv, text: eng.search_hybrid(s, mv, _text(text), k=k_search, mode=mode,
                                                                          **kwargs))
    return _Plan(label, params, lambda s, mv, text: eng.search_embeddings(s, mv, k=k_search, **kwargs))


def _text(text: str | None) -> str:
    if text is None:
        raise InvalidInputError("settings: lexical and hybrid modes need text queries (hint: this dataset's "
                                "queries are images or embeddings: drop the mode)")
    return text


def _check_corpus(eng, ds: Dataset) -> None:
    """The index must hold the judged documents: all of them for a dataset of the index's own document
    ids (else the qrels name unknown ids), at least one for a file corpus (a missing file counts as a miss)."""
    judged = {cid for rel in ds.qrels.values() for cid, g in rel.items() if g > 0}
    if ds.corpus_root is None:
        for cid in sorted(judged):
            base, _, page = cid.rpartition("#")
            doc = eng.document(cid)
            if doc is None and base and page.isdigit():
                doc = eng.document(base)
                if doc is not None and not 1 <= int(page) <= doc["pages"]:
                    raise DatasetError(f"qrels: {cid!r}: {base!r} has {doc['pages']} pages in {eng.path} "
                                       "(hint: pages count from 1)")
            if doc is None:
                raise DatasetError(f"qrels: {cid!r} is not a document of the index {eng.path} (hint: qrels name "
                                   "document ids, or doc_id#page)")
        return
    present = {ds.document_corpus_id(d) for d in eng.documents()} - {None}
    bases = {ds.whole(cid) for cid in judged}
    missing = sorted(b for b in bases if b not in present)
    if len(missing) == len(bases):
        raise DatasetError(f"{eng.path}: holds none of the {len(bases)} judged documents of {ds.name} "
                           f"(hint: index {ds.corpus_root} first, e.g. `jevsearch eval` on an empty index)")
    if missing:
        log.warning("%s: %d of %d judged documents are not in the index and count as misses (e.g. %s)",
                    eng.path, len(missing), len(bases), missing[0])


def _embed(eng, queries: list[Query], bar) -> tuple[list[tuple], list[float]]:
    """Each query's (single, multi) embeddings, and the ms each model encoding took."""
    out, times = [], []
    for q in queries:
        if q.multi is not None:
            out.append((q.single, q.multi))
        else:
            if getattr(eng, "encoder", None) is None:
                raise InvalidInputError(f"query {q.id!r}: a text or image query needs a model (hint: evaluate "
                                        "with an Engine whose index has a model, or give queries embeddings)")
            from PIL import Image

            t = time.perf_counter()
            if q.image is not None:
                with Image.open(q.image) as img:
                    emb = eng.embed_query(img)
            else:
                emb = eng.embed_query(q.text)
            times.append((time.perf_counter() - t) * 1e3)
            out.append((emb.single[0], emb.multi[0]))
        bar.update()
    return out, times


def _ranked(ds: Dataset, hits, relevant: Mapping[str, int]) -> list[str]:
    """The hits as corpus ids, best first; pages of a document judged as a whole count once."""
    return list(dict.fromkeys(ds.run_id(h.doc_id, h.page, relevant) for h in hits))


def _spread(ms: list[float]) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "mean": float(np.mean(ms)), "n": len(ms)}
