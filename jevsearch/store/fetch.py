"""Fetching pages' stored multi-vectors for scoring: raw zero-copy LMDB values, their token counts from
the values' sizes, and reading ahead in threads when the reads turn out to come from disk.

The values are returned unchecked: the scorer checks each as it packs it (``PageStore.page_check``).
A page that is known damaged, missing or of the wrong size is noted in the index's
:class:`~jevsearch.store.damage.DamageLog` and left out.
"""

from __future__ import annotations

import time

import numpy as np

from jevsearch.store.damage import DamageLog
from jevsearch.store.lmdbstore import EXACT, PageStore, page_key

# A fetch whose gets have taken this long, and this long per value, is reading from disk: the rest
# of its values are read ahead in parallel (see fetch). A warm fetch stays well under both.
COLD_FETCH_S, COLD_PER_VALUE_S = 0.002, 50e-6

WHAT = {"multi": "multi-vectors", EXACT: "exact tokens"}


def value(store: PageStore, txn, damage: DamageLog, pid: int, tokens: int | None, table: str,
          per_token: int):
    """A page's stored values in ``table`` (codes, or the exact tokens) and their token count; None
    (noted) when known damaged, missing or of the wrong size. ``per_token``: bytes per token in
    ``table``. ``tokens`` None: the count the value's size gives, and a missing value means the page
    is gone (deleted with its record in one commit)."""
    if pid in damage:
        return None
    raw = store.get(txn, table, page_key(pid), raw=True)
    if raw is None and tokens is None:
        return None
    size = 0 if raw is None else store.payload_size(raw)
    if raw is None or (size % per_token if tokens is None else size != tokens * per_token):
        damage.note(store, txn, pid, f"its {WHAT[table]} are missing or of the wrong size")
        return None
    return raw, size // per_token


def fetch(store: PageStore, txn, damage: DamageLog, page_ids: np.ndarray, table: str, per_token: int):
    """(ids, values, token counts) of the pages among ``page_ids`` still live in ``txn`` (see
    :func:`value`; no page records read).

    Once the gets have taken COLD_FETCH_S, over COLD_PER_VALUE_S per value (a cold cache), the rest
    are read ahead by threads (PageStore.prefetch), their disk reads in parallel."""
    ids, raws, lens = [], [], []
    todo, ahead, started = page_ids.tolist(), None, time.perf_counter()
    try:
        for i, pid in enumerate(todo):
            spent = time.perf_counter() - started
            if ahead is None and i + 1 < len(todo) and spent > COLD_FETCH_S and spent > i * COLD_PER_VALUE_S:
                ahead = store.prefetch((table,), todo[i + 1:])
            if (found := value(store, txn, damage, pid, None, table, per_token)) is not None:
                ids.append(pid)
                raws.append(found[0])
                lens.append(found[1])
    finally:
        if ahead is not None:
            ahead.wait()
    return np.array(ids, dtype=np.int64), raws, lens
