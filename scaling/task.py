"""What the model is trained to do: the loss, the predictions and the metrics of a task.

Every part that runs the model on data asks the run's task for its loss: the optimizer step, evaluation, the
noise scale, memory trials, FLOP counting and the communication measurement. A new kind of task (next-token
prediction) is one new class here, not a change in each of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.config import ConfigError


class ClassificationTask:
    """One class label per sample; the model returns [batch, classes] scores. Loss: cross-entropy, the mean
    over the batch; metric: accuracy (the share of samples whose highest score is their label)."""

    name = "classification"
    metric = "accuracy"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over the batch (in float32 whatever the autocast dtype of the scores)."""
        return F.cross_entropy(outputs.float(), targets)

    def evaluation_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(loss sum, correct predictions, samples) of one evaluation batch, in float64 so that sums over a
        whole evaluation set (and over processes) add exactly."""
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum").double()
        correct = (self.predictions(outputs) == targets).sum()
        return torch.stack([loss_sum, correct.double(), torch.tensor(float(len(targets)), dtype=torch.float64,
                                                                     device=outputs.device)])

    def metrics(self, sums: list[float]) -> tuple[float, float]:
        """(accuracy, mean loss) from the summed evaluation_sums of a whole evaluation set."""
        loss_sum, correct, count = sums
        return correct / count, loss_sum / count

    def decided(self, sums: list[float], total: int, target: float) -> bool | None:
        """Whether accuracy over all `total` samples reaches `target` whatever the samples not yet in `sums`
        hold: True when the correct ones so far already reach it, False when not even all the rest correct
        would; None while it can still go either way. The same formula as the whole evaluation's."""
        _, correct, seen = sums
        if correct / total >= target:
            return True
        if (correct + total - seen) / total < target:
            return False
        return None

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)

    def synthetic_targets(self, batch: int, num_classes: int, device: torch.device | str) -> torch.Tensor:
        """Random labels for timing the model on synthetic inputs (the contention measurement)."""
        return torch.randint(0, num_classes, (batch,), device=device)

    def check_outputs(self, scores: object, model_name: str, num_classes: int) -> None:
        """The model's output for 2 inputs must be [2, classes] scores with a score for every label."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != 2:
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ConfigError(f"--model {model_name!r} must return class scores of shape [batch, classes]; for 2 "
                              f"inputs it returned {got}")
        if scores.shape[1] < num_classes:
            raise ConfigError(f"--model {model_name!r} gives {scores.shape[1]} class scores, but the labels of the "
                              f"data go up to {num_classes - 1}: its output layer needs {num_classes} units")


Task = ClassificationTask  # the one task so far; the language-model task joins it here
CLASSIFICATION = ClassificationTask()
TASKS = {"classification": CLASSIFICATION}
