"""``jevsearch eval DATASET --index I [--model M] [--out report/] [-k 10] [--candidates 20,50,100,200]``.

Indexes the dataset's corpus first when the index is empty (or does not exist yet), then evaluates the
default settings (single vectors, two-stage at each ``--candidates``, exhaustive MaxSim), prints the
table and writes ``report.json`` and ``quality_vs_latency.png`` into ``--out``.
"""

from __future__ import annotations

import sys

from jevsearch.eval.runner import DEFAULT_SETTINGS


def run(dataset: str, index: str, *, model: str | None, out: str, k: int, candidates: list[int] | None,
        default_model: str, quiet: bool, dtype: str | None = None) -> int:
    """The command's body; returns its exit status (3: some corpus documents could not be indexed)."""
    import jevsearch
    from jevsearch.engine import Engine
    from jevsearch.errors import NotAnIndexError
    from jevsearch.eval import evaluate, load_dataset

    progress = not quiet and sys.stderr.isatty()
    ds = load_dataset(dataset)
    try:
        with jevsearch.open(index, read_only=True) as probe:  # one index or a sharded one; no model loaded
            empty = probe.stats()["pages"] == 0
    except NotAnIndexError:
        empty = None
    if empty is None:
        eng = Engine.create(index, model=model or default_model, dtype=dtype)
    else:  # a reader unless there is indexing to do: another process may hold the writer; the recorded model
        eng = jevsearch.open(index, read_only=not empty, model=model, dtype=dtype)
    failed = []
    with eng:
        if empty is not False:
            report = eng.add(ds.corpus_paths(), progress=progress)
            failed = report.failed
            for path, reason in failed:
                print(f"failed: {path}: {reason}", file=sys.stderr)
        cands = candidates or [s["candidates"] for s in DEFAULT_SETTINGS if "candidates" in s]
        settings = [s for s in DEFAULT_SETTINGS if s.get("mode") == "single"]
        settings += [{"candidates": c} for c in cands] + [{"exhaustive": True}]
        result = evaluate(eng, ds, k=k, settings=settings, progress=progress)
    print(result.table())
    paths = result.save(out)
    if not quiet:
        print("\nwrote " + ", ".join(paths))
    return 3 if failed else 0
