"""Where the shards of a :class:`~jevsearch.scale.ShardedEngine` live while it is open.

- :class:`LocalShards`: every shard an :class:`~jevsearch.engine.Engine` in this process; calls to all
  shards run on threads (FAISS and torch release the GIL, so a scatter uses the cores).
- :class:`RayShards`: every shard a long-lived Ray actor (:class:`ShardServer`) holding it open
  read-only, placed on a given node when the shard's files are local to it.

Both answer :meth:`call` with one result per shard, or the exception that shard raised (a shard
that is missing, damaged, dead or too slow), and leave what to do about it to the caller.
"""

from __future__ import annotations

import concurrent.futures
import os

from jevsearch.errors import IndexLockedError, JevsearchError, ModelMismatchError, ShardError
from jevsearch.search.threads import torch_threads


class ShardServer:
    """A Ray actor's body: one shard opened read-only (a reader: it sees the writer's commits).

    A shard that cannot be opened (missing, damaged) keeps its actor alive to say why on every call:
    the caller gets that error itself (e.g. NotAnIndexError), not an opaque dead actor.
    """

    def __init__(self, path: str, threads: int):
        from jevsearch.index import Index

        self._error: BaseException | None = None
        try:
            self._index = Index.open(path, readonly=True, threads=threads)
        except (JevsearchError, OSError) as e:
            self._index, self._error = None, e

    @property
    def index(self):
        if self._error is not None:
            raise self._error
        return self._index

    def search_embeddings(self, *args, **kwargs):
        return self.index.search_embeddings(*args, **kwargs)

    def search_singles(self, *args, **kwargs):
        return self.index.search_singles(*args, **kwargs)

    def page_hit(self, page_id: int):
        return self.index.page_hit(page_id)

    def page_data(self, hit, vectors: bool = True):
        return self.index.page_data(hit, vectors=vectors)

    def stats(self) -> dict:
        return self.index.stats()

    def verify(self, deep: bool = False) -> dict:
        return self.index.verify(deep=deep)

    def documents(self) -> list[str]:
        return list(self.index.documents())

    def document_list(self) -> list[dict]:
        return self.index.document_list()

    def failures(self) -> dict:
        return self.index.failures()

    def document(self, doc_id: str):
        return self.index.document(doc_id)

    def manifest(self) -> dict:
        return dict(self.index.manifest)


class LocalShards:
    """Shards opened in this process; ``opened`` maps a shard's name to its Engine."""

    def __init__(self, opened: dict):
        self.opened = opened
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(opened)),
                                                           thread_name_prefix="jevsearch-shard")

    def call(self, method: str, *args, names=None, timeout: float | None = None, **kwargs) -> dict:
        """``method(*args, **kwargs)`` on every open shard (or those in ``names``) at once
        -> {name: result or the exception it raised}."""
        # torch's thread count is process-global: each search sets 1 and restores the caller's on return,
        # which, from parallel threads, would hand a 2-thread OpenMP team to searches still running (3x
        # slower on 2 busy cores). Set once around the whole scatter, the shards' own settings are no-ops.
        with torch_threads(1):
            futures = {name: self._pool.submit(_call_local, self.opened[name], method, args, kwargs)
                       for name in (self.opened if names is None else names)}
            out = {}
            for name, future in futures.items():
                try:
                    out[name] = future.result(timeout=timeout)
                except concurrent.futures.TimeoutError:
                    out[name] = ShardError(f"{name}: no answer within {timeout:g} s")
                except Exception as e:  # noqa: BLE001 - one shard's failure is reported, not raised, here
                    out[name] = e
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        errors = []
        for eng in self.opened.values():
            try:
                eng.close()
            except JevsearchError as e:  # close the others first
                errors.append(e)
        self.opened = {}
        if errors:
            raise errors[0]


def _call_local(eng, method: str, args, kwargs):
    """What ShardServer's method of the same name answers, from an Engine in this process."""
    if method == "manifest":
        return dict(eng.manifest)
    result = getattr(eng, method)(*args, **kwargs)
    return list(result) if method == "documents" else result


class RayShards:
    """One :class:`ShardServer` actor per shard; ``paths`` maps a shard's name to its directory.

    ``nodes`` maps a shard's name to the Ray node id that holds its files (node-local disks): its actor
    is placed there. Otherwise Ray places it (the shards must then be on storage every node sees).
    """

    def __init__(self, session, paths: dict, threads: int, nodes: dict | None = None):
        ray = self.ray = session.ray
        self._session = session
        server = ray.remote(ShardServer)
        self.actors = {}
        for name, path in paths.items():
            options = {"max_restarts": 3, "max_task_retries": 1}  # a crashed server comes back and is asked again
            if nodes and name in nodes:
                from ray.util.scheduling_strategies import (
                    NodeAffinitySchedulingStrategy,
                )

                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[name], soft=False)
            self.actors[name] = server.options(**options).remote(os.path.abspath(path), threads)

    def start(self, timeout: float | None) -> dict:
        """Wait until every actor has opened its shard -> {name: exception} for those that could not."""
        answers = self.call("stats", timeout=timeout)
        failed = {name: e for name, e in answers.items() if isinstance(e, BaseException)}
        for name in failed:
            self.ray.kill(self.actors.pop(name))
        return failed

    def call(self, method: str, *args, names=None, timeout: float | None = None, **kwargs) -> dict:
        """As :meth:`LocalShards.call`, on the actors (a dead actor's answer is its RayActorError)."""
        ray = self.ray
        refs = {name: getattr(self.actors[name], method).remote(*args, **kwargs)
                for name in (self.actors if names is None else names)}
        out = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref)
                out[name] = ShardError(f"{name}: no answer within {timeout:g} s")
            except ray.exceptions.RayError as e:  # the shard's own error (e.g. CorruptIndexError), or a dead actor
                cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
                out[name] = cause if isinstance(cause, BaseException) else e
        return out

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors = {}
        self._session.close()


def open_local(paths: dict, *, readonly: bool, model, threads: int, device, dtype, repair: bool):
    """Open every shard of ``paths`` ({name: directory}) as an Engine here -> (LocalShards, {name:
    exception} of those missing, damaged or unreadable). Another writer's lock or the wrong model
    raises: neither is one shard's damage."""
    from jevsearch.engine import Engine

    opened, missing = {}, {}
    try:
        for name, shard_path in paths.items():
            try:
                opened[name] = Engine.open(shard_path, readonly=readonly, model=model, threads=threads,
                                           device=device, dtype=dtype, repair=repair)
            except (IndexLockedError, ModelMismatchError):
                raise  # not a shard's damage: another writer, or the caller's model
            except (JevsearchError, OSError) as e:  # missing, damaged, unreadable: this shard only
                missing[name] = e
    except BaseException:
        for eng in opened.values():
            eng.close()
        raise
    return LocalShards(opened), missing


def open_ray(address, paths: dict, threads: int, nodes: dict | None, timeout: float | None):
    """Start one read-only :class:`ShardServer` actor per shard on the Ray cluster at ``address`` ->
    (RayShards, {name: exception} of the shards that could not be opened)."""
    from jevsearch.scale.cluster import Session

    session = Session(address)
    try:
        backend = RayShards(session, paths, threads, nodes)
        return backend, backend.start(timeout)
    except BaseException:
        session.close()
        raise
