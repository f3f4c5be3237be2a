"""Bounds on what a caller may ask of a served index: query length, ``k``, uploaded query images.

Shared by the web app (:mod:`jevsearch.serve`) and the integrations (:mod:`jevsearch.integrations`), so
both refuse the same requests with the same messages. Plain Python (Pillow only to read an image's
header), so the rules are testable on their own.

>>> lim = Limits(max_k=50)
>>> lim.check_k("5"), lim.check_k(None), lim.check_query("revenue by region")
(5, 12, 'revenue by region')
>>> lim.check_k("500")
Traceback (most recent call last):
...
jevsearch.errors.InvalidInputError: k: '500' is out of range (hint: a whole number from 1 to 50)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from jevsearch.errors import InvalidInputError


class UploadError(InvalidInputError):
    """An uploaded image is too large or not an image (HTTP 413 / 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bounds on what a request may ask for (each refused with a 4xx and a message saying the limit)."""

    max_query_chars: int = 1000
    max_k: int = 100
    default_k: int = 12
    max_upload_bytes: int = 10 << 20
    max_upload_pixels: int = 40_000_000
    #: Formats accepted for image queries (Pillow format names).
    image_formats: tuple = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

    def check_query(self, q) -> str:
        """A text query as a non-empty str within ``max_query_chars``; InvalidInputError otherwise."""
        if q is None or not str(q).strip():
            raise InvalidInputError("query: empty (hint: type some words, or upload an image)")
        q = str(q)
        if len(q) > self.max_query_chars:
            raise InvalidInputError(f"query: {len(q)} characters, more than the limit of {self.max_query_chars} "
                                    "(hint: a shorter query)")
        return q

    def check_k(self, k) -> int:
        """``k`` (an int or its text; None or "": ``default_k``) within 1..``max_k``."""
        if k is None or k == "":
            return self.default_k
        try:
            value = int(k)
        except (TypeError, ValueError):
            value = None
        if value is None or not 1 <= value <= self.max_k:
            raise InvalidInputError(f"k: {k!r} is out of range (hint: a whole number from 1 to {self.max_k})")
        return value

    def read_image(self, data: bytes):
        """An uploaded image checked against the limits (bytes, pixels, format), decoded to RGB."""
        from PIL import Image

        if len(data) > self.max_upload_bytes:
            raise UploadError(f"image: more than {self.max_upload_bytes} bytes (hint: a smaller image)", 413)
        if not data:
            raise UploadError("image: empty upload (hint: choose an image file)")
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError as e:
            raise UploadError(f"image: refused, too many pixels: {e}", 413) from None
        except Image.UnidentifiedImageError:  # its message names a BytesIO object: say what was sent instead
            raise UploadError(f"image: not a readable image (a format this does not read; the upload starts "
                              f"with {data[:8]!r}) (hint: PNG, JPEG or WebP)") from None
        except (OSError, ValueError) as e:
            raise UploadError(f"image: not a readable image ({e}) (hint: PNG, JPEG or WebP)") from None
        if img.format not in self.image_formats:
            raise UploadError(f"image: format {img.format} not accepted (hint: one of {', '.join(self.image_formats)})")
        if img.width * img.height > self.max_upload_pixels:
            raise UploadError(f"image: {img.width}x{img.height} pixels, more than the limit of "
                              f"{self.max_upload_pixels} (hint: scale it down)", 413)
        try:
            img.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UploadError(f"image: cannot decode: {e}") from None
        return img
