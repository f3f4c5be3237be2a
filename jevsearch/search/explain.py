"""Why a page matched: per-query-token similarity heat-maps over the page's patch grid (no I/O).

Late interaction scores a page as ``sum_i max_j q_i . d_j``. A page image's multi-vector rows are a
few prompt tokens, then one row per visual token -- a 28x28-pixel square of the page (Qwen2.5-VL merges
14-px patches 2x2) in row-major order over the grid -- then the rest of the prompt (see
:class:`jevsearch.store.visual.PageView`). So ``q_i . d`` over the visual rows, laid out on the grid,
is a heat-map of where on the page query token ``i`` matches; its maximum over *all* rows is the token's
share of the score (a prompt row may win it: the map then shows the best patch, the score says more).

>>> import numpy as np
>>> q = np.eye(4, dtype=np.float32)[:2]                    # 2 query tokens, d = 4
>>> page = np.zeros((1 + 6, 4), np.float32); page[0, 3] = 1   # 1 prompt row, then a 2x3 grid
>>> page[1 + 1 * 3 + 2, 0] = 1                             # cell (1, 2) equals query token 0
>>> maps, scores = patch_maps(q, page, first=1, rows=2, cols=3)
>>> maps.shape, np.unravel_index(maps[0].argmax(), maps[0].shape), scores.tolist()
((2, 2, 3), (np.int64(1), np.int64(2)), [1.0, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jevsearch.errors import InvalidInputError
from jevsearch.search.threads import torch_threads

# Colour map anchors (dark -> hot), interpolated linearly: close to matplotlib's "inferno", which stays
# readable in greyscale and for colour-blind readers.
_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32)
# Share of alpha that tints even the coldest cell: the whole grid stays visible, hot cells dominate.
_FLOOR = 0.1


def patch_maps(query: np.ndarray, page: np.ndarray, first: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 [L, rows, cols], token_scores float32 [L]) of query tokens ``query`` [L, d]
    against a page's multi-vectors ``page`` [T, d] whose grid cell (r, c) is row ``first + r*cols + c``.

    ``token_scores[i]`` is max over every page row (prompt rows included): exactly token i's term of
    the MaxSim score, so ``token_scores.sum()`` is the page's score for this query.
    """
    if not (rows > 0 and cols > 0 and 0 <= first and first + rows * cols <= len(page)):
        raise InvalidInputError(f"a {rows}x{cols} grid from row {first} does not fit {len(page)} page rows")
    q, d = (torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in (query, page))
    # One torch thread: numpy's BLAS team took 0.02 ms median but 16 ms at p90 on a busy 2-core box
    # (threads waiting for cores); one thread is 0.03 ms every time.
    with torch_threads(1):
        sims = (q @ d.T).numpy()  # [L, T]
    maps = sims[:, first:first + rows * cols].reshape(len(sims), rows, cols)
    return np.ascontiguousarray(maps), sims.max(axis=1)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] of ``values`` in [0, 1] (0 dark, 1 hot)."""
    x = np.clip(np.asarray(values, np.float32), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_ANCHORS) - 2)
    t = (x - lo)[..., None]
    return np.rint(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def blend(image, grid: np.ndarray, alpha: float = 0.5, label: str | None = None):
    """``image`` (PIL) with the heat-map ``grid`` [rows, cols] stretched over the whole of it.

    Each cell keeps its square (nearest-neighbour: the map shows exactly the model's patches); values
    are scaled from the grid's minimum (coldest colour) to its maximum (hottest); a cell is tinted
    with weight ``alpha * (0.1 + 0.9 * scaled**2)`` (the whole grid shows; the best cells stand out).
    ``label`` is written in the top-left corner.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not 0 <= alpha <= 1:
        raise InvalidInputError(f"alpha: {alpha!r} (hint: a number in [0, 1])")
    grid = np.asarray(grid, np.float32)
    lo, hi = float(grid.min()), float(grid.max())
    scaled = (grid - lo) / (hi - lo) if hi > lo else np.ones_like(grid)
    base = image.convert("RGB")
    # Colours and weights per cell, stretched to the picture by PIL (C, nearest-neighbour) and blended by
    # Image.composite: ~10x faster than per-pixel numpy on an 827 x 1169 page.
    weight = np.rint(255 * alpha * (_FLOOR + (1 - _FLOOR) * scaled * scaled)).astype(np.uint8)
    stretch = lambda a: Image.fromarray(a).resize(base.size, Image.Resampling.NEAREST)  # noqa: E731
    result = Image.composite(stretch(heat_colors(scaled)), base, stretch(weight))
    if label:
        draw = ImageDraw.Draw(result, "RGBA")
        font = ImageFont.load_default(size=max(12, min(32, base.width // 30)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
        pad = max(3, (y1 - y0) // 3)
        draw.rectangle([0, 0, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad], fill=(255, 255, 255, 220))
        draw.text((pad - x0, pad - y0), label, fill=(0, 0, 0, 255), font=font)
    return result


@dataclass
class Explanation:
    """Why a page matched a query (made by ``Engine.explain``).

    ``tokens``: the query's tokens as text, aligned with ``maps`` (prompt/special tokens included);
    ``meaningful``: bool [L], the tokens that carry the query's words (not the "Query: " prefix,
    special tokens, spaces or punctuation; for an image query, its visual tokens);
    ``maps``: float32 [L, rows, cols], token i's similarity with each 28x28-px patch of the page;
    ``token_scores``: float32 [L], token i's term of the MaxSim score (max over all the page's rows);
    ``image``: the page (PIL) the overlay is drawn on; ``hit``: the hit explained;
    ``source``: ``"stored"`` (the index's own vectors) or ``"recomputed"`` (the model re-encoded the
    page image: ``note`` says why, e.g. an index made before patch layouts were recorded).

    >>> ex.overlay().save("why.png")                     # doctest: +SKIP
    >>> ex.overlay(token=" revenue", alpha=0.6)          # doctest: +SKIP
    """

    tokens: list[str]
    meaningful: np.ndarray
    maps: np.ndarray
    token_scores: np.ndarray
    image: Any = None
    hit: Any = None
    source: str = "stored"
    note: str = ""

    @property
    def score(self) -> float:
        """The page's MaxSim score for the query, from these vectors (== the hit's score when stored)."""
        return float(self.token_scores.sum())

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the page's patch grid."""
        return int(self.maps.shape[1]), int(self.maps.shape[2])

    def token_index(self, token: int | str) -> int:
        """Index of ``token``: an int index, or a token's text (its first occurrence, spaces ignored)."""
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            if not 0 <= token < len(self.tokens):
                raise InvalidInputError(f"token {token}: out of range (the query has {len(self.tokens)} tokens)")
            return int(token)
        if isinstance(token, str):
            for i, t in enumerate(self.tokens):
                if t == token or t.strip() == token.strip():
                    return i
            raise InvalidInputError(f"token {token!r}: not one of the query's tokens {self.tokens}")
        raise InvalidInputError(f"token: {type(token).__name__} (hint: an int index, a token's text, or None)")

    def combined(self, token: int | str | None = None) -> np.ndarray:
        """The map [rows, cols] of one token, or (None) the mean over the meaningful tokens."""
        if token is not None:
            return self.maps[self.token_index(token)]
        keep = self.meaningful if self.meaningful.any() else np.ones(len(self.tokens), bool)
        return self.maps[keep].mean(axis=0)

    def label(self, token: int | str | None = None) -> str:
        """The text written on an overlay: the token (quoted) and its score term, or "all query words"."""
        if token is None:
            return f"all query words (score {self.score:.3f})"
        i = self.token_index(token)
        return f"{self.tokens[i]!r} (max {self.token_scores[i]:.3f})"

    def overlay(self, token: int | str | None = None, alpha: float = 0.5):
        """The page with the heat-map of ``token`` (None: the meaningful tokens' mean) blended over it,
        labelled with the token's text; a PIL image of the page's size."""
        if self.image is None:
            raise InvalidInputError("overlay: this explanation has no page image to draw on")
        return blend(self.image, self.combined(token), alpha, self.label(token))
