"""Ingest: find documents, render their pages for the encoder, and stream them through it.

- :mod:`~jevsearch.ingest.sources`: discovery of PDFs and images in files and folders, content hashing.
- :mod:`~jevsearch.ingest.pages`: opening and validating documents, rendering pages to the model's raster size.
- :mod:`~jevsearch.ingest.pipeline`: the streaming render -> encode -> sink pipeline and its report.
"""

from jevsearch.ingest.pages import PageGeometry, open_document
from jevsearch.ingest.pipeline import EncodedDocument, IngestReport, ingest
from jevsearch.ingest.sources import Source, discover, file_sha256

__all__ = [
    "EncodedDocument",
    "IngestReport",
    "PageGeometry",
    "Source",
    "discover",
    "file_sha256",
    "ingest",
    "open_document",
]
