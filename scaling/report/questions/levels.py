"""How does the critical batch depend on the target? From the same runs, the exact first step at each of
--target-levels (result `target_levels`) gives a steps-to-target curve per level, so S(B), E(B) and the critical
batch are fitted at each level as at the target itself (critical_batch_fits.py: McCandlish et al. 2018), and the
critical batch plotted against the level: Kaplan et al. 2020's B_crit(L), which grows as the loss falls.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from scaling.report import formatting as fmt
from scaling.report.aggregates import series_points
from scaling.report.finding import ESTIMATE, Finding, answers
from scaling.report.plots import log_y, new_figure, save
from scaling.report.questions import critical_batch_fits
from scaling.report.render import Block, Figure, Heading, Note, Table
from scaling.report.runs import Configuration, Run
from scaling.report.study import Study, per_study
from scaling.targets import Target, easiest_first

QUESTION = "How does the critical batch depend on the target?"
PLOT = "critical_batch_by_level"


def level_view(run: Run, level: dict) -> Run:
    """The run as if its target had been `level` (a `target_levels` entry): reached at the level's exact first
    step, or not. Its noise scale at the target is left out (it was probed at the target, not at the level)."""
    result = dict(run.result)
    target = result.get("target") or {}
    reached = level.get("steps_to_target") is not None
    result.update(status="reached" if reached else "not_reached",
                  target={**target, "value": level["value"]},
                  steps_to_target=level.get("steps_to_target"), samples_to_target=level.get("samples_to_target"),
                  epochs_to_target=level.get("epochs_to_target"), time_to_target_s=level.get("time_to_target_s"),
                  train_time_to_target_s=level.get("train_time_to_target_s"),
                  steps_to_target_resolution=level.get("steps_to_target_resolution"), first_eval_at_target=None,
                  noise_scale={**(result.get("noise_scale") or {}), "b_simple_at_target": None})
    return dataclasses.replace(run, status=result["status"], result=result)


@dataclass
class LevelFit:
    target: Target
    fits: list  # critical_batch_fits.SeriesFit, one per series with enough batches


@per_study
def fits_by_level(study: Study) -> list[LevelFit]:
    """One fit per level of the study's target metric held by the runs (each level as its own target), and
    the target's own fit; easiest first."""
    target = study.target
    if target is None:
        return []
    configurations = [c for c in study.chasing if not study.other_target(c)]
    values = sorted({level["value"] for c in configurations for run in c.runs
                     for level in (run.get("target_levels") or []) if isinstance(level, dict)})
    if not values:
        return []
    out = []
    for level_target in easiest_first([Target(target.metric, v) for v in values]):
        views = []
        for configuration in configurations:
            runs = []
            for run in configuration.runs:
                level = next((entry for entry in run.get("target_levels") or []
                              if entry.get("value") == level_target.value), None)
                if level is not None:
                    runs.append(level_view(run, level))
            if runs:
                views.append(Configuration(configuration.settings, runs, configuration.series, configuration.label))
        series = series_points(views)
        analysis = critical_batch_fits.analyse([run for c in views for run in c.runs], series, study.rules,
                                               require_noise=False)
        out.append(LevelFit(level_target, analysis.fits))
    own = critical_batch_fits.analyse(study.target_runs, study.series, study.rules, require_noise=False)
    out.append(LevelFit(target, own.fits))
    return out


def levels(study: Study) -> list[Finding]:
    found = fits_by_level(study)
    series = sorted({fit.series for level in found for fit in level.fits})
    out = []
    for name in series:
        estimates = [(level.target, next((f for f in level.fits if f.series == name), None)) for level in found]
        estimates = [(t, f) for t, f in estimates if f is not None]
        if len(estimates) < 2:
            continue
        parts = [f"{t.label()}: {fmt.estimate_text(f.b_crit)}" for t, f in estimates]
        decided = [(t, f) for t, f in estimates if f.decided]
        text = f"{'' if name == 'all' else name + ': '}the critical batch at each level of the target: " + "; ".join(parts)
        if len(decided) >= 2:
            first, last = decided[0], decided[-1]
            trend = "grows" if last[1].b_crit.value > first[1].b_crit.value else "does not grow"
            text += (f"; it {trend} from {fmt.sig(first[1].b_crit.value)} ({first[0].label()}) to "
                     f"{fmt.sig(last[1].b_crit.value)} ({last[0].label()}) among the informative fits")
        else:
            text += "; fewer than two levels have an informative fit: no trend is decided"
        out.append(Finding(f"critical_batch_by_level{'' if name == 'all' else f'[{name}]'}", text + ".",
                           decided=len(decided) >= 2, kind=ESTIMATE,
                           numbers={"series": name, "levels": [
                               {"metric": t.metric, "value": t.value, "b_crit": f.b_crit.value,
                                "interval": f.interval, "decided": f.decided} for t, f in estimates]}))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    found = fits_by_level(study)
    if not found:
        return blocks + [Note("No run recorded --target-levels: the critical batch is fitted at the target only.")]
    rows = []
    for level in found:
        if not level.fits:
            rows.append([level.target.label(), fmt.DASH, "too few batch sizes reached it", fmt.DASH, fmt.DASH])
        for fit in level.fits:
            interval = fit.interval
            rows.append([level.target.label(), fit.series, fmt.estimate_text(fit.b_crit),
                         f"{fmt.sig(interval[0])}–{fmt.sig(interval[1])}" if interval else fmt.DASH,
                         "yes" if fit.decided else "no"])
    blocks.append(Table(["level", "series", "critical batch B_crit", "interval", "decided"], rows))
    blocks.append(Note("Each level is fitted as a target of its own, from the exact first step of every run at it "
                       "(S(B) = S_min (1 + B_crit / B) to steps, E(B) = E_min (1 + B / B_crit) to samples; the "
                       "batch sizes where every seed reached the level). The last row is the target itself."))
    path = _plot(study, found)
    if path is not None:
        blocks.append(Figure(path, "The critical batch fitted at each level of the target (Kaplan et al. 2020's "
                                   "B_crit(L)), with its interval where the fit gives one."))
    return blocks + answers(levels(study), "Fewer than two levels have a fit: nothing to compare.")


def _plot(study: Study, found: list[LevelFit]):
    figure, ax = new_figure(7.0, 4.5)
    names = sorted({fit.series for level in found for fit in level.fits})
    drawn = False
    for index, name in enumerate(names):
        xs, ys, lows, highs = [], [], [], []
        for level in found:
            fit = next((f for f in level.fits if f.series == name), None)
            value = fit.b_crit.value if fit is not None else None
            if value is None or not math.isfinite(value) or value <= 0:
                continue
            xs.append(level.target.value)
            ys.append(value)
            interval = fit.interval or (value, value)
            lows.append(value - interval[0])
            highs.append(interval[1] - value)
        if len(xs) >= 2:
            ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o-", color=f"C{index % 10}", capsize=3, label=name)
            drawn = True
    if not drawn:
        return None
    target = study.target
    ax.set_xlabel(f"target {target.metric}" if target else "target")
    ax.set_ylabel("critical batch B_crit")
    if target is not None and target.metric == "loss":
        ax.invert_xaxis()  # harder targets to the right
    log_y(ax)
    if len(names) > 1:
        ax.legend(fontsize=8)
    return save(study, figure, PLOT)
