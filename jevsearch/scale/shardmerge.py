"""Folding the shards' answers into one: hits, stats, verify and ingest reports (pure, no I/O).

    >>> merge_stats(["a", "b"], {"a": {"pages": 2, "codec": "binary"}, "b": {"pages": 3, "codec": "binary"}})
    {'shards': 2, 'pages': 5, 'codec': 'binary', 'missing': [], 'bytes_per_page': {}}
"""

from __future__ import annotations

import dataclasses

from jevsearch.errors import JevsearchError, NotAnIndexError

SAME_IN_EVERY_SHARD = ("codec", "keep_exact", "pool_factor", "single_dtype")  # stats() keys not summed


class Hits(list):
    """A search's hits (a list, as Engine.search returns) plus ``missing``: shards that did not answer
    (only ever non-empty with ``allow_partial=True``)."""

    def __init__(self, hits=(), missing=()):
        super().__init__(hits)
        self.missing: list[str] = sorted(missing)


def merge_stats(shards: list[str], answers: dict) -> dict:
    """Per-shard :meth:`Index.stats` ({name: stats} of those that answered) summed, plus ``shards``
    (count) and ``missing`` (names)."""
    total: dict = {"shards": len(shards)}
    for stats in answers.values():
        for key, value in stats.items():
            if key in SAME_IN_EVERY_SHARD:  # the storage layout: shards are created alike
                total[key] = value
            elif key == "bytes_per_page":  # a mean over the shards' pages
                sub = total.setdefault(key, {})
                for k2, v2 in value.items():
                    sub[k2] = sub.get(k2, 0) + v2 * stats["pages"]
            elif isinstance(value, dict):
                sub = total.setdefault(key, {})
                for k2, v2 in value.items():
                    sub[k2] = sub.get(k2, 0) + v2
            else:
                total[key] = total.get(key, 0) + value
    total["missing"] = sorted(set(shards) - set(answers))
    pages = max(total.get("pages", 0), 1)
    total["bytes_per_page"] = {k: v / pages for k, v in total.get("bytes_per_page", {}).items()}
    return total


def merge_verify(shards: list[str], reports: dict) -> dict:
    """Per-shard :meth:`Index.verify` counts summed, lists joined with each line naming its shard."""
    total = {"shards": len(shards)}
    for name, report in reports.items():
        for key, value in report.items():
            if isinstance(value, list):
                total.setdefault(key, []).extend(f"{name}: {v}" for v in value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def why(e: BaseException) -> str:
    """A shard's failure in a few words: "missing", or its error without its own hint."""
    if isinstance(e, (NotAnIndexError, FileNotFoundError)):
        return "missing"
    text = e.message if isinstance(e, JevsearchError) else str(e)
    return " ".join(text.split()) or type(e).__name__


def merge_reports(report, reports, order: dict):
    """Per-shard IngestReports folded into ``report``: lists joined (in discovery order), numbers summed."""
    for part in reports:
        for f in dataclasses.fields(part):
            mine, theirs = getattr(report, f.name), getattr(part, f.name)
            if isinstance(theirs, list):
                mine.extend(theirs)
            elif isinstance(theirs, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            elif isinstance(theirs, (int, float)):
                setattr(report, f.name, mine + theirs)

    def key(entry):  # an entry is a path, or a tuple that names one; discovery failures stay first
        for item in (entry,) if isinstance(entry, str) else entry if isinstance(entry, tuple) else ():
            if isinstance(item, str) and item in order:
                return order[item]
        return -1

    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if isinstance(value, list):
            value.sort(key=key)
    return report
