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

    def num_classes(self, labels: dict[str, torch.Tensor], complete: bool, source: str) -> int:
        """The class scores the model must give (the largest label + 1), after checking the labels of each
        split ({"train": ..., "eval": ...}; `complete` when "train" holds every training label, else each may
        be a sample): one whole number >= 0 per sample, forming a compact range of class ids (the output layer
        is sized from the largest), and, when `complete`, no eval label outside the training labels' range.
        `source` begins each message (`--dataset 'mod:fn'`). Vectorised over the label tensors: no loop over
        samples."""
        for split, values in labels.items():
            self.check_labels(values, split, source)
        train = labels["train"]
        if complete and len(train) and len(labels["eval"]):
            _check_eval_within_train(labels["eval"], int(train.min()), int(train.max()), source)
        # Every train label known: the eval labels lie within their range, which alone sizes the output.
        # A sample of the train labels: the largest label of either split may be the largest there is.
        present = [train] if complete else [values for values in labels.values() if len(values)]
        if not any(map(len, present)):
            return 1
        seen = torch.cat(present)
        _check_compact(seen, "train" if complete else "train and eval", source)
        return int(seen.max()) + 1

    @staticmethod
    def check_labels(values: torch.Tensor, split: str, source: str) -> None:
        """One whole number >= 0 per sample (a 1-D integer tensor)."""
        if values.dim() != 1:
            raise ConfigError(f"{source}: its {split} labels have shape {tuple(values.shape)}, but a classification "
                              f"model takes one class label per sample (a tensor of shape ({len(values)},)); "
                              f"give one whole number 0, 1, 2, ... per sample")
        if values.is_floating_point() or values.is_complex():
            raise ConfigError(f"{source}: its {split} labels are not whole numbers ({values.dtype}); class labels "
                              f"must be 0, 1, 2, ...")
        if len(values) and int(values.min()) < 0:
            raise ConfigError(f"{source}: its {split} labels include {int(values.min())}; class labels must be "
                              f"0, 1, 2, ...")

    def check_outputs(self, scores: object, model_name: str, num_classes: int) -> None:
        """The model's output for 2 inputs must be [2, classes] scores with a score for every label."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != 2:
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ConfigError(f"--model {model_name!r} must return class scores of shape [batch, classes]; for 2 "
                              f"inputs it returned {got}")
        if scores.shape[1] < num_classes:
            raise ConfigError(f"--model {model_name!r} gives {scores.shape[1]} class scores, but the labels of the "
                              f"data go up to {num_classes - 1}: its output layer needs {num_classes} units")


# Unused class ids allowed below the largest label: a subset may lack some classes, but ids far above the
# classes seen (a label of 10**12 among ten classes) would size the output layer from a typo.
SPARE_CLASS_IDS = 16


def _check_compact(labels: torch.Tensor, splits: str, source: str) -> None:
    """The labels must be class ids 0..K-1 with at most max(distinct, SPARE_CLASS_IDS) ids unused: refused
    before any output layer of K units is built (and allocated)."""
    largest, distinct = int(labels.max()), int(torch.unique(labels).numel())
    if largest + 1 - distinct > max(distinct, SPARE_CLASS_IDS):
        raise ConfigError(f"{source}: its {splits} labels run from {int(labels.min()):,} to {largest:,} with only "
                          f"{distinct:,} distinct values; class labels must be class ids 0, 1, 2, ... (the model "
                          f"gets one output per id up to the largest): renumber them, e.g. with "
                          f"torch.unique(labels, return_inverse=True)")


def _check_eval_within_train(eval_labels: torch.Tensor, low: int, high: int, source: str) -> None:
    """An eval label the training labels' range lacks is a class the model never trains on: its accuracy would
    be measured against an answer it cannot give."""
    outside = (eval_labels < low) | (eval_labels > high)
    count = int(outside.sum())
    if count:
        first = int(outside.nonzero()[0, 0])
        raise ConfigError(f"{source}: {count:,} eval sample(s) have labels outside the train labels {low}-{high}, "
                          f"the first {int(eval_labels[first]):,} (sample {first}); the model cannot learn a class "
                          f"it never trains on: drop or relabel them, or train on them too")


Task = ClassificationTask  # the one task so far; the language-model task joins it here
CLASSIFICATION = ClassificationTask()
TASKS = {"classification": CLASSIFICATION}
