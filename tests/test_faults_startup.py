"""Issue 29, items 16 and 17: Ctrl-C during start-up's imports, and a start-up that hangs.

Real processes and real signals: `python scaling/run.py` (and `python -m scaling.cli run`) interrupted at
several moments of its start-up; a real dataset factory that sleeps, under --startup-timeout-s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, RUN_PY, SMALL, assert_ok, assert_one_line_error, child_env, run_entry, run_script

pytestmark = pytest.mark.slow

FLAGS = [*SMALL, "--num-samples", "2000", "--max-steps", "20", "--target-accuracy", "none"]


def _interpreter_start_s() -> float:
    """How long this machine's interpreter takes to start and exit: before the first line of run.py runs,
    a Ctrl-C is Python's own KeyboardInterrupt, which no code of the tool can change."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=child_env())
    return time.monotonic() - began


@pytest.fixture(scope="module")
def interpreter_start_s() -> float:
    return min(_interpreter_start_s() for _ in range(3))


HANGING = """
import time


def hang():
    time.sleep(600)  # a download or a lock that never comes


def swallow():
    while True:
        try:
            time.sleep(600)
        except:  # noqa: E722 - a factory that swallows everything, even the timeout
            pass
"""


def _hanging_module(tmp_path: Path) -> Path:
    (tmp_path / "hanging.py").write_text(textwrap.dedent(HANGING))
    return tmp_path / "hanging.py"


@pytest.mark.parametrize("command, delay", [
    *[("run.py", delay) for delay in (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.1, 1.5, 4.0)],
    *[("cli", delay) for delay in (0.1, 0.4, 1.0)],
])
def test_ctrl_c_during_start_up_ends_with_130_and_one_line(tmp_path, interpreter_start_s, command, delay):
    """Before: a Ctrl-C while torch (and with it logging, inspect, ast, ...) was half imported ran the handler,
    whose own import of tqdm met the half-imported module: `AttributeError: partially initialized module
    'logging'` (or an ImportError, or a RecursionError), exit 1."""
    delay = max(delay, 2 * interpreter_start_s)  # after the interpreter has started (a loaded machine)
    entry = [str(RUN_PY)] if command == "run.py" else ["-m", "scaling.cli", "run"]
    _hanging_module(tmp_path)  # start-up never ends, however fast this machine: every delay falls in it
    proc = subprocess.Popen([sys.executable, *entry, *FLAGS, "--dataset", "hanging:hang", "--output-dir",
                             str(tmp_path / "run")], cwd=REPO, env=child_env(PYTHONPATH=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode} after {delay:.2f} s\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr[-3000:]


def test_a_hanging_dataset_factory_ends_at_the_start_up_limit_naming_what_it_waited_for(tmp_path):
    """Before: no start-up limit for a single run; it waited forever (only a sweep's timeout_s ended it)."""
    module = _hanging_module(tmp_path)
    began = time.monotonic()
    proc = run_script([*FLAGS, "--dataset", "hanging:hang", "--startup-timeout-s", "3", "--output-dir",
                       str(tmp_path / "run")], timeout=120, PYTHONPATH=str(tmp_path))
    took = time.monotonic() - began
    assert_one_line_error(proc, "start-up took more than --startup-timeout-s 3 s: still loading the dataset",
                          f"(in {module}:6, hang)", "raise the limit")
    # The progress output said what start-up was waiting for before the limit was reached.
    assert f"scaling: start-up: still loading the dataset (in {module}:6, hang)" in proc.stdout
    assert took < 60  # ended by the limit (a few seconds after it), not by the test's timeout
    assert not (tmp_path / "run" / "result.json").exists()  # nothing was trained: no result to report


def test_a_factory_that_swallows_the_timeout_is_still_ended(tmp_path):
    """The limit does not depend on the factory letting the exception through: the watch ends the process."""
    module = _hanging_module(tmp_path)
    proc = run_script([*FLAGS, "--dataset", "hanging:swallow", "--startup-timeout-s", "2", "--output-dir",
                       str(tmp_path / "run")], timeout=120, PYTHONPATH=str(tmp_path))
    assert_one_line_error(proc, "start-up took more than --startup-timeout-s 2 s: still loading the dataset",
                          f"(in {module}:")


def test_the_limit_covers_start_up_only(tmp_path):
    """A run that starts within the limit trains past it; the watch and its SIGALRM handler are gone after."""
    before = signal.getsignal(signal.SIGALRM)
    proc = run_entry([*SMALL, "--num-samples", "2000", "--target-accuracy", "none", "--max-steps", "100000",
                      "--max-time", "11", "--startup-timeout-s", "8", "--output-dir", str(tmp_path / "run")])
    assert_ok(proc)
    assert "start-up" not in proc.stdout + proc.stderr
    assert signal.getsignal(signal.SIGALRM) == before
    assert not [t for t in threading.enumerate() if t.name == "scaling-startup-watch"]


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf"])
def test_a_bad_start_up_limit_is_refused_in_one_line(tmp_path, value):
    proc = run_entry([*FLAGS, "--startup-timeout-s", value, "--output-dir", str(tmp_path / "run")])
    assert_one_line_error(proc, "--startup-timeout-s must be a positive number of seconds (or none), got ")
