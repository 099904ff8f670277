"""The gradient noise scale estimator on a problem whose noise scale is known in closed form.

Linear regression at a FIXED parameter w (no training): per-example loss l(w) = 1/2 (x^T w - y)^2 with
x ~ N(0, I_d), y = x^T w* + eps, eps ~ N(0, sigma^2) independent of x. Write delta = w - w*. The per-example
gradient is

    g = x (x^T w - y) = x (x^T delta - eps).

True gradient: G = E[g] = E[x x^T] delta - E[x] E[eps] = delta.

Second moment: E[g g^T] = E[x x^T (x^T delta)^2] - 2 E[eps] E[...] + E[eps^2] E[x x^T]. By Isserlis'
(Wick's) theorem for a centred Gaussian, E[x_i x_j x_k x_l] = d_ij d_kl + d_ik d_jl + d_il d_jk, so

    E[x_i x_j (x^T delta)^2] = sum_kl E[x_i x_j x_k x_l] delta_k delta_l = d_ij |delta|^2 + 2 delta_i delta_j,

and E[g g^T] = (|delta|^2 + sigma^2) I + 2 delta delta^T. The per-example covariance is then

    Sigma = E[g g^T] - G G^T = delta delta^T + (|delta|^2 + sigma^2) I,
    tr(Sigma) = |delta|^2 + d (|delta|^2 + sigma^2) = (d + 1) |delta|^2 + d sigma^2,
    B_simple = tr(Sigma) / |G|^2 = (d + 1) + d sigma^2 / |delta|^2.

A batch's mean gradient is G_B = X^T (X delta - eps) / B, computed here in closed form (and once with
autograd, for the one-process fallback).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from scaling.noise.estimators import (
    NoiseScaleEstimator,
    fallback_small_batch,
    is_measurement_step,
    nested_estimates,
    pool_small_batches,
    separate_gradients,
    squared_distance,
    squared_norm,
    unbiased_estimates,
)


class Regression:
    """The closed-form problem above, at a fixed delta = w - w* along the first axis."""

    def __init__(self, d: int, delta_norm: float, sigma: float):
        self.d, self.sigma = d, sigma
        self.delta = torch.zeros(d, dtype=torch.float64)
        self.delta[0] = delta_norm

    @property
    def grad_sq(self) -> float:
        return float(self.delta.square().sum())

    @property
    def trace(self) -> float:
        return (self.d + 1) * self.grad_sq + self.d * self.sigma**2

    @property
    def noise_scale(self) -> float:
        return (self.d + 1) + self.d * self.sigma**2 / self.grad_sq

    def sample(
        self, gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x (*shape, d) and label noise eps (*shape)."""
        x = torch.randn(*shape, self.d, generator=gen, dtype=dtype)
        eps = self.sigma * torch.randn(*shape, generator=gen, dtype=dtype)
        return x, eps

    def example_grads(self, gen: torch.Generator, *shape: int) -> torch.Tensor:
        """Per-example gradients x (x^T delta - eps), shape (*shape, d)."""
        x, eps = self.sample(gen, *shape)
        return x * (x @ self.delta - eps)[..., None]


def nested_pairs(problem: Regression, draws: int, small: int, k: int, seed: int):
    """`draws` big batches of k * small examples, each split into k small batches: squared norms of the k
    small mean gradients (draws, k) and of the big mean gradient (draws,)."""
    gen = torch.Generator().manual_seed(seed)
    small_sq, big_sq = [], []
    for start in range(0, draws, 500):  # chunks: a draw holds k * small * d doubles
        # float32 sampling (4x faster); the norms are summed in float64.
        x, eps = problem.sample(gen, min(500, draws - start), k, small, dtype=torch.float32)
        residual = x @ problem.delta.float() - eps
        small_grads = (torch.einsum("...bd,...b->...d", x, residual) / small).double()  # X^T r / B
        small_sq.append(small_grads.square().sum(-1))
        big_sq.append(small_grads.mean(dim=1).square().sum(-1))
    return torch.cat(small_sq), torch.cat(big_sq)


SETTINGS = [  # d, |delta|, sigma, B_small, k (B_big = k B_small)
    pytest.param(10, 1.0, 1.0, 16, 8, id="d10-Bsimple21"),
    pytest.param(50, 0.5, 1.0, 32, 8, id="d50-Bsimple251"),
]


def test_closed_form_values():
    problem = Regression(d=10, delta_norm=0.5, sigma=2.0)
    assert problem.trace == pytest.approx(11 * 0.25 + 10 * 4.0)
    assert problem.noise_scale == pytest.approx(11 + 10 * 4.0 / 0.25)


def test_sampled_covariance_matches_the_derivation():
    problem = Regression(d=4, delta_norm=0.8, sigma=0.7)
    grads = problem.example_grads(torch.Generator().manual_seed(1), 400_000)
    expected = torch.outer(problem.delta, problem.delta) + (problem.grad_sq + problem.sigma**2) * torch.eye(4)
    assert torch.allclose(grads.mean(0), problem.delta, atol=0.01)
    assert torch.allclose(torch.cov(grads.T), expected.to(grads.dtype), atol=0.03)


@pytest.mark.parametrize("d, delta_norm, sigma, small, k", SETTINGS)
def test_raw_estimates_average_to_the_truth(d, delta_norm, sigma, small, k):
    """The two-batch estimates (appendix A.1) are unbiased: their means over many draws are within 4%.

    (Over 20 seeds the means' relative spread is 0.4-1% for |G|^2 and 0.9-1.3% for tr(Sigma).)
    """
    problem = Regression(d, delta_norm, sigma)
    draws = 8000 if d <= 10 else 3000
    small_sq, big_sq = nested_pairs(problem, draws=draws, small=small, k=k, seed=2)
    pairs = zip(small_sq[:, 0].tolist(), big_sq.tolist(), strict=True)
    estimates = [unbiased_estimates(s, small, b, small * k) for s, b in pairs]
    grad_sq = sum(g for g, _ in estimates) / len(estimates)
    trace = sum(t for _, t in estimates) / len(estimates)
    assert grad_sq == pytest.approx(problem.grad_sq, rel=0.04)
    assert trace == pytest.approx(problem.trace, rel=0.04)
    # The model behind both: E|G_B|^2 = |G|^2 + tr(Sigma) / B (appendix A.1).
    assert float(big_sq.mean()) == pytest.approx(problem.grad_sq + problem.trace / (small * k), rel=0.04)


@pytest.mark.parametrize("d, delta_norm, sigma, small, k", SETTINGS)
def test_estimator_recovers_the_noise_scale(d, delta_norm, sigma, small, k):
    """One small batch against the big one (topologies (b), (c)): each pair is noisy, so average them all
    (at fixed parameters nothing needs to be forgotten)."""
    problem = Regression(d, delta_norm, sigma)
    small_sq, big_sq = nested_pairs(problem, draws=1500, small=small, k=k, seed=3)
    estimator = NoiseScaleEstimator(window=None)
    for s, b in zip(small_sq[:, 0].tolist(), big_sq.tolist(), strict=True):
        value = estimator.update(s, small, b, small * k)
    assert value == pytest.approx(problem.noise_scale, rel=0.2)
    assert estimator.trace / estimator.grad_sq == value


@pytest.mark.parametrize("d, delta_norm, sigma, small, k", SETTINGS)
def test_pooled_small_batches_recover_the_noise_scale(d, delta_norm, sigma, small, k):
    """k small batches averaged into the big one (topology (a): k ranks), all 300 pairs averaged."""
    problem = Regression(d, delta_norm, sigma)
    small_sq, big_sq = nested_pairs(problem, draws=300, small=small, k=k, seed=4)
    estimator = NoiseScaleEstimator(window=None)
    for s, b in zip(small_sq.tolist(), big_sq.tolist(), strict=True):
        value = estimator.update_pooled(s, small, b)
    assert value == pytest.approx(problem.noise_scale, rel=0.2)


def test_nested_half_batch_is_unbiased_and_far_less_noisy():
    """A sub-batch's distance to the big batch ("nested"), against the two-batch estimates on the norms."""
    problem = Regression(d=10, delta_norm=1.0, sigma=1.0)
    half, batch = 64, 128
    gen = torch.Generator().manual_seed(7)
    x, eps = problem.sample(gen, 4000, 2, half, dtype=torch.float32)
    halves = (torch.einsum("...bd,...b->...d", x, x @ problem.delta.float() - eps) / half).double()
    full = halves.mean(dim=1)
    diff_sq = (halves[:, 0] - full).square().sum(-1).tolist()
    first_sq = halves[:, 0].square().sum(-1).tolist()
    full_sq = full.square().sum(-1).tolist()
    nested = torch.tensor(
        [nested_estimates(dd, half, f, batch) for dd, f in zip(diff_sq, full_sq, strict=True)],
        dtype=torch.float64,
    )
    norms_only = torch.tensor(
        [unbiased_estimates(s, half, f, batch) for s, f in zip(first_sq, full_sq, strict=True)],
        dtype=torch.float64,
    )
    truth = torch.tensor([problem.grad_sq, problem.trace], dtype=torch.float64)
    assert torch.allclose(nested.mean(0), truth, rtol=0.04)
    assert torch.allclose(norms_only.mean(0), truth, rtol=0.04)
    assert nested[:, 1].std() < 0.5 * norms_only[:, 1].std()  # the shared 2 G.noise term cancels
    # With both halves, nested = pooled (the mean of |G_i|^2 - |G_B|^2 is the mean of |G_i - G_B|^2).
    pooled = unbiased_estimates(
        *pool_small_batches(halves[0].square().sum(-1).tolist(), half)[:2], full_sq[0], batch
    )
    both = [nested_estimates((h - full[0]).square().sum().item(), half, full_sq[0], batch) for h in halves[0]]
    assert pooled == pytest.approx(tuple(sum(v) / 2 for v in zip(*both, strict=True)), rel=1e-9)


def mean_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).squeeze(-1) - y).square().mean()


def test_one_process_fallback_with_autograd():
    """Topology (c): the first half of each batch through autograd.grad (p.grad untouched) vs the full batch
    through backward(), on a real nn.Linear at w = w* + delta. Over 20 seeds: within 0 +- 4% (worst 10%)."""
    problem = Regression(d=10, delta_norm=1.0, sigma=1.0)
    w_star = torch.linspace(-1, 1, problem.d, dtype=torch.float64)
    model = torch.nn.Linear(problem.d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + problem.delta)[None])
    params = list(model.parameters())
    batch = 128
    half = fallback_small_batch(batch)
    gen = torch.Generator().manual_seed(5)
    estimator = NoiseScaleEstimator(window=None)
    for step in range(1200):
        if not is_measurement_step(step, every=2):
            continue
        x, eps = problem.sample(gen, batch)
        y = x @ w_star + eps

        half_grads = separate_gradients(mean_loss(model, x[:half], y[:half]), params)
        assert all(p.grad is None for p in params)
        mean_loss(model, x, y).backward()
        grads = [p.grad for p in params]
        big_sq = squared_norm(grads)
        analytic = (x.T @ (x @ problem.delta - eps)) / batch
        assert big_sq.item() == pytest.approx(analytic.square().sum().item(), rel=1e-9)
        value = estimator.update_nested(
            float(squared_distance(half_grads, grads)), half, float(big_sq), batch
        )
        model.zero_grad(set_to_none=True)
    assert estimator.count == 600
    assert value == pytest.approx(problem.noise_scale, rel=0.2)


def test_first_micro_step_gradient_times_n_is_the_micro_batch_gradient():
    """Accumulation (scaling/noise/monitor.py, "micro_batches"): with the loss divided by n per micro-step (as
    Accelerate does), p.grad after the first micro-step is g_1 / n; times n it is the micro-batch gradient."""
    problem = Regression(d=6, delta_norm=1.0, sigma=0.5)
    w = torch.nn.Parameter(problem.delta.clone())  # w* = 0
    gen = torch.Generator().manual_seed(6)
    n, micro = 4, 8
    micro_batches = [problem.sample(gen, micro) for _ in range(n)]
    for index, (x, eps) in enumerate(micro_batches):
        (0.5 * (x @ w - (eps)).square().mean() / n).backward()
        if index == 0:
            first = squared_norm([w.grad * n])
    x0, eps0 = micro_batches[0]
    expected_first = ((x0.T @ (x0 @ problem.delta - eps0)) / micro).square().sum()
    x_all = torch.cat([x for x, _ in micro_batches])
    eps_all = torch.cat([e for _, e in micro_batches])
    expected_big = ((x_all.T @ (x_all @ problem.delta - eps_all)) / (n * micro)).square().sum()
    assert first.item() == pytest.approx(expected_first.item(), rel=1e-9)
    assert squared_norm([w.grad]).item() == pytest.approx(expected_big.item(), rel=1e-9)


def test_squared_norm_is_a_device_scalar_and_skips_missing_grads():
    tensors = [torch.tensor([3.0, 4.0]), None, torch.ones(2, 2, dtype=torch.bfloat16)]
    result = squared_norm(tensors)
    assert result.dim() == 0 and result.dtype == torch.float32
    assert result.item() == pytest.approx(29.0)
    assert squared_norm([]).item() == 0.0
    assert squared_distance([torch.ones(3), None], [torch.zeros(3), torch.full((2,), 2.0)]).item() == 11.0


def test_first_update_is_the_raw_ratio():
    estimator = NoiseScaleEstimator(window=3)
    assert estimator.noise_scale is None and estimator.grad_sq is None
    grad_sq, trace = unbiased_estimates(2.0, 8, 1.2, 32)
    assert estimator.update(2.0, 8, 1.2, 32) == pytest.approx(trace / grad_sq)
    assert estimator.grad_sq == pytest.approx(grad_sq)
    assert estimator.trace == pytest.approx(trace)


def test_ratio_of_averages_not_average_of_ratios():
    estimator = NoiseScaleEstimator(window=2)
    pairs = [(2.0, 8, 1.2, 32), (3.0, 8, 1.1, 32)]
    for pair in pairs:
        estimator.update(*pair)
    (g1, t1), (g2, t2) = (unbiased_estimates(*pair) for pair in pairs)
    assert estimator.grad_sq == pytest.approx((g1 + g2) / 2)
    assert estimator.noise_scale == pytest.approx((t1 + t2) / (g1 + g2))
    assert estimator.noise_scale != pytest.approx((t1 / g1 + t2 / g2) / 2)


def test_the_window_forgets_older_measurements():
    """Only the last `window` measurements count, so the value follows training as |G|^2 falls."""
    estimator = NoiseScaleEstimator(window=2)
    estimator.update_estimates(100.0, 50.0)  # early training: a large gradient
    estimator.update_estimates(1.0, 40.0)
    estimator.update_estimates(1.0, 60.0)
    assert estimator.count == 3
    assert estimator.noise_scale == pytest.approx(50.0)  # (40 + 60) / 2 over (1 + 1) / 2
    everything = NoiseScaleEstimator(window=None)
    for grad_sq, trace in [(100.0, 50.0), (1.0, 40.0), (1.0, 60.0)]:
        everything.update_estimates(grad_sq, trace)
    assert everything.noise_scale == pytest.approx(150.0 / 102.0)  # dominated by the early value


def test_not_positive_gradient_estimate_gives_none():
    estimator = NoiseScaleEstimator()
    # The big batch's norm far above the small one's: |G|^2 estimate positive but tr(Sigma) negative.
    assert estimator.update(1.0, 8, 2.0, 32) is None
    estimator = NoiseScaleEstimator()
    # |G_big|^2 much smaller than |G_small|^2 * B_small / B_big: |G|^2 estimate negative.
    assert estimator.update(10.0, 8, 1.0, 32) is None
    assert estimator.grad_sq < 0


def test_non_finite_measurements_are_skipped():
    estimator = NoiseScaleEstimator()
    first = estimator.update(2.0, 8, 1.2, 32)
    assert estimator.update(math.nan, 8, 1.2, 32) == first
    assert estimator.update(2.0, 8, math.inf, 32) == first
    assert (estimator.count, estimator.skipped) == (1, 2)


def test_state_dict_round_trip_continues_identically():
    a = NoiseScaleEstimator(window=2)
    for s, b in [(2.0, 1.2), (2.5, 1.0), (1.8, 1.1)]:
        a.update(s, 8, b, 32)
    state = a.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain numbers, for checkpoints
    b = NoiseScaleEstimator(window=7)
    b.load_state_dict(state)
    assert b.window == 2
    assert a.update(2.2, 8, 1.05, 32) == b.update(2.2, 8, 1.05, 32)
    assert a.state_dict() == b.state_dict()


def test_input_validation():
    with pytest.raises(ValueError, match="different batch sizes"):
        unbiased_estimates(1.0, 16, 0.5, 16)
    with pytest.raises(ValueError, match="positive"):
        unbiased_estimates(1.0, 0, 0.5, 16)
    with pytest.raises(ValueError):
        NoiseScaleEstimator(window=0)
    with pytest.raises(ValueError):
        pool_small_batches([1.0], 8)
    with pytest.raises(ValueError):
        fallback_small_batch(1)
    with pytest.raises(ValueError, match="sub-batch"):
        nested_estimates(1.0, 64, 0.5, 32)
    assert pool_small_batches([1.0, 3.0, 2.0, 2.0], 8) == (2.0, 8, 32)
    assert [is_measurement_step(s, 3) for s in range(5)] == [True, False, False, True, False]
