"""Past one machine, on Ray (optional: ``pip install -e ".[ray]"``): distributed ingest and sharded indexes.

- :mod:`~jevsearch.scale.cluster`: lazy ``ray`` import, joining or starting a cluster, pool sizing.
- :mod:`~jevsearch.scale.workers`: what runs on the cluster (render tasks, encoder actors).
- :mod:`~jevsearch.scale.ingest`: the driver of ``Engine.add(paths, ray=...)``: one writer, grouped commits.
- :mod:`~jevsearch.scale.sharded`: :class:`ShardedEngine`, an index split into shards by doc id.

Nothing here imports ray at import time; only calls that use a cluster need it.
"""

from jevsearch.scale import ingest as _ingest  # noqa: F401 - registers the "ray" backend of Engine.add
from jevsearch.scale.sharded import Hits, ShardedEngine, route
from jevsearch.surface import is_sharded

__all__ = ["Hits", "ShardedEngine", "is_sharded", "route"]
