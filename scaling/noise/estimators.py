"""The gradient noise scale, measured during training (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", arXiv:1812.06162).

The "simple" noise scale (their sec. 2.2) is

    B_simple = tr(Sigma) / |G|^2

with G the true (full-data) gradient and Sigma the per-example gradient covariance. It predicts the critical
batch size: below it, doubling the batch roughly halves the steps to a target; above it, returns diminish.

Both quantities come from the squared norms of two gradients taken at the same parameters on two batches
of different sizes (appendix A.1). For a batch of B i.i.d. examples, E|G_B|^2 = |G|^2 + tr(Sigma)/B, so two
sizes give two equations and the unbiased estimates

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)     [two-batch]
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)               [two-batch]

When the small batch is part of the big one and its gradient *vector* is at hand (not only its norm),
the distance between the two gives a better trace estimate. For a sub-batch of b of the big batch's B
examples, E|G_b - G_B|^2 = tr(Sigma) (1/b - 1/B), so

    tr(Sigma) ~ |G_b - G_B|^2 / (1/b - 1/B),      |G|^2 ~ |G_B|^2 - tr(Sigma) / B       ("nested")

With k equal sub-batches covering the big one, the mean of |G_i - G_B|^2 equals the mean of |G_i|^2 minus
|G_B|^2, so this is the pooled form of [two-batch]. With a single sub-batch it is far less noisy than
[two-batch] on the two norms, because the term 2 G.(noise) that G_b and G_B share cancels in their
difference (half of a 128 batch, d=10 regression of tests/test_noise.py, EMA decay 0.99 over 600 steps:
the B_simple averaged over all 600 spreads by 4% over seeds, against 18% from the two norms alone).

Each estimate is very noisy, and the ratio of two noisy numbers is biased, so the paper averages |G|^2
and tr(Sigma) separately over many steps and only then divides (appendix A.1: "the ratio of the averages").
`NoiseScaleEstimator` does that over a bounded window of recent measurements.

Which two gradients are compared depends on the training topology (scaling/noise/monitor.py wires this module into
the loop): a rank's local gradient against the all-reduced one (`update_pooled`), one micro-batch against
the accumulated gradient, or half of a batch against the whole (`update_nested`, with
`separate_gradients` computing the half-batch gradient without touching `p.grad`).

Hot-loop rule: `squared_norm` returns a device tensor; read it (`float(...)`) only at a logging window.
The estimator depends only on the order of its updates, so measurements can be buffered and fed later.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import torch


def squared_norm(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """Sum of squares of all entries of `tensors` (e.g. `[p.grad for p in model.parameters()]`).

    Returns a 0-dim tensor on the tensors' device (no host sync), float32 (float64 for double gradients);
    None entries (parameters without a gradient) are skipped. Low-precision gradients are accumulated in
    float32.
    """
    norms = [
        torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))
        for t in tensors
        if t is not None
    ]
    if not norms:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack([n.to(norms[0].device) for n in norms]).square().sum()


def squared_distance(
    first: Iterable[torch.Tensor | None], second: Iterable[torch.Tensor | None]
) -> torch.Tensor:
    """|first - second|^2 over two matching lists of gradient tensors, as a 0-dim device tensor.

    A None entry counts as zeros (a parameter that one of the two losses did not reach).
    """
    diffs = []
    for a, b in zip(first, second, strict=True):
        if a is None and b is None:
            continue
        diffs.append(b if a is None else a if b is None else a - b)
    return squared_norm(diffs)


def separate_gradients(
    loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool = False
) -> tuple[torch.Tensor | None, ...]:
    """d loss / d params without touching `p.grad` (None for parameters the loss does not reach).

    For the half-batch measurement: `loss` is the mean loss over the first half of the batch.
    """
    return torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)


def fallback_small_batch(batch_size: int) -> int:
    """B_small of the half-batch measurement: the first half of the batch (rounded down)."""
    if batch_size < 2:
        raise ValueError(f"the half-batch noise measurement needs a batch of at least 2, got {batch_size}")
    return batch_size // 2


def is_measurement_step(step: int, every: int) -> bool:
    """True on the optimizer steps (0-based) where a measurement is taken: 0, every, 2*every, ..."""
    if every < 1:
        raise ValueError(f"measurement interval must be >= 1, got {every}")
    return step % every == 0


def unbiased_estimates(
    small_sq_norm: float, small_batch: int, big_sq_norm: float, big_batch: int
) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from one pair of gradient squared norms (McCandlish et al., appendix A.1).

    Each is unbiased but noisy (either can be negative); average many before taking their ratio.
    """
    small_sq_norm, big_sq_norm = float(small_sq_norm), float(big_sq_norm)
    _check_batches(small_batch, big_batch)
    grad_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
    trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch)
    return grad_sq, trace


def nested_estimates(
    diff_sq_norm: float, part_batch: int, big_sq_norm: float, big_batch: int
) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from |G_part - G_big|^2, for a sub-batch of part_batch of the big batch's examples.

    tr(Sigma) = |G_part - G_big|^2 / (1/b - 1/B) and |G|^2 = |G_big|^2 - tr(Sigma) / B (see the module
    docstring, "nested"). Both unbiased; the part must be drawn from within the big batch.
    """
    diff_sq_norm, big_sq_norm = float(diff_sq_norm), float(big_sq_norm)
    _check_batches(part_batch, big_batch)
    if part_batch > big_batch:
        raise ValueError(
            f"the nested estimate needs a sub-batch of the big batch, got {part_batch} > {big_batch}"
        )
    trace = diff_sq_norm / (1.0 / part_batch - 1.0 / big_batch)
    return big_sq_norm - trace / big_batch, trace


def pool_small_batches(small_sq_norms: Sequence[float], small_batch: int) -> tuple[float, int, int]:
    """k equal small batches whose mean gradient is the big one: (mean small sq norm, B_small, k B_small).

    Each small squared norm has expectation |G|^2 + tr(Sigma)/B_small, so their mean does too, with less
    variance than any one of them; the big gradient is the mean of the k small ones (several processes).
    """
    if len(small_sq_norms) < 2:
        raise ValueError(f"pooling needs at least 2 small batches, got {len(small_sq_norms)}")
    mean = sum(float(x) for x in small_sq_norms) / len(small_sq_norms)
    return mean, small_batch, len(small_sq_norms) * small_batch


def _check_batches(small_batch: int, big_batch: int) -> None:
    if small_batch <= 0 or big_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got small={small_batch}, big={big_batch}")
    if small_batch == big_batch:
        raise ValueError(f"the two-batch estimator needs two different batch sizes, got {small_batch} twice")


class NoiseScaleEstimator:
    """Running B_simple = tr(Sigma) / |G|^2 over a bounded window of recent measurements.

    Feed one measurement per measuring step with `update` (two batch sizes, [two-batch]), `update_pooled`
    (k equal small batches averaged into the big one), `update_nested` (a sub-batch's distance to the big
    batch) or `update_estimates` (raw estimates). |G|^2 and tr(Sigma) are each averaged over the last
    `window` measurements (all of them with window=None) and only then divided (McCandlish et al., appendix
    A.1: the ratio of the averages, never the average of ratios). A bounded window makes the value follow
    training: |G|^2 falls by orders of magnitude as the loss falls, so an average over all of training (or
    an exponential one with a long memory) is dominated by the early, large values and lags the weights
    training has reached.

    Updates with a non-finite input (a diverged step) are skipped and counted in `skipped`.
    """

    def __init__(self, window: int | None = 5):
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 measurement (or None for all), got {window}")
        self.window = window
        self.count = 0  # measurements taken so far (all of them, not only the window's)
        self.skipped = 0  # measurements dropped for being non-finite
        self._values: deque[tuple[float, float]] = deque(maxlen=window)

    def update(
        self, small_sq_norm: float, small_batch: int, big_sq_norm: float, big_batch: int
    ) -> float | None:
        """Add one measurement at the current parameters; returns the current B_simple (see `noise_scale`)."""
        return self.update_estimates(*unbiased_estimates(small_sq_norm, small_batch, big_sq_norm, big_batch))

    def update_nested(
        self, diff_sq_norm: float, part_batch: int, big_sq_norm: float, big_batch: int
    ) -> float | None:
        """`update` from |G_part - G_big|^2 for a sub-batch of the big batch (`nested_estimates`)."""
        return self.update_estimates(*nested_estimates(diff_sq_norm, part_batch, big_sq_norm, big_batch))

    def update_estimates(self, grad_sq: float, trace: float) -> float | None:
        """Add one pair of unbiased (|G|^2, tr(Sigma)) estimates, however obtained; returns B_simple."""
        grad_sq, trace = float(grad_sq), float(trace)
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            self.skipped += 1
            return self.noise_scale
        self._values.append((grad_sq, trace))
        self.count += 1
        return self.noise_scale

    def update_pooled(
        self, small_sq_norms: Sequence[float], small_batch: int, big_sq_norm: float
    ) -> float | None:
        """`update` for k equal small batches averaged into the big one (B_big = k * small_batch)."""
        small_mean, small_batch, big_batch = pool_small_batches(small_sq_norms, small_batch)
        return self.update(small_mean, small_batch, big_sq_norm, big_batch)

    @property
    def grad_sq(self) -> float | None:
        """Mean |G|^2 estimate over the window (None before the first measurement)."""
        return sum(g for g, _ in self._values) / len(self._values) if self._values else None

    @property
    def trace(self) -> float | None:
        """Mean tr(Sigma) estimate over the window (None before the first measurement)."""
        return sum(t for _, t in self._values) / len(self._values) if self._values else None

    @property
    def noise_scale(self) -> float | None:
        """B_simple = tr(Sigma) / |G|^2 from the window's averages.

        None while either average is not positive (too few measurements for the signal to rise above the
        noise, or a gradient too small to measure): a non-positive ratio has no meaning.
        """
        return ratio_of_means(list(self._values))

    def state_dict(self) -> dict:
        """Plain numbers, for checkpoints and JSON."""
        return {"window": self.window, "count": self.count, "skipped": self.skipped,
                "values": [list(pair) for pair in self._values]}

    def load_state_dict(self, state: dict) -> None:
        self.window = state["window"]
        self.count = int(state["count"])
        self.skipped = int(state.get("skipped", 0))
        self._values = deque((tuple(pair) for pair in state["values"]), maxlen=self.window)


def ratio_of_means(estimates: Sequence[tuple[float, float]]) -> float | None:
    """B_simple from (|G|^2, tr(Sigma)) estimate pairs: mean trace over mean |G|^2; None unless both are
    positive."""
    if not estimates:
        return None
    grad_sq = sum(g for g, _ in estimates) / len(estimates)
    trace = sum(t for _, t in estimates) / len(estimates)
    return trace / grad_sq if grad_sq > 0.0 and trace > 0.0 else None
