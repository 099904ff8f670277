"""Issue 29, items 1-4: what the tool writes goes where it says and nowhere else, and a run whose record was
lost or split ends failed. Real symlinks planted in study and run folders, a run folder deleted and one
swapped for a link while a real run writes into it, real factories that exit with status 0."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    RUN_PY,
    SMALL,
    a_result,
    assert_ok,
    assert_one_line_error,
    child_env,
    run_in_process,
)
from scaling.files import read_metrics
from scaling.results import read_result

QUICK = [*SMALL, "--num-samples", "2000", "--max-steps", "4", "--target-accuracy", "none"]
LINK_REFUSED = "is a symbolic link"


def a_study(folder: Path) -> Path:
    """A study folder with two finished configurations (batches 64 and 128, three seeds each)."""
    for batch in (64, 128):
        for seed in range(3):
            run = folder / "runs" / f"bs{batch}-s{seed}"
            run.mkdir(parents=True)
            result = a_result()
            result["config"] = {**result["config"], "global_bs": batch, "seed": seed}
            result["batch"] = {**result["batch"], "global_bs": batch}
            (run / "result.json").write_text(json.dumps(result))
    return folder


def report(study: Path):
    return run_in_process([str(study)], command="report")


def victims(tmp_path: Path) -> tuple[Path, Path]:
    """A file outside the study that a link points at, and a missing path another link points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    return outside / "precious.txt", outside / "missing.txt"


@pytest.mark.parametrize("name", ["report.html", *(pytest.param(name, marks=pytest.mark.slow)
                                                  for name in ("report.md", "findings.json", "a plot"))])
def test_the_report_never_writes_through_a_planted_link(tmp_path, name):
    study = a_study(tmp_path / "study")
    first = report(study)
    assert_ok(first)
    if name == "a plot":
        plots = sorted(study.glob("*.png"))
        assert plots, "the report drew no plot"
        name = plots[0].name
    precious, missing = victims(tmp_path)
    for target in (precious, missing):
        before = {p.name: p.read_bytes() for p in study.iterdir() if p.is_file() and p.name != name}
        (study / name).unlink()
        (study / name).symlink_to(target)
        proc = report(study)
        assert_one_line_error(proc, str(study / name), LINK_REFUSED)
        assert precious.read_text() == "keep me"  # the file outside the study is untouched
        assert not missing.exists()  # a link to a missing path does not create it
        assert (study / name).is_symlink()  # left for the user to look at
        if not name.endswith(".png"):  # the report files are refused before anything is written
            assert before == {p.name: p.read_bytes() for p in study.iterdir() if p.is_file() and p.name != name}


def test_report_files_agree_and_leave_no_temporary_file(tmp_path):
    study = a_study(tmp_path / "study")
    assert_ok(report(study))
    findings = json.loads((study / "findings.json").read_text())
    assert findings["study"] in (study / "report.md").read_text()
    assert not [p.name for p in study.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


@pytest.mark.parametrize("name", ["result.json", ".run.lock", *(pytest.param(name, marks=pytest.mark.slow)
                                                 for name in ("metrics.jsonl", "checkpoint", "model.pt"))])
def test_a_run_never_writes_through_a_planted_link(tmp_path, name):
    precious, missing = victims(tmp_path)
    for target in (precious, missing):
        out = tmp_path / f"run-{target.stem}"
        out.mkdir()
        (out / name).symlink_to(target)
        proc = run_in_process([*QUICK, "--save-model", "--output-dir", str(out)])
        assert_one_line_error(proc, str(out / name), LINK_REFUSED)
        assert precious.read_text() == "keep me" and not missing.exists()
        assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written beside it, no lock left


def test_a_sweep_never_writes_through_a_planted_runs_folder(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "links", "base": {"num_samples": 2000, "max_steps": 4, "cpu": True,
                                                               "target_accuracy": None}, "grid": {"seed": [0]}}))
    outside = tmp_path / "outside"
    outside.mkdir()
    study = tmp_path / "study"
    study.mkdir()
    (study / "runs").symlink_to(outside)
    proc = run_in_process([str(spec), "--dir", str(study), "--no-progress"], command="sweep")
    assert_one_line_error(proc, str(study / "runs"), LINK_REFUSED)
    assert list(outside.iterdir()) == []


# A run of about 20 s unless stopped: windows of 20 steps, each flushed to metrics.jsonl.
LONG = [*SMALL, "--num-samples", "4000", "--global-bs", "32", "--max-steps", "4000", "--log-every", "20",
        "--log-min-s", "0", "--target-accuracy", "none", "--eval-every", "1000"]


def start_run(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_PY), *LONG, "--output-dir", str(out)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(metrics: Path, lines: int = 3, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(read_metrics(metrics)) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"no training in {metrics.parent} after {timeout} s")


@contextlib.contextmanager
def paused(proc: subprocess.Popen):
    """The run stopped (SIGSTOP) while the test changes its folder: a change of several system calls (a
    tree removed file by file, a rename then a link) is seen by the run whole, never half made."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_a_run_whose_folder_is_deleted_ends_failed_and_recreates_nothing(tmp_path):
    out = tmp_path / "run"
    proc = start_run(out)
    wait_for_lines(out / "metrics.jsonl")
    with paused(proc):
        shutil.rmtree(out)
    done = finish(proc)
    assert_one_line_error(done, f"output folder {out} was deleted during the run", "stops as failed")
    assert "completed" not in done.stdout
    assert not out.exists()  # no folder recreated without its record or its lock


@pytest.mark.slow
def test_a_run_whose_folder_is_swapped_for_a_link_fails_and_writes_only_where_it_started(tmp_path):
    out, moved, elsewhere = tmp_path / "run", tmp_path / "moved", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = start_run(out)
    wait_for_lines(out / "metrics.jsonl")
    with paused(proc):
        os.rename(out, moved)
        out.symlink_to(elsewhere)
    done = finish(proc)
    assert_one_line_error(done, f"output folder {out} was replaced", "stops as failed")
    assert list(elsewhere.iterdir()) == []  # nothing split off into the folder that took its place
    result = read_result(moved / "result.json")  # the failure recorded beside the metrics it belongs to
    assert result["status"] == "failed" and "was replaced" in result["error"]
    steps = [m["step"] for m in read_metrics(moved / "metrics.jsonl") if m["type"] == "train"]
    assert steps and steps == sorted(steps)


def exiting_module(folder: Path) -> Path:
    """Factories that end the process with status 0 where they should return."""
    folder.mkdir(exist_ok=True)
    (folder / "quitters.py").write_text(textwrap.dedent("""\
        import os
        import sys

        import torch


        def data_raises_system_exit():
            raise SystemExit(0)


        def data_calls_sys_exit():
            sys.exit()


        def data_calls_os_exit():
            os._exit(0)


        class QuitsAtStep3(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(40, 10)
                self.calls = 0

            def forward(self, x):
                self.calls += 1
                if self.training and self.calls == 3:
                    sys.exit(0)
                return self.layer(x.flatten(1))


        def model_quits_at_step_3():
            return QuitsAtStep3()
        """))
    return folder


@pytest.mark.parametrize("factory", ["data_raises_system_exit", "data_calls_sys_exit"])
def test_a_factory_that_exits_with_status_0_is_a_failure_in_one_line(tmp_path, factory):
    folder = exiting_module(tmp_path / "mods")
    out = tmp_path / "run"
    proc = run_in_process([*QUICK, "--dataset", f"quitters:{factory}", "--output-dir", str(out)],
                          PYTHONPATH=str(folder))
    assert_one_line_error(proc, "SystemExit(", "quitters.py", factory, "before training started",
                          "without writing its result is a failure")


@pytest.mark.slow
def test_a_model_that_exits_with_status_0_mid_run_ends_failed(tmp_path):
    folder = exiting_module(tmp_path / "mods")
    out = tmp_path / "run"
    proc = run_in_process([*QUICK, "--max-steps", "8", "--probe", "false", "--model", "quitters:model_quits_at_step_3",
                           "--output-dir", str(out)], PYTHONPATH=str(folder))
    assert_one_line_error(proc, "SystemExit(0)", "in forward", "without writing its result is a failure")
    result = read_result(out / "result.json")
    assert result["status"] == "failed" and "SystemExit(0)" in result["error"]


@pytest.mark.slow
def test_a_sweep_names_a_configuration_that_exited_without_its_result(tmp_path):
    folder = exiting_module(tmp_path / "mods")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "quits", "base": {"num_samples": 2000, "max_steps": 4, "cpu": True,
                                                               "target_accuracy": None,
                                                               "dataset": "quitters:data_calls_os_exit"},
                                    "grid": {"seed": [0]}}))
    study = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study),
                           "--no-progress"], cwd=REPO, env=child_env(PYTHONPATH=str(folder)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a failed configuration is one of the study's results
    line = "the run ended with exit status 0 without writing its result (no result.json)"
    assert "1 failed" in proc.stdout and line in proc.stdout
    record = json.loads((study / "study.json").read_text())
    (entry,) = record["configs"]
    assert entry["status"] == "failed" and line in entry["error_tail"]
