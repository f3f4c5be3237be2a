"""Keeping an index in step with its files: what :meth:`Engine.add` skips, re-keys, copies, prunes or encodes.

Every file found is hashed (SHA-256) and compared with what the index holds:

- its content is indexed under its own path: unchanged, skipped;
- its content is indexed under another path whose file is gone: a rename or move, re-keyed
  (``Index.rename_document``: nothing is encoded, the vectors stay);
- its content is indexed under another path whose file is still there: a copy, given the stored
  vectors (``Index.copy_document``);
- it failed before with the same content: not retried (unless ``retry_failed``);
- anything else is encoded.

With ``prune``, documents under the given paths whose files are gone are removed. A folder that is
itself missing prunes nothing (an unmounted disk must not empty the index); a file path given
explicitly is pruned when its file is gone. Documents whose files cannot be checked (permission
denied) are kept.

>>> plan = make_plan(sources, docs, failures, ["papers/"], prune=True)   # doctest: +SKIP
>>> plan.encode, plan.moved, plan.pruned
([Source('/papers/new.pdf', 'pdf')], [('/papers/a.pdf', '/papers/2024/a.pdf')], ['/papers/old.pdf'])
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jevsearch.ingest.sources import Source, file_sha256, os_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileState:
    """A file as it was hashed: content hash, size and modification time (recorded at add)."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass
class Plan:
    """What to do: ``moved``/``copied`` are (indexed id, new path) pairs; ``files`` the state of every
    file hashed; ``failed`` (path, reason) for files that could not be read to hash them."""

    encode: list[Source] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    copied: list[tuple[str, str]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    not_retried: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, FileState] = field(default_factory=dict)


def make_plan(sources: Sequence[Source], docs: Mapping[str, dict], failures: Mapping[str, dict],
              roots: Sequence[str], *, prune: bool = False, retry_failed: bool = False) -> Plan:
    """The plan for ``sources`` (from ``discover(roots)``) against an index holding ``docs``
    ({doc id: metadata}) and ``failures`` ({path: {"sha256", "reason"}})."""
    plan = Plan()
    for src in sources:
        try:
            st = os.stat(src.path)
            plan.files[src.path] = FileState(file_sha256(src.path), st.st_size, st.st_mtime_ns)
        except OSError as e:
            plan.failed.append((src.path, os_reason(e)))

    def partial(meta: dict) -> bool:  # stored incomplete: an interrupted run's, or with pages left out
        return "partial" in meta or retry_failed and bool(meta.get("missing_pages"))

    todo = []
    for src in sources:
        state = plan.files.get(src.path)
        if state is None:
            continue
        meta = docs.get(src.path)
        if meta is not None and meta.get("sha256") == state.sha256 and not partial(meta):
            plan.skipped.append(src.path)
        else:
            todo.append(src)
    written = {src.path for src in todo}
    by_sha: dict[str, list[str]] = {}
    for doc_id, meta in sorted(docs.items()):
        # A document about to be replaced or retried cannot lend its vectors.
        if "sha256" in meta and doc_id not in written and not partial(meta):
            by_sha.setdefault(meta["sha256"], []).append(doc_id)
    moved_to: dict[str, str] = {}
    for src in todo:
        sha = plan.files[src.path].sha256
        failure = failures.get(src.path)
        if failure is not None and failure.get("sha256") == sha and not retry_failed:
            plan.not_retried.append((src.path, failure.get("reason", "failed before")))
            continue
        same = by_sha.get(sha, [])
        gone = [d for d in same if d not in moved_to and _gone(d)]
        present = [d for d in same if d not in moved_to and d not in gone]
        if gone:
            moved_to[gone[0]] = src.path
            plan.moved.append((gone[0], src.path))
        elif present or same:  # same content as a document that was just moved: copy from its new id
            plan.copied.append((present[0] if present else moved_to[same[0]], src.path))
        else:
            plan.encode.append(src)
    if prune:
        under = _pruning_roots(roots, docs)
        found = {src.path for src in sources}  # just seen: no need to look again
        plan.pruned = [doc_id for doc_id in sorted(docs)
                       if doc_id not in moved_to and doc_id not in found and under(doc_id) and _gone(doc_id)]
    return plan


def stale_failures(failures: Mapping[str, dict], roots: Sequence[str]) -> list[str]:
    """Recorded failures under ``roots`` (as pruning sees them) whose files are gone."""
    under = _pruning_roots(roots, failures)
    return [path for path in failures if under(path) and _gone(path)]


def _pruning_roots(roots: Sequence[str], known: Mapping[str, object]):
    """-> a test "is this id under a root that may be pruned"."""
    folders, files = [], set()
    for raw in roots:
        root = os.path.abspath(os.fspath(raw))
        if os.path.isdir(root):
            folders.append(root.rstrip(os.sep) + os.sep)
        elif root in known:
            files.add(root)
        elif any(k.startswith(root + os.sep) for k in known):
            log.warning("%s: folder not found: nothing under it is pruned (hint: prune from a folder above "
                        "it, or delete its documents)", root)
    return lambda doc_id: doc_id in files or any(doc_id.startswith(f) for f in folders)


def _gone(path: str) -> bool:
    """True when ``path`` no longer names a regular file; False when it may (or cannot be checked)."""
    if not os.path.isabs(path):
        return False  # not a file path: an id given to add_embeddings
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # permission denied, I/O error: keep the document
