"""Issue 13: files the tool reads (configs, specs, study.json), YAML bombs, combination counts, launcher fields
and SLURM injection. Each case is refused in one line naming the file, quickly and in bounded memory."""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, a_result, assert_ok, assert_one_line_error, child_env, run_in_process
from scaling.config import ConfigError, parse_args
from scaling.study.slurm import write_slurm
from scaling.study.spec import MAX_CONFIGS, load_study
from scaling.userfiles import YAML_MAX_BYTES, load_yaml

# Nine levels of nine-fold aliases: 387 million values when expanded.
BOMB = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9 if i else ["1"] * 9) + "]\n"
               for i in range(9))


def scaling_cli(*args, timeout=120, cwd=REPO, memory_mb=None):
    """`scaling ARGS` in this process; with `memory_mb`, in a child process under that memory limit, so that a
    runaway expansion fails fast instead of taking the machine's memory."""
    if not memory_mb:
        return run_in_process(list(args[1:]), command=args[0], cwd=cwd)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=child_env(), preexec_fn=limit)


def write(tmp_path, text, name="file.yaml", binary=False):
    path = tmp_path / name
    path.write_bytes(text) if binary else path.write_text(text)
    return path


# ---------------------------------------------------------------- item 7: YAML alias bombs


def test_alias_bomb_as_a_run_value_is_refused_at_once(tmp_path):
    config = write(tmp_path, BOMB + "global_bs: *i\n")
    started = time.time()
    proc = run_in_process(["--config", str(config), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, str(config), "aliases expand to more than 100,000 values")
    assert time.time() - started < 60  # at once: expanding the aliases would take far longer (or run out of memory)
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.parametrize("section", ["base: {global_bs: *i}", "description: *i", "grid: {global_bs: *i}"])
def test_alias_bomb_in_a_spec_is_refused_at_once_in_bounded_memory(tmp_path, section):
    spec = write(tmp_path, BOMB + section + "\n", "spec.yaml")
    started = time.time()
    proc = scaling_cli("sweep", str(spec), "--dir", str(tmp_path / "s"), "--dry-run", memory_mb=4096)
    assert_one_line_error(proc, "aliases expand to more than 100,000 values")
    assert time.time() - started < 60  # at once: expanding the aliases would take far longer (or run out of memory)
    assert not (tmp_path / "s").exists()


def test_error_messages_never_format_an_unbounded_value(tmp_path):
    config = write(tmp_path, "global_bs: [" + ", ".join(["7"] * 50_000) + "]\n")
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", str(config)])
    assert "'global_bs' expects int, got list" in str(err.value) and len(str(err.value)) < 200
    config = write(tmp_path, "global_bs: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="holds a value that cannot be read"):
        parse_args(["--config", str(config)])


def test_a_self_referencing_alias_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="refers to itself"):
        load_yaml(write(tmp_path, "a: &x [1, *x]\n"))


# ---------------------------------------------------------------- item 12: duplicate keys


def test_duplicate_keys_are_refused_in_configs_and_specs(tmp_path):
    config = write(tmp_path, "global_bs: 64\nbase_lr: 0.1\nglobal_bs: 128\n")
    proc = run_in_process(["--config", str(config)])
    assert_one_line_error(proc, "duplicate key 'global_bs' at line 3 (first at line 1)")
    spec = write(tmp_path, "base: {global_bs: 64}\ngrid: {seed: [0]}\ngrid: {seed: [1]}\n", "spec.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'grid' at line 3"):
        load_study(spec, tmp_path / "s")
    # YAML merge keys are not duplicates
    assert load_yaml(write(tmp_path, "a: &b {x: 1}\nc: {<<: *b, y: 2}\n"))["c"] == {"x": 1, "y": 2}


# ---------------------------------------------------------------- item 9: files read: configs, specs


BAD_FILES = {
    "missing": (None, "does not exist"),
    "empty": (b"", "is empty"),
    "comment only": (b"# nothing\n", "is empty"),
    "truncated": (b"global_bs: [64, 128\n", "is not valid YAML at line 2"),
    "not UTF-8": (b"global_bs: 64\nname: \xff\xfe\n", "is not UTF-8 text (byte 0xff at offset 20)"),
    "a folder": ("dir", "is a folder, not a file"),
    "enormous": (b"# " + b"x" * (YAML_MAX_BYTES + 10) + b"\n", "over the 1,048,576-byte limit"),
}


def _make(tmp_path, case) -> Path:
    content, _ = BAD_FILES[case]
    path = tmp_path / "input.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_run_config_file_is_named_in_one_line(tmp_path, case):
    path = _make(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", str(path)])
    assert str(path) in str(err.value) and BAD_FILES[case][1] in str(err.value)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_study_spec_is_named_in_one_line(tmp_path, case):
    path = _make(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        load_study(path, tmp_path / "s")
    assert str(err.value).startswith(f"study spec {path}") and BAD_FILES[case][1] in str(err.value)


@pytest.mark.parametrize("case", ["not UTF-8", "a folder"])
def test_bad_files_through_the_entries(tmp_path, case):
    path = _make(tmp_path, case)
    assert_one_line_error(run_in_process(["--config", str(path)]), str(path), BAD_FILES[case][1])
    proc = scaling_cli("sweep", str(path), "--dir", str(tmp_path / "s"), "--dry-run")
    assert_one_line_error(proc, str(path))


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a study record of this tool"),
    ('{"configs": 3}', "is not a study record of this tool"),
    (b"\xff\xfe", "is not UTF-8 text"),
    ("dir", "is a folder, not a file"),
])
def test_a_damaged_study_json_is_named_before_anything_runs(tmp_path, content, message):
    spec = write(tmp_path, "base: {num_samples: 4000, max_steps: 2, cpu: true}\n", "spec.yaml")
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    if content == "dir":
        (study_dir / "study.json").mkdir()
    else:
        write(study_dir, content, "study.json", binary=isinstance(content, bytes))
    proc = scaling_cli("sweep", str(spec), "--dir", str(study_dir), "--no-progress")
    assert_one_line_error(proc, str(study_dir / "study.json"), message)
    assert not (study_dir / "runs").exists()


# ---------------------------------------------------------------- item 8: combination counts


def test_a_million_combinations_are_refused_with_the_count_before_expanding(tmp_path):
    values = list(range(1, 101))
    spec = write(tmp_path, json.dumps({"grid": {"seed": values, "warmup_steps": values, "log_every": values}}),
                 "spec.yaml")
    started = time.time()
    proc = scaling_cli("sweep", str(spec), "--dir", str(tmp_path / "s"), "--dry-run", memory_mb=4096)
    assert_one_line_error(proc, "1,000,000 configurations (100 x 100 x 100)", f"limit of {MAX_CONFIGS:,}")
    assert time.time() - started < 60  # at once: expanding the aliases would take far longer (or run out of memory)


# ---------------------------------------------------------------- item 11: launcher fields


@pytest.mark.parametrize("launcher, message", [
    ({"type": "torchrun", "nproc": "2; x"}, "launcher 'nproc' must be a whole number >= 1, got '2; x'"),
    ({"type": "torchrun", "nproc": -2}, "launcher 'nproc' must be a whole number >= 1, got -2"),
    ({"type": "torchrun", "nproc": True}, "launcher 'nproc' must be a whole number >= 1"),
    ({"type": "torchrun", "nnodes": 0}, "launcher 'nnodes' must be a whole number >= 1, got 0"),
    ({"timeout_s": "abc"}, "launcher 'timeout_s' must be a number of seconds > 0, got 'abc'"),
    ({"timeout_s": -1}, "launcher 'timeout_s' must be a number of seconds > 0"),
    ({"grace_s": 0}, "launcher 'grace_s' must be a number of seconds > 0"),
    ({"type": "torchrun", "master_port": 70000}, "launcher 'master_port' must be a port number"),
    ({"type": "torchrun", "master_addr": "h; rm -rf /"}, "launcher 'master_addr' must be a host name"),
    ({"local_nodes": "yes"}, "launcher 'local_nodes' must be true or false"),
    ({"type": ["python"]}, "launcher type must be one of"),
])
def test_launcher_fields_are_validated_with_the_spec_dry_run_included(tmp_path, launcher, message):
    spec = write(tmp_path, json.dumps({"base": {"global_bs": 256}, "launcher": launcher}), "spec.yaml")
    with pytest.raises(ConfigError, match="study spec: "):
        load_study(spec, tmp_path / "s")
    assert_one_line_error(scaling_cli("sweep", str(spec), "--dir", str(tmp_path / "s"), "--dry-run"), message)


def test_a_process_count_axis_is_validated_too(tmp_path):
    spec = write(tmp_path, json.dumps({"grid": {"nproc": [1, "2; x"]}, "launcher": {"type": "torchrun"}}), "s.yaml")
    with pytest.raises(ConfigError, match="launcher 'nproc' must be a whole number"):
        load_study(spec, tmp_path / "s")


# ---------------------------------------------------------------- item 6: SLURM scripts


@pytest.mark.parametrize("name", ["$(touch PWNED)", "`touch PWNED`", "a\ntouch PWNED", "../up", "a b", ""])
def test_unsafe_study_names_are_refused(tmp_path, name):
    spec = write(tmp_path, json.dumps({"name": name, "base": {"global_bs": 256}}) if name else "base: {}\n",
                 "$(x).yaml" if not name else "spec.yaml")
    with pytest.raises(ConfigError, match="must be a plain file name"):
        load_study(spec, tmp_path / "s")
    proc = scaling_cli("sweep", str(spec), "--dir", str(tmp_path / "s"), "--slurm", "array")
    assert_one_line_error(proc, "must be a plain file name")
    assert not list(tmp_path.rglob("*.sbatch"))


def test_a_study_folder_that_a_script_cannot_carry_is_refused(tmp_path):
    spec = write(tmp_path, json.dumps({"name": "ok", "base": {"global_bs": 256}}), "spec.yaml")
    for bad in ("$(touch PWNED)", "a b", "x\ny"):
        proc = scaling_cli("sweep", str(spec), "--dir", str(tmp_path / bad), "--slurm", "array")
        assert_one_line_error(proc, "--slurm: the study folder")
    assert not list(tmp_path.rglob("*.sbatch")) and not (tmp_path / "PWNED").exists()


@pytest.mark.slow  # seconds of real subprocesses or repeated studies: the full suite runs it
def test_slurm_scripts_quote_every_word_and_never_eval(tmp_path):
    """Run the written scripts with bash, with stand-ins for srun, torchrun, scontrol and python that record
    their arguments: the commands arrive word for word, and nothing else runs."""
    study_dir = tmp_path / "study"
    spec = write(tmp_path, json.dumps({"name": "quoted", "base": {"global_bs": 256, "num_samples": 4000},
                                       "grid": {"seed": [0, 1]}, "launcher": {"type": "torchrun", "nproc": 2}}),
                 "spec.yaml")
    study = load_study(spec, study_dir)
    (array,) = write_slurm(study, study_dir, array=True)
    text = array.read_text()
    assert "eval" not in text and "commands.txt" not in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    recorder = f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
    finished = tmp_path / "finished.json"  # what a real run leaves: the job checks the run wrote its result
    finished.write_text(json.dumps(a_result("reached")))
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).write_text(recorder + (_WRITES_RESULT.format(finished=str(finished)) if tool == "srun" else ""))
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = child_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n1")
    for task in (0, 1):
        proc = subprocess.run(["bash", str(array)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert_ok(proc)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    sruns = [c for c in calls if Path(c[0]).name == "srun"]
    assert len(sruns) == 2
    for call, config in zip(sruns, study.configs, strict=True):
        out = Path(config.config.output_dir).resolve()
        assert call[1:] == ["--nodes=1", "--ntasks=1", sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nnodes", "1", "--nproc_per_node", "2", "-m", "scaling.run",
                            "--config", str(out / "config.yaml"), "--overwrite"]


# The srun stand-in's run: a finished result.json beside the run's --config.
_WRITES_RESULT = """import pathlib, shutil
shutil.copy({finished!r}, pathlib.Path(sys.argv[sys.argv.index("--config") + 1]).parent / "result.json")
"""


@pytest.mark.slow
def test_a_slurm_job_whose_run_exits_0_without_its_result_fails(tmp_path):
    """The job's real run calls os._exit(0) in its dataset factory: nothing in the run can say so, the job
    script's check after it does (exit 1, one line naming the folder)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "quits.py").write_text("import os\n\n\ndef make():\n    os._exit(0)\n")
    study_dir = tmp_path / "study"
    spec = write(tmp_path, json.dumps({"name": "silent", "base": {"dataset": "quits:make", "cpu": True,
                                                                  "progress": False}, "grid": {"seed": [0]}}),
                 "spec.yaml")
    (script,) = write_slurm(load_study(spec, study_dir), study_dir, array=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, text in (("python", f'#!/bin/sh\nexec {sys.executable} "$@"\n'), ("scontrol", "#!/bin/sh\necho n1\n")):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    env = child_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="78", SLURM_JOB_NODELIST="n1",
                    PYTHONPATH=str(mods))
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("scaling: error: ") and "the run ended with exit status 0 without writing its result" in line


def test_a_resubmitted_slurm_job_resumes_an_interrupted_configuration(tmp_path):
    from scaling.study.slurm import launch_mode

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert launch_mode(run_dir) == "overwrite"
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / "manifest.json").write_text(json.dumps({"format": 1, "step": 40, "files": {}}))
    (run_dir / "result.json").write_text(json.dumps(a_result("interrupted")))
    assert launch_mode(run_dir) == "resume"
    (run_dir / "result.json").write_text(json.dumps(a_result("reached")))
    assert launch_mode(run_dir) == "done"
