"""What the model is trained to do: the loss, the predictions and the metrics of a task.

Every part that runs the model on data asks the run's task for its loss: the optimizer step, evaluation, the
noise scale, memory trials, FLOP counting and the communication measurement. A new kind of task (next-token
prediction) is one new class here, not a change in each of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.config import ConfigError
from scaling.targets import Target, run_target

__all__ = ["CLASSIFICATION", "NEXT_TOKEN", "TASKS", "Target", "Task", "choose_task", "run_target"]


class ClassificationTask:
    """One class label per sample; the model returns [batch, classes] scores. Loss: cross-entropy, the mean
    over the batch; metric: accuracy (the share of samples whose highest score is their label)."""

    name = "classification"
    metric = "accuracy"
    token_weighted = False  # equal micro-batches: the mean of their mean losses is the global batch's

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over the batch (in float32 whatever the autocast dtype of the scores)."""
        return F.cross_entropy(outputs.float(), targets)

    def evaluation_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(loss sum, correct predictions, samples) of one evaluation batch, in float64 so that sums over a
        whole evaluation set (and over processes) add exactly."""
        # Per-sample losses summed in float64: the same total whatever the batches the set is cut into.
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="none").double().sum()
        correct = (self.predictions(outputs) == targets).sum()
        return torch.stack([loss_sum, correct.double(), torch.tensor(float(len(targets)), dtype=torch.float64,
                                                                     device=outputs.device)])

    def metrics(self, sums: list[float]) -> tuple[float, float]:
        """(accuracy, mean loss) from the summed evaluation_sums of a whole evaluation set."""
        loss_sum, correct, count = sums
        return correct / count, loss_sum / count

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)

    def synthetic_targets(self, batch: int, num_classes: int, device: torch.device | str,
                          input_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Random labels for timing the model on synthetic inputs (the contention measurement)."""
        return torch.randint(0, num_classes, (batch,), device=device)

    def units(self, dataset) -> int:
        """What the metric counts over an evaluation set: its samples."""
        return len(dataset)

    def units_per_sample(self, input_shape: tuple[int, ...]) -> int:
        """Tokens per sample: a classifier's sample is one unit."""
        return 1

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

    def check_outputs(self, scores: object, model_name: str, num_classes: int,
                      input_shape: tuple[int, ...] = ()) -> None:
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


IGNORE_INDEX = -100  # a target position that is not trained on or scored (padding): PyTorch's default


class NextTokenTask(ClassificationTask):
    """Next-token prediction: each sample is (LongTensor[T] inputs, LongTensor[T] targets), the model returns
    [batch, T, vocab] logits. Loss: cross-entropy, the mean over target tokens, positions whose target is
    IGNORE_INDEX left out; metric: token accuracy. The unit of everything it counts is the target token, so
    the loss of a global batch is its token sum over its token count, however the batch is split (the step
    weights each micro-batch by its tokens: scaling/train/step.py)."""

    name = "next-token"
    metric = "accuracy"
    token_weighted = True

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed loss over the batch's target tokens (the step divides it by the global batch's count)."""
        return F.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")

    @staticmethod
    def target_count(targets: torch.Tensor) -> torch.Tensor:
        """Target tokens of a batch (a device tensor: no host sync)."""
        return (targets != IGNORE_INDEX).sum()

    def evaluation_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(loss sum, correct tokens, target tokens) of one evaluation batch, in float64."""
        flat = targets.flatten()
        kept = flat != IGNORE_INDEX
        loss_sum = F.cross_entropy(outputs.float().flatten(0, 1), flat, ignore_index=IGNORE_INDEX,
                                   reduction="none").double().sum()  # ignored positions add 0
        correct = ((self.predictions(outputs).flatten() == flat) & kept).sum()
        return torch.stack([loss_sum, correct.double(), kept.sum().double()])

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)

    def synthetic_targets(self, batch: int, num_classes: int, device: torch.device | str,
                          input_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.randint(0, num_classes, (batch, *input_shape), device=device)

    def units(self, dataset) -> int:
        """Target tokens of an evaluation set (counted once: the denominator of its loss and accuracy)."""
        from scaling.data.tensors import TensorPair

        if isinstance(dataset, TensorPair):
            return int((dataset.labels != IGNORE_INDEX).sum())
        return sum(int((torch.as_tensor(dataset[i][1]) != IGNORE_INDEX).sum()) for i in range(len(dataset)))

    def units_per_sample(self, input_shape: tuple[int, ...]) -> int:
        """Token positions per sequence (the context)."""
        return int(input_shape[-1]) if input_shape else 1

    def num_classes(self, labels: dict[str, torch.Tensor], complete: bool, source: str) -> int:
        """The vocabulary the logits must cover: the largest target token + 1, after checking each split's
        targets (one whole number >= 0, or IGNORE_INDEX, per position)."""
        largest = -1
        for split, values in labels.items():
            self.check_labels(values, split, source)
            kept = values[values != IGNORE_INDEX]
            if kept.numel():
                largest = max(largest, int(kept.max()))
        return max(largest + 1, 1)

    @staticmethod
    def check_labels(values: torch.Tensor, split: str, source: str) -> None:
        """A sequence of token ids per sample: an integer tensor [samples, T], each id >= 0 or IGNORE_INDEX."""
        if values.dim() != 2:
            raise ConfigError(f"{source}: its {split} targets have shape {tuple(values.shape)}, but a next-token "
                              f"task takes one sequence of target token ids per sample ([samples, T])")
        if values.is_floating_point() or values.is_complex():
            raise ConfigError(f"{source}: its {split} targets are not token ids ({values.dtype}); give integer "
                              f"ids 0, 1, 2, ... (or {IGNORE_INDEX} for a position not to train on)")
        bad = (values < 0) & (values != IGNORE_INDEX)
        if bool(bad.any()):
            raise ConfigError(f"{source}: its {split} targets include {int(values[bad][0])}; token ids must be 0, "
                              f"1, 2, ... ({IGNORE_INDEX} marks a position not to train on)")

    def check_outputs(self, scores: object, model_name: str, num_classes: int,
                      input_shape: tuple[int, ...] = ()) -> None:
        """The model's output for 2 sequences of T tokens must be [2, T, vocab] logits covering every token id."""
        length = input_shape[-1] if input_shape else None
        if (not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.shape[0] != 2
                or (length is not None and scores.shape[1] != length)):
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ConfigError(f"--model {model_name!r} must return next-token logits of shape [batch, T, vocab] for "
                              f"a next-token task; for 2 sequences of {length} tokens it returned {got}")
        if scores.shape[2] < num_classes:
            raise ConfigError(f"--model {model_name!r} gives {scores.shape[2]} logits per position, but the data's "
                              f"token ids go up to {num_classes - 1}: its vocabulary needs {num_classes}")


Task = ClassificationTask  # the interface every task has (NextTokenTask adds the token weighting)
CLASSIFICATION = ClassificationTask()
NEXT_TOKEN = NextTokenTask()
TASKS = {"classification": CLASSIFICATION, "next-token": NEXT_TOKEN}


def choose_task(name: str, first_input: torch.Tensor, first_label: object, source: str) -> Task:
    """The run's task: the one named (--task), or, with auto, next-token when a sample's label is an integer
    sequence of its input's shape (LongTensor[T] inputs and targets), else classification."""
    if name != "auto":
        task = TASKS[name]
        if task is NEXT_TOKEN and not _looks_like_sequences(first_input, first_label):
            shape = tuple(first_label.shape) if isinstance(first_label, torch.Tensor) else "a scalar"
            raise ConfigError(f"{source}: --task next-token needs (LongTensor[T] inputs, LongTensor[T] targets) "
                              f"samples; its first sample has inputs {tuple(first_input.shape)} "
                              f"({first_input.dtype}) and target {shape}")
        return task
    return NEXT_TOKEN if _looks_like_sequences(first_input, first_label) else CLASSIFICATION


def _looks_like_sequences(first_input: torch.Tensor, first_label: object) -> bool:
    return (isinstance(first_label, torch.Tensor) and first_label.dim() == 1 and first_input.dim() == 1
            and first_label.shape == first_input.shape and not first_input.is_floating_point()
            and not first_label.is_floating_point())
