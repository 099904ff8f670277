"""Learning-rate scaling rules and schedules, all counted in optimizer steps.

One optimizer step consumes one global batch, whatever the world size and accumulation, so a schedule
written here means the same thing for 1x4096x1 and 8x128x4. The loop sets the LR itself before each
optimizer step instead of handing a scheduler to `accelerator.prepare`: a prepared scheduler steps
`num_processes` times per optimizer step unless `split_batches=True`, which would make the schedule
depend on the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling.config import ConfigError, RunConfig


def scaled_lr(base_lr: float, base_bs: int, global_bs: int, rule: str) -> float:
    """LR for global_bs given base_lr tuned at base_bs (the LR part of every rule; docs/lr.md).

    linear:   Goyal et al. 2017, "Accurate, Large Minibatch SGD" (lr proportional to batch), for SGD.
    sqrt:     lr proportional to sqrt(batch). For SGD, Hoffer et al. 2017, "Train longer, generalize better"
              (keeping the variance of the weight update constant); for Adam, Malladi et al. 2022, "On the
              SDEs and scaling rules for adaptive gradient algorithms" (the LR part of their rule).
    adam-sde: Malladi et al. 2022's whole rule; its LR part is sqrt (the betas and eps: scaled_hyperparameters).
    """
    ratio = global_bs / base_bs
    if rule == "linear":
        return base_lr * ratio
    if rule in ("sqrt", "adam-sde"):
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown LR scaling rule {rule!r}")


@dataclass(frozen=True)
class Hyperparameters:
    """What the optimizer of a run at one global batch gets: the peak LR of the schedule (LRSchedule.peak)
    and AdamW's betas and eps after the rules (the config's own with SGD, which does not use them)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float  # no rule here scales it: the config's

    def differs_from(self, cfg: RunConfig) -> dict[str, tuple[float, float]]:
        """{name: (config's, used)} for each of beta1, beta2, eps a rule changed."""
        pairs = {"beta1": (cfg.beta1, self.beta1), "beta2": (cfg.beta2, self.beta2), "eps": (cfg.eps, self.eps)}
        return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


def scaled_hyperparameters(cfg: RunConfig, global_bs: int) -> Hyperparameters:
    """The LR, betas, eps and weight decay a run at `global_bs` uses, from the config's values tuned at
    --base-bs and the rules --lr-scaling and --beta2-scaling, with kappa = global_bs / base_bs:

    adam-sde (Malladi et al. 2022, NeurIPS, the square-root scaling rule for Adam): lr' = lr sqrt(kappa),
        1 - beta1' = kappa (1 - beta1), 1 - beta2' = kappa (1 - beta2), eps' = eps / sqrt(kappa).
    half-life (Marek et al. 2025, arXiv 2507.07101): beta2' = beta2^kappa, so that beta2's half-life
        (ln 0.5 / ln beta2 steps of global_bs samples each) stays the same number of samples.

    Raises ConfigError for a combination that cannot hold: either rule with SGD (no betas), both at once
    (each sets beta2), or a batch ratio that takes a beta below 0 under adam-sde."""
    check_rules(cfg)
    kappa = global_bs / cfg.base_bs
    lr = scaled_lr(cfg.base_lr, cfg.base_bs, global_bs, cfg.lr_scaling)
    beta1, beta2, eps = cfg.beta1, cfg.beta2, cfg.eps
    if cfg.lr_scaling == "adam-sde":
        beta1, beta2 = sde_beta(cfg, "beta1", kappa, global_bs), sde_beta(cfg, "beta2", kappa, global_bs)
        eps = cfg.eps / math.sqrt(kappa)
    if cfg.beta2_scaling == "half-life":
        beta2 = cfg.beta2**kappa
    return Hyperparameters(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=cfg.weight_decay)


def check_rules(cfg: RunConfig) -> None:
    """The combinations of rules and optimizer that cannot hold, whatever the batch."""
    if cfg.lr_scaling == "adam-sde" and cfg.beta2_scaling == "half-life":
        raise ConfigError("--lr-scaling adam-sde and --beta2-scaling half-life both set beta2 (1 - beta2 times the "
                          "batch ratio, or beta2 to its power): choose one (--lr-scaling sqrt with --beta2-scaling "
                          "half-life takes adam-sde's LR and the half-life's beta2)")
    if cfg.optimizer != "adamw" and cfg.lr_scaling == "adam-sde":
        raise ConfigError(f"--lr-scaling adam-sde is Adam's rule (Malladi et al. 2022: it scales the betas and eps "
                          f"too) and --optimizer is {cfg.optimizer}: add --optimizer adamw, or use --lr-scaling "
                          f"sqrt or linear")
    if cfg.optimizer != "adamw" and cfg.beta2_scaling == "half-life":
        raise ConfigError(f"--beta2-scaling half-life scales AdamW's beta2 and --optimizer is {cfg.optimizer} "
                          f"(no beta2): add --optimizer adamw, or drop --beta2-scaling")


# How far below 0 a scaled beta may fall by float rounding alone and count as 0: at beta1 0.9 and a batch ratio
# of exactly 10, 1 - 10 x (1 - 0.9) is 2.2e-16, and at beta2 0.999 and a ratio of 1000 it is -8.9e-16.
SDE_ROUNDING = 1e-12


def sde_beta(cfg: RunConfig, name: str, kappa: float, global_bs: int) -> float:
    """1 - kappa (1 - beta) for the config's beta `name`, or ConfigError when that falls below 0."""
    beta = getattr(cfg, name)
    scaled = _sde(beta, kappa)
    if scaled < 0:
        largest = min(largest_sde_batch(cfg.base_bs, cfg.beta1), largest_sde_batch(cfg.base_bs, cfg.beta2))
        raise ConfigError(
            f"--lr-scaling adam-sde at batch ratio {kappa:g} (--global-bs {global_bs} / --base-bs {cfg.base_bs}) "
            f"makes {name} 1 - {kappa:g} x (1 - {beta:g}) = {scaled:.3g}, outside [0, 1): with --beta1 {cfg.beta1:g} "
            f"and --beta2 {cfg.beta2:g} the rule allows a global batch up to {largest:,} at --base-bs "
            f"{cfg.base_bs} (tune at a larger --base-bs for larger batches)")
    return scaled


def _sde(beta: float, kappa: float) -> float:
    """1 - kappa (1 - beta), as 0 when it is below 0 by rounding only (SDE_ROUNDING), negative otherwise."""
    scaled = 1 - kappa * (1 - beta)
    return 0.0 if -SDE_ROUNDING <= scaled < 0 else scaled


def largest_sde_batch(base_bs: int, beta: float) -> int:
    """The largest global batch at which adam-sde keeps 1 - (batch / base_bs)(1 - beta) >= 0, computed as
    sde_beta computes it."""
    largest = math.floor(base_bs / (1 - beta))
    while largest > 0 and _sde(beta, largest / base_bs) < 0:
        largest -= 1
    while _sde(beta, (largest + 1) / base_bs) >= 0:
        largest += 1
    return largest


@dataclass(frozen=True)
class LRSchedule:
    peak: float  # the scaled LR, reached at the end of warmup
    warmup_steps: int
    decay: str  # constant | cosine | step
    total_steps: int | None  # needed by cosine
    milestones: tuple[int, ...] = ()  # step decay: optimizer steps at which lr *= gamma
    gamma: float = 0.1
    # A batch schedule's: (first step, factor) of each batch after the first, the LR multiplied by the factor
    # from that step on (batch_factors)
    batch_factors: tuple[tuple[int, float], ...] = ()

    def __call__(self, step: int) -> float:
        """LR for optimizer step `step` (0-based)."""
        if self.batch_factors and step >= self.batch_factors[0][0]:
            factor = next(f for first, f in reversed(self.batch_factors) if step >= first)
            return factor * self._shape(step)
        return self._shape(step)

    def _shape(self, step: int) -> float:
        if step < self.warmup_steps:
            # Gradual warmup (Goyal et al. 2017, sec. 2.2): rises linearly to the peak, reaching it at the
            # last warmup step; step 0 already takes a non-zero LR so no step is wasted.
            return self.peak * (step + 1) / self.warmup_steps
        if self.decay == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.decay == "step":
            passed = sum(1 for milestone in self.milestones if step >= milestone)
            return self.peak * self.gamma**passed
        return self.peak


# When neither warmup flag is given and the rule scales the LR above the one tuned at the reference batch,
# the LR rises over this many epochs (Goyal et al. 2017, sec. 2.2: gradual warmup, a fixed number of epochs
# whatever the batch). Without it the default workload's 0.4 at batch 4096 diverges or not depending on
# float rounding (thread count, CPU), so the README's main job would be a coin toss.
DEFAULT_WARMUP_EPOCHS = 2.0


def batch_factors(cfg: RunConfig, batches: list[tuple[int, int]]) -> tuple[tuple[int, float], ...]:
    """(first step, LR factor) of each batch of a schedule after the first, (first step, global batch) given,
    by --batch-schedule-lr: rule, the LR --lr-scaling gives that batch over the first batch's; seesaw, 1/sqrt(2)
    per doubling of the batch (Meterez et al. 2025, "Seesaw": batch x a with LR x 1/sqrt(a) where a step
    schedule would divide the LR by a); constant, 1."""
    first = batches[0][1]
    out = []
    for step, batch in batches[1:]:
        if cfg.batch_schedule_lr == "rule":
            factor = scaled_lr(1.0, first, batch, cfg.lr_scaling)
        elif cfg.batch_schedule_lr == "seesaw":
            factor = math.sqrt(first / batch)
        else:
            factor = 1.0
        out.append((step, factor))
    return tuple(out)


def build_schedule(cfg: RunConfig, global_bs: int, steps_per_epoch: int, total_steps: int | None,
                   batches: list[tuple[int, int]] = ()) -> LRSchedule:
    """The LR of every step; with a batch schedule `batches` holds (first step, global batch) of each batch."""
    peak = scaled_hyperparameters(cfg, global_bs).lr
    if cfg.warmup_epochs is not None:
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
    elif cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    else:
        warmup = round(DEFAULT_WARMUP_EPOCHS * steps_per_epoch) if peak > cfg.base_lr else 0
    milestones = tuple(sorted(round(epoch * steps_per_epoch) for epoch in cfg.lr_step_epochs))
    return LRSchedule(
        peak=peak,
        warmup_steps=warmup,
        decay=cfg.lr_decay,
        total_steps=total_steps,
        milestones=milestones,
        gamma=cfg.lr_step_gamma,
        batch_factors=batch_factors(cfg, list(batches)) if len(batches) > 1 else (),
    )
