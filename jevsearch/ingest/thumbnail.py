"""Page thumbnails: small compressed pictures kept in the index, so results can always be shown.

Made at ingest from the raster the encoder sees (in the render process, beside rendering), 256 px
wide (never enlarged: smaller rasters keep their width), as WebP (about 2.5 KB for a text page with a
chart; JPEG, about twice that, where Pillow lacks WebP). Stored in the page's :class:`~jevsearch.store.visual.PageView`.

>>> from PIL import Image
>>> data = encode(Image.new("RGB", (644, 896), "white"))
>>> decode(data).size, mime_type(data)
((256, 356), 'image/webp')
"""

from __future__ import annotations

import io

from PIL import Image, features

from jevsearch.errors import CorruptIndexError

WIDTH = 256
#: Very tall pages get a narrower thumbnail rather than a huge one.
MAX_HEIGHT = 4 * WIDTH
# A bilinear (antialiased) reduction + WebP quality 75, method 2: a third of the time of Lanczos +
# method 4 for about the same bytes, and looks the same at 256 px (benchmarks/RESULTS.md).
_WEBP = {"format": "WEBP", "quality": 75, "method": 2}
_JPEG = {"format": "JPEG", "quality": 75, "optimize": True}
#: A stored thumbnail decodes to at most this many pixels (a damaged record cannot be a bomb).
_MAX_PIXELS = WIDTH * MAX_HEIGHT


def size_for(width: int, height: int, target: int = WIDTH) -> tuple[int, int]:
    """(w, h) of a thumbnail ``target`` px wide (narrower for pages taller than 4:1), never upscaled."""
    scale = min(1.0, target / width, MAX_HEIGHT * target / WIDTH / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode(image: Image.Image) -> bytes:
    """The thumbnail of a page raster, WebP (JPEG where Pillow lacks WebP)."""
    small = image.convert("RGB")
    size = size_for(*small.size)
    if size != small.size:
        small = small.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    opts = dict(_WEBP if features.check("webp") else _JPEG)
    small.save(buf, **opts)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """A stored thumbnail as an RGB PIL image; CorruptIndexError if it does not decode."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > _MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is larger than a thumbnail")
        return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptIndexError(f"thumbnail: cannot decode {len(data)} bytes: {e} "
                                "(hint: re-add the document to store it again)") from e


def mime_type(data: bytes) -> str:
    """The MIME type of stored thumbnail bytes (for serving them as they are)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "application/octet-stream"
