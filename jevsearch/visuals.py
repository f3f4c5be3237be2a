"""Pictures of hits: heat-maps of why a page matched (``Engine.explain``) and thumbnails (``Engine.thumbnail``).

The math is :mod:`jevsearch.search.explain`; this module fetches what it needs: the page's stored
multi-vectors and :class:`~jevsearch.store.visual.PageView` (grid layout, thumbnail) from the index,
the query's tokens from the model, and the page picture from the source file when it is still the
file that was indexed (same SHA-256), else from the stored thumbnail.

Heat-maps are computed on the stored vectors whenever the page's rows map onto its patch grid. They do
not for pages indexed before layouts were recorded, or whose stored rows are not one per patch (e.g.
pooled tokens): then the model re-encodes the page image (the source file must be unchanged) and the
Explanation says so (``source == "recomputed"``, ``note``).

>>> ex = eng.explain(hits[0], "revenue by region")          # doctest: +SKIP
>>> [t for t, m in zip(ex.tokens, ex.meaningful) if m]       # doctest: +SKIP
[' revenue', ' by', ' region']
>>> ex.overlay(token="revenue").save("why.png")              # doctest: +SKIP

A text passage (a .txt/.md document's "page") has no picture: its explanation is a
:class:`~jevsearch.search.explain.PassageExplanation` (the passage word each query token matched), and
its thumbnail a card of its text.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import weakref

import numpy as np

from jevsearch.errors import DocumentError, InvalidInputError
from jevsearch.ingest import thumbnail as thumbs
from jevsearch.search.explain import (
    Explanation,
    PassageExplanation,
    patch_maps,
    similarities,
)
from jevsearch.search.threads import torch_threads
from jevsearch.store.visual import PageView

log = logging.getLogger(__name__)

#: Resolution of page pictures for display and overlays (an A4 page: 827 x 1169 px).
DISPLAY_DPI = 100
MAX_DISPLAY_SIDE = 2000
MAX_THUMBNAIL_WIDTH = 4096
_QUERY_CACHE = 32  # recent query embeddings kept per encoder: a results page explains one query many times
_PASSAGE_PROMPT = "Passage: "  # what the encoder puts before a passage (JinaEncoder.encode_texts)


def page_views(encoder, geometry, doc) -> list[PageView]:
    """The PageView of each page of an ingested document (``EncodedDocument``): grid and thumbnail.

    The grid is the processor's for the raster the encoder saw; a page whose row count does not match
    it (it always should) gets no layout, so explain recomputes it rather than mislabel rows.
    """
    proc = encoder.processor
    views = []
    for i, ((w, h), multi) in enumerate(zip(doc.sizes, doc.multis)):
        thumb = doc.thumbnails[i] if doc.thumbnails else b""
        rows, cols = proc.image_grid(w, h, geometry.max_pixels)
        if rows * cols + proc.image_prompt_tokens == len(multi):
            views.append(PageView(rows, cols, proc.image_prefix_tokens, len(multi), thumb))
        else:
            log.warning("%s: page %d: %d rows for a %dx%d grid: no layout recorded", doc.path, i + 1, len(multi),
                        rows, cols)
            views.append(PageView(thumbnail=thumb))
    return views


# ----- explain ----------------------------------------------------------------------------------
def explain(eng, hit, query) -> Explanation:
    """See :meth:`jevsearch.engine.Engine.explain`."""
    if is_passage(hit):
        return _explain_passage(eng, hit, query)
    multi, view = eng.page_data(hit)
    emb, labels, meaningful = _query(eng, query)
    span = view.grid_rows(len(multi)) if view is not None else None
    if span is not None:
        maps, scores = patch_maps(emb, multi, span[0], view.rows, view.cols)
        image, note = display_image(eng, hit, view)
        return Explanation(labels, meaningful, maps, scores, image, hit, "stored", note)
    why = ("the index has no patch layout for this page (indexed before layouts were recorded)" if view is None
           or view.rows * view.cols == 0 else f"its {len(multi)} stored rows are not one per patch of its "
           f"{view.rows}x{view.cols} grid (e.g. pooled tokens)")
    problem = source_problem(hit)
    if problem is not None:
        raise DocumentError(hit.path, f"page {hit.page}: cannot explain: {why}, and {problem} to recompute it from "
                                      "(hint: re-index the document)")
    image, fresh, (rows, cols, first) = _encode_page(eng, hit)
    maps, scores = patch_maps(emb, fresh, first, rows, cols)
    note = f"recomputed from the page image with the model: {why}"
    return Explanation(labels, meaningful, maps, scores, image, hit, "recomputed", note)


def is_passage(hit) -> bool:
    """Whether ``hit`` is a passage of a text document (no page picture)."""
    return hit.metadata.get("kind") == "text"


def _explain_passage(eng, hit, query) -> PassageExplanation:
    multi, _ = eng.page_data(hit)
    emb, labels, meaningful = _query(eng, query)
    passage = hit.text or ""
    enc = eng.encoder.processor.tokenizer.encode(_PASSAGE_PROMPT + passage, add_special_tokens=False)
    n = len(_PASSAGE_PROMPT)
    spans = np.full((len(multi), 2), -1, np.int64)
    for j, (a, b) in enumerate(enc.offsets[:len(multi)]):
        if b > n:  # a token of the passage (the first may carry the prompt's trailing space)
            spans[j] = max(a - n, 0), b - n
    note = "" if len(enc.offsets) == len(multi) else (
        f"the passage's {len(enc.offsets)} tokens and its {len(multi)} stored rows differ: matches may be misplaced")
    sims = similarities(emb, multi)
    return PassageExplanation(labels, meaningful, sims.max(axis=1), passage, spans, sims, hit, note)


def text_card(text: str, width: int = thumbs.WIDTH):
    """A picture of a passage's first lines (its thumbnail: a text document has no page to render)."""
    from PIL import Image, ImageDraw, ImageFont

    height = round(width * 1.3)
    pad, size = max(4, width // 24), max(8, width // 20)
    font = ImageFont.load_default(size=size)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    lines, y = [], pad
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split():
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width - 2 * pad:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    for line in lines:
        if y + size > height - pad:
            break
        draw.text((pad, y), line, fill=(40, 40, 40), font=font)
        y += round(size * 1.35)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(200, 204, 212))
    return image


def _encode_page(eng, hit):
    """The page raster the model sees, its fresh multi-vectors and (rows, cols, first row)."""
    from jevsearch import modelinfo
    from jevsearch.ingest.pages import open_document
    from jevsearch.ingest.sources import Source, kind_of

    geometry, encoder = eng.page_geometry, eng.encoder
    kind = hit.metadata.get("kind") or kind_of(hit.path) or "pdf"
    with open_document(Source(hit.path, kind)) as doc:
        raster = doc.render(hit.page - 1, geometry)
    with torch_threads(modelinfo.ingest_threads(encoder)):  # as ingest: a CPU's torch team stalls on busy cores
        multi = encoder.encode_images([raster], task=modelinfo.TASK, max_pixels=geometry.max_pixels).multi[0]
    rows, cols = encoder.processor.image_grid(*raster.size, geometry.max_pixels)
    return raster, multi, (rows, cols, encoder.processor.image_prefix_tokens)


class _Queries:
    """Recent query embeddings and token labels of one encoder (explaining many hits of one query
    encodes it once)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: collections.OrderedDict = collections.OrderedDict()


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _query(eng, query):
    """(query multi-vectors [L, d], token labels, meaningful mask) of a text or PIL image query."""
    from PIL import Image

    from jevsearch import modelinfo
    from jevsearch.ingest.pages import prepare_image

    encoder, geometry = eng.encoder, eng.page_geometry
    if isinstance(query, str):
        key = ("text", query)
    elif isinstance(query, Image.Image):
        key = ("image", query.size, query.mode, hashlib.sha256(query.tobytes()).hexdigest())
    else:
        raise InvalidInputError(f"query: {type(query).__name__} (hint: a str or a PIL image)")
    with _CACHES_LOCK:
        cache = _CACHES.setdefault(encoder, _Queries())
    with cache.lock:
        if key in cache.items:
            cache.items.move_to_end(key)
            return cache.items[key]
    emb = modelinfo.encode_query(encoder, query, geometry).multi[0]
    if isinstance(query, str):
        labels, meaningful = encoder.processor.text_token_labels(query, "Query: ")
    else:
        labels, meaningful = encoder.processor.image_token_labels(
            *encoder.processor.image_grid(*prepare_image(query, geometry).size, geometry.max_pixels))
    if len(labels) != len(emb):  # cannot happen unless the tokenizer and the encoder disagree
        raise InvalidInputError(f"query: {len(labels)} token labels for {len(emb)} query vectors")
    value = (emb, labels, np.array(meaningful, bool))
    with cache.lock:
        cache.items[key] = value
        while len(cache.items) > _QUERY_CACHE:
            cache.items.popitem(last=False)
    return value


# ----- page pictures ------------------------------------------------------------------------------
def display_image(eng, hit, view: PageView | None = None, dpi: float = DISPLAY_DPI):
    """(page picture, note): rendered from the source at ``dpi`` when it is the file indexed, else the
    stored thumbnail (the note says why). DocumentError when neither is there. A text passage: its card."""
    if is_passage(hit):
        return text_card(hit.text or "", 4 * thumbs.WIDTH), ""
    problem = source_problem(hit)
    if problem is None:
        image = eng.render(hit, dpi=dpi)
        if max(image.size) > MAX_DISPLAY_SIDE:  # a poster-sized page: overlays and PNGs stay small
            image.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE))
        return image, ""
    if view is None:
        view = eng.page_data(hit, vectors=False)[1]
    if view is None or not view.thumbnail:
        raise DocumentError(hit.path, f"page {hit.page}: no picture: {problem} and the index has no thumbnail of it "
                                      "(hint: re-index the document)")
    return thumbs.decode(view.thumbnail), f"{problem}: showing the stored thumbnail"


def thumbnail(eng, hit, width: int = thumbs.WIDTH):
    """See :meth:`jevsearch.engine.Engine.thumbnail`."""
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_THUMBNAIL_WIDTH:
        raise InvalidInputError(f"width: {width!r} (hint: an int in [1, {MAX_THUMBNAIL_WIDTH}], e.g. 256)")
    if is_passage(hit):
        return text_card(hit.text or "", width)
    from PIL import Image

    view = eng.page_data(hit, vectors=False)[1]
    stored = thumbs.decode(view.thumbnail) if view is not None and view.thumbnail else None
    if stored is None or width > stored.width:
        problem = source_problem(hit)
        if problem is None:
            image = eng.render(hit, dpi=DISPLAY_DPI)
            if image.width < width and hit.metadata.get("kind") != "image":
                image = eng.render(hit, dpi=min(1200, DISPLAY_DPI * width / image.width + 1))
            return _fit(image, width)
        if stored is None:
            raise DocumentError(hit.path, f"page {hit.page}: no thumbnail stored and {problem} "
                                          "(hint: re-index the document)")
        log.warning("%s: page %d: %s: thumbnail upscaled from the stored %d px", hit.path, hit.page, problem,
                    stored.width)
    return stored if stored.width == width else _fit(stored, width, Image.Resampling.BICUBIC)


def _fit(image, width: int, resample=None):
    from PIL import Image

    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height), resample if resample is not None else Image.Resampling.LANCZOS)


# ----- the source file ----------------------------------------------------------------------------
_SHA_CACHE: collections.OrderedDict = collections.OrderedDict()  # (dev, ino, size, mtime_ns) -> sha256
_SHA_LOCK = threading.Lock()


def source_problem(hit) -> str | None:
    """None when the hit's source file is the one indexed (same SHA-256), else why not (missing, changed,
    or no checksum recorded: embeddings added by the caller)."""
    try:
        with open_source(hit):
            return None
    except DocumentError as e:
        return e.reason


def open_source(hit):
    """The hit's source file, open for reading at its start, checked to be exactly the file indexed
    (same SHA-256, read from this very handle, so a file swapped after the check is never the one
    read). DocumentError with the reason otherwise. The caller closes it."""
    want = hit.metadata.get("sha256")
    if not want:
        raise DocumentError(hit.path, "no checksum recorded for this document (added as embeddings)")
    try:
        f = open(hit.path, "rb")
    except FileNotFoundError:
        raise DocumentError(hit.path, "the source file is gone (moved or deleted since indexing)") from None
    except OSError as e:
        raise DocumentError(hit.path, f"the source file cannot be read: {e.strerror or e}") from None
    try:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _SHA_LOCK:
            got = _SHA_CACHE.get(key)
        if got is None:
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
            got = h.hexdigest()
            f.seek(0)
            with _SHA_LOCK:
                _SHA_CACHE[key] = got
                while len(_SHA_CACHE) > 1024:
                    _SHA_CACHE.popitem(last=False)
        if got != want:
            raise DocumentError(hit.path, "the source file changed since it was indexed")
        return f
    except BaseException:
        f.close()
        raise
