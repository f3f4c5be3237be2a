"""Commands that hand over to another part: ``eval``, ``serve``, ``mcp``, ``make-tiny-model``."""

from __future__ import annotations

import sys

from jevsearch.cli.common import DEFAULT_MODEL


def cmd_eval(args) -> int:
    from jevsearch.eval.command import run

    return run(args.dataset, args.index, model=args.model, out=args.out, k=args.k, candidates=args.candidates,
               default_model=DEFAULT_MODEL, quiet=args.quiet, dtype=args.dtype)


def cmd_serve(args) -> int:
    from jevsearch.serve import run
    from jevsearch.serve.security import HostCheck

    HostCheck.for_bind(args.host, args.port, args.allowed_host or ())  # refused before the banner, not after
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"jevsearch: warning: serving on {args.host}: anyone who can reach this machine can search the "
              "index and read its documents", file=sys.stderr)
    if not args.quiet:
        print(f"serving {args.index} on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
    run(args.index, host=args.host, port=args.port, model=args.model, dtype=args.dtype,
        log_level="warning" if not args.verbose else "info", allowed_hosts=args.allowed_host or ())
    return 0


def cmd_mcp(args) -> int:
    from jevsearch.integrations.mcp import run

    if args.http is not None and not args.quiet:
        print(f"serving {args.index} over MCP on http://127.0.0.1:{args.http}/mcp (Ctrl-C to stop)", file=sys.stderr)
    run(args.index, http=args.http, model=args.model)
    return 0


def cmd_make_tiny_model(args) -> int:
    from jevsearch.model.tiny import write_full_size_checkpoint, write_tiny_checkpoint

    if args.full_size:
        write_full_size_checkpoint(args.dir, seed=args.seed)
        if not args.quiet:
            print(f"wrote a FULL-SIZE jina-embeddings-v4-format checkpoint (~7.5 GB, real shapes and sharded layout) "
                  f"to {args.dir}.\n*** ITS WEIGHTS ARE RANDOM ***: its embeddings mean nothing; it is for measuring "
                  "load time, memory and speed (python benchmarks/model.py --model DIR), never for search.")
        return 0
    write_tiny_checkpoint(args.dir, seed=args.seed)
    if not args.quiet:
        print(
            f"wrote a tiny jina-embeddings-v4-format checkpoint to {args.dir}. Its weights are RANDOM: "
            "search results are meaningless; use it only to smoke-test the pipeline offline."
        )
    return 0
