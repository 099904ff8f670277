"""End-to-end runs of the real entry point: one process, accumulation, two gloo processes, data sources."""

import json
import math

import pytest

from conftest import (
    SMALL,
    assert_ok,
    assert_one_line_error,
    load_result,
    run_entry,
    run_in_process,
    run_torchrun,
)
from scaling.config import RunConfig
from scaling.files import read_metrics
from scaling.lr import build_schedule


@pytest.mark.slow
def test_default_workload_reaches_its_default_target(tmp_path):
    """The README's main job: defaults only (MNIST-1D at its default size, default model and target)."""
    proc = run_entry(["--global-bs", "4096", "--cpu", "--progress", "false", "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "reached"
    assert result["batch"] == {"global": 4096, "per_device": 512, "num_processes": 1, "accumulation_steps": 8,
                               "world_size": 1, "emulated": False, "micro_steps_per_process": 8}
    assert "global batch 4096 = per-device 512 x 1 process x 8 accumulation steps" in proc.stdout
    assert result["target"] == {"metric": "accuracy", "value": RunConfig().target_accuracy, "direction": "max"}
    assert result["final"]["accuracy"] >= result["target"]["value"]
    steps = result["steps_to_target"]
    assert result["samples_to_target"] == steps * 4096
    assert result["epochs_to_target"] == pytest.approx(steps / result["steps_per_epoch"])
    assert result["steps_per_epoch"] >= 5  # several optimizer steps per epoch at the largest default batch
    assert 0 < result["train_time_to_target_s"] <= result["time_to_target_s"]
    # The run stops at its first evaluation at the target; steps_to_target is the exact first step at it.
    assert len(result["train_loss"]) == result["steps"] == len(result["lr_per_step"])
    assert result["history"][-1]["step"] == result["first_eval_at_target"]["step"] == result["steps"] >= steps
    assert result["throughput_samples_per_s"] > 0
    assert result["environment"]["world_size"] == 1 and result["environment"]["torch"]
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert {m["type"] for m in metrics} == {"train", "eval", "noise"}
    assert "scaling: reached" in proc.stdout.splitlines()[-1]


def _run(tmp_path, name, extra, nproc=1):
    out = tmp_path / name
    args = [*SMALL, "--global-bs", "256", "--max-steps", "24", "--target-accuracy", "none", "--eval-every", "8",
            "--lr-scaling", "linear", "--base-lr", "0.05", "--base-bs", "64", "--warmup-steps", "5",
            "--lr-decay", "cosine", "--output-dir", str(out), *extra]
    proc = run_torchrun(args, nproc=nproc) if nproc > 1 else run_entry(args)
    assert_ok(proc)
    return load_result(out)


@pytest.mark.slow
def test_lr_schedule_is_in_optimizer_steps_for_any_world_size_and_accumulation(tmp_path):
    single = _run(tmp_path, "single", [])
    accumulated = _run(tmp_path, "accum", ["--accumulation-steps", "4"])
    two = _run(tmp_path, "two", ["--per-device-bs", "64"], nproc=2)
    assert two["environment"]["world_size"] == 2 and two["environment"]["distributed_type"] == "MULTI_CPU"
    assert two["batch"]["accumulation_steps"] == 2 and accumulated["batch"]["accumulation_steps"] == 4
    cfg = RunConfig(base_lr=0.05, base_bs=64, lr_scaling="linear", warmup_steps=5, lr_decay="cosine", max_steps=24)
    expected = build_schedule(cfg, 256, steps_per_epoch=single["steps_per_epoch"], total_steps=24)
    for result in (single, accumulated, two):
        assert result["status"] == "completed" and result["steps"] == 24
        assert result["lr"]["scaled"] == pytest.approx(0.2)
        assert result["lr_per_step"] == pytest.approx([expected(s) for s in range(24)])
        assert [h["step"] for h in result["history"]] == [8, 16, 24]
    # the same global batches in every decomposition: the mean loss per step agrees closely
    assert two["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert accumulated["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_divergence_is_a_result_not_a_crash(tmp_path):
    proc = run_entry([*SMALL, "--global-bs", "512", "--base-lr", "50", "--lr-scaling", "none", "--max-steps", "60",
                      "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "diverged"
    assert 1 <= result["diverged_at_step"] <= 60
    assert result["time_to_target_s"] is None and result["steps_to_target"] is None


@pytest.mark.slow
@pytest.mark.parametrize("lr", ["1e3", "1e12"])
def test_a_run_diverging_while_the_noise_scale_is_measured_ends_diverged(tmp_path, lr):
    # Measured at every step, the overflowing gradients give an infinite or NaN |G|^2 and tr(Sigma): the
    # point is stored with nulls (JSON has none) and the run ends diverged, not failed on writing it.
    proc = run_entry([*SMALL, "--global-bs", "512", "--base-lr", lr, "--lr-scaling", "none", "--max-steps", "30",
                      "--noise-every", "1", "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "diverged" and result["diverged_at_step"] <= 30
    noise = [m for m in read_metrics(tmp_path / "metrics.jsonl") if m["type"] == "noise"]
    assert noise and any(m["grad_sq"] is None or m["trace"] is None for m in noise)
    for point in noise:
        assert all(v is None or math.isfinite(v) for k, v in point.items() if k != "type")


@pytest.mark.slow
def test_budget_without_reaching_the_target(tmp_path):
    proc = run_entry([*SMALL, "--global-bs", "256", "--max-steps", "3", "--target-accuracy", "0.99",
                      "--output-dir", str(tmp_path)])
    assert_ok(proc)
    result = load_result(tmp_path)
    assert result["status"] == "not_reached" and result["steps"] == 3
    assert result["epochs_to_target"] is None and len(result["history"]) == 1


def _write_split_files(folder, fmt):
    import random

    rng = random.Random(0)
    folder.mkdir()
    for split, size in (("train", 600), ("test", 200)):
        rows = []
        for _ in range(size):
            label = rng.randrange(3)
            features = [rng.gauss(2.0 * label if i < 2 else 0.0, 0.5) for i in range(4)]
            rows.append((features, label))
        if fmt == "csv":
            lines = ["f0,f1,f2,f3,label"] + [",".join(f"{v:.5f}" for v in f) + f",{y}" for f, y in rows]
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
        else:
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({"feats": f, "y": y}) + "\n" for f, y in rows))


@pytest.mark.slow
def test_local_csv_files_through_datasets(tmp_path):
    _write_split_files(tmp_path / "csvdata", "csv")
    proc = run_entry(["--dataset", str(tmp_path / "csvdata"), "--model", "mlp", "--global-bs", "64",
                      "--target-accuracy", "0.9", "--max-epochs", "20", "--cpu", "--progress", "false",
                      "--output-dir", str(tmp_path / "out")])
    assert_ok(proc)
    result = load_result(tmp_path / "out")
    assert result["status"] == "reached"
    assert result["train_samples"] == 600 and result["eval_samples"] == 200


@pytest.mark.slow
def test_one_csv_file_is_a_dataset_with_a_held_out_split_or_sliced_splits(tmp_path):
    """One generated CSV: with no evaluation split, 20% of each class is held out (fixed seed) and the run
    says so; datasets' split slicing (train[:75%] / train[75%:]) chooses the split instead."""
    _write_split_files(tmp_path / "csvdata", "csv")
    path = tmp_path / "csvdata" / "train.csv"  # 600 rows, 3 classes
    common = ["--dataset", str(path), "--model", "mlp", "--global-bs", "32", "--max-steps", "5", "--cpu",
              "--progress", "false"]
    held = run_entry([*common, "--output-dir", str(tmp_path / "held")])
    assert_ok(held)
    assert "no evaluation split, so 20% of each class" in held.stdout
    result = load_result(tmp_path / "held")
    assert result["eval_samples"] == 120 and result["train_samples"] == 480
    again = run_entry([*common, "--seed", "3", "--output-dir", str(tmp_path / "again")])
    assert_ok(again)  # the held-out rows do not depend on the run's seed
    assert load_result(tmp_path / "again")["history"][-1]["loss"] is not None
    sliced = run_entry([*common, "--train-split", "train[:75%]", "--eval-split", "train[75%:]",
                        "--output-dir", str(tmp_path / "sliced")])
    assert_ok(sliced)
    assert "held out" not in sliced.stdout
    result = load_result(tmp_path / "sliced")
    assert result["train_samples"] == 450 and result["eval_samples"] == 150
    bad = run_entry([*common, "--train-split", "train[:75%", "--output-dir", str(tmp_path / "bad")])
    assert_one_line_error(bad, "split 'train[:75%'", "slices look like train[:80%]")


@pytest.mark.slow
def test_local_jsonl_with_named_columns(tmp_path):
    _write_split_files(tmp_path / "jsondata", "json")
    base = ["--dataset", str(tmp_path / "jsondata"), "--model", "mlp", "--global-bs", "50", "--max-steps", "5",
            "--cpu", "--progress", "false", "--output-dir", str(tmp_path / "out"), "--overwrite"]
    assert_ok(run_entry([*base, "--input-column", "feats", "--label-column", "y"]))
    assert load_result(tmp_path / "out")["steps"] == 5
    missing = run_entry([*base, "--input-column", "feats"])  # label column defaults to "label"
    assert_one_line_error(missing, "no label column 'label'", "columns: feats, y")
    split = run_entry([*base, "--label-column", "y", "--eval-split", "validation"])
    assert_one_line_error(split, "no split 'validation'", "splits: train, test")


@pytest.mark.slow
def test_unreachable_hub_id_is_a_one_line_error(tmp_path):
    proc = run_entry(["--dataset", "someone/not-a-real-dataset", "--output-dir", str(tmp_path)], timeout=120,
                     HF_HUB_OFFLINE="1")
    assert_one_line_error(proc, "cannot load --dataset 'someone/not-a-real-dataset'")
    assert not (tmp_path / "result.json").exists()


USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_data():
    g = torch.Generator().manual_seed(0)
    def split(n):
        x = torch.randn(n, 6, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        return TensorDataset(x, y)
    return split(800), split(200)


class Pairs(torch.utils.data.Dataset):
    """A plain map-style dataset (not tensors): goes through the DataLoader path."""
    def __init__(self, base):
        self.base = base
    def __len__(self):
        return len(self.base)
    def __getitem__(self, i):
        x, y = self.base[i]
        return x, int(y)


def make_plain_data():
    train, test = make_data()
    return Pairs(train), Pairs(test)


class BatchedPairs(Pairs):
    """The same items, fetched a batch per call (the protocol `datasets.Dataset` has)."""
    def __getitem__(self, i):  # only the loader's check of the first item may read one item
        if i != 0:
            raise AssertionError(f"item {i} read by itself despite __getitems__")
        return super().__getitem__(i)
    def __getitems__(self, indices):
        return [(self.base[i][0], int(self.base[i][1])) for i in indices]


def make_batched_data():
    train, test = make_data()
    return BatchedPairs(train), BatchedPairs(test)


def make_model():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def not_a_model():
    return 42
'''


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["usermod:make_data", "usermod:make_plain_data"])
def test_module_callable_model_and_dataset(tmp_path, dataset):
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    proc = run_entry(["--dataset", dataset, "--model", "usermod:make_model", "--global-bs", "40",
                      "--target-accuracy", "0.9", "--max-epochs", "30", "--cpu", "--progress", "false",
                      "--output-dir", "out"], cwd=tmp_path)
    assert_ok(proc)
    result = load_result(tmp_path / "out")
    assert result["status"] == "reached" and result["train_samples"] == 800
    assert math.isfinite(result["final"]["loss"])


def test_module_callable_returning_the_wrong_thing(tmp_path):
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    proc = run_in_process(["--dataset", "usermod:make_data", "--model", "usermod:not_a_model", "--output-dir", "out"],
                          cwd=tmp_path)
    assert_one_line_error(proc, "returned int, expected a torch.nn.Module")
    proc = run_in_process(["--model", "usermod:missing", "--output-dir", "out"], cwd=tmp_path)
    assert_one_line_error(proc, "has no callable 'missing'")
