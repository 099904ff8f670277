"""Number formatting shared by tables, sentences and plot labels. `None` always prints as an em dash."""

from __future__ import annotations

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


def rate(value: float | None) -> str:
    """Samples per second: whole numbers with thousands separators."""
    return integer(value)


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
    """`mean ± std`, or the mean alone when there is a single value (no spread to show)."""
    if mean is None:
        return DASH
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def batch_list(batches: list[int]) -> str:
    """`32, 64 and 128`."""
    names = [str(b) for b in batches]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
