"""Number formatting shared by tables, sentences and plot labels. `None` always prints as an em dash."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from scaling.stats import MAX_SEEDS

if TYPE_CHECKING:
    from scaling.noise.fits import Estimate
    from scaling.stats import Comparison, Rate, Rules

DASH = "—"


def seconds(value: float | None) -> str:
    """Three significant figures for short times, whole seconds with separators for long ones."""
    if value is None:
        return DASH
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def integer(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def percent(fraction: float | None, digits: int = 1) -> str:
    return DASH if fraction is None else f"{fraction * 100:.{digits}f}%"


def lr(value: float | None) -> str:
    return DASH if value is None else f"{value:.4g}"


def nbytes(value: float | None) -> str:
    if value is None:
        return DASH
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def mean_std(mean: float | None, std: float | None, fmt=seconds) -> str:
    """`mean ± std`, or the mean alone when there is a single value (no spread to show). Seconds are written
    to the same decimal place, that of the std's first significant figure or the mean's third, whichever is
    finer (`1.20 ± 0.04`, not `1.2 ± 0.0382`)."""
    if mean is None:
        return DASH
    if std is None:
        return fmt(mean)
    if fmt is seconds and std > 0 and mean > 0 and mean < 1000:
        decimals = max(0, _decimals(std, 1), _decimals(mean, 3))
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{fmt(mean)} ± {fmt(std)}"


def confidence(value: float) -> str:
    """`95%`, or `98.3%` for a Bonferroni-corrected level."""
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def confidence_of(rate: Rate) -> str:
    return confidence(rate.confidence)


def signed_percent(value: float) -> str:
    """`+4.2%`, `−12%` (a real minus sign), two significant figures."""
    text = f"{abs(value) * 100:.2g}"
    if "e" in text:
        text = f"{abs(value) * 100:.0f}"
    return ("−" if value < 0 else "+") + text + "%"


def change(comparison: Comparison, what: str, interval: bool = True) -> str:
    """`train time −12% (95% CI −18% to −7%)`: a over b, minus 1, with its confidence interval."""
    if comparison.ratio is None:
        return f"{what} {DASH}"
    text = f"{what} {signed_percent(comparison.ratio - 1)}"
    if interval and comparison.low is not None and comparison.high is not None:
        text += (f" ({confidence(comparison.confidence)} CI {signed_percent(comparison.low - 1)} to "
                 f"{signed_percent(comparison.high - 1)})")
    return text


def seeds_advice(comparison: Comparison, rules: Rules) -> str:
    """What an open comparison's seeds can resolve, and how many would resolve the practical threshold
    (scaling/stats.py: neither assumes the observed difference is real)."""
    n = min(comparison.n_a, comparison.n_b)
    text = ""
    if comparison.resolvable is not None:
        beyond = (f"±{percent(comparison.resolvable)}" if comparison.resolvable < 1 else
                  f"a factor of {sig(1 + comparison.resolvable, 2)}")
        text = f"with {n} seeds the study resolves differences beyond {beyond} (about 80% power); "
    if comparison.seeds_needed is None:
        return text + (f"more than {MAX_SEEDS} seeds per configuration would be needed to resolve the "
                       f"±{rules.threshold:.0%} threshold at this run-to-run spread")
    return text + (f"about {comparison.seeds_needed} seeds per configuration would resolve the "
                   f"±{rules.threshold:.0%} threshold")


def batch_list(batches: list[int]) -> str:
    """`32, 64 and 128`."""
    names = [str(b) for b in batches]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def devices(n: int) -> str:
    """`1 device`, `8 devices`."""
    return f"{n} device{'s' * (n != 1)}"


# --- significant figures (the critical-batch-size fits) -------------------------------------------------------


def _decimals(value: float, digits: int) -> int:
    """Decimal places that show `value` to `digits` significant figures (negative: round to tens...)."""
    rounded = float(f"{value:.{digits}g}")
    return digits - 1 - math.floor(math.log10(abs(rounded)))


def _fixed(value: float, decimals: int) -> str:
    return f"{round(value, decimals):,.0f}" if decimals <= 0 else f"{value:,.{decimals}f}"


def sig(value: float | None, digits: int = 3) -> str:
    """`1,120`, `2.35`: `digits` significant figures, thousands separated."""
    if value is None or not math.isfinite(value):
        return DASH
    return "0" if value == 0 else _fixed(value, _decimals(value, digits))


def estimate_text(estimate: Estimate) -> str:
    """`1,120 ± 210 (68%: 950–1,330)`: value, std and interval at the finer of two resolutions, the std's second
    significant figure and the value's third; the value alone without an uncertainty."""
    if estimate.std is None or not estimate.std > 0 or not math.isfinite(estimate.std):
        return sig(estimate.value)
    decimals = max(_decimals(estimate.std, 2), _decimals(estimate.value, 3) if estimate.value else 0)
    text = f"{_fixed(estimate.value, decimals)} ± {_fixed(estimate.std, decimals)}"
    if estimate.low is not None and estimate.high is not None:
        text += f" (68%: {_fixed(estimate.low, decimals)}–{_fixed(estimate.high, decimals)})"
    return text


def b_simple_text(values: list[float]) -> str:
    """`410 (400–420, 14 runs)`: the median of measured B_simple values, their range and count."""
    if not values:
        return DASH
    median = statistics.median(values)
    if len(values) == 1:
        return f"{sig(median)} (1 run)"
    return f"{sig(median)} ({sig(min(values))}–{sig(max(values))}, {len(values)} runs)"
