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


def test_generation_shows_a_progress_bar_on_a_terminal_and_the_process_line_is_plain(tmp_path):
    """On a terminal (util-linux `script` gives the run one) generation shows a bar; captured output has none."""
    import shlex
    import shutil

    command = [sys.executable, str(RUN_PY), "--num-samples", "2000", "--cpu", "--max-steps", "2",
               "--target-accuracy", "none"]
    env = child_env(SCALING_CACHE=str(tmp_path / "cache"))
    captured = subprocess.run([*command, "--output-dir", str(tmp_path / "a")], capture_output=True, text=True,
                              cwd=REPO, timeout=300, env=env)
    assert captured.returncode == 0, captured.stderr
    assert "generating MNIST-1D" not in captured.stderr
    assert "1 process on the CPU" in captured.stdout and "NO on cpu" not in captured.stdout
    if shutil.which("script") is None:
        pytest.skip("no `script` command to give the run a terminal")
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # generate again, now on a terminal
    # A pseudo-terminal from `script` has no size until one is set; tqdm draws nothing in zero columns.
    line = "stty cols 120 rows 40; " + shlex.join([*command, "--output-dir", str(tmp_path / "b")])
    tty = subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env=env)
    assert tty.returncode == 0, tty.stdout
    assert "scaling: generating MNIST-1D" in tty.stdout and "/2000 [" in tty.stdout
