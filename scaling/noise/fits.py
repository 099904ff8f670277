"""Steps, samples and time to a target at batch sizes not run (McCandlish et al. 2018, "An Empirical Model
of Large-Batch Training", sec. 2.3).

The paper's model of the steps S and samples E = S B needed to reach a fixed target at batch size B is

    S(B) = S_min (1 + B_noise / B)        [S]
    E(B) = E_min (1 + B / B_noise)        [E]

with E_min = S_min B_noise, equivalently (S / S_min - 1)(E / E_min - 1) = 1 (the paper's tradeoff
curve); the critical batch B_crit = E_min / S_min equals B_noise in this model. Both curves are linear in
(S_min, E_min):

    S(B) = S_min + E_min (1/B)            E(B) = S_min B + E_min

so every fit here is a (weighted) linear least-squares problem in those two parameters. By default the
residuals are relative, ((S_i - S(B_i)) / S_i), which suits run-to-run noise that is multiplicative (the
spread of steps-to-target grows with the steps) and makes the steps fit and the samples fit the same
problem: (S_i - S(B_i)) / S_i = (E_i - E(B_i)) / E_i when E_i = S_i B_i. `relative=False` gives the plain
(unweighted) least squares in S (or E), dominated by the small-batch points, where S is largest: with 5%
multiplicative noise on 9 batch sizes from 16 to 4096 (tests/test_predict.py's example, 200 seeds), S_min
scatters by 15% (B_noise by 21%) that way, against 4% (6%) with relative residuals.

Time to target adds measured throughput: T(B) = S(B) B / throughput(B).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RESAMPLES = 500
DEFAULT_SEED = 0
INTERVAL = (16.0, 84.0)  # percentiles of the central 68% interval (+-1 sigma for a normal)

ThroughputPoints = Mapping[float, float] | Iterable[tuple[float, float]]


@dataclass(frozen=True)
class ScalingFit:
    """S(B) = s_min + e_min / B and E(B) = s_min B + e_min ([S], [E]), fitted to `n_points` runs."""

    s_min: float  # fewest optimizer steps to the target (infinitely large batch)
    e_min: float  # fewest samples to the target (infinitely small batch)
    n_points: int
    fitted_to: str  # "steps", "samples" or "steps+samples"
    relative: bool  # residuals relative to the measured values (see the module docstring)

    @property
    def b_noise(self) -> float:
        """B_noise = E_min / S_min ([S]), which is B_crit = E_min / S_min (sec. 2.3) in this model."""
        return self.e_min / self.s_min if self.s_min != 0 else float("inf")

    @property
    def physical(self) -> bool:
        """Both S_min and E_min positive. Noisy data that barely bend (every batch far above or far below
        B_noise) can fit a non-positive one, and then B_noise and the predictions mean nothing."""
        return self.s_min > 0 and self.e_min > 0

    def steps(self, batch: float | np.ndarray) -> float | np.ndarray:
        """S(B) = S_min + E_min / B (a float for a scalar batch, an array for an array)."""
        out = self.s_min + self.e_min / np.asarray(batch, dtype=float)
        return float(out) if out.ndim == 0 else out

    def samples(self, batch: float | np.ndarray) -> float | np.ndarray:
        """E(B) = S(B) B = S_min B + E_min."""
        out = self.s_min * np.asarray(batch, dtype=float) + self.e_min
        return float(out) if out.ndim == 0 else out




@dataclass(frozen=True)
class Estimate:
    """A fitted value with its bootstrap spread (None where there are too few points to resample)."""

    value: float
    std: float | None = None
    low: float | None = None  # 16th percentile of the bootstrap fits
    high: float | None = None  # 84th percentile
    draws: tuple[float, ...] = field(default=(), repr=False, compare=False)  # the finite bootstrap fits

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """The central `confidence` interval of the bootstrap fits (None without them)."""
        if len(self.draws) < 2:
            return None
        tail = 50.0 * (1.0 - confidence)
        low, high = np.percentile(np.asarray(self.draws), [tail, 100.0 - tail])
        return float(low), float(high)

    def within_factor(self, factor: float, confidence: float) -> bool:
        """The `confidence` interval lies within [value / factor, value x factor]: an informative estimate."""
        bounds = self.interval(confidence)
        return (bounds is not None and self.value > 0 and bounds[0] >= self.value / factor
                and bounds[1] <= self.value * factor)



@dataclass(frozen=True)
class TradeoffFit:
    """S_min, E_min and B_crit = E_min / S_min, each with a bootstrap uncertainty over the runs."""

    fit: ScalingFit
    s_min: Estimate
    e_min: Estimate
    b_crit: Estimate
    resamples: int  # bootstrap fits used (0: no uncertainty)
    seed: int



@dataclass(frozen=True)
class BatchChoice:
    """The candidate global batch with the smallest predicted time to target, and the whole table."""

    batch: int
    time_s: float
    steps: float
    times_s: dict[int, float]  # candidate -> predicted seconds
    devices: int | None



# ----------------------------------------------------------------------------------------------- fitting


def _as_points(batch_sizes: Sequence[float], values: Sequence[float] | None, name: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=float)
    if array.shape != (len(batch_sizes),):
        raise ValueError(
            f"{name}: expected {len(batch_sizes)} values (one per batch size), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be positive and finite, got {array.tolist()}")
    return array


def _check_batches(batch_sizes: Sequence[float]) -> np.ndarray:
    batches = np.asarray(batch_sizes, dtype=float)
    if batches.ndim != 1 or len(batches) < 2:
        raise ValueError(
            "fitting S(B) = S_min (1 + B_noise / B) needs runs at at least 2 batch sizes, "
            f"got {len(batches)} point(s)"
        )
    if not np.all(np.isfinite(batches)) or np.any(batches <= 0):
        raise ValueError(f"batch sizes must be positive and finite, got {batches.tolist()}")
    if len(np.unique(batches)) < 2:
        raise ValueError(f"fitting needs at least 2 distinct batch sizes, got only {batches[0]:g}")
    return batches


def _design(batches: np.ndarray, steps: np.ndarray | None, samples: np.ndarray | None, relative: bool):
    """Rows of the linear problem in (S_min, E_min): S = S_min + E_min/B and E = S_min B + E_min."""
    rows, targets = [], []
    if steps is not None:
        rows.append(np.stack([np.ones_like(batches), 1.0 / batches], axis=1))
        targets.append(steps)
    if samples is not None:
        rows.append(np.stack([batches, np.ones_like(batches)], axis=1))
        targets.append(samples)
    design, target = np.concatenate(rows), np.concatenate(targets)
    if relative:  # residual (y - y_hat) / y: divide each row by its observation
        design, target = design / target[:, None], np.ones_like(target)
    return design, target


def _solve(batches: np.ndarray, steps: np.ndarray | None, samples: np.ndarray | None, relative: bool):
    design, target = _design(batches, steps, samples, relative)
    (s_min, e_min), *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(s_min), float(e_min)


def _fit(batch_sizes, steps, samples, relative: bool) -> ScalingFit:
    batches = _check_batches(batch_sizes)
    steps_arr = _as_points(batch_sizes, steps, "steps")
    samples_arr = _as_points(batch_sizes, samples, "samples")
    s_min, e_min = _solve(batches, steps_arr, samples_arr, relative)
    fitted_to = "+".join(
        name for name, arr in (("steps", steps_arr), ("samples", samples_arr)) if arr is not None
    )
    return ScalingFit(s_min=s_min, e_min=e_min, n_points=len(batches), fitted_to=fitted_to, relative=relative)


def fit_tradeoff(
    batch_sizes: Sequence[float],
    steps: Sequence[float],
    samples: Sequence[float] | None = None,
    relative: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> TradeoffFit:
    """S_min, E_min and B_crit = E_min / S_min (sec. 2.3) with bootstrap uncertainties.

    Fits the steps (and, when given, the samples: both curves share S_min and E_min) by least squares,
    linear in 1/B: S = S_min + (S_min B_noise) (1/B). Several runs (seeds) at one batch size are separate
    points; check `fit.physical` before trusting B_noise.
    The uncertainty resamples the runs with replacement `resamples` times (fixed `seed`), refits each
    resample (skipping those with fewer than 2 distinct batch sizes) and reports the standard deviation and
    the central 68% interval of the refits. With only 2 runs the fit is exact and no uncertainty is given
    (std, low and high are None); with fewer than 2, ValueError.
    """
    fit = _fit(batch_sizes, steps, samples, relative)
    batches = np.asarray(batch_sizes, dtype=float)
    steps_arr = _as_points(batch_sizes, steps, "steps")
    samples_arr = _as_points(batch_sizes, samples, "samples")
    draws = (
        _bootstrap(batches, steps_arr, samples_arr, relative, resamples, seed) if len(batches) > 2 else None
    )
    if draws is None or len(draws) < 2:
        return TradeoffFit(
            fit=fit,
            s_min=Estimate(fit.s_min),
            e_min=Estimate(fit.e_min),
            b_crit=Estimate(fit.b_noise),
            resamples=0,
            seed=seed,
        )
    s_draws, e_draws = draws[:, 0], draws[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        b_draws = e_draws / s_draws
    return TradeoffFit(
        fit=fit,
        s_min=_estimate(fit.s_min, s_draws),
        e_min=_estimate(fit.e_min, e_draws),
        b_crit=_estimate(fit.b_noise, b_draws),
        resamples=len(draws),
        seed=seed,
    )


def _bootstrap(batches, steps, samples, relative: bool, resamples: int, seed: int) -> np.ndarray:
    """(S_min, E_min) refitted on `resamples` resamplings of the runs, with replacement."""
    rng = np.random.default_rng(seed)
    n = len(batches)
    out = []
    for _ in range(resamples):
        index = rng.integers(0, n, size=n)
        if len(np.unique(batches[index])) < 2:
            continue
        out.append(
            _solve(
                batches[index],
                None if steps is None else steps[index],
                None if samples is None else samples[index],
                relative,
            )
        )
    return np.asarray(out, dtype=float).reshape(-1, 2)


def _estimate(value: float, draws: np.ndarray) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if len(draws) < 2:
        return Estimate(value)
    low, high = np.percentile(draws, INTERVAL)
    return Estimate(value=value, std=float(np.std(draws, ddof=1)), low=float(low), high=float(high),
                    draws=tuple(float(d) for d in draws))


# -------------------------------------------------------------------------------------------- prediction


def _scaling_fit(fit: ScalingFit | TradeoffFit) -> ScalingFit:
    return fit.fit if isinstance(fit, TradeoffFit) else fit


def predict_steps(fit: ScalingFit | TradeoffFit, batch: float) -> float:
    """Optimizer steps to the target at global batch `batch`: S_min (1 + B_noise / B) ([S])."""
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    return float(_scaling_fit(fit).steps(batch))


def predict_samples(fit: ScalingFit | TradeoffFit, batch: float) -> float:
    """Training samples to the target at global batch `batch`: E_min (1 + B / B_noise) ([E])."""
    return predict_steps(fit, batch) * batch


def _throughput_table(points: ThroughputPoints) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted((points.items() if isinstance(points, Mapping) else points), key=lambda pair: pair[0])
    if not pairs:
        raise ValueError("need at least one (batch, samples/s) throughput point")
    batches = np.array([float(b) for b, _ in pairs])
    rates = np.array([float(r) for _, r in pairs])
    if np.any(batches <= 0) or np.any(rates <= 0) or not np.all(np.isfinite(rates)):
        raise ValueError(f"throughput points must have positive batch and samples/s, got {pairs}")
    if len(np.unique(batches)) != len(batches):
        raise ValueError(f"throughput points repeat a batch size: {batches.tolist()}")
    return batches, rates


def throughput_at(points: ThroughputPoints, batch: float) -> float:
    """Samples/s at `batch`, interpolated linearly in log(batch)-log(samples/s) between measured points.

    Beyond the measured range the throughput is held at the nearest measured value (no extrapolation: it
    cannot rise without bound, and saturation is the usual behaviour past the largest measured batch).
    `points` is a mapping or pairs of (batch, samples/s).
    """
    batches, rates = _throughput_table(points)
    return float(np.exp(np.interp(np.log(batch), np.log(batches), np.log(rates))))


def _global_throughput(points: ThroughputPoints, batch: float, devices: int | None) -> float:
    if devices is None:
        return throughput_at(points, batch)
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    return devices * throughput_at(points, batch / devices)


def predict_time(
    fit: ScalingFit | TradeoffFit,
    batch: float,
    throughput_points: ThroughputPoints,
    devices: int | None = None,
) -> float:
    """Seconds to the target at global batch `batch`: S(B) B / throughput(B).

    throughput(B) comes from `throughput_at` (log-log interpolation, constant beyond the measured range).
    devices=None: `throughput_points` are (global batch, samples/s) measured in the topology to predict.
    devices=n: they are (per-device batch, per-device samples/s), and throughput(B) = n x that at B / n,
    i.e. linear scaling in devices: communication cost is ignored, so this is a lower bound on the time.
    Training time only (evaluation excluded), as measured by the throughput.
    """
    return predict_samples(fit, batch) / _global_throughput(throughput_points, batch, devices)


def best_batch(
    fit: ScalingFit | TradeoffFit,
    throughput_points: ThroughputPoints,
    candidates: Iterable[int],
    devices: int | None = None,
) -> BatchChoice:
    """The candidate global batch with the smallest `predict_time` (ties: the smaller batch).

    With devices=n the throughput points are per device (see `predict_time`: linear scaling in devices,
    no communication cost) and every candidate must divide evenly over the n devices.
    """
    candidates = sorted(set(int(c) for c in candidates))
    if not candidates:
        raise ValueError("best_batch needs at least one candidate batch size")
    if devices is not None:
        uneven = [c for c in candidates if c % devices]
        if uneven:
            raise ValueError(f"candidates {uneven} do not split evenly over {devices} devices")
    times = {c: predict_time(fit, c, throughput_points, devices) for c in candidates}
    batch = min(candidates, key=lambda c: times[c])
    return BatchChoice(
        batch=batch, time_s=times[batch], steps=predict_steps(fit, batch), times_s=times, devices=devices
    )
