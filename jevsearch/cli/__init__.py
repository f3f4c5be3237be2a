"""The ``jevsearch`` command: parse, make one library call, translate errors into a one-line reason.

    jevsearch make-tiny-model models/tiny                    # random weights: smoke tests only
    jevsearch index papers/ scan.png --index indexes/papers --model models/tiny
    jevsearch index papers/ --index indexes/papers --prune   # follow renames, drop deleted files
    jevsearch index corpus/ --index indexes/big --shards 4 --ray auto --workers 8   # sharded, on Ray
    jevsearch search "quarterly revenue by region" --index indexes/papers -k 5
    jevsearch index reports/ --index indexes/papers --meta team=finance --meta year=2024
    jevsearch search "revenue" --index indexes/papers --where '{"year": {"$gte": 2023}}' --documents
    jevsearch list --index indexes/papers                    # documents, pages, present/changed/missing
    jevsearch info --index indexes/papers
    jevsearch delete papers/old.pdf --index indexes/papers
    jevsearch compact --index indexes/papers
    jevsearch verify --index indexes/papers --deep [--repair]
    jevsearch eval datasets/papers --index indexes/papers-eval --model models/tiny --out report/
    jevsearch explain "revenue by region" --index indexes/papers --hit 1 --out why.png
    jevsearch serve --index indexes/papers                   # http://127.0.0.1:8000
    jevsearch mcp --index indexes/papers                     # an MCP server for agents, on stdio

Exit status: 0 success; 1 an error (one line on stderr says why; ``verify`` lists the problems
first); 2 bad usage; 3 ``index`` finished but some documents failed or lost pages (each listed with
its reason); 130 interrupted (rerun ``index`` to resume). Never a traceback: an unexpected error is
one line too, and ``-v`` logs its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from jevsearch.cli.advice import cli_hint, cli_message
from jevsearch.cli.common import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, fail
from jevsearch.cli.parser import build_parser
from jevsearch.errors import JevsearchError

__all__ = ["cli_hint", "cli_message", "main"]
log = logging.getLogger("jevsearch")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restore = _logging(args)
    try:
        return args.run(args) or 0
    except JevsearchError as e:
        fail(cli_message(e))
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of our output went away (`jevsearch list | head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        hint = " (rerun the same command to resume)" if args.command == "index" else ""
        fail(f"interrupted{hint}")
        return EXIT_INTERRUPTED
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return EXIT_ERROR
    except Exception as e:
        log.info("traceback of the unexpected error:", exc_info=True)
        fail(f"unexpected {type(e).__name__}: {e} (rerun with -v for details)")
        return EXIT_ERROR
    finally:
        restore()


def _logging(args):
    """The package's messages on stderr at the level -q/-v asks for; returns what puts the logger back
    (``main`` may run inside a program). Only ``jevsearch`` loggers: the libraries' INFO chatter (FAISS
    announces which build it loaded) stays out of -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("jevsearch: %(message)s"))
    before = log.level, log.propagate
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING)
    for name in ("faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]

    return restore
