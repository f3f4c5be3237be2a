"""jevsearch: an embedded retrieval engine for visually rich documents on jina-embeddings-v4."""

from jevsearch.errors import (
    CheckpointError,
    CorruptIndexError,
    DocumentError,
    FormatVersionError,
    IndexExistsError,
    IndexLockedError,
    InvalidInputError,
    JevsearchError,
    ModelMismatchError,
    NotAnIndexError,
    ReadOnlyIndexError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CorruptIndexError",
    "DocumentError",
    "FormatVersionError",
    "IndexExistsError",
    "IndexLockedError",
    "InvalidInputError",
    "JevsearchError",
    "ModelMismatchError",
    "NotAnIndexError",
    "ReadOnlyIndexError",
    "__version__",
]
