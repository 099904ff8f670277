"""A dataset read into memory (`--materialize auto`) is judged for the user's own loader, not for the copy.

The run trains from the in-memory copy and records what it did (its data wait, its bottleneck); `pipeline`
in result.json, the summary line and the report say what the user's loader would do, from the timed read.
"""

import json

import pytest

from conftest import a_record, assert_ok, load_result, run_entry, run_in_process
from scaling.data.pipeline import user_pipeline
from scaling.results import check_result, summary_line

# A map-style dataset of fixed (tensor, label) items, `cost` seconds per __getitem__ (a slow decode).
MAP_MODULE = '''
import time
import torch
from torch.utils.data import Dataset


class Items(Dataset):
    def __init__(self, n, seed, cost):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 40, generator=g)
        self.y = self.x[:, :10].argmax(1)  # learnable: the run trains (it does not stall at chance)
        self.cost = cost
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        if self.cost:
            time.sleep(self.cost)
        return self.x[i], int(self.y[i])


def slow():
    return Items(1000, 0, 0.002), Items(100, 1, 0.002)


def fast():
    return Items(1000, 0, 0.0), Items(100, 1, 0.0)
'''

RUN = ["--materialize", "auto", "--global-bs", "64", "--max-steps", "30", "--log-every", "5",
       "--target-accuracy", "none", "--cpu", "--progress", "false", "--output-dir", "out"]


def _run(tmp_path, factory: str):
    (tmp_path / "mapdata.py").write_text(MAP_MODULE)
    proc = run_entry(["--dataset", f"mapdata:{factory}", *RUN], cwd=tmp_path)
    assert_ok(proc)
    return proc, load_result(tmp_path / "out")


@pytest.mark.slow
def test_slow_map_dataset_is_input_bound_for_the_users_loader_while_materialized(tmp_path):
    proc, result = _run(tmp_path, "slow")
    assert result["materialized"] == ["train", "eval"]
    pipeline = result["pipeline"]
    assert pipeline["materialized"] and pipeline["samples_read"] == 1000
    assert 1.5e-3 <= pipeline["per_sample_s"] <= 15e-3  # 2 ms of sleep per item; a loaded machine wakes late
    assert pipeline["read_s"] == pytest.approx(pipeline["per_sample_s"] * 1000)
    assert pipeline["workers"] == 1 and pipeline["processes"] == 1  # --num-workers 0: the training process
    assert pipeline["input_ceiling_samples_per_s"] == pytest.approx(1 / pipeline["per_sample_s"])
    assert pipeline["compute_from"] == "run"
    assert pipeline["compute_ceiling_samples_per_s"] > pipeline["input_ceiling_samples_per_s"]
    assert pipeline["verdict"] == "input-bound"
    # what this run did, from the copy in memory: its own measured data wait, whatever it was
    run_verdict = result["bottleneck"]
    assert run_verdict["from"] == "phase timing"
    assert run_verdict["data_wait_fraction"] == result["data_wait_fraction"]
    line = proc.stdout.splitlines()[-1]
    assert f"{run_verdict['bound']}-bound as run (data wait " in line
    assert "training set read into memory in " in line
    assert "your loader: input-bound (" in line and " ms/sample: input ceiling ~" in line

    report = run_in_process([str(tmp_path / "out"), "--out", str(tmp_path / "report")], command="report")
    assert_ok(report)
    text = (tmp_path / "report" / "report.md").read_text()
    section = text[text.index("## When does data loading become the limit?"):]
    assert "Your own loader, judged from the timed read of the training set into memory" in section
    assert "input-bound at batch 64" in section
    assert "your loader is" in section and "| input-bound |" in section  # the per-configuration table
    found = {f["id"]: f for f in json.loads((tmp_path / "report" / "findings.json").read_text())["findings"]}
    assert found["user_loader"]["numbers"]["batch 64"]["verdict"] == "input-bound"


@pytest.mark.slow
def test_fast_map_dataset_is_compute_bound_for_the_users_loader(tmp_path):
    proc, result = _run(tmp_path, "fast")
    pipeline = result["pipeline"]
    assert pipeline["materialized"] and pipeline["per_sample_s"] < 1e-3
    assert pipeline["verdict"] == "compute-bound"
    assert "your loader: compute-bound (" in proc.stdout.splitlines()[-1]


def test_a_dataset_trained_through_its_loader_is_its_own_verdict():
    record = a_record()
    record.bottleneck = {"bound": "input", "data_wait_fraction": 0.6, "from": "phase timing", "advice": []}
    result = json.loads(json.dumps(record.to_result()))
    assert check_result(result) is None
    assert result["pipeline"]["materialized"] is False and result["pipeline"]["verdict"] == "input-bound"
    assert result["pipeline"]["per_sample_s"] is None
    assert summary_line(result, "out/result.json").endswith(", input-bound (60% waiting for data) -> out/result.json")


def test_user_pipeline_arithmetic():
    read = {"read_s": 2.0, "samples_read": 1000}
    block = user_pipeline(read, num_workers=4, processes=2, compute_rate=40_000.0, compute_from="probe",
                          run_bound="compute")
    # 2 ms per sample; 2 processes x 4 workers, each reading serially: 4,000 samples/s
    assert block["per_sample_s"] == pytest.approx(0.002)
    assert block["input_ceiling_samples_per_s"] == pytest.approx(4000)
    assert block["verdict"] == "input-bound" and block["workers"] == 4
    assert user_pipeline(read, 0, 1, 400.0, "run", "compute")["verdict"] == "compute-bound"  # 500 > 400
    assert user_pipeline(read, 0, 1, None, None, None)["verdict"] is None  # nothing to compare with


def test_summary_line_says_what_the_run_did_and_what_the_loader_would_do():
    record = a_record("completed")
    record.facts.train_read = {"read_s": 6.2, "samples_read": 3100}
    record.bottleneck = {"bound": "compute", "data_wait_fraction": 0.01, "from": "phase timing", "advice": []}
    record.ceilings = {"compute_samples_per_s": 40_000.0}
    result = json.loads(json.dumps(record.to_result()))
    assert check_result(result) is None
    assert summary_line(result, "r.json").endswith(
        ", compute-bound as run (data wait 1%, training set read into memory in 6.2 s); your loader: input-bound "
        "(2.0 ms/sample: input ceiling ~500 samples/s with 1 loader process against compute 40,000) -> r.json")
