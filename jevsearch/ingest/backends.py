"""Where pages are rendered and encoded: the backends of one ingest interface that :meth:`Engine.add` picks.

Both hand each document (a long one in parts) to the caller's ``sink`` in the caller's process, with
the same report: the local backend runs the render process and the encoder here
(:func:`jevsearch.ingest.pipeline.ingest`); a remote one (Ray: :mod:`jevsearch.scale.ingest`) renders
and encodes on a cluster. Remote backends register a name here when their package is imported, so
nothing below them imports them: ``Engine.add(ray=...)`` asks :func:`remote` for ``"ray"``.

>>> backend = LocalBackend(encoder, geometry, batch_tokens=8192)            # doctest: +SKIP
>>> backend.ingest(sources, sink, report=report, expected={...}, resume={})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

from jevsearch.errors import MissingDependencyError
from jevsearch.ingest.pages import PageGeometry
from jevsearch.ingest.pipeline import EncodedDocument, IngestReport, ingest
from jevsearch.ingest.sources import Source

Sink = Callable[[EncodedDocument], None]


class IngestBackend(Protocol):
    """Renders and encodes documents for one index's model.

    ``processor``: the model's processor (page layouts for heat-maps need it); ``page_geometry``: how
    pages are rendered. :meth:`ingest` has :func:`jevsearch.ingest.pipeline.ingest`'s contract:
    ``expected`` (the planner's SHA-256 per path: a file changed since fails), ``resume`` (a partial
    document's last stored page; a backend may ignore it and re-encode the document whole).
    """

    processor: object
    page_geometry: PageGeometry

    def ingest(self, sources: Sequence[Source], sink: Sink, *, report: IngestReport, progress: bool = False,
               expected: Mapping[str, str] | None = None, resume: Mapping[str, int] | None = None) -> IngestReport: ...


class LocalBackend:
    """The render process and ``encoder`` in this process (the caller sets torch's threads)."""

    def __init__(self, encoder, geometry: PageGeometry, batch_tokens: int):
        self.encoder, self.page_geometry, self.batch_tokens = encoder, geometry, batch_tokens

    @property
    def processor(self):
        return self.encoder.processor

    def ingest(self, sources, sink, *, report, progress=False, expected=None, resume=None) -> IngestReport:
        return ingest(sources, self.encoder, sink, geometry=self.page_geometry, progress=progress, report=report,
                      batch_tokens=self.batch_tokens, expected=expected, resume=resume)


_REMOTE: dict[str, Callable] = {}


def register(name: str, opener: Callable) -> None:
    """Make remote backend ``name`` available: ``opener(target, recorded, workers)`` is a context
    manager giving an IngestBackend for an index whose model record is ``recorded``."""
    _REMOTE[name] = opener


@contextmanager
def remote(name: str, target, recorded: dict, workers: int | None = None) -> Iterator[IngestBackend]:
    """``with remote("ray", "auto", recorded, workers) as backend:`` a registered remote backend."""
    opener = _REMOTE.get(name)
    if opener is None:
        raise MissingDependencyError(f"{name}: no such ingest backend loaded (hint: import jevsearch.scale first, "
                                     "or pass an open jevsearch.scale.ingest.EncoderPool)")
    with opener(target, recorded, workers) as backend:
        yield backend
