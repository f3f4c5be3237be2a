"""Per-page visual records: where a page's multi-vector rows sit on the page, and its thumbnail.

Stored in the LMDB table ``visual`` (u64be page id -> record), written in the same transaction as
the page, deleted with it. The table is optional: indexes made before it existed open as they are
(their pages simply have no record; see :class:`PageView`), and a writer adds the empty table.

A record is a fixed little-endian header and the thumbnail's bytes (WebP or JPEG, whatever the
caller encoded; empty when there is none)::

    version u8 (=1) | rows u16 | cols u16 | first u32 | tokens u32 | thumbnail bytes ...

``rows`` x ``cols`` is the grid of visual tokens (0 x 0: unknown), ``first`` the row of the page's
multi-vectors holding grid cell (0, 0), the cells following row-major; ``tokens`` the page's row
count when the record was made (stored vectors with another count, e.g. pooled ones, no longer
follow the grid). Nothing here can run code: plain integers and image bytes.

>>> v = PageView(rows=2, cols=3, first=4, tokens=17, thumbnail=b"...")
>>> PageView.decode(v.encode()) == v
True
>>> v.grid_rows(17), v.grid_rows(12)     # rows 4..9 of a 17-row page; a 12-row page no longer maps
((4, 10), None)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from jevsearch.errors import CorruptIndexError, InvalidInputError

TABLE = "visual"
VERSION = 1
_HEAD = struct.Struct("<BHHII")  # version, rows, cols, first, tokens
_MAX_GRID = 0xFFFF
#: Thumbnails larger than this are refused at input: a thumbnail is meant to be a few KB.
MAX_THUMBNAIL_BYTES = 1 << 20


@dataclass(frozen=True)
class PageView:
    """What maps a page's multi-vector rows to its picture, and a small picture of it.

    ``rows``, ``cols``: the visual-token grid (0, 0 if unknown); ``first``: the multi-vector row of
    grid cell (0, 0); cell (r, c) is row ``first + r * cols + c``. ``tokens``: the page's row count
    the layout describes. ``thumbnail``: encoded image bytes (b"" if none).
    """

    rows: int = 0
    cols: int = 0
    first: int = 0
    tokens: int = 0
    thumbnail: bytes = b""

    def grid_rows(self, tokens: int) -> tuple[int, int] | None:
        """(start, stop) of the visual rows among a stored page's ``tokens`` rows, or None when the
        grid is unknown or the stored rows are not the ones it describes (e.g. pooled tokens)."""
        n = self.rows * self.cols
        if n == 0 or tokens != self.tokens or self.first + n > tokens:
            return None
        return self.first, self.first + n

    def encode(self) -> bytes:
        return _HEAD.pack(VERSION, self.rows, self.cols, self.first, self.tokens) + bytes(self.thumbnail)

    @classmethod
    def decode(cls, raw) -> PageView:
        raw = bytes(raw)
        if len(raw) < _HEAD.size or raw[0] != VERSION:
            raise CorruptIndexError(f"visual record: {len(raw)} bytes, version {raw[:1]!r} "
                                    "(hint: run verify; re-add the document to rebuild it)")
        _, rows, cols, first, tokens = _HEAD.unpack_from(raw)
        return cls(rows, cols, first, tokens, raw[_HEAD.size:])


def check_views(views, multis: Sequence) -> list[PageView] | None:
    """Validate the ``page_views`` given to ``add_embeddings``: None, or one PageView (or None) per page.

    A layout must fit its page: ``first + rows * cols <= tokens == the page's row count``.
    """
    if views is None:
        return None
    if isinstance(views, (str, bytes)) or not isinstance(views, Sequence) or len(views) != len(multis):
        raise InvalidInputError(f"page_views: expected a list of {len(multis)} PageView or None (one per page)")
    out = []
    for i, (v, m) in enumerate(zip(views, multis)):
        if v is None:
            v = PageView()
        if not isinstance(v, PageView):
            raise InvalidInputError(f"page_views[{i}]: {type(v).__name__}, expected PageView or None")
        ints = (v.rows, v.cols, v.first, v.tokens)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in ints) \
                or max(v.rows, v.cols) > _MAX_GRID or v.first > 0xFFFFFFFF:
            raise InvalidInputError(f"page_views[{i}]: rows, cols, first, tokens must be ints >= 0, got {ints}")
        if v.rows * v.cols and (v.tokens != len(m) or v.first + v.rows * v.cols > v.tokens):
            raise InvalidInputError(
                f"page_views[{i}]: a {v.rows}x{v.cols} grid from row {v.first} does not fit page {i + 1}'s "
                f"{len(m)} multi-vector rows (tokens={v.tokens}) (hint: tokens is the page's row count)")
        if not isinstance(v.thumbnail, (bytes, bytearray)) or len(v.thumbnail) > MAX_THUMBNAIL_BYTES:
            raise InvalidInputError(f"page_views[{i}]: thumbnail must be at most {MAX_THUMBNAIL_BYTES} bytes")
        out.append(v)
    return out
