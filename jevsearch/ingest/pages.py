"""Opening documents and rendering their pages to RGB rasters the encoder will use as they are.

A page is rendered straight to the size the Qwen2-VL image processor would resize it to (sides multiples
of ``factor`` = patch 14 x merge 2, area within ``max_pixels``), so no raster is ever larger than what
the model consumes and the processor's own resize is a no-op. PDF pages use the whole budget (vector
content renders sharply at any scale); image files keep the processor's own rule (``smart_resize``).

Every problem with one document is a :class:`~jevsearch.errors.DocumentError` naming the file and why.

>>> geom = PageGeometry(max_pixels=602112, min_pixels=3136)
>>> geom.fit_page(595, 842)        # an A4 page, in points -> pixels
(644, 896)
>>> geom.tokens(644, 896)          # 23 x 32 visual tokens
736
>>> with open_document(Source("/tmp/a.pdf", "pdf")) as doc:     # doctest: +SKIP
...     image = doc.render(0, geom); text = doc.text(0)
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass

from PIL import Image, ImageOps

from jevsearch.errors import DocumentError, InvalidInputError
from jevsearch.ingest import docinfo
from jevsearch.ingest.sources import Source, kind_of, os_reason

log = logging.getLogger(__name__)

# The Qwen2-VL processor refuses more extreme aspect ratios (smart_resize raises).
MAX_ASPECT_RATIO = 200
# The text layer is kept for snippets only; a page of dense tables can hold megabytes of text.
MAX_PAGE_TEXT_CHARS = 32_000
# Display renders (Engine.render) of huge pages are scaled down to this many pixels.
MAX_DISPLAY_PIXELS = 40_000_000
# MuPDF messages that mean a page's content could not be read (as opposed to harmless font notices).
_DAMAGE = re.compile(r"error|premature end|cannot load|cannot find|truncated", re.IGNORECASE)
_mupdf_lock = threading.Lock()  # MuPDF's message store is process-global


@dataclass(frozen=True)
class PageGeometry:
    """Raster size rules of the encoder's image processor.

    ``max_pixels``/``min_pixels`` bound the area; ``factor`` is patch size x merge size (28 for
    Qwen2.5-VL), so a raster of w x h pixels costs ``(w // factor) * (h // factor)`` tokens.
    """

    max_pixels: int
    min_pixels: int = 3136
    factor: int = 28

    def __post_init__(self) -> None:
        if self.factor < 1 or self.max_pixels < self.factor * self.factor or self.min_pixels > self.max_pixels:
            raise ValueError(
                f"page geometry: max_pixels={self.max_pixels}, min_pixels={self.min_pixels}, factor={self.factor} "
                f"(hint: max_pixels must be at least factor^2 and at least min_pixels)"
            )

    def tokens(self, width: int, height: int) -> int:
        """Visual tokens the encoder spends on a raster of this size (after its 2x2 merge)."""
        return (width // self.factor) * (height // self.factor)

    def fit_page(self, width: float, height: float) -> tuple[int, int]:
        """Largest raster (w, h), sides multiples of ``factor``, area <= max_pixels, for a vector page."""
        self._check_shape(width, height)
        f = self.factor
        beta = math.sqrt(width * height / self.max_pixels)
        return max(f, math.floor(width / beta / f) * f), max(f, math.floor(height / beta / f) * f)

    def fit_image(self, width: int, height: int) -> tuple[int, int]:
        """The processor's ``smart_resize`` of a pixel image: nearest multiples, scaled into the bounds."""
        self._check_shape(width, height)
        f = self.factor
        w, h = max(f, round(width / f) * f), max(f, round(height / f) * f)
        if w * h > self.max_pixels:
            beta = math.sqrt(width * height / self.max_pixels)
            w, h = max(f, math.floor(width / beta / f) * f), max(f, math.floor(height / beta / f) * f)
        elif w * h < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (width * height))
            w, h = math.ceil(width * beta / f) * f, math.ceil(height * beta / f) * f
        return w, h

    @staticmethod
    def _check_shape(width: float, height: float) -> None:
        if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
            raise ValueError(f"empty page area ({width:g} x {height:g})")
        ratio = max(width, height) / min(width, height)
        if ratio > MAX_ASPECT_RATIO:
            raise ValueError(f"aspect ratio {ratio:.0f}:1 exceeds the model's limit of {MAX_ASPECT_RATIO}:1")


def open_document(source: Source) -> PdfDocument | ImageDocument:
    """Open and validate one document; raise DocumentError(path, reason) if it cannot be ingested."""
    return PdfDocument(source.path) if source.kind == "pdf" else ImageDocument(source.path)


def render_page(path: str, page: int, dpi: float = 100, kind: str | None = None) -> Image.Image:
    """Page ``page`` (1-based) of the file at ``path`` at ``dpi``, for display (``kind`` from the suffix)."""

    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 0 < dpi <= 1200:
        raise InvalidInputError(f"dpi: {dpi!r} (hint: a number in (0, 1200], e.g. 100)")
    with open_document(Source(path, kind or kind_of(path) or "pdf")) as doc:
        return doc.render_dpi(page - 1, dpi)


class PdfDocument:
    """A validated PDF: opens, is not password-protected, has pages. Use as a context manager."""

    def __init__(self, path: str):
        import pymupdf

        self.path = path
        _quiet_mupdf(pymupdf)
        try:
            with open(path, "rb") as f:
                head = f.read(1024)
        except OSError as e:
            raise DocumentError(path, os_reason(e)) from None
        if not head:
            raise DocumentError(path, "empty file")
        if b"%PDF-" not in head:
            raise DocumentError(path, f"not a PDF (file starts with {head[:8]!r})")
        with _mupdf_lock:
            pymupdf.TOOLS.mupdf_warnings(reset=True)
            try:
                doc = pymupdf.open(path, filetype="pdf")
            except Exception:  # noqa: BLE001 - pymupdf raises several unrelated types; MuPDF's message says why
                detail = _damage_line(pymupdf.TOOLS.mupdf_warnings(reset=True)) or "MuPDF cannot parse it"
                raise DocumentError(path, f"corrupt PDF: {detail}") from None
            self._repair = pymupdf.TOOLS.mupdf_warnings(reset=True)
        self._doc = doc
        try:
            # Read needs_pass once: re-reading it after authenticate() can drop pages; is_encrypted afterwards.
            if doc.needs_pass:
                raise DocumentError(path, "encrypted PDF needs a password (hint: decrypt it, e.g. `qpdf --decrypt`)")
            try:
                # MuPDF reads the page tree's /Count here and raises for a negative one.
                self.page_count: int = doc.page_count
            except Exception as e:  # noqa: BLE001 - any MuPDF failure here: the document cannot be read
                raise DocumentError(path, f"corrupt PDF: cannot count its pages: {_mupdf_reason(e)}") from None
            if self.page_count == 0:
                detail = f" (MuPDF: {_first_line(self._repair)})" if self._repair else ""
                raise DocumentError(path, f"PDF has no pages; corrupt or empty{detail}")
        except BaseException:
            doc.close()
            raise
        if self._repair:
            log.info("%s: repaired on open: %s", path, _first_line(self._repair))

    def render(self, index: int, geometry: PageGeometry) -> Image.Image:
        """Page ``index`` (0-based) as an RGB image of exactly ``geometry.fit_page`` pixels."""
        import pymupdf

        page = self._load(index)
        rect = page.rect  # already rotated: a /Rotate 90 page is landscape here
        try:
            width, height = geometry.fit_page(rect.width, rect.height)
        except ValueError as e:
            raise DocumentError(self.path, str(e), page=index + 1) from None
        matrix = pymupdf.Matrix(width / rect.width, height / rect.height)
        image = self._pixmap(index, page, matrix)
        # MuPDF rounds the transformed page box; keep the exact size the encoder expects.
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        return image

    def render_dpi(self, index: int, dpi: float) -> Image.Image:
        """Page ``index`` (0-based) at ``dpi`` (for display), at most MAX_DISPLAY_PIXELS (huge pages shrink)."""
        import pymupdf

        page = self._load(index)
        zoom = dpi / 72
        area = page.rect.width * page.rect.height * zoom * zoom
        if area > MAX_DISPLAY_PIXELS:
            zoom *= math.sqrt(MAX_DISPLAY_PIXELS / area)
        return self._pixmap(index, page, pymupdf.Matrix(zoom, zoom))

    def text(self, index: int) -> str:
        """The page's text layer (may be empty: scans have none); capped at MAX_PAGE_TEXT_CHARS."""
        try:
            text = self._doc.load_page(index).get_text("text")
        except Exception as e:  # noqa: BLE001 - a page whose text MuPDF cannot extract still has its image
            log.warning("%s: page %d: no text layer: %s", self.path, index + 1, _first_line(e))
            return ""
        return text.replace("\x00", "")[:MAX_PAGE_TEXT_CHARS]

    def _load(self, index: int):
        if not 0 <= index < self.page_count:
            raise DocumentError(self.path, f"out of range (document has {self.page_count} pages)", page=index + 1)
        try:
            return self._doc.load_page(index)
        except Exception as e:  # noqa: BLE001 - a broken page object: that page fails, not the document
            raise DocumentError(self.path, f"cannot load page: {_mupdf_reason(e)}", page=index + 1) from None

    def _pixmap(self, index: int, page, matrix) -> Image.Image:
        import pymupdf

        with _mupdf_lock:
            pymupdf.TOOLS.mupdf_warnings(reset=True)
            try:
                pix = page.get_pixmap(matrix=matrix, colorspace=pymupdf.csRGB, alpha=False)
            except Exception as e:  # noqa: BLE001 - any MuPDF render failure fails that page alone
                raise DocumentError(self.path, f"cannot render: {_mupdf_reason(e)}", page=index + 1) from None
            messages = pymupdf.TOOLS.mupdf_warnings(reset=True)
        damage = _damage_line(messages)
        if damage:
            raise DocumentError(self.path, f"damaged PDF: {damage}", page=index + 1)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)

    def info(self) -> dict:
        """The PDF's own title, author and created (:func:`.docinfo.pdf_fields`), those it has."""
        try:
            meta = self._doc.metadata
        except Exception:  # noqa: BLE001 - the pages were read; metadata is optional
            meta = None
        return docinfo.pdf_fields(meta)

    def close(self) -> None:
        self._doc.close()

    def __enter__(self) -> PdfDocument:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageDocument:
    """An image file as a 1-page document (first frame; EXIF orientation applied; no text layer)."""

    page_count = 1

    def __init__(self, path: str):
        self.path = path
        try:
            self._image = Image.open(path)
        except OSError as e:
            raise DocumentError(path, os_reason(e) if e.errno else f"not a readable image: {_first_line(e)}") from None
        except Image.DecompressionBombError as e:
            raise DocumentError(path, f"image too large: {_first_line(e)}") from None

    def render(self, index: int, geometry: PageGeometry) -> Image.Image:
        """The image as RGB at the processor's target size (``geometry.fit_image``)."""
        self._check(index)
        try:
            # JPEG can decode at 1/2, 1/4, 1/8 scale: a huge scan is never fully decoded.
            self._image.draft("RGB", geometry.fit_image(*_oriented_size(self._image)))
            return prepare_image(self._image, geometry)
        except ValueError as e:
            raise DocumentError(self.path, str(e), page=1) from None
        except (OSError, Image.DecompressionBombError) as e:
            raise DocumentError(self.path, f"cannot decode image: {_first_line(e)}") from None

    def render_dpi(self, index: int, dpi: float) -> Image.Image:
        """The image itself, RGB (an image has no physical size to scale by ``dpi``)."""
        self._check(index)
        try:
            return _to_rgb(ImageOps.exif_transpose(self._image))
        except OSError as e:
            raise DocumentError(self.path, f"cannot decode image: {_first_line(e)}") from None

    def text(self, index: int) -> str:
        return ""

    def info(self) -> dict:
        return {}

    def _check(self, index: int) -> None:
        if index != 0:
            raise DocumentError(self.path, "out of range (an image is one page)", page=index + 1)

    def close(self) -> None:
        self._image.close()

    def __enter__(self) -> ImageDocument:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_image(img: Image.Image, geometry: PageGeometry) -> Image.Image:
    """An image as the encoder should see it: EXIF-oriented, RGB on white, at ``geometry.fit_image`` size.

    Ingest and image queries both go through here, so the same picture gives the same pixels (and the
    same embedding) either way. Raises ValueError for an unusable shape, OSError for undecodable data.
    """
    target = geometry.fit_image(*_oriented_size(img))
    img = _to_rgb(ImageOps.exif_transpose(img))
    if img.size != target:
        img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    # EXIF orientations 5-8 swap width and height.
    orientation = img.getexif().get(0x0112, 1)
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (a page's background), not on black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float greyscale: scale to 8 bits rather than clip.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def _quiet_mupdf(pymupdf) -> None:
    # We read MuPDF's messages ourselves and report them per file; printed, they would flood stderr.
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)


def _damage_line(messages: str) -> str | None:
    """The first MuPDF message line that says content could not be read, without the 'format error' prefix."""
    for line in messages.splitlines():
        if _DAMAGE.search(line):
            return line.removeprefix("format error: ").strip()
    return None


def _mupdf_reason(e: Exception) -> str:
    """MuPDF's message without pymupdf's ``code=N: `` prefix."""
    return re.sub(r"^code=\d+: ", "", _first_line(e))


def _first_line(x) -> str:
    text = str(x).strip()
    return text.splitlines()[0] if text else type(x).__name__
