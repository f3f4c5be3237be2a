"""Consistency check of an index (``Engine.verify``): LMDB records against each other and the HNSW."""

from __future__ import annotations

import numpy as np

from jevsearch.store.lmdbstore import PageStore, doc_key, page_numbers
from jevsearch.store.validate import NORM_TOLERANCE


def check_index(store: PageStore, txn, manifest: dict, graph_ids: np.ndarray, tombs: np.ndarray,
                *, deep: bool = False) -> tuple[dict, list[str]]:
    """Returns (counts, problems); the index is sound iff ``problems`` is empty."""
    problems: list[str] = []
    state = store.state(txn)
    dm, full = manifest["multi_dim"], manifest["single_full_dim"]
    stored = np.dtype(manifest["multi_dtype"])
    live: set[int] = set()
    docs = tokens_total = 0
    for doc in store.iter_documents(txn):
        docs += 1
        name, key, doc_tokens = doc["doc_id"], doc_key(doc["doc_id"]), 0
        numbers = page_numbers(doc)
        for i in range(doc["pages"]):
            pid = doc["first"] + i
            rec = store.page(txn, pid)
            if rec is None:
                problems.append(f"{name}: page {i + 1} (id {pid}) missing")
                continue
            if rec[0] != key or rec[1] != numbers[i]:
                problems.append(f"{name}: page id {pid} is recorded as another page")
            tokens = rec[2]
            doc_tokens += tokens
            live.add(pid)
            multi, single = store.multi_raw(txn, pid), store.single_raw(txn, pid)
            if multi is None or len(multi) != tokens * dm * stored.itemsize:
                problems.append(f"{name}: page {i + 1} multi-vectors missing or of the wrong size")
            elif deep:
                _check_rows(np.frombuffer(multi, dtype=stored).reshape(tokens, dm), f"{name} p{i + 1} multi",
                            problems)
            if single is None or full is None or len(single) != full * 4:
                problems.append(f"{name}: page {i + 1} single vector missing or of the wrong size")
            elif deep:
                _check_rows(np.frombuffer(single, dtype=np.float32)[None], f"{name} p{i + 1} single", problems)
            if doc["text"] and store.text(txn, pid) is None:
                problems.append(f"{name}: page {i + 1} text missing")
        if doc_tokens != doc["tokens"]:
            problems.append(f"{name}: {doc_tokens} tokens on its pages but {doc['tokens']} recorded")
        tokens_total += doc_tokens
    for table in ("pages", "single", "multi", "text", "visual"):
        orphans = [pid for pid in store.iter_keys(txn, table) if pid not in live]
        if orphans:
            problems.append(f"{table}: {len(orphans)} entries of no document (first id {orphans[0]})")
    counted = {"docs": docs, "pages": len(live), "tokens": tokens_total,
               "tombs": sum(1 for _ in store.iter_keys(txn, "tomb"))}
    for name, n in counted.items():
        if state[name] != n:
            problems.append(f"state: {name} = {state[name]} but {n} counted")
    if live and max(live) >= state["next_page_id"]:
        problems.append(f"state: next_page_id {state['next_page_id']} not above page id {max(live)}")
    in_graph = set(graph_ids.tolist())
    missing = live - in_graph
    if missing:
        problems.append(f"hnsw: {len(missing)} live pages not indexed (first id {min(missing)})")
    # Ids at or above next_page_id: a reader's graph file may be newer than its LMDB snapshot.
    stale = {i for i in in_graph - live if i < state["next_page_id"]} - set(tombs.tolist())
    if stale:
        problems.append(f"hnsw: {len(stale)} deleted pages not tombstoned (first id {min(stale)})")
    report = {"documents": docs, "pages": len(live), "tokens": tokens_total, "hnsw_vectors": len(in_graph),
              "tombstones": counted["tombs"]}
    return report, problems


def _check_rows(a: np.ndarray, what: str, problems: list[str]) -> None:
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        problems.append(f"{what}: NaN or Inf")
    # float16 storage keeps unit rows within ~1e-3; anything beyond the input tolerance is damage.
    elif (np.abs(np.linalg.norm(a, axis=1) - 1) > NORM_TOLERANCE).any():
        problems.append(f"{what}: rows not unit norm")
