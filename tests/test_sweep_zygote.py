"""Issue 31, "trials do not pay for process start-up": a sweep forks its `python` launcher's runs from one worker
that imported torch once (scaling/study/zygote.py). Each run stays isolated (a changed global, a crash) and
resumable; the numbers are those of runs launched as processes of their own; SCALING_NO_ZYGOTE=1 turns it off.
Real sweeps, real processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_ok, child_env
from scaling.files import read_metrics
from scaling.results import read_result

TINY = {"num_samples": 2000, "max_steps": 8, "cpu": True, "target_accuracy": None, "probe": False}

MODULE = '''
import json
import os
import signal

import torch
from torch.utils.data import TensorDataset

import scaling.models


def record(tag):
    """What this run sees: its process, its parent's command line, the globals a run before it could change."""
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
        parent = handle.read().replace(b"\\0", b" ").decode()
    line = {"tag": tag, "pid": os.getpid(), "ppid": os.getppid(), "parent": parent,
            "dtype": str(torch.get_default_dtype()), "polluted": getattr(scaling.models, "POLLUTED", None),
            "sid": os.getsid(0)}
    with open(os.environ["ZYGOTE_TEST_LOG"], "a") as handle:
        handle.write(json.dumps(line) + "\\n")


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 40, generator=generator)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x[:384], y[:384]), TensorDataset(x[384:], y[384:])


def clean():
    record("clean")
    return _data()


def pollutes():
    record("pollutes")
    torch.set_default_dtype(torch.float64)
    scaling.models.POLLUTED = "yes"
    return _data()


def segfaults():
    record("segfaults")
    os.kill(os.getpid(), signal.SIGSEGV)


def exits_3():
    record("exits_3")
    os._exit(3)


def kills_its_parent():
    record("kills_its_parent")
    os.kill(os.getppid(), signal.SIGKILL)
    return _data()
'''


def setup(tmp_path: Path, grid: dict, **base) -> tuple[Path, Path, dict]:
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "zmods.py").write_text(textwrap.dedent(MODULE))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "zygote", "base": {**TINY, **base}, "grid": grid}, sort_keys=False))
    log = tmp_path / "seen.jsonl"
    return spec, log, child_env(PYTHONPATH=str(mods), ZYGOTE_TEST_LOG=str(log))


def sweep(spec: Path, study: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study),
                           "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def seen(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def configs(study: Path) -> list[dict]:
    return json.loads((study / "study.json").read_text())["configs"]


def forked(line: dict) -> bool:
    return "zygote.py" in line["parent"]


@pytest.mark.slow
def test_forked_runs_give_the_numbers_of_launched_runs(tmp_path):
    spec, log, env = setup(tmp_path, {"dataset": ["mnist1d", "zmods:clean"], "global_bs": [32, 64]}, model="mlp")
    on = sweep(spec, tmp_path / "on", env)
    assert_ok(on)
    assert "processes of their own" not in on.stdout + on.stderr
    lines = seen(log)
    assert len(lines) == 2 and all(forked(line) for line in lines), lines
    assert len({line["ppid"] for line in lines}) == 1  # one worker for the sweep
    assert all(line["sid"] == line["pid"] for line in lines)  # each run in a session of its own
    log.unlink()
    off = sweep(spec, tmp_path / "off", {**env, "SCALING_NO_ZYGOTE": "1"})
    assert_ok(off)
    lines = seen(log)
    assert len(lines) == 2 and not any(forked(line) for line in lines)
    assert all("scaling.cli" in line["parent"] for line in lines)  # today's launch: the sweep is the parent
    for entry_on, entry_off in zip(configs(tmp_path / "on"), configs(tmp_path / "off"), strict=True):
        assert entry_on["id"] == entry_off["id"] and entry_on["status"] == entry_off["status"] == "completed"
        assert entry_on["returncode"] == entry_off["returncode"] == 0
        a = read_result(tmp_path / "on" / entry_on["output_dir"] / "result.json")
        b = read_result(tmp_path / "off" / entry_off["output_dir"] / "result.json")
        assert a["steps"] == b["steps"] == TINY["max_steps"]
        assert a["train_loss"] == b["train_loss"] and a["final"] == b["final"], (a["final"], b["final"])
        untimed = [[{k: v for k, v in point.items() if not k.endswith("time_s")} for point in r["history"]]
                   for r in (a, b)]
        assert untimed[0] == untimed[1] and len(untimed[0]) >= 1


@pytest.mark.slow
def test_a_run_that_changes_globals_leaves_the_next_run_alone(tmp_path):
    spec, log, env = setup(tmp_path, {"dataset": ["zmods:pollutes", "zmods:clean"]}, model="mlp")
    done = sweep(spec, tmp_path / "study", env)
    assert_ok(done)
    first, second = seen(log)
    assert (first["tag"], second["tag"]) == ("pollutes", "clean")
    assert forked(first) and forked(second) and first["ppid"] == second["ppid"] and first["pid"] != second["pid"]
    assert second["dtype"] == "torch.float32" and second["polluted"] is None
    assert configs(tmp_path / "study")[1]["status"] == "completed"


@pytest.mark.slow
def test_a_run_that_crashes_fails_alone_and_the_next_one_runs(tmp_path):
    spec, log, env = setup(tmp_path, {"dataset": ["zmods:segfaults", "zmods:exits_3", "zmods:clean"]}, model="mlp")
    done = sweep(spec, tmp_path / "study", env)
    assert_ok(done)  # failed configurations are results of the study
    lines = seen(log)
    assert [line["tag"] for line in lines] == ["segfaults", "exits_3", "clean"]
    assert all(forked(line) for line in lines) and len({line["ppid"] for line in lines}) == 1  # the worker lived
    entries = configs(tmp_path / "study")
    assert [e["status"] for e in entries] == ["failed", "failed", "completed"]
    assert [e["returncode"] for e in entries] == [-signal.SIGSEGV, 3, 0]
    assert "exit status 3 without writing its result" in entries[1]["error_tail"]


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_nothing_hangs(tmp_path):
    spec, log, env = setup(tmp_path, {"dataset": ["zmods:kills_its_parent", "zmods:clean"]}, model="mlp")
    started = time.time()
    done = sweep(spec, tmp_path / "study", env)
    assert_ok(done)
    assert time.time() - started < 300
    first, second = seen(log)
    assert forked(first) and forked(second) and first["ppid"] != second["ppid"]  # a new worker for the next run
    entries = configs(tmp_path / "study")
    assert entries[0]["status"] in ("failed", "interrupted") and entries[1]["status"] == "completed"


@pytest.mark.slow
def test_a_worker_whose_imports_started_a_thread_does_not_serve_and_runs_are_launched(tmp_path):
    spec, log, env = setup(tmp_path, {"dataset": ["zmods:clean"], "global_bs": [32, 64]}, model="mlp")
    # every interpreter of this test starts a thread as it starts (sitecustomize): a fork would not copy it
    (tmp_path / "mods" / "sitecustomize.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), name='site-sleeper', "
        "daemon=True).start()\n")
    done = sweep(spec, tmp_path / "study", env)
    assert_ok(done)
    said = [line for line in done.stdout.splitlines() if "processes of their own" in line]
    assert len(said) == 1 and "site-sleeper" in said[0], done.stdout  # once, with the reason
    lines = seen(log)
    assert len(lines) == 2 and not any(forked(line) for line in lines)
    assert [e["status"] for e in configs(tmp_path / "study")] == ["completed", "completed"]


LONG = {"num_samples": 8000, "global_bs": 32, "max_steps": 600, "target_accuracy": None, "log_every": 100,
        "eval_every": 300, "cpu": True, "probe": False}


@pytest.mark.slow
def test_a_sweep_stopped_mid_run_resumes_without_repeating_finished_runs(tmp_path):
    spec = tmp_path / "spec.yaml"
    # short, long, short: the sweep is stopped while the long one trains
    spec.write_text(yaml.safe_dump({"name": "zygote", "base": LONG,
                                    "zip": {"seed": [0, 1, 2], "max_steps": [40, 600, 40]}}))
    study = tmp_path / "study"
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-m", "scaling.cli", "sweep", str(spec), "--dir", str(study),
                             "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    long_run = None
    while time.time() < deadline and long_run is None:
        for path in study.glob("runs/*/metrics.jsonl"):
            config = yaml.safe_load((path.parent / "config.yaml").read_text())
            if config["max_steps"] == 600 and len(read_metrics(path)) >= 1:
                long_run = path.parent
        time.sleep(0.05)
    assert long_run is not None, proc.stderr.read() if proc.poll() is not None else "no training"
    finished = {p.parent: p.read_bytes() for p in study.glob("runs/*/result.json")
                if read_result(p) is not None}
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    result = read_result(long_run / "result.json", finished_only=False)
    assert result["status"] == "interrupted" and result["stop_signal"] == "SIGTERM"
    assert finished, "no configuration had finished before the stop"
    again = sweep(spec, study, env)
    assert_ok(again)
    entries = {e["output_dir"]: e for e in configs(study)}
    assert all(e["status"] == "completed" for e in entries.values())
    for folder, before in finished.items():
        assert (folder / "result.json").read_bytes() == before  # not run again
        assert entries[f"runs/{folder.name}"]["skipped"] is True
    assert entries[f"runs/{long_run.name}"]["resumed"] is True
    steps = [m["step"] for m in read_metrics(long_run / "metrics.jsonl") if m["type"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 600


def test_the_worker_can_be_turned_off(monkeypatch):
    from scaling.study import zygote

    monkeypatch.setenv(zygote.DISABLE_ENV, "1")
    assert not zygote.enabled()
    worker = zygote.Worker(say=lambda line: pytest.fail(line))
    assert worker.spawn(["--help"], dict(os.environ), sys.stdout, sys.stderr) is None and worker.process is None
    monkeypatch.delenv(zygote.DISABLE_ENV)
    assert zygote.enabled() == sys.platform.startswith("linux")
