"""Issue 29, items 16 and 17: Ctrl-C during start-up's imports, and a start-up that hangs.

Real processes and real signals: `python scaling/run.py` (and `python -m scaling.cli run`) interrupted at
several moments of its start-up; a real dataset factory that sleeps, under --startup-timeout-s.
"""

from __future__ import annotations

import re
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


def _handler_line(entry: Path) -> int:
    """The line of `entry` that installs the quiet Ctrl-C handler."""
    lines = entry.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith("quiet_interrupt("))


def _before_the_handler(returncode: int, stderr: str, entry: Path) -> bool:
    """Whether SIGINT came before `entry` installed its handler: the signal's default action (status -2, before
    Python's own handler), or Python's KeyboardInterrupt (status -2, or 1 while the interpreter was still
    importing `site`), raised while only the entry's first lines (and the two tiny modules they import) ran."""
    pythons_own = ((returncode == -signal.SIGINT and (not stderr.strip() or stderr.rstrip().endswith("KeyboardInterrupt")))
                   or (returncode == 1 and "Fatal Python error: init_import_site" in stderr))
    package, entry = (REPO / "scaling").resolve(), entry.resolve()
    early = {entry, package / "__init__.py", package / "startup.py"}
    handler = _handler_line(entry)
    for file, line, name in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', stderr):
        path = Path(file).resolve()
        if file.startswith("<") or not path.is_relative_to(package):
            continue  # Python's own frames, and the libraries'
        if path not in early or name != "<module>" or (path == entry and int(line) >= handler):
            return False  # the tool's code after its handler was installed
    return pythons_own


@pytest.mark.parametrize("command, delay", [
    *[("run.py", delay) for delay in (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.1, 1.5, 4.0)],
    *[("cli", delay) for delay in (0.1, 0.4, 1.0)],
])
def test_ctrl_c_during_start_up_ends_with_130_and_one_line(tmp_path, interpreter_start_s, command, delay):
    """Before: a Ctrl-C while torch (and with it logging, inspect, ast, ...) was half imported ran the handler,
    whose own import of tqdm met the half-imported module: `AttributeError: partially initialized module
    'logging'` (or an ImportError, or a RecursionError), exit 1.

    A signal that comes before the entry's first lines have installed the handler is Python's own
    KeyboardInterrupt, which no code of the tool can change: on a loaded machine that window can outlast
    twice the interpreter's start, so such a try is recognised from its traceback and made again later."""
    delay = max(delay, 2 * interpreter_start_s)  # after the interpreter has started (a loaded machine)
    entry = [str(RUN_PY)] if command == "run.py" else ["-m", "scaling.cli", "run"]
    entry_file = RUN_PY if command == "run.py" else REPO / "scaling" / "cli.py"
    _hanging_module(tmp_path)  # start-up never ends, however fast this machine: every delay falls in it
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, *entry, *FLAGS, "--dataset", "hanging:hang", "--output-dir",
                                 str(tmp_path / "run")], cwd=REPO, env=child_env(PYTHONPATH=str(tmp_path)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        if not _before_the_handler(proc.returncode, stderr, entry_file):
            break
        delay *= 1.5
    assert proc.returncode == 130, f"exit {proc.returncode} after {delay:.2f} s\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr[-3000:]


def test_the_recognised_early_interrupt_is_only_the_one_before_the_handler():
    """The retry above must not excuse a traceback from the tool's own code: only Python's KeyboardInterrupt
    in the entry's lines before its handler (the traceback CI printed once) counts as too early."""
    cli = REPO / "scaling" / "cli.py"
    early = (f'Traceback (most recent call last):\n  File "<frozen runpy>", line 198, in _run_module_as_main\n'
             f'  File "{cli}", line 8, in <module>\n    from scaling.startup import quiet_interrupt\n'
             f'KeyboardInterrupt\n')
    assert _before_the_handler(-signal.SIGINT, early, cli)
    assert not _before_the_handler(1, early, cli)  # not Python's death by SIGINT
    late = early.replace("line 8,", f"line {_handler_line(cli) + 2},")
    assert not _before_the_handler(-signal.SIGINT, late, cli)  # after the handler: the tool's failure
    inside = early.replace("KeyboardInterrupt", f'  File "{REPO / "scaling" / "config.py"}", line 3, in <module>\n'
                                                "KeyboardInterrupt")
    assert not _before_the_handler(-signal.SIGINT, inside, cli)  # in a module imported after the handler
    site = "Fatal Python error: init_import_site: Failed to import the site module\n" + early
    assert _before_the_handler(1, site, cli)  # the interpreter itself was still starting
    assert _before_the_handler(-signal.SIGINT, "", cli)  # before Python's own SIGINT handler


LIMIT_S = 10  # start-up reaches the dataset factory well inside it, even on a loaded machine (about 2 s there)


def test_a_hanging_dataset_factory_ends_at_the_start_up_limit_naming_what_it_waited_for(tmp_path):
    """Before: no start-up limit for a single run; it waited forever (only a sweep's timeout_s ended it)."""
    module = _hanging_module(tmp_path)
    began = time.monotonic()
    proc = run_script([*FLAGS, "--dataset", "hanging:hang", "--startup-timeout-s", str(LIMIT_S), "--output-dir",
                       str(tmp_path / "run")], timeout=120, PYTHONPATH=str(tmp_path))
    took = time.monotonic() - began
    assert_one_line_error(proc, f"start-up took more than --startup-timeout-s {LIMIT_S} s: still loading the "
                          "dataset", f"(in {module}:6, hang)", "raise the limit")
    assert took < LIMIT_S + 50  # ended by the limit (a few seconds after it), not by the test's timeout
    assert not (tmp_path / "run" / "result.json").exists()  # nothing was trained: no result to report


def test_a_stage_that_lasts_is_named_in_the_progress_output(tmp_path):
    """Without a limit, a stage lasting NOTE_AFTER_S is named on stdout, with where in the user's code it
    waits; a Ctrl-C then still ends the run with one line. The test waits for the line rather than for a
    time, so that however long the stages before it take, the note is the dataset's."""
    module = _hanging_module(tmp_path)
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *FLAGS, "--dataset", "hanging:hang", "--output-dir",
                             str(tmp_path / "run")], cwd=REPO, env=child_env(PYTHONPATH=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    timer = threading.Timer(120, proc.kill)  # a note that never comes fails the test, not the session
    timer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if "loading the dataset" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        timer.cancel()
    assert seen and seen[-1].startswith(f"scaling: start-up: still loading the dataset (in {module}:6, hang) "
                                        "after 10 s; --startup-timeout-s SECONDS would limit it"), seen
    assert proc.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "scaling: interrupted before training started; nothing to resume"], stderr[-3000:]


def test_a_factory_that_swallows_the_timeout_is_still_ended(tmp_path):
    """The limit does not depend on the factory letting the exception through: the watch ends the process."""
    module = _hanging_module(tmp_path)
    proc = run_script([*FLAGS, "--dataset", "hanging:swallow", "--startup-timeout-s", str(LIMIT_S), "--output-dir",
                       str(tmp_path / "run")], timeout=120, PYTHONPATH=str(tmp_path))
    assert_one_line_error(proc, f"start-up took more than --startup-timeout-s {LIMIT_S} s: still loading the dataset",
                          f"(in {module}:")


def test_the_limit_covers_start_up_only(tmp_path):
    """A run that starts within the limit trains past it; the watch and its SIGALRM handler are gone after."""
    before = signal.getsignal(signal.SIGALRM)
    proc = run_entry([*SMALL, "--num-samples", "2000", "--target-accuracy", "none", "--max-steps", "100000",
                      "--max-time", "21", "--startup-timeout-s", "20", "--output-dir", str(tmp_path / "run")])
    assert_ok(proc)
    assert "start-up" not in proc.stdout + proc.stderr
    assert signal.getsignal(signal.SIGALRM) == before
    assert not [t for t in threading.enumerate() if t.name == "scaling-startup-watch"]


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf"])
def test_a_bad_start_up_limit_is_refused_in_one_line(tmp_path, value):
    proc = run_entry([*FLAGS, "--startup-timeout-s", value, "--output-dir", str(tmp_path / "run")])
    assert_one_line_error(proc, "--startup-timeout-s must be a positive number of seconds (or none), got ")
