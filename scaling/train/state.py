"""The training state that decides the next steps, and how to put it back.

The exact-step search (scaling/train/target.py), the noise probes, the compile warm-up and the ceilings all
run steps that are not part of the run and must leave it as they found it: they take a `Snapshot` through
`TrainingState` and restore it, instead of reaching into the trainer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn


@dataclass
class Snapshot:
    """Everything that decides the next steps: weights and buffers, optimizer and loss-scaler state, the RNG
    (dropout, augmentation on the device) and the step (which fixes the batches and the LR)."""

    step: int
    model: dict
    optimizer: dict
    scaler: dict | None
    rng_cpu: torch.Tensor
    rng_cuda: list[torch.Tensor] | None

    def to_dict(self) -> dict:
        """Plain containers of tensors, numbers and strings: what `torch.load(weights_only=True)` reads back."""
        return {"step": self.step, "model": self.model, "optimizer": self.optimizer, "scaler": self.scaler,
                "rng_cpu": self.rng_cpu, "rng_cuda": self.rng_cuda}

    @classmethod
    def from_dict(cls, saved: dict) -> Snapshot:
        return cls(step=saved["step"], model=saved["model"], optimizer=saved["optimizer"], scaler=saved["scaler"],
                   rng_cpu=saved["rng_cpu"], rng_cuda=saved["rng_cuda"])

    def nbytes(self) -> int:
        """Bytes of the tensors held (weights, buffers and optimizer state)."""
        tensors = list(self.model.values()) + [value for state in self.optimizer.get("state", {}).values()
                                               for value in state.values() if torch.is_tensor(value)]
        return sum(t.numel() * t.element_size() for t in tensors)


class TrainingState:
    """The model (as prepared by Accelerate, and unwrapped: eager, without DDP), the optimizer and the
    loss scaler of one run."""

    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        self.inner_optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer Accelerate wraps

    def snapshot(self, step: int) -> Snapshot:
        scaler = self.accelerator.scaler
        return Snapshot(
            step=step,
            model={k: v.detach().clone() for k, v in self.unwrapped.state_dict().items()},
            optimizer=copy.deepcopy(self.inner_optimizer.state_dict()),
            scaler=copy.deepcopy(scaler.state_dict()) if scaler is not None else None,
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )

    def restore(self, snapshot: Snapshot) -> int:
        """Put weights, optimizer, scaler and RNG back as the snapshot holds them (the snapshot stays usable:
        its tensors are copied); returns the snapshot's step."""
        self.unwrapped.load_state_dict(snapshot.model)
        # Optimizer.load_state_dict keeps tensors that are already on the right device and dtype, so without
        # the copy the next steps would update the snapshot in place.
        self.inner_optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))
        if snapshot.scaler is not None:
            self.accelerator.scaler.load_state_dict(snapshot.scaler)
        torch.set_rng_state(snapshot.rng_cpu)
        if snapshot.rng_cuda is not None:
            torch.cuda.set_rng_state_all(snapshot.rng_cuda)
        return snapshot.step
