"""Ray, optional: importing it lazily, joining or starting a cluster, sizing the encoder pool.

The core never imports ray; everything here imports it inside functions, so ``import jevsearch`` and a
local ingest work without it, and a call that needs it says how to install it.

``address`` (the ``ray=`` argument of :meth:`Engine.add` and :class:`~jevsearch.scale.ShardedEngine`):

- ``"auto"``: the Ray session this process already has (e.g. your own ``ray.init(...)``), else the
  cluster ``ray start --head`` runs on this machine (or ``RAY_ADDRESS``), else a new local one-machine
  cluster that lives as long as the call (or the opened engine) needs it;
- ``"HOST:PORT"`` or ``"ray://HOST:PORT"``: that cluster.

>>> with Session("auto") as ray:                               # doctest: +SKIP
...     ray.cluster_resources()["CPU"]
2.0
"""

from __future__ import annotations

import logging

from jevsearch.errors import ClusterError, InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[ray]" in a checkout, or pip install "jevsearch[ray]"'


def require_ray():
    """The ``ray`` module, or MissingDependencyError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError(f"ray: needs the Python package 'ray', not installed ({e}) "
                                     f"(hint: {INSTALL_HINT})") from None
    return ray


class Session:
    """A connection to a Ray cluster for as long as it is open (a context manager, or :meth:`close`).

    Reuses the process's existing Ray session and leaves it running; a session this object started
    or joined is shut down (disconnected; a local cluster it started stops) by :meth:`close`.
    """

    def __init__(self, address):
        if not isinstance(address, str) or not address.strip():
            raise InvalidInputError(f"ray: {address!r} (hint: \"auto\", or a cluster address such as "
                                    "\"10.0.0.5:6379\")")
        ray = self.ray = require_ray()
        self._owned = False
        if ray.is_initialized():
            log.debug("ray: using this process's session")
            return
        # Worker output stays in Ray's log files: printed here it would mix with the progress bars.
        quiet = {"log_to_driver": False}
        try:
            if address == "auto":
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:  # no cluster running on this machine: start one for this call
                    log.info("ray: no running cluster found; starting a local one")
                    ray.init(include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClusterError(f"ray: cannot connect to {address!r}: {e} (hint: start one with `ray start "
                               "--head`, or pass ray=\"auto\")") from e
        self._owned = True

    def close(self) -> None:
        """Disconnect, if this session connected (idempotent)."""
        if self._owned:
            self._owned = False
            self.ray.shutdown()

    def __enter__(self):
        return self.ray

    def __exit__(self, *exc) -> None:
        self.close()


def encoder_pool(ray, workers: int | None) -> tuple[int, dict, dict]:
    """How many encoder actors to start, the Ray options of each, and those of a render task.

    With GPUs in the cluster: one actor per GPU (``num_gpus=1``, and a CPU for its preprocessing)
    unless ``workers`` says fewer. Without: single-threaded CPU actors, by default one per CPU but one
    (left to rendering). A CPU actor keeps Ray's default for actors, a CPU to be placed and none held
    while it lives: were they to hold their CPUs, two pools on one small cluster (two ingests, or an
    ingest beside a benchmark's pool) could hold every CPU between them, and no render task of either
    could ever start (a 2-CPU cluster hung exactly so). The driver bounds the render tasks in
    flight itself, and a render task takes one CPU.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers: {workers!r} is not a positive integer")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if gpus:
        workers = workers or gpus
        if workers > gpus:
            raise ClusterError(f"workers={workers}: the cluster has {gpus} GPUs and each encoder actor takes one "
                               f"(hint: workers={gpus} or fewer, or add GPU nodes)")
        return workers, {"num_gpus": 1, "num_cpus": 1}, {"num_cpus": 1}
    if cpus <= 0:
        raise ClusterError("ray: the cluster offers no CPUs (hint: add nodes, or ray.init(num_cpus=2))")
    return workers or max(1, int(cpus) - 1), {}, {"num_cpus": min(1.0, cpus)}
