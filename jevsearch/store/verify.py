"""Consistency check and repair of an index (``Index.verify``): LMDB records against each other and
the HNSW; with ``deep``, every stored value (checksums, finite unit vectors) and the graph itself
(every node reachable, every node's vector the one LMDB holds for its page id).

Each problem says whether a repair can fix it from what LMDB holds (the HNSW is a cache; counters
and orphan entries can be recomputed) or which document must be re-added (its stored vectors are
damaged or missing: only its source can restore them).

>>> Problem("hnsw: 2 live pages not indexed (a.pdf p1, p2)", fixable=True).fixable
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from jevsearch.errors import ChecksumError, CorruptIndexError
from jevsearch.store import checksum, visual
from jevsearch.store.hnsw import HnswGraph, truncate_normalize
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.manifest import stored_single_dim
from jevsearch.store.schema import PAGE_KEY, PAGE_VALUE_TABLES, doc_key, load_json, page_key, page_numbers
from jevsearch.store.validate import NORM_TOLERANCE

PAGE_TABLES = PAGE_VALUE_TABLES
# A graph vector is the truncated single in float16: cosine ~1 - 1e-6. Anything below this is
# another page's vector (a damaged or permuted id map).
_SAME_VECTOR = 0.99


@dataclass(frozen=True)
class Part:
    """A per-token value every page has in ``table`` (the multi-vector codes; the exact tokens):
    ``bytes_per_token`` of payload per token, and ``rows(payload, tokens)`` -> the tokens as an array
    [T, d] whose rows must be finite unit vectors, or None for values any bytes are valid for (binary
    codes: their checksum is their check). Made by the index from its codec (jevsearch.index.layout)."""

    table: str
    bytes_per_token: int
    rows: Callable[[object, int], np.ndarray] | None
    per_page: bool = False  # one value of bytes_per_token bytes a page (not per token)


@dataclass(frozen=True)
class Problem:
    """One finding: ``fixable`` by a repair (Index.verify(repair=True) / compact), else ``doc`` names
    the document to re-add (None when even its name is unreadable)."""

    text: str
    fixable: bool
    doc: str | None = None


@dataclass(frozen=True)
class GraphCheck:
    """Another graph of the index to check like the HNSW (e.g. the FDE graph): named ``label`` in
    problems, ``expected(txn, page id)`` -> the vector its node must hold (float32, None: not checked),
    ``scanned`` as in :func:`check_index`."""

    label: str
    graph: HnswGraph
    expected: Callable[[object, int], np.ndarray | None]
    scanned: tuple = ()


def check_index(store: PageStore, txn, manifest: dict, graph: HnswGraph, tombs: np.ndarray, *,
                parts: list[Part], deep: bool = False, scanned=(), graphs=()) -> tuple[dict, list[Problem]]:
    """Returns (counts, problems); the index is sound iff ``problems`` is empty. ``parts``: the
    per-token values of every page (see :class:`Part`; one with ``per_page`` is one value a page);
    ``scanned``: the page ids no walk of the graph reaches that stage 1 scores exactly (see
    :meth:`GraphView.lost`), not a problem. ``graphs``: more graphs (:class:`GraphCheck`)."""
    problems: list[Problem] = []
    state = store.state(txn)
    names: dict[int, str] = {}  # live page id -> "doc pN", for messages
    claimed: set[int] = set()  # page ids some readable document record owns
    live: set[int] = set()
    docs = tokens_total = values = 0
    for key, raw in store.items(txn, "docs", raw=True):
        doc = _document(store, bytes(key), raw)
        if doc is None:
            problems.append(Problem(f"a document record (key {bytes(key).hex()}) is damaged: repair removes it "
                                    "and its pages; index its file again", fixable=True))
            continue
        docs += 1
        name, dkey, doc_tokens = doc["doc_id"], doc_key(doc["doc_id"]), 0
        numbers = page_numbers(doc)
        for i in range(doc["pages"]):
            pid = doc["first"] + i
            claimed.add(pid)
            where = f"{name}: page {numbers[i]}"
            try:
                rec = store.page(txn, pid)
            except CorruptIndexError:  # ChecksumError included
                problems.append(Problem(f"{where} (id {pid}): page record damaged", False, name))
                continue
            if rec is None:
                problems.append(Problem(f"{where} (id {pid}) missing", False, name))
                continue
            if rec[0] != dkey or rec[1] != numbers[i]:
                problems.append(Problem(f"{where}: page id {pid} is recorded as another page", False, name))
            doc_tokens += rec[2]
            live.add(pid)
            names[pid] = f"{name} p{numbers[i]}"
            values += _check_page(store, txn, manifest, parts, pid, rec[2], doc["text"], where, name, deep,
                                  problems)
        if doc_tokens != doc["tokens"]:
            problems.append(Problem(f"{name}: {doc_tokens} tokens on its pages but {doc['tokens']} recorded",
                                    False, name))
        tokens_total += doc_tokens
    for table in PAGE_TABLES:
        orphans = [pid for pid in store.iter_keys(txn, table) if pid not in claimed]
        if orphans:
            problems.append(Problem(f"{table}: {len(orphans)} entries of no document (first id {orphans[0]}): "
                                    "repair deletes them", fixable=True))
    counted = {"docs": docs, "pages": len(live), "tokens": tokens_total,
               "tombs": sum(1 for _ in store.iter_keys(txn, "tomb"))}
    for field, n in counted.items():
        if state[field] != n:
            problems.append(Problem(f"state: {field} = {state[field]} but {n} counted", fixable=True))
    top = max(_max_key(store, txn), default=-1)
    if top >= state["next_page_id"]:
        problems.append(Problem(f"state: next_page_id {state['next_page_id']} not above page id {top}", fixable=True))
    _check_graph(graph, live, names, state, tombs, store, txn, manifest, deep, problems, set(scanned))
    for extra in graphs:
        _check_graph(extra.graph, live, names, state, tombs, store, txn, manifest, deep, problems,
                     set(np.asarray(extra.scanned).tolist()), extra.label, extra.expected)
    report = {"documents": docs, "pages": len(live), "tokens": tokens_total, "hnsw_vectors": graph.ntotal,
              "tombstones": counted["tombs"], "hnsw_scanned_exactly": len(set(scanned) & live)}
    if deep:
        report["values_checked"] = values
    return report, problems


def _document(store: PageStore, key: bytes, raw) -> dict | None:
    """The document record ``raw`` of ``key``, None when damaged (digest, JSON or key)."""
    try:
        payload = checksum.unseal("docs", key, raw) if store.checksums else raw
        doc = load_json(payload)
        if doc_key(doc["doc_id"]) != key or not isinstance(doc["first"], int) or not isinstance(doc["pages"], int):
            return None
        return doc
    except (ChecksumError, ValueError, KeyError, TypeError):
        return None


def _check_page(store: PageStore, txn, manifest: dict, parts: list[Part], pid: int, tokens: int, has_text: bool,
                where: str, name: str, deep: bool, problems: list[Problem]) -> int:
    """Sizes of a page's values; with ``deep`` their digests and rows. Returns the values read."""
    k = page_key(pid)
    full, single_dtype = stored_single_dim(manifest) or 0, store.single_dtype
    prefix = full != manifest["single_full_dim"]  # format 4: renormalised as the HNSW reads it

    def single_rows(payload, n):
        row = np.frombuffer(payload, dtype=single_dtype).reshape(1, full)
        return truncate_normalize(row.astype(np.float32), full) if prefix else row
    read = 0
    for part in [*parts, Part("single", full * single_dtype.itemsize, single_rows, per_page=True)]:
        table = part.table
        try:
            payload = store.get(txn, table, k, raw=not deep)
        except ChecksumError:
            problems.append(Problem(f"{where} {table} vectors fail their checksum", False, name))
            continue
        size = None if payload is None else len(payload) if deep else store.payload_size(payload)
        if size != (1 if part.per_page else tokens) * part.bytes_per_token:
            problems.append(Problem(f"{where} {table} vectors missing or of the wrong size", False, name))
        elif deep:
            read += 1
            if part.rows is not None and not unit_rows(part.rows(payload, tokens)):
                problems.append(Problem(f"{where} {table} vectors damaged (NaN, Inf or not unit norm)", False, name))
    if deep:
        read += _check_view(store, txn, k, where, name, problems)
    if has_text:
        try:
            text = store.get(txn, "text", k, raw=not deep)
            read += deep
            if text is None:
                problems.append(Problem(f"{where} text missing", False, name))
        except ChecksumError:
            problems.append(Problem(f"{where} text fails its checksum", False, name))
    return read


def _check_view(store: PageStore, txn, key: bytes, where: str, name: str, problems: list[Problem]) -> int:
    """The page's thumbnail/grid record (optional): its digest and layout. A repair drops a damaged one
    (the page then has none: pictures come from the source file; re-adding the document restores it)."""
    try:
        raw = store.get(txn, visual.TABLE, key)
        if raw is None:
            return 0
        visual.PageView.decode(raw)
        return 1
    except CorruptIndexError as e:  # ChecksumError included
        why = "fails its checksum" if isinstance(e, ChecksumError) else "is damaged"
        problems.append(Problem(f"{where} thumbnail/grid record {why}: repair drops it (re-add the document to "
                                "restore it)", True, name))
        return 0


def damaged_values(store: PageStore, txn) -> tuple[list[Problem], list[int]]:
    """Every page value whose digest fails, named by document and page: one pass over each page-keyed
    table, digests only (no row checks) -> (problems of values only the source restores, page ids of
    damaged thumbnail/grid records, which a repair or compaction drops)."""
    if not store.checksums:
        return [], []
    names: dict[int, tuple[str, int]] = {}
    for key, raw in store.items(txn, "docs", raw=True):
        doc = _document(store, bytes(key), raw)
        if doc is not None:
            names.update(zip(range(doc["first"], doc["first"] + doc["pages"]),
                             ((doc["doc_id"], n) for n in page_numbers(doc))))
    problems, views = [], []
    for table in PAGE_TABLES:
        for k, raw in store.items(txn, table, raw=True):
            if checksum.intact(table, k, raw) and (table != visual.TABLE or _view_ok(raw[:-checksum.SIZE])):
                continue
            pid = PAGE_KEY.unpack(k)[0]
            doc, page = names.get(pid, (None, None))
            where = f"{doc}: page {page}" if doc is not None else f"page id {pid} (of no readable document)"
            if table == visual.TABLE:
                views.append(pid)
            else:
                problems.append(Problem(f"{where} {table} value fails its checksum", False, doc))
    return problems, views


def _view_ok(payload) -> bool:
    try:
        visual.PageView.decode(payload)
        return True
    except CorruptIndexError:
        return False


def drop_views(store: PageStore, txn, page_ids: list[int]) -> list[str]:
    """Delete damaged thumbnail/grid records (write transaction) -> what was done."""
    for pid in page_ids:
        store.delete(txn, visual.TABLE, page_key(pid))
    if not page_ids:
        return []
    return [f"dropped {len(page_ids)} damaged thumbnail/grid records (first page id {page_ids[0]}): those pages "
            "show pictures from their source files; re-add their documents to restore them"]


def _max_key(store: PageStore, txn):
    for table in PAGE_TABLES + ("tomb",):
        last = store.last_page_key(txn, table)
        if last is not None:
            yield last


def _check_graph(graph: HnswGraph, live: set[int], names: dict[int, str], state: dict, tombs: np.ndarray,
                 store: PageStore, txn, manifest: dict, deep: bool, problems: list[Problem], scanned: set,
                 label: str = "hnsw", expected: Callable | None = None) -> None:
    def listed(ids) -> str:
        ids = sorted(ids)
        shown = ", ".join(names.get(i, f"id {i}") for i in ids[:5])
        return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")

    in_graph = set(graph.ids().tolist())
    missing = live - in_graph
    if missing:
        problems.append(Problem(f"{label}: {len(missing)} live pages not indexed ({listed(missing)}): repair "
                                "rebuilds the graph", fixable=True))
    # Ids at or above next_page_id: a reader's graph file may be newer than its LMDB snapshot.
    stale = {i for i in in_graph - live if i < state["next_page_id"]} - set(tombs.tolist())
    if stale:
        problems.append(Problem(f"{label}: {len(stale)} deleted pages not tombstoned (first id {min(stale)}): "
                                "repair rebuilds the graph", fixable=True))
    if not deep:
        return
    try:
        lost = set(graph.unreachable().tolist()) & live - scanned
    except CorruptIndexError as e:
        problems.append(Problem(f"{e}: repair rebuilds the graph", fixable=True))
        return
    if lost:
        problems.append(Problem(f"{label}: {len(lost)} pages unreachable in the graph ({listed(lost)}): no search "
                                "could find them; repair relinks them", fixable=True))
    ids, vecs = graph.vectors()
    full, dim = stored_single_dim(manifest), manifest["single_dim"]
    wrong = []
    for row, pid in enumerate(ids.tolist()):
        if pid not in live:
            continue
        try:
            want = store.single(txn, pid, full) if expected is None else expected(txn, pid)
        except ChecksumError:
            continue  # reported with its page
        if want is None:
            continue
        want = truncate_normalize(want[None], dim if expected is None else len(want))[0]
        scale = 1.0 if expected is None else float(np.linalg.norm(vecs[row]))  # FDEs: cosines
        if not float(want @ vecs[row]) >= _SAME_VECTOR * scale:
            wrong.append(pid)
    if wrong:
        problems.append(Problem(f"{label}: {len(wrong)} pages have another page's vector in the graph "
                                f"({listed(wrong)}: a damaged id map): repair rebuilds the graph", fixable=True))


def unit_rows(a: np.ndarray) -> bool:
    """True when every row of ``a`` [N, d] is finite and of unit norm (to the input tolerance).

    In torch: float16 -> float32 there is far faster than numpy's, which made a deep verify slow
    (benchmarks/RESULTS.md). The copy (same dtype, a memcpy)
    gives torch a writable buffer instead of LMDB's read-only one.
    """
    sq = torch.from_numpy(a.copy()).float().square().sum(dim=1)
    return bool(torch.isfinite(sq).all() and ((sq.sqrt() - 1).abs() <= NORM_TOLERANCE).all())


def repair_records(store: PageStore, txn) -> list[str]:
    """Make LMDB's records agree with each other (write transaction, writer lock): drop unreadable
    document records, delete entries no document owns (their ids become tombstones, so no graph
    serves them), recount the state. Damaged vectors of readable documents stay (re-add those).
    Returns what was done."""
    done, claimed = drop_views(store, txn, damaged_values(store, txn)[1]), set()
    docs = pages = tokens = 0
    for key, raw in list(store.items(txn, "docs", raw=True)):
        doc = _document(store, bytes(key), raw)
        if doc is None:
            store.delete(txn, "docs", bytes(key))
            done.append(f"removed a damaged document record (key {bytes(key).hex()})")
            continue
        docs += 1
        claimed.update(range(doc["first"], doc["first"] + doc["pages"]))
    for table in PAGE_TABLES:
        orphans = [pid for pid in store.iter_keys(txn, table) if pid not in claimed]
        for pid in orphans:
            store.delete(txn, table, page_key(pid))
            store.put(txn, "tomb", page_key(pid), b"")
        if orphans:
            done.append(f"deleted {len(orphans)} {table} entries of no document")
    for _pid, _, _, n in store.iter_pages(txn, damaged=[]):
        pages += 1
        tokens += n
    state = store.state(txn)
    top = max(_max_key(store, txn), default=-1)
    fixed = dict(state, docs=docs, pages=pages, tokens=tokens, next_page_id=max(state["next_page_id"], top + 1),
                 tombs=sum(1 for _ in store.iter_keys(txn, "tomb")), gen=state["gen"] + 1)
    if any(fixed[f] != state[f] for f in ("docs", "pages", "tokens", "next_page_id", "tombs")):
        done.append("recounted the state record")
    store.put_state(txn, fixed)
    return done


def salvage_document(store: PageStore, txn, doc_id: str) -> dict | None:
    """What :meth:`PageStore.remove_document` needs of a document whose record is damaged: its pages,
    found by their own records (those that are readable; a repair removes the rest)."""
    key = doc_key(doc_id)
    pages = [(pid, n) for pid, dkey, _, n in store.iter_pages(txn, damaged=[]) if dkey == key]
    if not pages:
        store.delete(txn, "docs", key)
        return None
    first, last = pages[0][0], pages[-1][0]
    return {"doc_id": doc_id, "first": first, "pages": last - first + 1, "tokens": sum(n for _, n in pages)}


def describe(path: str, problems: list[Problem], repairing: bool = False) -> CorruptIndexError:
    """The error listing ``problems``, with what to do in Python; its fields (``path``, ``repairable``:
    a repair would fix some, ``redo_documents``: the documents to delete and re-add) let a caller
    say the same in its own terms."""
    shown = "; ".join(p.text for p in problems[:20])
    more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
    redo = sorted({p.doc for p in problems if not p.fixable and p.doc})
    repairable = not repairing and any(p.fixable for p in problems)
    hint = []
    if repairable:
        hint.append("verify(repair=True) or compact() repairs what LMDB can rebuild")
    if redo:
        hint.append(f"a repair cannot restore damaged pages of {some(redo)}: delete and re-add those documents")
    hint = "; ".join(hint) or "restore the index from a backup"
    return CorruptIndexError(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: {shown}{more}",
                             hint=hint, path=path, repairable=repairable, redo_documents=redo)


def some(names: list[str], shown: int = 10) -> str:
    """The first ``shown`` names, and how many more.

    >>> some(["a", "b", "c"], shown=2)
    'a, b and 1 more'
    """
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
