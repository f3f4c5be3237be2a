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
    "DocHit",
    "Engine",
    "Hit",
    "Index",
    "CorruptIndexError",
    "DatasetError",
    "DocumentError",
    "FormatVersionError",
    "IndexExistsError",
    "IndexLockedError",
    "InvalidInputError",
    "JevsearchError",
    "MissingDependencyError",
    "ModelMismatchError",
    "NotAnIndexError",
    "PageNotFoundError",
    "ReadOnlyIndexError",
    "ShardError",
    "ShardedEngine",
    "StorageError",
    "__version__",
]


def __getattr__(name: str):
    # Lazy: `import jevsearch` stays cheap (no torch/faiss/lmdb import) until the engine is used.
    if name in ("Engine", "Hit", "Index"):
        from jevsearch import engine

        return getattr(engine, name)
    if name == "ShardedEngine":  # ray stays unimported until a cluster is asked for
        from jevsearch.scale.sharded import ShardedEngine

        return ShardedEngine
    if name == "DocHit":
        from jevsearch.docresults import DocHit

        return DocHit
    raise AttributeError(f"module 'jevsearch' has no attribute {name!r}")
