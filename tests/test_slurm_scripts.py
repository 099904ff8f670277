"""The SLURM scripts that `scaling sweep SPEC --slurm` writes, run under stand-ins for `srun` and `scontrol`
(issue 33, item 3): a job requests only what its study uses (no GPU for a `cpu: true` study), every array task
has a rendezvous of its own (two tasks on one node never meet), and the spec's `slurm: setup:` lines are written
before the commands, run, and provide the `python` that runs everything."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, a_result, assert_one_line_error, child_env, run_in_process
from scaling.config import ConfigError
from scaling.study.slurm import RDZV_PORT_BASE, RDZV_PORT_SPAN, write_slurm
from scaling.study.spec import load_study

# The `srun` stand-in: records its arguments and the task it serves, then runs the rest of its command line
# as a one-node srun would (SLURM_NODEID from the test, 0 by default).
SRUN = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "srun", "argv": args, "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                          "node": os.environ.get("SLURMD_NODENAME"),
                          "cpus": os.environ.get("SRUN_CPUS_PER_TASK")}}) + "\\n")
while args and args[0].startswith("--"):
    args.pop(0)
os.environ.setdefault("SLURM_NODEID", "0")
os.execvp(args[0], args)
"""

# The environment's `python` (on PATH only once the setup lines have sourced `activate`): records every call.
# With STANDIN_FAKE_RUN set, a launch (anything but scaling.study.slurm and `-c`) writes a finished result
# beside its --config instead of training; otherwise everything runs for real.
PYTHON = """#!{python}
import json, os, pathlib, shutil, sys
args = sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "env-python", "argv": args, "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                          "setup": os.environ.get("SCALING_SETUP_MARK")}}) + "\\n")
helper = args[:1] == ["-c"] or args[:2] == ["-m", "scaling.study.slurm"]
if os.environ.get("STANDIN_FAKE_RUN") and not helper:
    shutil.copy({finished!r}, pathlib.Path(args[args.index("--config") + 1]).parent / "result.json")
    sys.exit(0)
os.execv({python!r}, [{python!r}, *args])
"""

# What an activation script does (and, like conda's, it reads a variable that may be unset).
ACTIVATE = """: "$SCALING_NEVER_SET_ANYWHERE"
export PATH={env_bin}:"$PATH"
"""

# Imported by every Python process of the runs (PYTHONPATH): a torchrun worker records the rendezvous it got.
SITECUSTOMIZE = """import json, os
if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ:
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps({"tool": "worker", "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                              "rank": os.environ.get("RANK"), "run_id": os.environ["TORCHELASTIC_RUN_ID"],
                              "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}) + "\\n")
"""


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def sbatch_lines(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


class Cluster:
    """Stand-ins for one node `n1`: srun, scontrol, an environment whose activate puts its python on PATH."""

    def __init__(self, tmp_path: Path, fake_run: bool):
        self.log = tmp_path / "calls.jsonl"
        self.bin = tmp_path / "bin"
        env_bin = tmp_path / "env" / "bin"
        site = tmp_path / "site"
        for folder in (self.bin, env_bin, site):
            folder.mkdir(parents=True)
        finished = tmp_path / "finished.json"
        finished.write_text(json.dumps(a_result("reached")))
        for path, text in ((self.bin / "srun", SRUN.format(python=sys.executable)),
                           (self.bin / "scontrol", "#!/bin/sh\necho n1\n"),
                           (env_bin / "python", PYTHON.format(python=sys.executable, finished=str(finished)))):
            path.write_text(text)
            path.chmod(0o755)
        self.activate = tmp_path / "env" / "activate"
        self.activate.write_text(ACTIVATE.format(env_bin=shlex.quote(str(env_bin))))
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.env = child_env(PYTHONPATH=str(site), PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                             STANDIN_LOG=str(self.log), SLURM_JOB_NODELIST="n1", SLURMD_NODENAME="n1",
                             SLURM_ARRAY_JOB_ID="5000", **({"STANDIN_FAKE_RUN": "1"} if fake_run else {}))
        self.env.pop("SCALING_SETUP_MARK", None)
        self.tmp_path = tmp_path

    def setup(self) -> list[str]:
        return ["export SCALING_SETUP_MARK=ran", f"source {shlex.quote(str(self.activate))}"]

    def start(self, script: Path, task: int, **env: str) -> subprocess.Popen:
        """Array task `task` as SLURM runs it: a job of its own (SLURM_JOB_ID 5001 + task) on node n1."""
        return subprocess.Popen(["bash", str(script)], cwd=self.tmp_path, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                env={**self.env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": str(5001 + task),
                                     **env})

    def calls(self, tool: str) -> list[dict]:
        return [c for c in map(json.loads, self.log.read_text().splitlines()) if c["tool"] == tool]


def finish(procs: list[subprocess.Popen], timeout: float) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out


@pytest.mark.slow  # two real 2-process torchrun runs at once
def test_two_array_tasks_of_a_cpu_study_on_one_node_get_their_own_rendezvous(tmp_path):
    """The done-when of issue 33 item 3: the array script of a `cpu: true` study requests no GPU; its two tasks,
    started at once on the same node through the real script with stand-in srun and scontrol, each train
    (torchrun, 2 processes over gloo) at a rendezvous of their own and finish; the setup lines run first and
    their python runs everything; port 29500, which every task used before, is held by the test meanwhile."""
    cluster = Cluster(tmp_path, fake_run=False)
    study_dir = tmp_path / "study"
    spec = write_spec(tmp_path, {"name": "cpu-pair", "base": {"cpu": True, "num_samples": 4000, "global_bs": 64,
                                                              "max_steps": 3},
                                 "grid": {"seed": [0, 1]}, "launcher": {"type": "torchrun", "nproc": 2},
                                 "slurm": {"cpus_per_task": 2, "setup": cluster.setup()}})
    study = load_study(spec, study_dir)
    (array,) = write_slurm(study, study_dir, array=True)
    text = array.read_text()
    lines = sbatch_lines(array)
    assert not [line for line in lines if "gpu" in line.lower() or "gres" in line], lines
    assert "#SBATCH --cpus-per-task=2" in lines and "#SBATCH --array=0-1" in lines
    setup_at = [text.index(line + "\n") for line in cluster.setup()]
    assert setup_at == sorted(setup_at) and setup_at[-1] < text.index("PYTHON=python") < text.index("case ")
    assert str(REPO) not in text  # nothing of the generating clone: the environment's python imports scaling

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 29500))
        holder.listen()
    except OSError:
        pass  # something else holds it: as good
    start = time.monotonic()
    try:
        finish([cluster.start(array, 0), cluster.start(array, 1)], timeout=600)
    finally:
        holder.close()
    wall = time.monotonic() - start

    for config in study.configs:
        result = json.loads((Path(config.config.output_dir) / "result.json").read_text())
        assert result["status"] in ("not_reached", "reached") and result["steps"] == 3, result
    sruns = sorted(cluster.calls("srun"), key=lambda c: c["task"])
    assert [(c["task"], c["node"], c["cpus"]) for c in sruns] == [("0", "n1", "2"), ("1", "n1", "2")]
    for call in sruns:
        argv = call["argv"]
        assert argv[:6] == ["--nodes=1", "--ntasks=1", "python", "-m", "torch.distributed.run", "--standalone"]
        assert "--rdzv_endpoint" not in argv and not any("29500" in word for word in argv)
    workers = cluster.calls("worker")
    assert sorted((w["task"], w["rank"]) for w in workers) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    masters = {task: {w["master"] for w in workers if w["task"] == task} for task in ("0", "1")}
    run_ids = {task: {w["run_id"] for w in workers if w["task"] == task} for task in ("0", "1")}
    assert all(len(found) == 1 for found in (*masters.values(), *run_ids.values())), (masters, run_ids)
    assert masters["0"] != masters["1"] and run_ids["0"] != run_ids["1"], (masters, run_ids)
    assert not any(m.endswith(":29500") for found in masters.values() for m in found)
    # The setup lines ran before anything else, and their python ran every step: the import check, the
    # launch-mode question, the launch (through srun), the result check.
    env_calls = cluster.calls("env-python")
    assert {c["setup"] for c in env_calls} == {"ran"}
    for task in ("0", "1"):
        steps = [c["argv"][:2] if c["argv"][0] != "-m" or c["argv"][1] != "scaling.study.slurm" else c["argv"][:3]
                 for c in env_calls if c["task"] == task]
        assert steps == [["-c", "import scaling"], ["-m", "scaling.study.slurm", "--launch-mode"],
                         ["-m", "torch.distributed.run"], ["-m", "scaling.study.slurm", "--check-result"]], steps
    print(f"two concurrent array tasks (torchrun 2 processes each, 3 steps): {wall:.1f} s")


@pytest.mark.slow  # bash and Python stand-ins
def test_multi_node_tasks_rendezvous_at_a_port_of_their_own_job(tmp_path):
    """Two array tasks of a 2-node torchrun study (each a job of its own, 5001 and 5002) meet on their first
    node at 15000 + job id % 17000: different ports and rendezvous ids; srun starts one task per node."""
    cluster = Cluster(tmp_path, fake_run=True)
    study_dir = tmp_path / "study"
    spec = write_spec(tmp_path, {"name": "nodes", "base": {"global_bs": 1024}, "grid": {"seed": [0, 1]},
                                 "launcher": {"type": "torchrun", "nproc": 4, "nnodes": 2},
                                 "slurm": {"setup": cluster.setup()}})
    study = load_study(spec, study_dir)
    (array,) = write_slurm(study, study_dir, array=True)
    lines = sbatch_lines(array)
    assert "#SBATCH --gpus-per-node=4" in lines and "#SBATCH --nodes=2" in lines
    finish([cluster.start(array, 0), cluster.start(array, 1)], timeout=120)
    sruns = sorted(cluster.calls("srun"), key=lambda c: c["task"])
    ports = []
    for task, call in enumerate(sruns):
        argv = call["argv"]
        job = 5001 + task
        port = RDZV_PORT_BASE + job % RDZV_PORT_SPAN
        assert argv == ["--nodes=2", "--ntasks=2", "python", "-m", "torch.distributed.run", "--nnodes", "2",
                        "--nproc_per_node", "4", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"n1:{port}",
                        "--rdzv_id", str(job), "-m", "scaling.run", "--config",
                        str(Path(study.configs[task].config.output_dir).resolve() / "config.yaml"), "--overwrite"]
        ports.append(port)
    assert ports[0] != ports[1] and all(15000 <= p < 32768 for p in ports)


@pytest.mark.slow  # bash and Python stand-ins
def test_accelerate_tasks_get_a_free_port_or_their_jobs_port_and_each_nodes_rank(tmp_path):
    """accelerate: one node takes a free port (--main_process_port 0); several nodes meet on the first at the
    job's port, and each node's machine rank is its own SLURM_NODEID (set inside the srun task)."""
    cluster = Cluster(tmp_path, fake_run=True)
    config_file = tmp_path / "accelerate.yaml"
    config_file.write_text("distributed_type: MULTI_GPU\n")
    for nnodes, node_id in ((1, "0"), (2, "1")):
        study_dir = tmp_path / f"study{nnodes}"
        spec = write_spec(tmp_path, {"name": f"acc{nnodes}", "base": {"global_bs": 512}, "grid": {"seed": [0, 1]},
                                     "launcher": {"type": "accelerate", "nproc": 2, "nnodes": nnodes,
                                                  "config_file": str(config_file)},
                                     "slurm": {"setup": cluster.setup()}}, name=f"acc{nnodes}.yaml")
        study = load_study(spec, study_dir)
        (array,) = write_slurm(study, study_dir, array=True)
        assert "#SBATCH --gpus-per-node=2" in sbatch_lines(array)
        cluster.log.unlink(missing_ok=True)
        finish([cluster.start(array, 0, SLURM_NODEID=node_id), cluster.start(array, 1, SLURM_NODEID=node_id)],
               timeout=120)
        launches = sorted((c for c in cluster.calls("env-python") if "accelerate.commands.launch" in c["argv"]),
                          key=lambda c: c["task"])
        assert len(launches) == 2
        for task, call in enumerate(launches):
            config = str(Path(study.configs[task].config.output_dir).resolve() / "config.yaml")
            common = ["--num_processes", str(2 * nnodes), "--config_file", str(config_file),
                      "--num_machines", str(nnodes)]
            if nnodes == 1:
                expected = ["-m", "accelerate.commands.launch", *common, "--main_process_port", "0"]
            else:
                port = str(RDZV_PORT_BASE + (5001 + task) % RDZV_PORT_SPAN)
                expected = ["-m", "accelerate.commands.launch", "--machine_rank", node_id, *common,
                            "--main_process_ip", "n1", "--main_process_port", port]
            assert call["argv"] == [*expected, "-m", "scaling.run", "--config", config, "--overwrite"]


def test_a_cpu_study_requests_no_gpu_and_a_gpu_study_its_process_count(tmp_path):
    """`cpu: true` in every configuration: no GPU line (array and per-config); GPU configurations ask for
    their own process count (per-config) or the largest (array); a python launcher on a GPU asks for one."""
    def scripts(name: str, spec: dict, array: bool) -> list[Path]:
        path = write_spec(tmp_path, {"name": name, **spec}, name=f"{name}.yaml")
        return write_slurm(load_study(path, tmp_path / name), tmp_path / name, array=array)

    cpu = {"base": {"cpu": True, "global_bs": 256}, "grid": {"seed": [0, 1]},
           "launcher": {"type": "torchrun", "nproc": 4}}
    for array in (True, False):
        for script in scripts(f"cpu{array}", cpu, array):
            assert not [line for line in sbatch_lines(script) if "gpu" in line.lower() or "gres" in line]
    mixed = {"base": {"global_bs": 256}, "grid": {"cpu": [True, False], "nproc": [2, 4]},
             "launcher": {"type": "torchrun"}}
    (array,) = scripts("mixed", mixed, True)
    assert [line for line in sbatch_lines(array) if "gpu" in line] == ["#SBATCH --gpus-per-node=4"]
    study = load_study(tmp_path / "mixed.yaml", tmp_path / "mixed")
    for config, script in zip(study.configs, scripts("mixed", mixed, False), strict=True):
        gpu_lines = [line for line in sbatch_lines(script) if "gpu" in line]
        expected = [] if config.config.cpu else [f"#SBATCH --gpus-per-node={config.launcher.nproc}"]
        assert gpu_lines == expected, (config.overrides, gpu_lines)
    (python_gpu,) = scripts("one", {"base": {"global_bs": 256}}, True)
    assert "#SBATCH --gpus-per-node=1" in sbatch_lines(python_gpu)


def test_gpus_asked_for_a_cpu_study_are_refused(tmp_path):
    spec = write_spec(tmp_path, {"name": "cpu", "base": {"cpu": True, "global_bs": 256, "num_samples": 4000},
                                 "slurm": {"gpus_per_node": 2}})
    proc = run_in_process([str(spec), "--dir", str(tmp_path / "study"), "--slurm", "array"], command="sweep")
    assert_one_line_error(proc, "slurm gpus_per_node is 2 but every configuration runs on the CPU (cpu: true)")
    assert not (tmp_path / "study" / "slurm").exists()
    spec = write_spec(tmp_path, {"name": "cpu", "base": {"cpu": True, "global_bs": 256, "num_samples": 4000}})
    proc = run_in_process([str(spec), "--dir", str(tmp_path / "study"), "--slurm", "array", "--gpus-per-node", "1"],
                          command="sweep")
    assert_one_line_error(proc, "slurm gpus_per_node is 1 but every configuration runs on the CPU")


def test_without_setup_lines_the_interpreter_that_wrote_the_script_runs_it(tmp_path):
    spec = write_spec(tmp_path, {"name": "plain", "base": {"global_bs": 256, "cpu": True}})
    (array,) = write_slurm(load_study(spec, tmp_path / "s"), tmp_path / "s", array=True)
    text = array.read_text()
    assert f"PYTHON={shlex.quote(sys.executable)}\n" in text and "set +u" not in text
    assert "scaling/run.py" not in text and "PYTHONPATH" not in text
    assert '"$PYTHON" -m scaling.run --config' in text


@pytest.mark.parametrize("setup, fragment", [
    ("module load cuda", "slurm setup must be a list of shell lines"),
    ({"a": 1}, "slurm setup must be a list of shell lines"),
    (["module load cuda", 3], "slurm setup line 2 must be a non-empty string"),
    ([""], "slurm setup line 1 must be a non-empty string"),
    (["module load cuda\nrm -rf ~"], "slurm setup line 1 must be one line (no newline, carriage return or NUL)"),
    (["source a\rb"], "slurm setup line 1 must be one line"),
    (["source a\0b"], "slurm setup line 1 must be one line"),
    (["true"] * 101, "slurm setup has 101 lines, over the limit of 100"),
    (["x" * 5000], "slurm setup line 1 is 5,000 characters, over the limit of 4,096"),
])
def test_bad_setup_lines_are_refused_before_a_script_is_written(tmp_path, setup, fragment):
    spec = write_spec(tmp_path, {"name": "env", "base": {"global_bs": 64, "num_samples": 4000},
                                 "slurm": {"setup": setup}})
    with pytest.raises(ConfigError, match="slurm setup"):
        load_study(spec, tmp_path / "study")
    for flags in (["--dry-run"], ["--slurm", "array"]):
        proc = run_in_process([str(spec), "--dir", str(tmp_path / "study"), *flags], command="sweep")
        assert_one_line_error(proc, fragment)
    assert not (tmp_path / "study").exists()


def test_setup_lines_are_written_as_they_are_after_the_sbatch_lines(tmp_path):
    """Setup lines are the user's shell, verbatim (quotes, variables, `;`), and come after `set -euo
    pipefail`, so even an `#SBATCH` among them is no directive (sbatch reads those only before the first
    command)."""
    setup = ["module load cuda/12.4 'gcc/13'", 'source "$HOME/venvs/scaling/bin/activate"; echo ok',
             "#SBATCH --gpus-per-node=8"]
    spec = write_spec(tmp_path, {"name": "env", "base": {"global_bs": 64, "num_samples": 4000, "cpu": True},
                                 "slurm": {"setup": setup}})
    (script,) = write_slurm(load_study(spec, tmp_path / "study"), tmp_path / "study", array=False)
    text = script.read_text()
    assert "\nset +u\n" + "".join(f"{line}\n" for line in setup) + "set -u\nPYTHON=python\n" in text
    first_command = text.index("set -euo pipefail")
    directives = [line for line in text[:first_command].splitlines() if line.startswith("#SBATCH")]
    assert not [line for line in directives if "gpu" in line] and text.index(setup[0]) > first_command
