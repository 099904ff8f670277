"""How does the critical batch change during training? From each run's branching record (RUN_DIR/branches.json,
`scaling branch`: docs/branching.md), the critical batch measured at each branch point (CBS(t), Merrill et al.
2025) beside the gradient noise scale B_simple the same run probed there (McCandlish et al. 2018), and where
the two disagree: the findings, this question's section and its plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from scaling.branching import BRANCHES_FILE
from scaling.report import formatting as fmt
from scaling.report.finding import OBSERVATION, Finding, answers
from scaling.report.plots import log_y, new_figure, save
from scaling.report.render import Block, Figure, Heading, Note, Table
from scaling.report.runs import Run
from scaling.report.study import Study, per_study

QUESTION = "How does the critical batch change during training?"
PLOT = "critical_batch_over_training"
# B_simple and the measured critical batch disagree when B_simple lies beyond this factor outside the bracket
# (McCandlish et al. 2018 found B_simple within an order of magnitude of B_crit; a factor 2 is a doubling).
DISAGREE_FACTOR = 2.0


@dataclass
class Record:
    run: Run
    data: dict

    @property
    def points(self) -> list[dict]:
        return sorted(self.data.get("points") or [], key=lambda p: p.get("step", 0))


def disagreement(point: dict) -> str | None:
    """How B_simple at the point sits against the bracket of the measured critical batch, when it lies beyond
    DISAGREE_FACTOR outside it; None when it agrees (or was not measured)."""
    b_simple, (low, high) = point.get("b_simple"), point.get("bracket") or (None, None)
    if not isinstance(b_simple, int | float) or not math.isfinite(b_simple) or b_simple <= 0 or low is None:
        return None
    if high is not None and b_simple > DISAGREE_FACTOR * high:
        return "above"
    if b_simple < low / DISAGREE_FACTOR:
        return "below"
    return None


@per_study
def records_of(study: Study) -> list[Record]:
    out = []
    for run in study.runs:
        path = run.folder / BRANCHES_FILE if run.folder is not None else None
        if path is None or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("points"), list):
            out.append(Record(run, data))
    return out


def _bracket_text(point: dict, reference_batch: int | None = None) -> str:
    """`64–128`; `≥ 512` when every batch tried kept up; `< 32` when even the smallest branch fell behind (no
    batch below the run's own was tried)."""
    low, high = point["bracket"]
    if high is None:
        return f"≥ {low}"
    if low == reference_batch:
        return f"< {high}"
    return f"{low}–{high}"


def over_training(study: Study) -> list[Finding]:
    out = []
    for record in records_of(study):
        points = [p for p in record.points if p.get("bracket")]
        if len(points) < 2:
            continue
        first, last = points[0], points[-1]
        lows = [p["critical_batch"] for p in points]
        trend = ("rises" if lows[-1] > lows[0] else "falls" if lows[-1] < lows[0] else "stays")
        batch = record.data.get("batch")
        text = (f"{record.run.id}: the critical batch measured by branching {trend} from {_bracket_text(first, batch)} "
                f"at {first['samples']:,} samples to {_bracket_text(last, batch)} at {last['samples']:,}")
        apart = [(p, disagreement(p)) for p in points]
        apart = [(p, side) for p, side in apart if side is not None]
        if apart:
            text += ("; B_simple disagrees at " + ", ".join(
                f"{p['samples']:,} samples ({fmt.sig(p['b_simple'])}, {side} the bracket)" for p, side in apart))
        elif any(p.get("b_simple") for p in points):
            text += f"; B_simple lies within {DISAGREE_FACTOR:g}x of the bracket at every point"
        out.append(Finding(f"critical_batch_over_training[{record.run.id}]", text + ".", kind=OBSERVATION,
                           n_seeds=1, numbers={"points": [{k: p.get(k) for k in ("step", "samples", "b_simple",
                                                                                 "critical_batch", "bracket")}
                                                          for p in points]}))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    records = records_of(study)
    if not records:
        return blocks + [Note("No run has a branching record (`scaling branch RUN_DIR`, docs/branching.md): the "
                              "critical batch was not measured during training.")]
    rows = []
    for record in records:
        for point in record.points:
            branches = ", ".join(f"{b['batch']}{'✓' if b['kept_up'] else '✗'}" for b in point.get("branches", []))
            side = disagreement(point)
            rows.append([record.run.id, f"{point['step']:,}", f"{point['samples']:,}",
                         fmt.sig(point["b_simple"]) if point.get("b_simple") else fmt.DASH,
                         _bracket_text(point, record.data.get("batch")),
                         branches, f"{point['tolerance']:.3g}", {"above": "B_simple above", "below": "B_simple below",
                                                                  None: "agree"}[side]])
    blocks.append(Table(["run", "step", "samples", "B_simple (probe)", "critical batch", "branches (✓ kept up)",
                         "tolerance", "B_simple vs bracket"], rows))
    blocks.append(Note(
        "Critical batch: the largest batch whose evaluation loss, averaged over the second half of a window of "
        "samples after the point, stayed within the tolerance of the controls at the run's batch (a 99% "
        "prediction bound over data orders), every smaller batch keeping up too; ≥ when every batch tried kept "
        f"up, < when even the smallest branch fell behind. B_simple: the run's probe at the point's weights. They disagree when B_simple lies more than "
        f"{DISAGREE_FACTOR:g}x outside the bracket (docs/branching.md)."))
    path = _plot(study, records)
    if path is not None:
        blocks.append(Figure(path, "The critical batch measured by branching (bars: the bracket, from the largest "
                                   "batch that kept up to the first that did not; a triangle: every batch kept up, at least that) "
                                   "and B_simple probed at the same points, against samples trained."))
    return blocks + answers(over_training(study), "Fewer than two branch points: no trend to report.")


def _plot(study: Study, records: list[Record]):
    figure, ax = new_figure(8.0, 4.8)
    drawn = False
    for index, record in enumerate(records):
        points = record.points
        xs = [p["samples"] for p in points]
        lows = [p["bracket"][0] for p in points]
        color = f"C{index % 10}"
        ax.plot(xs, lows, "o-", color=color, label=f"{record.run.id}: critical batch (branching)")
        for x, (low, high) in zip(xs, (p["bracket"] for p in points), strict=True):
            if high is not None:
                ax.plot([x, x], [low, high], color=color, alpha=0.5, linewidth=4)
            else:
                ax.plot([x], [low], marker="^", markersize=13, color=color, alpha=0.6)
        simple = [(p["samples"], p["b_simple"]) for p in points if p.get("b_simple") and p["b_simple"] > 0]
        if simple:
            ax.plot(*zip(*simple, strict=True), "s--", color=color, alpha=0.7, label=f"{record.run.id}: B_simple (probe)")
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("samples trained")
    ax.set_ylabel("batch size")
    log_y(ax)
    ax.legend(fontsize=8)
    return save(study, figure, PLOT)
