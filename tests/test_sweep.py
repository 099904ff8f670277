"""Study specs, the sweep runner (real launched processes), resume, failures, locks, clusters."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_ok, assert_one_line_error, child_env, run_in_process
from scaling.config import ConfigError
from scaling.lock import StudyLock
from scaling.results import read_result
from scaling.study.slurm import write_slurm
from scaling.study.spec import load_study

TINY = {"num_samples": 4000, "max_steps": 20, "eval_every": 10, "target_accuracy": None, "cpu": True}


def write_spec(tmp_path, spec: dict, name="spec.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def scaling_cli(*args, timeout=600, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "scaling.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=child_env())


def test_grid_zip_and_seeds_expand_with_stable_ids(tmp_path):
    spec = write_spec(tmp_path, {
        "name": "s", "base": {"target_accuracy": 0.9},
        "grid": {"global_bs": [64, 128], "lr_scaling": ["linear", "sqrt"]},
        "zip": {"base_lr": [0.1, 0.2], "warmup_steps": [0, 5]},
        "seeds": [0, 1],
    })
    study = load_study(spec, tmp_path / "study")
    assert len(study.configs) == 2 * 2 * 2 * 2
    first = study.configs[0]
    assert first.overrides == {"global_bs": 64, "lr_scaling": "linear", "seed": 0, "base_lr": 0.1, "warmup_steps": 0}
    assert first.config.output_dir == str(tmp_path / "study" / "runs" / first.id)
    again = load_study(spec, tmp_path / "elsewhere")
    assert [c.id for c in again.configs] == [c.id for c in study.configs]  # ids do not depend on the folder
    assert len({c.id for c in study.configs}) == len(study.configs)
    zipped = {(c.config.base_lr, c.config.warmup_steps) for c in study.configs}
    assert zipped == {(0.1, 0), (0.2, 5)}


def test_process_count_axis(tmp_path):
    spec = write_spec(tmp_path, {"base": {"global_bs": 256}, "grid": {"nproc": [1, 2, 4]},
                                 "launcher": {"type": "torchrun"}})
    study = load_study(spec, tmp_path / "s")
    assert [c.launcher.nproc for c in study.configs] == [1, 2, 4]
    assert "per-device 64 x 4 processes" in study.configs[2].describe()


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"global_bz": [1, 2]}}, "unknown key 'global_bz' in 'grid'"),
    ({"grid": {"global_bs": []}}, "axis 'global_bs' in 'grid' is empty"),
    ({"grid": {"global_bs": 64}}, "axis 'global_bs' in 'grid' must be a list"),
    ({"zip": {"global_bs": [64, 128], "base_lr": [0.1]}}, "zipped axes must have equal lengths"),
    ({"grids": {"global_bs": [64]}}, "unknown section 'grids'"),
    ({"launcher": {"type": "mpirun"}}, "launcher type must be one of"),
    ({"launcher": {"type": "python", "nproc": 2}}, "the python launcher runs one process"),
    ({"launcher": {"gpus": 2}}, "unknown launcher key 'gpus'"),
    ({"grid": {"global_bs": [100]}, "base": {"per_device_bs": 30}}, "per-device 30"),
    ({"grid": {"base_lr": ["fast"]}}, "'base_lr' expects float"),
    ({"grid": {"global_bs": [64]}, "zip": {"global_bs": [64]}}, "both a grid and a zip axis"),
    ({"base": [1, 2]}, "'base' must be a mapping"),
])
def test_bad_specs_are_refused_before_anything_runs(tmp_path, spec, message):
    path = write_spec(tmp_path, spec)
    with pytest.raises(ConfigError) as err:
        load_study(path, tmp_path / "study")
    assert message in str(err.value)
    proc = run_in_process([str(path), "--dir", str(tmp_path / "study")], command="sweep")
    assert_one_line_error(proc, message)
    assert not (tmp_path / "study" / "runs").exists()


def test_dry_run_lists_decompositions_and_scaled_lr_and_runs_nothing(tmp_path):
    proc = run_in_process([str(REPO / "configs" / "studies" / "default.yaml"), "--dir", str(tmp_path / "s"),
                          "--dry-run"], command="sweep")
    assert_ok(proc)
    count = len(load_study(REPO / "configs" / "studies" / "default.yaml", tmp_path / "s").configs)
    assert f"{count} configurations" in proc.stdout
    assert "global batch 4096 = per-device 512 x 1 process x 8 accumulation steps" in proc.stdout
    assert "lr linear 0.05@256 -> 0.8" in proc.stdout
    assert not (tmp_path / "s").exists()


def test_every_shipped_study_spec_is_valid(tmp_path):
    specs = sorted((REPO / "configs" / "studies").glob("*.yaml"))
    assert {p.stem for p in specs} >= {"default", "batch_size", "powers_of_two", "lr_rules", "loader_workers"}
    for spec in specs:
        assert load_study(spec, tmp_path / spec.stem).configs


FAILING_MODULE = '''
def broken_model():
    raise RuntimeError("this model is broken on purpose")
'''


@pytest.mark.slow
def test_sweep_runs_records_failures_goes_on_and_resumes(tmp_path):
    (tmp_path / "brokenmod.py").write_text(FAILING_MODULE)
    spec = write_spec(tmp_path, {
        "name": "mini", "base": dict(TINY, global_bs=256),
        "grid": {"model": ["cnn1d", "brokenmod:broken_model", "mlp"]},
    })
    study_dir = tmp_path / "study"
    proc = scaling_cli("sweep", str(spec), "--dir", str(study_dir), "--no-progress", cwd=tmp_path)
    assert_ok(proc)
    record = json.loads((study_dir / "study.json").read_text())
    statuses = {c["overrides"]["model"]: c for c in record["configs"]}
    assert statuses["cnn1d"]["status"] == "completed" and statuses["mlp"]["status"] == "completed"
    broken = statuses["brokenmod:broken_model"]
    assert broken["status"] == "failed" and "this model is broken on purpose" in broken["error_tail"]
    assert "1 failed" in proc.stdout and "2 completed" in proc.stdout
    for entry in record["configs"]:
        assert (study_dir / entry["output_dir"] / "stderr.log").is_file()

    # Resume: finished configurations are skipped; the failed one runs again.
    finished = study_dir / statuses["cnn1d"]["output_dir"] / "result.json"
    before = finished.stat().st_mtime_ns
    # An incomplete result (killed run) must be redone, too.
    mlp_result = study_dir / statuses["mlp"]["output_dir"] / "result.json"
    mlp_result.write_text('{"status": "running"')
    proc = scaling_cli("sweep", str(spec), "--dir", str(study_dir), "--no-progress", cwd=tmp_path)
    assert_ok(proc)
    assert finished.stat().st_mtime_ns == before
    assert "1 already complete" in proc.stdout
    assert read_result(mlp_result)["status"] == "completed"


@pytest.mark.slow
def test_two_node_rendezvous_through_the_sweep_launcher(tmp_path):
    spec = write_spec(tmp_path, {
        "name": "nodes", "base": dict(TINY, global_bs=256, max_steps=6, eval_every=6),
        "launcher": {"type": "torchrun", "nproc": 1, "nnodes": 2, "master_addr": "127.0.0.1", "local_nodes": True,
                     "timeout_s": 240},
    })
    study_dir = tmp_path / "study"
    proc = scaling_cli("sweep", str(spec), "--dir", str(study_dir), "--no-progress")
    assert_ok(proc)
    record = json.loads((study_dir / "study.json").read_text())
    (entry,) = record["configs"]
    result = read_result(study_dir / entry["output_dir"] / "result.json")
    assert result is not None, (study_dir / entry["output_dir"] / "stderr.log").read_text()[-2000:]
    assert result["environment"]["world_size"] == 2 and result["batch"]["num_processes"] == 2
    assert (study_dir / entry["output_dir"] / "stderr.node1.log").exists()  # node 1 ran as its own torchrun


def test_one_writer_per_study(tmp_path):
    spec = write_spec(tmp_path, {"base": TINY})
    study_dir = tmp_path / "study"
    with StudyLock(study_dir):
        proc = run_in_process([str(spec), "--dir", str(study_dir)], command="sweep")
        assert_one_line_error(proc, "is in use by a running sweep", f"pid {os.getpid()}")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from scaling.lock import StudyLock\n"
                               f"with StudyLock({str(study_dir)!r}):\n    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=child_env())
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError):
        StudyLock(study_dir).__enter__()
    holder.send_signal(signal.SIGKILL)  # a dead holder must not leave the study locked
    holder.wait()
    time.sleep(0.1)
    with StudyLock(study_dir):
        pass


def test_slurm_scripts(tmp_path):
    spec = write_spec(tmp_path, {"name": "cluster", "base": {"global_bs": 1024},
                                 "grid": {"seed": [0, 1, 2]},
                                 "launcher": {"type": "torchrun", "nproc": 8, "nnodes": 2}})
    study = load_study(spec, tmp_path / "study")
    (array,) = write_slurm(study, tmp_path / "study", array=True)
    text = array.read_text()
    assert "#SBATCH --array=0-2" in text and "#SBATCH --nodes=2" in text and "--gpus-per-node=8" in text
    commands = (tmp_path / "study" / "slurm" / "commands.txt").read_text().splitlines()
    assert len(commands) == 3
    assert all("torch.distributed.run --nnodes 2 --nproc_per_node 8" in c and "--rdzv_backend c10d" in c
               for c in commands)
    per_config = write_slurm(study, tmp_path / "study", array=False)
    assert len(per_config) == 3 and all(p.suffix == ".sbatch" for p in per_config)
    config_yaml = Path(commands[0].split("--config ")[1])
    assert config_yaml.is_file() and "global_bs: 1024" in config_yaml.read_text()


def test_slurm_allocation_comes_from_the_spec_and_the_flags(tmp_path):
    spec = write_spec(tmp_path, {"name": "alloc", "base": {"global_bs": 512}, "grid": {"seed": [0, 1]},
                                 "launcher": {"type": "torchrun", "nproc": 4},
                                 "slurm": {"cpus_per_task": 16, "time": "1-00:00:00", "partition": "gpu"}})

    def sweep(*flags):
        return run_in_process([str(spec), "--dir", str(tmp_path / "study"), *flags], command="sweep")

    proc = sweep("--slurm", "array", "--account", "proj-7", "--gpus-per-node", "8")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "study" / "slurm" / "array.sbatch").read_text()
    for line in ("#SBATCH --cpus-per-task=16", "#SBATCH --time=1-00:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj-7", "#SBATCH --gpus-per-node=8"):
        assert line in text.splitlines(), line
    assert_one_line_error(sweep("--slurm", "array", "--time", "soon"), "slurm time must be a SLURM time")
    assert_one_line_error(sweep("--slurm", "array", "--partition", "gpu;rm"), "slurm partition must be a name")
    bad = write_spec(tmp_path, {"name": "bad", "base": {"global_bs": 512}, "slurm": {"gpus": 4}}, name="bad.yaml")
    proc = run_in_process([str(bad), "--dry-run"], command="sweep")
    assert_one_line_error(proc, "unknown slurm key 'gpus'")
