"""What :func:`jevsearch.eval.evaluate` returns: one row per setting, as a table, JSON and a plot.

>>> r = EvalReport(rows=[{"setting": "two-stage c=50", "params": {"candidates": 50},
...                       "metrics": {"nDCG@5": 0.5}, "latency_ms": {"p50": 12.0, "p95": 20.0, "mean": 13.0, "n": 4}}],
...                metric_names=["nDCG@5"], k=10, depth=100, queries=4)
>>> print(r.table())
setting         nDCG@5  p50 ms  p95 ms
two-stage c=50  0.5000    12.0    20.0
<BLANKLINE>
4 queries; search latency only (query encoding not included)
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field

REPORT_JSON = "report.json"
PLOT_PNG = "quality_vs_latency.png"


@dataclass
class EvalReport:
    """rows: ``{"setting", "params", "metrics": {name: mean}, "latency_ms": {"p50", "p95", "mean", "n"},
    "per_query": {query id: {name: value}}}`` per setting, in the order given. metric_names: the metric columns. depth: results asked per search.
    encode_ms: the spread of one query's encoding with the model (None when queries came embedded)."""

    rows: list[dict]
    metric_names: list[str]
    k: int
    depth: int
    queries: int
    skipped_queries: int = 0
    encode_ms: dict | None = None
    dataset: str = ""
    index: dict = field(default_factory=dict)

    def table(self) -> str:
        """The rows as a plain-text table, with a line on what was measured."""
        heads = ["setting", *self.metric_names, "p50 ms", "p95 ms"]
        body = [[r["setting"], *(f"{r['metrics'][m]:.4f}" for m in self.metric_names),
                 f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p95']:.1f}"] for r in self.rows]
        widths = [max(len(row[i]) for row in [heads, *body]) for i in range(len(heads))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                 for row in [heads, *body]]
        note = f"{self.queries} queries"
        if self.skipped_queries:
            note += f" ({self.skipped_queries} without a relevant document skipped)"
        if self.index.get("pages") is not None:
            note += f", {self.index['pages']} pages indexed"
        if self.index.get("model_dtype"):
            note += f", model in {self.index['model_dtype']}"
        note += "; search latency only (query encoding "
        note += (f"p50 {self.encode_ms['p50']:.1f} ms, not included)" if self.encode_ms else "not included)")
        return "\n".join(lines) + "\n\n" + note

    def to_dict(self) -> dict:
        """Everything in the report, JSON-ready."""
        return asdict(self)

    def save(self, out_dir) -> list[str]:
        """Write ``report.json`` and ``quality_vs_latency.png`` into ``out_dir`` (created if needed);
        returns their paths."""
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, REPORT_JSON)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        png = os.path.join(out_dir, PLOT_PNG)
        self.plot(png)
        return [path, png]

    def plot(self, path) -> None:
        """Write :meth:`figure` as a PNG (matplotlib, Agg)."""
        self.figure().savefig(os.fspath(path), format="png")

    def figure(self):
        """nDCG@5 against p50 search latency, one labelled point per setting (a matplotlib Figure, no pyplot).

        The two-stage settings that differ only in ``candidates`` are joined by a line, in that order:
        the curve to read a ``candidates`` off. It and its legend entry are drawn only where the line
        shows beside the points (settings of one quality and latency hide it under their markers).
        """
        from jevsearch.eval.datasets import require

        require("matplotlib", "plotting the report")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.5, 4.8), dpi=120)
        FigureCanvasAgg(fig)  # no pyplot: no global figure state, no GUI backend
        ax = fig.add_subplot()
        xs = [r["latency_ms"]["p50"] for r in self.rows]
        ys = [r["metrics"]["nDCG@5"] for r in self.rows]
        ax.scatter(xs, ys, color="tab:blue", zorder=2, s=_MARKER ** 2)
        if xs and max(xs) > 20 * max(min(xs), 1e-3):
            ax.set_xscale("log")  # single-vector and exhaustive searches are orders of magnitude apart
        ax.margins(x=0.12, y=0.25)  # room for the labels inside the axes
        ax.set_xlabel("p50 search latency (ms)")
        ax.set_ylabel("nDCG@5")
        name = os.path.basename(self.dataset.rstrip("/")) if self.dataset else "dataset"
        ax.set_title(f"{name}: {self.queries} queries, {self.index.get('pages', '?')} pages", fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        curve = sorted((r["params"]["candidates"], x, y) for r, x, y in zip(self.rows, xs, ys)
                       if set(r["params"]) == {"candidates"})
        line = [(c[1], c[2]) for c in curve]
        if not _shows(ax, fig, line):
            line = []
        else:
            ax.plot([c[1] for c in curve], [c[2] for c in curve], "-", color="0.55", lw=1.2, zorder=1,
                    label="two-stage, by candidates")
            ax.legend(loc="lower right", fontsize=8)
        _label(fig, ax, xs, ys, [r["setting"] for r in self.rows], line)
        return fig


_MARKER = 6  # points: the scatter markers' diameter
# Where a label may go, in points from its point: right, then above, below, further out, then left.
_OFFSETS = ((6, 3), (6, -11), (6, 13), (6, -21), (6, 23), (-6, 3), (-6, -11), (-6, 13), (-6, -21))


def _shows(ax, fig, points) -> bool:
    """Whether a line through ``points`` (data coordinates) is visible for at least a few pixels
    outside the markers drawn on them."""
    if len(points) < 2:
        return False
    import numpy as np

    ax.autoscale_view()
    px = ax.transData.transform(points)
    radius = _MARKER / 2 * fig.dpi / 72
    lengths = np.hypot(*np.diff(px, axis=0).T)
    return float(np.clip(lengths - 2 * radius, 0, None).sum()) >= 3 * radius


def _label(fig, ax, xs, ys, labels, line=()) -> None:
    """Annotate each point, taking the first offset whose text stays inside the axes and overlaps no point,
    no label so far and not the ``line`` drawn (checked with the renderer: close points, e.g. several
    settings at nDCG 1.0, stay legible, and a label never runs past the figure's edge)."""
    import numpy as np

    renderer = fig.canvas.get_renderer()
    ax.autoscale_view()
    centres = ax.transData.transform(list(zip(xs, ys)))
    frame = ax.get_window_extent(renderer)
    taken = [(cx - 4, cy - 4, cx + 4, cy + 4) for cx, cy in centres]  # the markers, in pixels
    if len(line) > 1:  # the line as small boxes every few pixels
        px = ax.transData.transform(line)
        for a, b in itertools.pairwise(px):
            for t in np.linspace(0, 1, max(2, int(np.hypot(*(b - a)) // 4))):
                x, y = a + t * (b - a)
                taken.append((x - 1, y - 1, x + 1, y + 1))
    for i in sorted(range(len(xs)), key=lambda i: xs[i]):
        for dx, dy in _OFFSETS:
            ann = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                              ha="left" if dx > 0 else "right", va="center")
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.x0 < b[2] and b[0] < box.x1 and box.y0 < b[3] and b[1] < box.y1 for b in taken):
                break
            if (dx, dy) != _OFFSETS[-1]:
                ann.remove()
        taken.append((box.x0, box.y0, box.x1, box.y1))
