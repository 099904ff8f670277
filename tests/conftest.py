"""Shared helpers: run the real entry points (in this process, or as subprocesses where a test needs a process
of its own), on a dataset cache private to the session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN_PY = REPO / "scaling" / "run.py"
# A small default workload so each end-to-end run takes seconds; generated once per test session.
SMALL = ["--num-samples", "8000", "--progress", "false", "--cpu"]
# A generated 4-class problem as a module's text (`problem_module:data`, `problem_module:model`), its seed from
# PROBLEM_SEED: the plain-loop references of tests/test_plain_loop.py and tests/test_batch_schedule.py train it.
LINEAR_PROBLEM = textwrap.dedent('''
    import os

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def data():
        """A generated 4-class problem: Gaussian inputs, labels from a random linear teacher plus noise."""
        g = torch.Generator().manual_seed(int(os.environ["PROBLEM_SEED"]))
        x = torch.randn(640, 12, generator=g)
        teacher = torch.randn(12, 4, generator=g)
        y = (x @ teacher + 0.5 * torch.randn(640, 4, generator=g)).argmax(dim=1)
        return TensorDataset(x[:512], y[:512]), TensorDataset(x[512:], y[512:])

    def model():
        return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 4))
''')


# No network here or in CI: fail at once instead of retrying. Set before anything imports huggingface_hub or
# datasets (they read these when imported), so runs in this process see them too.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("scaling-cache")
    os.environ["SCALING_CACHE"] = str(cache)
    # One intra-op thread, as each child process gets (child_env): two pytest-xdist workers share 2 cores.
    import torch

    torch.set_num_threads(1)
    yield


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: the repository importable (after any PYTHONPATH given in `extra`,
    e.g. a folder holding a test's own module), one thread per process unless told otherwise."""
    env = dict(os.environ)
    first = [extra.pop("PYTHONPATH")] if "PYTHONPATH" in extra else []
    env["PYTHONPATH"] = os.pathsep.join([*first, str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_entry(args: list[str], timeout: float = 300, cwd: Path | None = None, **env: str) -> Exited:
    """`scaling run ARGS` in this process (as run_in_process): a real run, without the seconds a new
    interpreter spends importing torch, accelerate and datasets. `timeout` is the subprocess's (run_script)."""
    return run_in_process(args, cwd=cwd, **env)


def run_script(args: list[str], timeout: float = 300, cwd: Path | None = None, **env: str):
    """`python scaling/run.py ARGS` in a process of its own, as a user runs it: for what needs one (signals,
    exit without a result, the environment a process starts with, the script's own path handling)."""
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd or REPO, env=child_env(**env),
    )


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(args: list[str], nproc: int = 2, timeout: float = 300, cwd: Path | None = None,
                 script: Path = RUN_PY, **env: str):
    """`torchrun --nproc_per_node N SCRIPT ARGS` with gloo on the CPU (real process group).

    Rarely (about 1 in 15 runs here, even with barrier + destroy_process_group before exit), a gloo worker
    thread aborts the process while it shuts down, after all the work is done (a known PyTorch teardown
    race, pytorch/pytorch PR 179291). That one signature gets a single retry; any other failure is final.
    The aborted attempt may have written its result: the retry of a run (not a resume) replaces it.
    """
    for attempt in range(2):
        retry = ["--overwrite"] if attempt and script == RUN_PY and "--resume" not in args else []
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
             "--master_port", str(_free_port()), str(script), *args, *retry],
            capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=child_env(**env),
        )
        if proc.returncode == 0 or GLOO_TEARDOWN_ABORT not in proc.stderr or attempt:
            return proc
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Exited:
    """What a command left: its exit status and what it printed (as subprocess.CompletedProcess has them)."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(args: list[str], command: str = "run", cwd: Path | None = None, **env: str) -> Exited:
    """`scaling COMMAND ARGS` called in this process, its output captured, as a process would end: its exit
    status, and for an exception (a bug) status 1 with the traceback on stderr. `env` is set for the call
    (PYTHONPATH entries also go on sys.path, for a test's own module:callable); Accelerate's process-wide
    state is reset after it, so that the next call may choose another precision or device."""
    import gc
    import traceback

    from scaling.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGINT)  # the command installs its own Ctrl-C handler
    saved_env, saved_path, saved_cwd = dict(os.environ), list(sys.path), os.getcwd()
    os.environ.update(env)
    own = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + ([str(cwd)] if cwd else [])
    sys.path[:0] = own
    modules = set(sys.modules)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([command, *args])
            except SystemExit as exit_:  # argparse's --help
                code = exit_.code if isinstance(exit_.code, int) else 0
            except Exception:  # noqa: BLE001 - what an uncaught exception does to a process
                traceback.print_exc()
                code = 1
    finally:
        _reset_accelerate()
        # The run's models, loaders and files go now, not at some later test's collection. What survives is
        # frozen (the imported modules, mostly), so the next collection walks only what the next call makes:
        # a full collection of torch's and datasets' objects took 0.1 s a call.
        gc.collect()
        gc.freeze()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        signal.signal(signal.SIGINT, previous)
        for name in set(sys.modules) - modules:  # a test's own modules: the next test may write others
            if any(str(getattr(sys.modules[name], "__file__", None) or "").startswith(p) for p in own):
                del sys.modules[name]
    return Exited(code, out.getvalue(), err.getvalue())


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def load_result(output_dir: Path) -> dict:
    return json.loads((output_dir / "result.json").read_text())


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one line on stderr naming what to fix, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("scaling: error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def a_record(status: str = "reached", steps: int = 40, seed: int = 0, output_dir: str = "out"):
    """A run record as the loop leaves it (scaling/record.py): 40 steps at global batch 64 (16 x 1 x 4),
    evaluated every 10 steps; when reached, the target first met at step 33 (found by replay) and first
    evaluated at step 40."""
    from scaling.batching import BatchPlan
    from scaling.config import RunConfig
    from scaling.record import ModelFacts, RunFacts, RunRecord, TargetCrossing

    cfg = RunConfig(global_bs=64, per_device_bs=16, target_accuracy=0.5, seed=seed, output_dir=output_dir)
    model = ModelFacts("mlp", "classification", 650, [40, 400, 10, 200], [40], "float32", 10)
    lr = {"rule": "sqrt", "base": 0.1, "base_bs": 256, "scaled": 0.05, "warmup_steps": 0, "decay": "constant"}
    facts = RunFacts(cfg, BatchPlan(64, 16, 1, 4, 1), lr, {"device": "cpu", "torch_threads": 1}, 100, 6400, 1600,
                     model)
    record = RunRecord(facts, status=status, step=steps, elapsed_s=4.0, eval_s=1.0)
    record.history = [{"step": s, "samples": s * 64, "epoch": s / 100, "time_s": s / 10, "train_time_s": s / 12,
                       "accuracy": 0.1 * s / 10 + 0.1, "loss": 2.0 - s / 40} for s in range(10, steps + 1, 10)]
    record.train_loss, record.lr = [2.0 - 0.01 * s for s in range(steps)], [0.05] * steps
    record.window_rates, record.window_durations = [1000.0, 1100.0, 900.0], [1.0, 1.0, 1.0]
    if status == "reached":
        record.first_eval_at_target = len(record.history) - 1
        record.target = TargetCrossing(33, 3.1, 2.6, {"method": "replay", "exact": True, "first_step": 33,
                                                      "interval": [33, 33], "window": [0, 40], "reason": None})
    if status == "interrupted":
        record.checkpoint, record.stop_signal = f"{output_dir}/checkpoint", "SIGTERM"
    return record


def a_result(status: str = "reached", **changes) -> dict:
    """A whole result.json document (JSON types) of `a_record`, with `changes` applied."""
    return {**json.loads(json.dumps(a_record(status).to_result())), **changes}


def wait_for_metrics(folder: Path, lines: int, timeout: float = 120) -> None:
    """Until the run in `folder` has written `lines` lines of metrics.jsonl (it is training), or fail."""
    from scaling.files import read_metrics

    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(read_metrics(folder / "metrics.jsonl")) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {lines} metrics lines in {folder} after {timeout} s")


def interrupt_run(folder: Path, args: list[str]) -> dict:
    """Start `scaling/run.py ARGS --output-dir FOLDER` as a real process, stop it with SIGTERM once it is
    training, and return its result.json (status interrupted, its checkpoint written)."""
    from scaling.results import read_result

    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args, "--output-dir", str(folder)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_metrics(folder, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    result = read_result(folder / "result.json", finished_only=False)
    assert result["status"] == "interrupted"
    return result
