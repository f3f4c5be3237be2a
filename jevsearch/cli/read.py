"""Commands that read an index: ``search``, ``info``, ``list``, ``verify``, ``explain``."""

from __future__ import annotations

import json

import jevsearch
from jevsearch.cli.common import info_summary, problems, reader, save_image, searcher, short_path, table
from jevsearch.errors import (
    CorruptIndexError,
    InvalidInputError,
)


def cmd_search(args) -> int:
    where = _where(args.where)
    filters = {"where": where} if where is not None else {}
    if args.documents:
        filters["group_by"] = "document"
    if args.mode is not None:
        filters["mode"] = args.mode
    with searcher(args) as eng:
        hits = eng.search(args.query, k=args.k, **filters)
    if args.json:  # index.results.to_json's rows, without importing the engine when a server answered
        print(json.dumps([{"rank": rank, **h.to_dict()} for rank, h in enumerate(hits, 1)], ensure_ascii=False,
                         indent=2))
        return 0
    if args.documents:
        hits = [h.pages[0] for h in hits]
    if not hits:
        print("no results (no page matches --where)" if where else
              "no results (no page holds all those words: try --mode hybrid or visual)" if args.mode == "lexical" else
              "no results (the index is empty)")
    else:
        print(table(hits))
    return 0


def _where(text: str | None) -> dict | None:
    """``--where``: a JSON object (checked by the library when it searches)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"--where: not valid JSON ({e}) (hint: quote it for the shell, e.g. "
                                """--where '{"year": {"$gte": 2023}}')""") from None


def cmd_info(args) -> int:
    with reader(args.index) as eng:
        info = info_summary(eng)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value if not isinstance(value, dict) else json.dumps(value, sort_keys=True)}")
    return 0


def cmd_list(args) -> int:
    from jevsearch.ingest.sources import file_status

    with reader(args.index) as eng:
        docs, failures = eng.document_list(), eng.failures()
    rows = []
    for doc in docs:
        meta = doc["metadata"]
        status = file_status(doc["doc_id"], meta["sha256"], meta.get("size"), meta.get("mtime_ns")) \
            if "sha256" in meta else None  # added with add_embeddings: not a file
        rows.append({"path": doc["doc_id"], "pages": doc["pages"], "added": meta.get("added"), "status": status,
                     "missing_pages": [page for page, _ in meta.get("missing_pages", [])],
                     **({"partial": meta["partial"]} if "partial" in meta else {})})
    rows += [{"path": path, "pages": 0, "added": None, "status": "failed", "reason": f.get("reason")}
             for path, f in sorted(failures.items())]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no documents")
        return 0
    print(f"{'status':<8}  {'pages':>5}  {'added':<20}  path")
    for r in rows:
        note = (f"  (missing pages: {', '.join(map(str, r['missing_pages']))})" if r.get("missing_pages") else
                f"  ({r['reason']})" if r["status"] == "failed" else "")
        if "partial" in r:  # an interrupted ingest's: never shown as complete
            part = r["partial"]
            note += f"  (partial: pages 1-{part['through']} of {part['of']}; `jevsearch index` completes it)"
        print(f"{r['status'] or '-':<8}  {r['pages']:>5}  {r['added'] or '-':<20}  {short_path(r['path'])}{note}")
    return 0


def cmd_verify(args) -> int:

    try:
        # --repair: a writer (every shard's), which also restores a lost CURRENT file; no model is loaded.
        with jevsearch.open(args.index, read_only=not args.repair, repair=args.repair) as eng:
            summary = eng.verify(deep=args.deep, repair=args.repair)
    except CorruptIndexError as e:
        for problem in problems(e.message):
            print(f"problem: {problem}")
        raise
    for done in summary.pop("repaired", []):
        print(f"repaired: {done}")
    if not args.quiet:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (summary or {}).items())
        print(f"{args.index}: ok" + (f" ({counts})" if counts else ""))
    return 0


def cmd_explain(args) -> int:
    with searcher(args) as eng:
        hits = eng.search(args.query, k=args.hit)
        if len(hits) < args.hit:
            raise InvalidInputError(f"--hit {args.hit}: the index has only {len(hits)} pages")
        hit = hits[args.hit - 1]
        ex = eng.explain(hit, args.query)
        if ex.kind == "page":
            save_image(ex.overlay(token=args.token, alpha=args.alpha), args.out)
    if not args.quiet:
        where = f"passage {hit.page}" if ex.kind == "text" else f"page {hit.page}"
        print(f"{short_path(hit.path)} {where}: {ex.summary()}" + (f" ({ex.note})" if ex.note else ""))
        for i in (i for i, m in enumerate(ex.meaningful) if m):
            matched = ""
            if ex.kind == "text":
                matched = "".join(f'  matched "{word}" ({sim:.3f})' for word, sim in ex.matches(i))
                matched += " (its score term: the Passage: prompt)" if ex.from_prompt(i) else ""
            print(f"  {ex.label(i)}{matched}")
        if ex.kind == "text":
            print(f"{args.out} not written: explain draws page images, and this hit is a text passage (the words "
                  "each query token matched are listed above)")
        else:
            print(f"wrote {args.out}")
    return 0
