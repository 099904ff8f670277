"""Issue 29, item 16: Ctrl-C during start-up's imports.

Real processes and real signals: `python scaling/run.py` (and `python -m scaling.cli run`) interrupted at
several moments of its start-up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, RUN_PY, SMALL, child_env

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


@pytest.mark.parametrize("command, delay", [
    *[("run.py", delay) for delay in (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.1, 1.5)],
    *[("cli", delay) for delay in (0.1, 0.4, 1.0)],
])
def test_ctrl_c_during_start_up_ends_with_130_and_one_line(tmp_path, interpreter_start_s, command, delay):
    """Before: a Ctrl-C while torch (and with it logging, inspect, ast, ...) was half imported ran the handler,
    whose own import of tqdm met the half-imported module: `AttributeError: partially initialized module
    'logging'` (or an ImportError, or a RecursionError), exit 1."""
    delay = max(delay, 2 * interpreter_start_s)  # after the interpreter has started (a loaded machine)
    entry = [str(RUN_PY)] if command == "run.py" else ["-m", "scaling.cli", "run"]
    proc = subprocess.Popen([sys.executable, *entry, *FLAGS, "--output-dir", str(tmp_path / "run")], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode} after {delay:.2f} s\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr[-3000:]
