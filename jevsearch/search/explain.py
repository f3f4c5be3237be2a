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

A text passage's rows are its ``Passage:`` prompt and then its own tokens: :class:`PassageExplanation`
names, per query token, the passage word it matched best (the same ``q_i . d_j``, over words, not patches).

Heat-maps are drawn for people on white pages: a map is coloured on its own range, from its median to
its best patch; cells in the lower half of that range are not tinted, and the rest runs from orange to a
dark purple-red (:func:`blend`; :func:`legend` draws the key with the same code). The "all query words"
map is, per patch, the best of the words' similarities; the numbers (:meth:`Explanation.label`) say how
strong each word's match is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jevsearch.errors import InvalidInputError
from jevsearch.search.threads import torch_threads

# Colour ramp (threshold -> hottest), interpolated linearly: orange to deep purple-red, every step darker
# than the last, so it reads on a white page, in greyscale and for colour-blind readers.
_ANCHORS = np.array([(255, 160, 0), (240, 90, 20), (190, 20, 50), (110, 0, 80)], np.float32)
#: Cells below this share of the query's similarity range stay untinted: the page shows through.
THRESHOLD = 0.5
#: Opacity of the weakest drawn cell relative to the hottest: a visible step at the threshold.
_FIRST_WEIGHT = 0.45
_MAX_MARKED = 24  # query tokens whose matches a passage marks at most
#: Default opacity of the hottest cells.
ALPHA = 0.7


def patch_maps(query: np.ndarray, page: np.ndarray, first: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 [L, rows, cols], token_scores float32 [L]) of query tokens ``query`` [L, d]
    against a page's multi-vectors ``page`` [T, d] whose grid cell (r, c) is row ``first + r*cols + c``.

    ``token_scores[i]`` is max over every page row (prompt rows included): exactly token i's term of
    the MaxSim score, so ``token_scores.sum()`` is the page's score for this query.
    """
    if not (rows > 0 and cols > 0 and 0 <= first and first + rows * cols <= len(page)):
        raise InvalidInputError(f"a {rows}x{cols} grid from row {first} does not fit {len(page)} page rows")
    sims = similarities(query, page)
    maps = sims[:, first:first + rows * cols].reshape(len(sims), rows, cols)
    return np.ascontiguousarray(maps), sims.max(axis=1)


def similarities(query: np.ndarray, page: np.ndarray) -> np.ndarray:
    """float32 [L, T]: each query token [L, d] against each page row [T, d]."""
    q, d = (torch.from_numpy(np.array(x, np.float32)) for x in (query, page))  # writable copies
    # One torch thread: BLAS threads wait for cores on a busy machine, a long tail one thread avoids
    # (benchmarks/RESULTS.md).
    with torch_threads(1):
        return (q @ d.T).numpy()


def heat_colors(values: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] of ``values`` in [0, 1]: 0 the colour at :data:`THRESHOLD`, 1 the hottest."""
    x = np.clip(np.asarray(values, np.float32), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_ANCHORS) - 2)
    t = (x - lo)[..., None]
    return np.rint(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def heat_weights(grid: np.ndarray, scale: tuple[float, float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(colours uint8 [..., 3], opacity uint8 [...]) of similarities ``grid`` on the range ``scale`` = (lo, hi):
    below lo + THRESHOLD * (hi - lo) opacity 0; from there to hi the colour ramp, opacity
    ``alpha * (0.45 .. 1)``."""
    lo, hi = scale
    x = (np.asarray(grid, np.float32) - lo) / (hi - lo) if hi > lo else np.ones(np.shape(grid), np.float32)
    t = np.clip((x - THRESHOLD) / (1 - THRESHOLD), 0, 1)
    weight = np.where(x >= THRESHOLD, 255 * alpha * (_FIRST_WEIGHT + (1 - _FIRST_WEIGHT) * t), 0)
    return heat_colors(t), np.rint(weight).astype(np.uint8)


def blend(image, grid: np.ndarray, alpha: float = ALPHA, label: str | None = None,
          scale: tuple[float, float] | None = None):
    """``image`` (PIL) with the heat-map ``grid`` [rows, cols] stretched over the whole of it.

    Each cell keeps its square (nearest-neighbour: the map shows exactly the model's patches). ``scale``
    (lo, hi), by default the grid's own min and max, places values: cells under :data:`THRESHOLD` of
    the range are not tinted, the others are coloured on the ramp with opacity up to ``alpha`` (see
    :func:`heat_weights`). ``label`` is written in the corner where it hides the least of the map.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not 0 <= alpha <= 1:
        raise InvalidInputError(f"alpha: {alpha!r} (hint: a number in [0, 1])")
    grid = np.asarray(grid, np.float32)
    colours, weight = heat_weights(grid, scale or (float(grid.min()), float(grid.max())), alpha)
    base = image.convert("RGB")
    # Colours and weights per cell, stretched to the picture by PIL (C, nearest-neighbour) and blended by
    # Image.composite: far faster than per-pixel numpy (benchmarks/RESULTS.md).
    stretch = lambda a: Image.fromarray(a).resize(base.size, Image.Resampling.NEAREST)  # noqa: E731
    tint = stretch(weight)
    result = Image.composite(stretch(colours), base, tint)
    if label:
        draw = ImageDraw.Draw(result, "RGBA")
        font = ImageFont.load_default(size=max(12, min(32, base.width // 30)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
        pad = max(3, (y1 - y0) // 3)
        w, h = min(base.width, x1 - x0 + 2 * pad), min(base.height, y1 - y0 + 2 * pad)
        # The corner whose box hides the least of the map (the best patches are what the picture is for).
        tints = np.asarray(tint, np.float32)
        corners = [(0, 0), (base.width - w, 0), (0, base.height - h), (base.width - w, base.height - h)]
        x, y = min(corners, key=lambda c: tints[c[1]:c[1] + h, c[0]:c[0] + w].sum())
        draw.rectangle([x, y, x + w, y + h], fill=(255, 255, 255, 220))
        draw.text((x + pad - x0, y + pad - y0), label, fill=(0, 0, 0, 255), font=font)
    return result


def legend(alpha: float = ALPHA, width: int = 300, height: int = 12):
    """The colour key of :func:`blend` at ``alpha``: its own output over a white strip whose values run
    from the threshold (left: the faintest tint drawn) to the top of the range (right), so it shows
    exactly the colours maps use."""
    from PIL import Image

    ramp = np.linspace(THRESHOLD, 1, width, dtype=np.float32)[None, :]
    return blend(Image.new("RGB", (width, height), "white"), ramp, alpha, scale=(0.0, 1.0))


def token_text(label: str) -> str:
    """A token as people read it: no surrounding spaces (BPE tokens carry the space before their word).

    >>> token_text(" revenue"), token_text(" ")
    ('revenue', '␣')
    """
    return label.strip() or "␣"


class _QueryTokens:
    """What page and passage explanations share: the query's tokens, their terms of the score, and one
    wording for them (chips, image labels and the CLI print :meth:`label`)."""

    tokens: list[str]
    meaningful: np.ndarray
    token_scores: np.ndarray

    @property
    def score(self) -> float:
        """The page's MaxSim score for the query, from these vectors (== the hit's score when stored)."""
        return float(self.token_scores.sum())

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
            raise InvalidInputError(f"token {token!r}: not one of the query's tokens "
                                    f"{[token_text(t) for t in self.tokens]}")
        raise InvalidInputError(f"token: {type(token).__name__} (hint: an int index, a token's text, or None)")

    def _words(self) -> np.ndarray:
        return self.meaningful if self.meaningful.any() else np.ones(len(self.tokens), bool)

    @property
    def unit(self) -> str:
        """What the meaningful tokens are: the words of a text query or the patches of an image query."""
        return "patches" if any(t.startswith("patch ") for t in self.tokens) else "words"

    def label(self, token: int | str | None = None) -> str:
        """``"revenue 0.139"``: the token and its term of the score; None: ``"all query words 0.553"``,
        the sum of the words' terms (the rest of the score is the prompt's: :meth:`summary`)."""
        if token is None:
            return f"all query {self.unit} {float(self.token_scores[self._words()].sum()):.3f}"
        i = self.token_index(token)
        return f"{token_text(self.tokens[i])} {float(self.token_scores[i]):.3f}"

    def summary(self) -> str:
        """How the score splits between the query's words and its other tokens (the ``Query:`` prompt,
        punctuation, an image prompt's special tokens), which carry a share of every page's score.

        >>> ex = Explanation(["Query", ":", " tax"], np.array([False, False, True]), np.zeros((3, 1, 1)),
        ...                  np.array([0.3, 0.1, 0.2]))
        >>> ex.summary()
        'score 0.600 = 0.200 from the query words + 0.400 from the prompt and other tokens (Query, :)'
        """
        words = self._words()
        rest = [token_text(t) for t, w in zip(self.tokens, words) if not w]
        shown = ", ".join(dict.fromkeys(rest[:8])) + (", ..." if len(rest) > 8 else "")
        if not rest:
            return f"score {self.score:.3f} (all from the query's tokens)"
        return (f"score {self.score:.3f} = {float(self.token_scores[words].sum()):.3f} from the query {self.unit} + "
                f"{float(self.token_scores[~words].sum()):.3f} from the prompt and other tokens ({shown})")


@dataclass
class Explanation(_QueryTokens):
    """Why a page matched a query (made by ``Engine.explain``).

    ``tokens``: the query's tokens as text, aligned with ``maps`` (prompt/special tokens included;
    :func:`token_text` for display); ``meaningful``: bool [L], the tokens that carry the query's words
    (not the "Query: " prefix, special tokens, spaces or punctuation; for an image query, its visual
    tokens); ``maps``: float32 [L, rows, cols], token i's similarity with each 28x28-px patch of the page;
    ``token_scores``: float32 [L], token i's term of the MaxSim score (max over all the page's rows);
    ``image``: the page (PIL) the overlay is drawn on; ``hit``: the hit explained;
    ``source``: ``"stored"`` (the index's own vectors) or ``"recomputed"`` (the model re-encoded the
    page image: ``note`` says why, e.g. an index made before patch layouts were recorded).

    >>> ex.overlay().save("why.png")                     # doctest: +SKIP
    >>> ex.overlay(token="revenue", alpha=0.6)           # doctest: +SKIP
    """

    tokens: list[str]
    meaningful: np.ndarray
    maps: np.ndarray
    token_scores: np.ndarray
    image: Any = None
    hit: Any = None
    source: str = "stored"
    note: str = ""
    kind = "page"

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the page's patch grid."""
        return int(self.maps.shape[1]), int(self.maps.shape[2])

    def scale(self, token: int | str | None = None) -> tuple[float, float]:
        """(lo, hi) that :meth:`overlay` colours the map of ``token`` (None: all query words) on: its
        median and its maximum. Cells under halfway between them are not tinted, so at most half of the
        page (in practice a few patches) is ever coloured; the best patch always is."""
        grid = self.combined(token)
        return float(np.median(grid)), float(grid.max())

    def combined(self, token: int | str | None = None) -> np.ndarray:
        """The map [rows, cols] of one token, or (None) where any query word matches best: the max over
        the meaningful tokens' maps."""
        if token is not None:
            return self.maps[self.token_index(token)]
        return self.maps[self._words()].max(axis=0)

    def overlay(self, token: int | str | None = None, alpha: float = ALPHA):
        """The page with the heat-map of ``token`` (None: all query words) blended over it on its
        :meth:`scale`, labelled with :meth:`label`; a PIL image of the page's size."""
        if self.image is None:
            raise InvalidInputError("overlay: this explanation has no page image to draw on")
        return blend(self.image, self.combined(token), alpha, self.label(token), self.scale(token))


@dataclass
class PassageExplanation(_QueryTokens):
    """Why a text passage (a .txt/.md document's "page") matched a query: which passage tokens each
    query token matched (made by ``Engine.explain`` for a hit whose ``metadata["kind"] == "text"``).

    ``tokens``, ``meaningful``, ``token_scores``: as in :class:`Explanation`; ``passage``: the passage
    text; ``spans``: int [P, 2], the character span in ``passage`` of each passage row (-1, -1 for rows
    of the ``Passage:`` prompt); ``sims``: float32 [L, P], query token i against passage row j.

    >>> ex.matches("revenue")                            # doctest: +SKIP
    [('revenues', 0.41)]
    """

    tokens: list[str]
    meaningful: np.ndarray
    token_scores: np.ndarray
    passage: str
    spans: np.ndarray
    sims: np.ndarray
    hit: Any = None
    note: str = ""
    source = "stored"
    kind = "text"

    def best(self, token: int | str) -> int | None:
        """The passage row (a passage token, not the prompt) that ``token`` matches best; None if none."""
        i = self.token_index(token)
        rows = np.nonzero(self.spans[:, 0] >= 0)[0]
        return int(rows[self.sims[i, rows].argmax()]) if len(rows) else None

    def _word_span(self, row: int) -> tuple[int, int]:
        """The whole word around passage row ``row`` (a token may be a piece of one)."""
        a, b = (int(x) for x in self.spans[row])
        while a < b and self.passage[a].isspace():
            a += 1
        if not any(ch.isalnum() for ch in self.passage[a:b]):  # punctuation: itself, not the word beside it
            return a, b
        while a > 0 and self.passage[a - 1].isalnum():
            a -= 1
        while b < len(self.passage) and self.passage[b].isalnum():
            b += 1
        return a, b

    def matches(self, token: int | str) -> list[tuple[str, float]]:
        """[(the passage word that ``token`` matched best, their similarity)] ([] when the passage has
        no tokens)."""
        row = self.best(token)
        if row is None:
            return []
        a, b = self._word_span(row)
        return [(self.passage[a:b], round(float(self.sims[self.token_index(token), row]), 4))]

    def from_prompt(self, token: int | str) -> bool:
        """Whether ``token``'s term of the score is its similarity with a ``Passage:`` prompt row rather
        than with a word of the passage (the prompt is part of every passage's vectors)."""
        i = self.token_index(token)
        return bool(self.spans[int(self.sims[i].argmax()), 0] < 0)

    def marks(self, token: int | str | None = None) -> list[tuple[int, int, list[int]]]:
        """(start, end, query token indices) of the passage spans to mark for ``token`` (None: every
        meaningful token), in passage order, overlapping words merged."""
        chosen = [self.token_index(token)] if token is not None else np.nonzero(self._words())[0].tolist()
        if len(chosen) > _MAX_MARKED:  # an image query: its hundreds of patch tokens would mark every word
            chosen = sorted(chosen, key=lambda i: -float(self.token_scores[i]))[:_MAX_MARKED]
        spans: dict[tuple[int, int], list[int]] = {}
        for i in chosen:
            row = self.best(i)
            if row is not None:
                spans.setdefault(self._word_span(row), []).append(int(i))
        return [(a, b, ids) for (a, b), ids in sorted(spans.items())]

    def overlay(self, token=None, alpha: float = ALPHA):
        raise InvalidInputError("overlay: explain draws page images; this hit is a text passage (hint: "
                                "ex.matches(token) names the passage words each query token matched)")
