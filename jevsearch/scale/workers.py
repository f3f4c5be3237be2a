"""What runs on Ray workers: render tasks and encoder actors (plain code; :mod:`.ingest` makes them remote).

A render task gets a document's bytes from the object store (workers need no shared file system),
opens them exactly as a local ingest does (:func:`jevsearch.ingest.open_document`, so the same checks
and the same reasons for a bad file) and renders one range of pages. It returns two objects: a small
``meta`` the driver reads (page count, tokens, texts, sizes, or the reason the file failed) and the
rasters, which go from the object store straight to an encoder actor without passing the driver.

An :class:`EncoderWorker` loads the model once, refuses a model other than the index's (fingerprint),
and encodes the pages of one or more render results per call.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from jevsearch.errors import DocumentError
from jevsearch.ingest import thumbnail
from jevsearch.ingest.pages import PageGeometry, open_document
from jevsearch.ingest.renderer import failure_reason
from jevsearch.ingest.sources import Source


def render_range(data: bytes, name: str, kind: str, geometry: tuple, start: int, stop: int):
    """Render pages ``[start, stop)`` of a document given as bytes -> ``(meta, rasters)``.

    meta: ``{"page_count", "info", "numbers", "texts", "sizes", "thumbnails", "tokens", "missing", "seconds",
    "thumb_seconds", "error"}``, one entry per rendered page in the lists; ``missing``: (page number,
    reason) of pages that could not be rendered (the document keeps the others, as locally);
    ``error``: why the whole file cannot be ingested (then nothing else counts). rasters: one uint8
    [h, w, 3] array per rendered page. ``name`` (the original path) supplies the file suffix.
    """
    t0 = time.perf_counter()
    geometry = PageGeometry(*geometry)
    meta = {"page_count": 0, "numbers": [], "texts": [], "sizes": [], "thumbnails": [], "tokens": 0, "missing": [],
            "thumb_seconds": 0.0, "error": None}
    rasters = []
    # MuPDF and PIL open files by name; a private temporary copy keeps the worker free of shared storage.
    with tempfile.NamedTemporaryFile(prefix="jevsearch-", suffix=os.path.splitext(name)[1]) as f:
        try:
            f.write(data)
            f.flush()
            with open_document(Source(f.name, kind)) as doc:
                meta["page_count"] = doc.page_count
                meta["info"] = doc.info() if start == 0 else {}  # a PDF's own title, author, created
                for i in range(start, min(stop, doc.page_count)):
                    try:
                        image = doc.render(i, geometry)
                    except DocumentError as e:  # this page only: the others are still indexed
                        meta["missing"].append((i + 1, e.reason))
                        continue
                    meta["numbers"].append(i + 1)
                    meta["texts"].append(doc.text(i))
                    meta["sizes"].append(image.size)
                    meta["tokens"] += geometry.tokens(*image.size)
                    t1 = time.perf_counter()
                    meta["thumbnails"].append(thumbnail.encode(image))
                    meta["thumb_seconds"] += time.perf_counter() - t1
                    rasters.append(np.asarray(image))
        except Exception as e:  # noqa: BLE001 - whatever one file provokes fails that file only
            meta, rasters = {"error": failure_reason(e), "thumb_seconds": 0.0}, []
    meta["seconds"] = time.perf_counter() - t0
    return meta, rasters


class EncoderWorker:
    """An encoder actor's body: the index's model, loaded once.

    ``recorded``: the index's model record; its ``source`` (a path that must exist on every node, or a
    hub id) is loaded and its fingerprint checked, so a different snapshot at the same path is refused
    instead of mixing embeddings. ``device``: "cuda" on a GPU actor, else "cpu" with ``threads`` threads.
    """

    def __init__(self, recorded: dict, device: str, threads: int):
        import torch

        from jevsearch import modelinfo

        if device == "cpu":
            torch.set_num_threads(threads)
        self._encoder = modelinfo.load_encoder(recorded["source"], device, None, recorded=True)
        modelinfo.check_same_model(recorded, self._encoder)
        self._geometry = modelinfo.page_geometry(self._encoder, recorded)

    def info(self) -> dict:
        """The page geometry to render with, this actor's token budget per forward, and the model's
        processor (tokenizer and image rules, no weights: what the driver needs to record page views)."""
        g = self._geometry
        return {"geometry": (g.max_pixels, g.min_pixels, g.factor), "batch_tokens": self._encoder.max_batch_tokens,
                "device": str(self._encoder.device), "processor": self._encoder.processor}

    def encode(self, task: str, *ranges) -> dict:
        """Encode the pages of render results (each a list of [h, w, 3] arrays) in one call.

        -> ``{"vectors": [(singles [n, D] float32, [n arrays [T, d]]) per range], "seconds": encode time}``.
        """
        from PIL import Image

        t0 = time.perf_counter()
        images = [Image.fromarray(a) for rasters in ranges for a in rasters]
        out = self._encoder.encode_images(images, task=task, max_pixels=self._geometry.max_pixels)
        vectors, at = [], 0
        for rasters in ranges:
            n = len(rasters)
            vectors.append((out.single[at:at + n], out.multi[at:at + n]))
            at += n
        return {"vectors": vectors, "seconds": time.perf_counter() - t0}
