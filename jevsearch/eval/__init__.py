"""Measure retrieval quality and latency on your own data: standard metrics per search setting.

>>> from jevsearch import Engine
>>> from jevsearch.eval import load_dataset, evaluate
>>> ds = load_dataset("DATASET")                        # doctest: +SKIP
>>> with Engine.open("indexes/papers", readonly=True) as eng:                     # doctest: +SKIP
...     report = evaluate(eng, ds, k=10, settings=[{"mode": "single"}, {"candidates": 50},
...                                                {"candidates": 200}, {"exhaustive": True}])
>>> print(report.table()); report.save("report/")      # doctest: +SKIP

Datasets (BEIR-style folders, ViDoRe Parquet downloads): :mod:`jevsearch.eval.datasets`. Settings and
what is timed: :mod:`jevsearch.eval.runner`. Metrics (by pytrec_eval): :mod:`jevsearch.eval.metrics`.
Needs the ``eval`` extra: ``pip install 'jevsearch[eval]'`` (pytrec-eval-terrier, pyarrow, matplotlib),
imported only when used.
"""

from jevsearch.eval.datasets import Dataset, Query
from jevsearch.eval.load import load_dataset
from jevsearch.eval.report import EvalReport
from jevsearch.eval.runner import DEFAULT_SETTINGS, evaluate

__all__ = ["DEFAULT_SETTINGS", "Dataset", "EvalReport", "Query", "evaluate", "load_dataset"]
