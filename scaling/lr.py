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

from scaling.config import RunConfig


def scaled_lr(base_lr: float, base_bs: int, global_bs: int, rule: str) -> float:
    """LR for global_bs given base_lr tuned at base_bs.

    linear: Goyal et al. 2017, "Accurate, Large Minibatch SGD" (lr proportional to batch).
    sqrt:   Hoffer et al. 2017, "Train longer, generalize better" (lr proportional to sqrt(batch),
            keeping the variance of the weight update constant), for SGD; for Adam, Malladi et al. 2022,
            "On the SDEs and scaling rules for adaptive gradient algorithms" (the LR part of their rule).
    """
    ratio = global_bs / base_bs
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown LR scaling rule {rule!r}")


@dataclass(frozen=True)
class LRSchedule:
    peak: float  # the scaled LR, reached at the end of warmup
    warmup_steps: int
    decay: str  # constant | cosine | step
    total_steps: int | None  # needed by cosine
    milestones: tuple[int, ...] = ()  # step decay: optimizer steps at which lr *= gamma
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        """LR for optimizer step `step` (0-based)."""
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


def build_schedule(cfg: RunConfig, global_bs: int, steps_per_epoch: int, total_steps: int | None) -> LRSchedule:
    peak = scaled_lr(cfg.base_lr, cfg.base_bs, global_bs, cfg.lr_scaling)
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
    )
