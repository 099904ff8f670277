"""Issue 13: data and models the user hands over, the dataset cache, the hub. Real runs of the entry point."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    SMALL,
    assert_ok,
    assert_one_line_error,
    load_result,
    run_entry,
    run_in_process,
    run_script,
)

QUICK = ["--max-steps", "4", "--target-accuracy", "none", "--progress", "false", "--cpu"]

USER_CODE = '''
import torch
from torch import nn


def raises():
    raise RuntimeError("model factory broke")


def no_parameters():
    return nn.Flatten()


def three_classes():
    return nn.Linear(40, 3)


def not_a_module():
    return 42


def dataset_raises():
    return {}["missing"]


def not_a_pair():
    return [1, 2, 3]


class BadItems(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, index):
        raise ValueError("cannot read item")


def bad_items():
    return BadItems(), BadItems()


class ShortBatches(torch.utils.data.Dataset):
    """Items read one by one are fine; its batched fetch drops the last item of every batch."""
    def __len__(self):
        return 100

    def __getitem__(self, index):
        return torch.zeros(40), index % 10

    def __getitems__(self, indices):
        return [self[i] for i in indices[:-1]]


def short_batches():
    return ShortBatches(), ShortBatches()


def float_labels():
    x = torch.randn(200, 40)
    y = torch.rand(200) * 3
    return torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y)


def negative_labels():
    x = torch.randn(200, 40)
    y = torch.arange(200) % 3 - 1
    return torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y)
'''


@pytest.fixture
def user_code(tmp_path):
    (tmp_path / "usercode.py").write_text(USER_CODE)
    (tmp_path / "broken_syntax.py").write_text("def broken(:\n")
    return tmp_path


@pytest.mark.parametrize("flags, fragments", [
    (["--model", "usercode:raises"], ["--model 'usercode:raises' raised RuntimeError: model factory broke",
                                      "(at usercode.py:7 in raises)"]),
    (["--model", "usercode:no_parameters"], ["returned a model with no trainable parameters"]),
    (["--model", "usercode:not_a_module"], ["returned int, expected a torch.nn.Module"]),
    (["--model", "usercode:three_classes"], ["gives 3 class scores, but the labels of the data go up to 9"]),
    (["--model", "broken_syntax:broken"], ["importing module 'broken_syntax' raised SyntaxError",
                                           "(at broken_syntax.py:1)"]),
    (["--dataset", "usercode:dataset_raises"], ["raised KeyError: 'missing' (at usercode.py:"]),
    (["--dataset", "usercode:not_a_pair"], ["must return a (train, eval) pair, got list"]),
    (["--dataset", "usercode:bad_items"], ["reading sample 0 raised ValueError: cannot read item"]),
    (["--dataset", "usercode:short_batches"], ["__getitems__ of 100 indices must return a list of 100 items"]),
    (["--dataset", "usercode:float_labels"], ["labels are torch.float32; class labels must be whole numbers"]),
    (["--dataset", "usercode:negative_labels", "--model", "mlp"], ["its train labels include -1"]),
])
def test_user_factories_and_their_data_are_checked_in_one_line(user_code, flags, fragments):
    out = user_code / "out"
    proc = run_in_process([*QUICK, "--num-samples", "8000", "--global-bs", "64", *flags, "--output-dir", str(out)],
                          cwd=user_code)
    assert_one_line_error(proc, *fragments)
    assert not (out / "result.json").exists()  # refused before the run starts: nothing left "running"


def _csv(path: Path, rows: int = 300, blank: tuple[int, str] | None = None, nan_row: int | None = None,
         label_shift: int = 0, features: int = 40) -> Path:
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(features)]
    lines = [",".join([*names, "label"])]
    for row in range(rows):
        cells = [f"{v:.3f}" for v in rng.normal(size=features)] + [str(row % 3 + label_shift)]
        if blank and blank[0] == row:
            cells[[*names, "label"].index(blank[1])] = ""
        if nan_row == row:
            cells[0] = "inf"
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind, fragments", [
    ("missing input", ["column 'f3' of split 'train' has 1 missing cell(s), the first in row 7"]),
    ("missing label", ["column 'label' of split 'train' has 1 missing cell(s), the first in row 9"]),
    ("nan", ["column 'f0' of split 'train' has 1 row(s) with NaN or infinite values, the first in row 11"]),
    ("negative labels", ["its train labels include -1"]),
    ("too few features", ["--model cnn1d cannot be built for inputs of shape (2,)", "--model mlp takes any shape"]),
])
def test_csv_cells_and_shapes_are_checked_in_one_line(tmp_path, kind, fragments):
    path = tmp_path / "data.csv"
    if kind == "missing input":
        _csv(path, blank=(7, "f3"))
    elif kind == "missing label":
        _csv(path, blank=(9, "label"))
    elif kind == "nan":
        _csv(path, nan_row=11)
    elif kind == "negative labels":
        _csv(path, label_shift=-1)
    else:
        _csv(path, features=2)
    proc = run_in_process([*QUICK, "--dataset", str(path), "--eval-split", "train", "--global-bs", "64",
                           "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, *fragments)


@pytest.mark.parametrize("flags, fragments", [
    (["--num-samples", "5", "--global-bs", "8"], ["--num-samples 5 is too small", "use --num-samples 10 or more"]),
    (["--num-samples", "100", "--global-bs", "256"], ["gives 80 training samples", "fewer than one global batch of "
                                                      "256", "use --num-samples 320 or more"]),
    (["--dataset", "synthetic_images", "--model", "cnn2d", "--num-samples", "10", "--global-bs", "64"],
     ["--num-samples 10 is too small for --dataset synthetic_images"]),
])
def test_too_few_samples_for_one_batch_is_refused_before_generating(tmp_path, flags, fragments):
    proc = run_in_process([*QUICK, *flags, "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, *fragments)


@pytest.mark.slow
def test_a_damaged_dataset_cache_is_rebuilt_and_an_unwritable_one_named(tmp_path):
    cache = tmp_path / "cache"
    args = [*QUICK, "--num-samples", "2000", "--global-bs", "64"]
    assert_ok(run_entry([*args, "--output-dir", str(tmp_path / "a")], SCALING_CACHE=str(cache)))
    (folder,) = cache.glob("mnist1d-2000-*")
    arrow = next(folder.glob("train/*.arrow"))
    with open(arrow, "r+b") as handle:  # torn by a crash or a full disk: the first 500 bytes survive
        handle.truncate(500)
    proc = run_entry([*args, "--output-dir", str(tmp_path / "b")], SCALING_CACHE=str(cache))
    assert_ok(proc)
    assert f"the MNIST-1D cache {folder} cannot be read" in proc.stderr and "rebuilding it" in proc.stderr
    (folder / "dataset_dict.json").write_text("{")  # damaged metadata
    assert_ok(run_entry([*args, "--output-dir", str(tmp_path / "c")], SCALING_CACHE=str(cache)))
    assert_ok(run_entry([*args, "--output-dir", str(tmp_path / "d")], SCALING_CACHE=str(cache)))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    proc = run_entry([*args, "--output-dir", str(tmp_path / "e")], SCALING_CACHE=str(blocker))
    assert_one_line_error(proc, f"cannot write the MNIST-1D cache under {blocker} (a file, not a folder)",
                          "set SCALING_CACHE")


@pytest.mark.slow  # a real process: the hub's offline switch is read when the library is imported
def test_an_unreachable_hub_fails_fast_in_one_line_without_retry_noise(tmp_path):
    started = time.time()
    proc = run_script([*SMALL, "--dataset", "someone/some-dataset", "--output-dir", str(tmp_path / "out")],
                      timeout=120, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    assert_one_line_error(proc, "cannot load --dataset 'someone/some-dataset': the Hugging Face hub (127.0.0.1) "
                                "cannot be reached", "no copy is cached here")
    assert "Retry" not in proc.stderr and "retry" not in proc.stdout
    assert time.time() - started < 60  # retries would take minutes; a loaded machine imports torch slowly


# Issue 29, items 7-13: bad data that used to reach training (or allocate without bound) before it failed.
BAD_DATA = '''
import torch
from torch.utils.data import Dataset, TensorDataset


def _split(samples=400, features=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, features, generator=generator), torch.arange(samples) % 10


def eval_label_outside():
    inputs, labels = _split(200, seed=1)
    labels[5] = 50
    return TensorDataset(*_split()), TensorDataset(inputs, labels)


def huge_label():
    inputs, labels = _split()
    labels[3] = 10**12
    return TensorDataset(inputs, labels), TensorDataset(*_split(200, seed=1))


def eval_shape():
    return TensorDataset(*_split()), TensorDataset(*_split(200, features=41, seed=1))


class OneOddSample(Dataset):
    """`length` samples of shape [40], but sample `odd` of shape [41]."""
    def __init__(self, length: int = 400, odd: int = 123):
        self.length, self.odd = length, odd

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return torch.zeros(41 if index == self.odd else 40), index % 10


def odd_sample():
    return OneOddSample(), OneOddSample()


def odd_late_sample():  # past the first 10,000 samples (which the label check reads): --materialize reads it
    return OneOddSample(12000, 11000), TensorDataset(*_split(200, seed=1))


class NaNBeyondTheSample(OneOddSample):
    """12,000 samples, two of them infinite past the first 10,000."""
    def __init__(self):
        super().__init__(12000)

    def __getitem__(self, index):
        return torch.full((40,), float("inf") if index in (10500, 11500) else 0.0), index % 10


def nan_late_sample():
    return NaNBeyondTheSample(), TensorDataset(*_split(200, seed=1))


class Endless(Dataset):
    def __len__(self):
        return 10**15

    def __getitem__(self, index):
        return torch.zeros(40), index % 10


def absurd_length():
    return Endless(), TensorDataset(*_split(200, seed=1))


def sequence_labels():
    inputs, _ = _split()
    labels = torch.randint(0, 10, (400, 5))
    return TensorDataset(inputs, labels), TensorDataset(inputs[:200], labels[:200])


def nan_inputs():
    inputs, labels = _split()
    inputs[17, 3] = float("nan")
    return TensorDataset(inputs, labels), TensorDataset(*_split(200, seed=1))


def inf_eval_inputs():
    inputs, labels = _split(200, seed=1)
    inputs[9, 0] = float("inf")
    return TensorDataset(*_split()), TensorDataset(inputs, labels)


class NaNItem(OneOddSample):
    def __getitem__(self, index):
        return torch.full((40,), float("nan") if index == 77 else 0.0), index % 10


def nan_item():
    return NaNItem(), NaNItem()
'''


@pytest.mark.parametrize("factory, fragments", [
    ("eval_label_outside", ["1 eval sample(s) have labels outside the train labels 0-9", "the first 50 (sample 5)"]),
    ("huge_label", ["its train labels run from 0 to 1,000,000,000,000 with only 11 distinct values",
                    "class ids 0, 1, 2, ..."]),
    ("eval_shape", ["its eval inputs have shape (41,) but its train inputs (40,)"]),
    ("odd_sample", ["train sample 123 has input shape (41,), sample 0 (40,)"]),
    ("absurd_length", ["its train split says it has 1,000,000,000,000,000 samples (its __len__)"]),
    ("sequence_labels", ["its train labels have shape (400, 5)", "one class label per sample"]),
    ("nan_inputs", ["its train inputs have 1 sample(s) with NaN or infinite values, the first sample 17"]),
    ("inf_eval_inputs", ["its eval inputs have 1 sample(s) with NaN or infinite values, the first sample 9"]),
    ("nan_item", ["its train inputs have 1 sample(s) with NaN or infinite values, the first sample 77"]),
])
def test_bad_data_from_a_factory_is_refused_before_training_in_one_line(tmp_path, factory, fragments):
    (tmp_path / "baddata.py").write_text(BAD_DATA)
    out = tmp_path / "out"
    started = time.time()
    proc = run_in_process([*QUICK, "--global-bs", "64", "--dataset", f"baddata:{factory}", "--model", "mlp",
                           "--output-dir", str(out)], cwd=tmp_path)
    assert_one_line_error(proc, f"--dataset 'baddata:{factory}'", *fragments)
    assert not (out / "result.json").exists()  # refused before the run starts
    assert time.time() - started < 60  # no giant allocation, no read of 10**15 samples


@pytest.mark.parametrize("factory, fragments", [
    ("odd_late_sample", ["--materialize: training sample 11000 has input shape (41,), sample 8192 (40,)"]),
    ("nan_late_sample", ["--materialize: the training inputs have 2 sample(s) with NaN or infinite values, the "
                         "first sample 10500"]),
])
def test_bad_samples_past_the_checked_ones_are_named_when_the_set_is_read_into_memory(tmp_path, factory, fragments):
    """The load reads the first 10,000 samples of a dataset that is not in memory; --materialize auto reads the
    rest once, vectorised, before training."""
    (tmp_path / "baddata.py").write_text(BAD_DATA)
    out = tmp_path / "out"
    proc = run_in_process([*QUICK, "--global-bs", "64", "--dataset", f"baddata:{factory}", "--model", "mlp",
                           "--output-dir", str(out)], cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("workers", ["0", pytest.param("1", marks=pytest.mark.slow)])  # a worker: seconds to start
def test_a_batch_of_two_shapes_through_the_loader_is_one_line(tmp_path, workers):
    """A set kept in its DataLoader (--materialize false): the odd sample past the checked ones ends the run
    at the batch that holds it, in one line (from a loader worker too), not a stack traceback."""
    (tmp_path / "baddata.py").write_text(BAD_DATA)
    out = tmp_path / "out"
    proc = run_in_process([*QUICK[:1], "400", *QUICK[2:], "--global-bs", "1000", "--materialize", "false",
                           "--num-workers", workers, "--dataset", "baddata:odd_late_sample", "--model", "mlp",
                           "--output-dir", str(out)], cwd=tmp_path)
    assert_one_line_error(proc, "a training batch's sample has input shape (41,), another (40,)")
    result = load_result(out)
    assert result["status"] == "failed" and "input shape (41,)" in result["error"]


def _text_labels_csv(path: Path, rows: int = 300) -> Path:
    rng = np.random.default_rng(0)
    lines = ["a,b,c,label"]
    lines += [",".join([*(f"{v:.3f}" for v in rng.normal(size=3)), ("cat", "dog", "bird")[row % 3]])
              for row in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("splits", [[], ["--train-split", "train[:80%]", "--eval-split", "train[80%:]"]])
def test_text_labels_are_refused_with_how_to_encode_them(tmp_path, splits):
    """With the automatic hold-out (no --eval-split of the file's own) and with explicit splits alike."""
    path = _text_labels_csv(tmp_path / "pets.csv")
    proc = run_in_process([*QUICK, "--dataset", str(path), "--global-bs", "64", "--model", "mlp", *splits,
                           "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "label column 'label' holds text ('cat', 'dog', ...)", "class_encode_column")


def test_a_label_column_of_lists_is_refused_before_the_hold_out(tmp_path):
    """A sequence model's targets (a list per row) in a file with one split: refused on all its rows, before
    the automatic hold-out splits them."""
    path = tmp_path / "sequences.jsonl"
    path.write_text("".join(json.dumps({"a": row / 300, "b": 1 - row / 300, "label": [row % 3, (row + 1) % 3]}) + "\n"
                            for row in range(300)))
    proc = run_in_process([*QUICK, "--dataset", str(path), "--global-bs", "64", "--model", "mlp",
                           "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "its train labels have shape (300, 2)", "one class label per sample")


def test_the_samples_a_global_batch_needs_match_a_plain_search():
    from scaling.data.mnist1d import CLASSES, samples_needed, split_sizes

    def plain(samples: int, global_bs: int) -> int:  # a whole number of samples per class, the smallest that holds
        needed = -(-max(samples, CLASSES) // CLASSES) * CLASSES
        while split_sizes(needed)[0] < global_bs or split_sizes(needed)[1] < 1:
            needed += CLASSES
        return needed

    rng = np.random.default_rng(29)
    for samples, global_bs in rng.integers(1, 6000, size=(2000, 2)).tolist():
        train, test = split_sizes(samples)
        if train < global_bs or test < 1:
            assert samples_needed(samples, global_bs) == plain(samples, global_bs), (samples, global_bs)
    assert samples_needed(4000, 10**29) == 125 * 10**27  # found at once, not 10**28 steps of 10 samples


@pytest.mark.slow
def test_a_global_batch_far_beyond_the_data_is_refused_at_once():
    proc = run_script([*SMALL, "--num-samples", "4000", "--global-bs", str(10**29)], timeout=120)  # used to hang
    assert_one_line_error(proc, f"fewer than one global batch of {10**29}", f"use --num-samples {125 * 10**27} or more")


@pytest.mark.parametrize("args, fragment", [
    (["--num-samples", str(10**29)], "of --dataset mnist1d would take at least"),  # generated until memory ran out
    (["--num-samples", str(10**11), "--dataset", "synthetic_images"], "would take at least 1.1 PiB of memory"),
    (["--seed", str(10**30)], "--seed must be a whole number from 0 to 4,294,967,295"),  # NumPy's ValueError
    (["--seed", "-1"], "--seed must be a whole number from 0"),
])
def test_absurd_sizes_and_seeds_are_refused_before_anything_is_made(tmp_path, args, fragment):
    proc = run_in_process([*QUICK, *args, "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, fragment)
    assert proc.stdout == ""
