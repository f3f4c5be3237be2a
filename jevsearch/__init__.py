"""jevsearch: an embedded retrieval engine for visually rich documents on jina-embeddings-v4."""

from jevsearch.errors import (
    CheckpointError,
    ChecksumError,
    ClusterError,
    CorruptIndexError,
    DatasetError,
    DocumentError,
    FormatVersionError,
    IndexExistsError,
    IndexLockedError,
    InvalidInputError,
    JevsearchError,
    MissingDependencyError,
    ModelMismatchError,
    NotAnIndexError,
    PageNotFoundError,
    ReadOnlyIndexError,
    ShardError,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "ClusterError",
    "CorruptIndexError",
    "DatasetError",
    "DocHit",
    "DocumentError",
    "Engine",
    "FormatVersionError",
    "Hit",
    "Index",
    "IndexExistsError",
    "IndexLockedError",
    "InvalidInputError",
    "JevsearchError",
    "MissingDependencyError",
    "ModelMismatchError",
    "NotAnIndexError",
    "PageNotFoundError",
    "ReadOnlyIndexError",
    "Searchable",
    "ShardError",
    "ShardedEngine",
    "StorageError",
    "__version__",
    "open",
]


def open(path, *, read_only: bool = False, **engine_options):
    """The index at ``path``, opened: a :class:`ShardedEngine` when the folder holds a shard manifest
    (``shards.json``), else an :class:`Engine`. Both are :class:`~jevsearch.surface.Searchable`.

    read_only: a reader (no lock; writes raise ReadOnlyIndexError). engine_options: as the chosen
    class's ``open`` takes them (model, device, dtype, threads, repair; a sharded index also ray,
    allow_partial, timeout, nodes). Raises NotAnIndexError when ``path`` holds neither.

    >>> with jevsearch.open("indexes/papers", read_only=True) as eng:    # doctest: +SKIP
    ...     hits = eng.search("revenue by region", k=5, where={"kind": "pdf"})
    """
    from jevsearch.surface import is_sharded

    if is_sharded(path):
        from jevsearch.scale.sharded import ShardedEngine

        return ShardedEngine.open(path, readonly=read_only, **engine_options)
    from jevsearch.engine import Engine

    return Engine.open(path, readonly=read_only, **engine_options)


def __getattr__(name: str):
    # Lazy: `import jevsearch` stays cheap (no torch/faiss/lmdb import) until the engine is used.
    if name in ("Engine", "Hit", "Index"):
        from jevsearch import engine

        return getattr(engine, name)
    if name == "ShardedEngine":  # ray stays unimported until a cluster is asked for
        from jevsearch.scale.sharded import ShardedEngine

        return ShardedEngine
    if name == "Searchable":
        from jevsearch.surface import Searchable

        return Searchable
    if name == "DocHit":
        from jevsearch.index.results import DocHit

        return DocHit
    raise AttributeError(f"module 'jevsearch' has no attribute {name!r}")
