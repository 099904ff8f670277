"""What every plot shares: the figure, saving it, the axes (global batch on log2, log axes with plain tick
labels), colours per series, and the marks for batches that did not reach the target. The plots themselves
belong to their questions (scaling/report/questions/): each writes OUT_DIR/<name>.png with `save`, which
records it in `study.figures`, and returns its path, or returns None when the study has no data for it.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend switch, so the
report neither needs a display nor disturbs a caller's own matplotlib session.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from scaling.files import refuse_link, write_bytes_atomic
from scaling.report.aggregates import Point
from scaling.report.study import Study

LINESTYLES = ("-", "--", ":", "-.")


def new_figure(width: float = 7.0, height: float = 4.5):
    """A matplotlib Figure on an Agg canvas, and its one Axes."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save(study: Study, figure, name: str) -> Path:
    """The figure as OUT_DIR/<name>.png, atomically and never through a link (scaling.files)."""
    path = study.out_dir / f"{name}.png"
    refuse_link(path)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, png.getvalue())
    study.figures[name] = path
    return path


# At most this many labelled ticks on a log axis: more overlap at the report's figure sizes.
MAX_LOG_TICKS = 8
# Mantissas of labelled ticks on a log axis, coarsest first: the first set that gives 3+ ticks in the range.
NICE_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
                                                                          6.0, 8.0))


def plain_number(value: float) -> str:
    """`50,000`, `2.5`, `0.04`: one style for every tick of every log axis (no 1e+05 next to 90,000)."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Labelled ticks for a log axis over [low, high]: 1-2-5 style values, at least 3 when the range allows,
    at most MAX_LOG_TICKS (every other decade over a wide range)."""
    if not (low > 0 and high > low):
        return []
    first, last = math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1
    ticks: list[float] = []
    for mantissas in NICE_MANTISSAS:
        ticks = [m * 10.0 ** k for k in range(first, last + 1) for m in mantissas
                 if low <= m * 10.0 ** k <= high * (1 + 1e-9)]
        if len(ticks) >= 3:
            break
    step = 1
    while len(ticks[::step]) > MAX_LOG_TICKS:
        step += 1
    return ticks[::step]


def batch_axis(ax) -> None:
    """Global batch on a log2 axis, labelled with plain integers at powers of two (every other one when there
    are too many to fit)."""
    ax.set_xscale("log", base=2)
    low, high = ax.get_xlim()
    powers = [2 ** k for k in range(max(0, math.floor(math.log2(max(low, 1)))), math.ceil(math.log2(high)) + 1)
              if low <= 2 ** k <= high]
    step = 1
    while len(powers[::step]) > 10:
        step += 1
    if powers:
        ax.xaxis.set_major_locator(FixedLocator(powers[::step]))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("global batch size")
    ax.grid(True, which="major", alpha=0.3)


def log_axis(ax, which: str = "y") -> None:
    """A log axis with non-overlapping labels in one style and one size (log_ticks, plain_number); minor ticks
    unlabelled. Call it after the data are drawn: the ticks follow the axis range."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    ticks = log_ticks(low, high)
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
    axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", axis=which, alpha=0.3)


def log_y(ax) -> None:
    log_axis(ax, "y")


def seeds_phrase(counts: list[int]) -> str:
    """` (mean ± std over 3 seeds)` for a plot title; empty when no point has more than one seed, so that a
    single measurement is never presented as a mean."""
    counts = [n for n in counts if n]
    if not counts or max(counts) <= 1:
        return ""
    low, high = min(counts), max(counts)
    return f" (mean ± std over {low} seeds)" if low == high else f" (mean ± std over {low}–{high} seeds)"


def spread_caption(study: Study) -> str:
    """`, mean ± std over seeds` in a caption, only when some configuration has several seeds."""
    return "" if study.one_seed else ", mean ± std over seeds"


def series_colors(study: Study) -> dict[str, str]:
    palette = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#ff7f0e")
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(study.series))}


def missed_batches(points: list[Point], series: str, missed: dict[str, list[int]]) -> None:
    """Collect, per series, the batches where no run reached the target."""
    batches = [p.batch for p in points if not p.any_reached]
    if batches:
        missed[series] = batches


def draw_missed(ax, missed: dict[str, list[int]], colors: dict[str, str]) -> list:
    """Batches where no run reached the target: an x in the series' colour in a row above the frame, outside
    the data area, so that it cannot be read as a measured value. Returns the legend handles."""
    for row, (series, batches) in enumerate(missed.items()):
        ax.plot(batches, [1.04 + 0.05 * row] * len(batches), "x", color=colors.get(series, "#555555"),
                markersize=8, mew=2, transform=ax.get_xaxis_transform(), clip_on=False)
    if not missed:
        return []
    return [Line2D([], [], ls="", marker="x", color="#555555", mew=2,
                   label="above the frame: did not reach the target")]


def mark_partial(ax, points: list[Point], value, color: str) -> bool:
    """Hollow markers over batches where some seed missed the target: the value is that of the seeds that
    reached it, not of the configuration. True when any was drawn."""
    partial = [p for p in points if p.any_reached and not p.all_reached and value(p) is not None]
    if partial:
        ax.plot([p.batch for p in partial], [value(p) for p in partial], "o", markersize=9, markerfacecolor="white",
                markeredgecolor=color, markeredgewidth=1.8, zorder=5)
    return bool(partial)


PARTIAL_HANDLE = Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="#555555",
                        markeredgewidth=1.8, label="hollow: not every seed reached the target")


def raised_title(ax, text: str, missed: dict[str, list[int]]) -> None:
    """The title, raised above the row(s) of not-reached marks."""
    ax.set_title(text, pad=6 + 14 * len(missed))
