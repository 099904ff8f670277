"""What a person sees in the console: Ctrl-C before training, the dataset generation bar, the process line."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, RUN_PY, child_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("entry", [[str(RUN_PY)], ["-m", "scaling.cli", "run"]])
def test_ctrl_c_before_training_prints_one_line(tmp_path, entry):
    """SIGINT while the run imports and generates its dataset (a fresh cache: seconds of work)."""
    proc = subprocess.Popen([sys.executable, *entry, "--num-samples", "30000", "--cpu", "--output-dir",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=child_env(SCALING_CACHE=str(tmp_path / "cache")))
    deadline = time.time() + 60
    while not (tmp_path / "cache").exists() and time.time() < deadline:  # generation has started
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.strip() and "generating MNIST-1D" not in line]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert "Traceback" not in stderr


def test_generation_shows_a_progress_bar_and_the_process_line_is_plain(tmp_path):
    proc = subprocess.run([sys.executable, str(RUN_PY), "--num-samples", "2000", "--cpu", "--max-steps", "2",
                           "--target-accuracy", "none", "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=child_env(SCALING_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr
    assert "scaling: generating MNIST-1D" in proc.stderr and "/2000 [" in proc.stderr
    assert "1 process on the CPU" in proc.stdout and "NO on cpu" not in proc.stdout
