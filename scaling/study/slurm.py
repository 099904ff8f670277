"""SLURM: a study's configurations as sbatch scripts, one array job or one script per configuration.

Every word taken from the spec or a path is shell-quoted, nothing is `eval`ed, and each job asks
`$PYTHON -m scaling.study.slurm --launch-mode RUN_DIR` whether to resume, skip or start its configuration, and
after the run `--check-result RUN_DIR` whether it wrote its result (a job whose run did not fails).

What a job asks for and runs (docs/studies.md, "SLURM"):
- GPUs only for configurations that use them (`cpu: true` in every configuration: no GPU request at all);
- its own rendezvous: a single-node torchrun is `--standalone` (a free port on the node, so two array tasks
  sharing a node never meet), accelerate `--main_process_port 0`; a multi-node one meets on the allocation's
  first node at a port derived from the job id (each array task is a job of its own);
- the spec's `slurm: setup:` lines before anything else runs, then `$PYTHON -m ...`: the `python` that the
  setup put on PATH, or (no setup lines) the interpreter that wrote the script. The tool is imported from that
  environment (`python -m scaling.run`), never run from the generating machine's clone.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import yaml

from scaling.config import ConfigError, shown
from scaling.files import refuse_link, write_text_atomic
from scaling.output import inspect_run_folder
from scaling.resources import resource
from scaling.results import ended_without_result, read_result
from scaling.study.spec import SLURM_BOUNDS, SlurmSettings, StudyConfig, StudyPlan, slurm_settings

SLURM_TEMPLATE = resource("slurm.sbatch")  # package data; launch/slurm.sbatch is the repository's copy
# `#SBATCH --output=STUDY_DIR/...` cannot be quoted: the study folder must be a plain path.
SLURM_SAFE_PATH = re.compile(r"[A-Za-z0-9._/+,@=:-]+")
# A multi-node job's rendezvous port: RDZV_PORT_BASE + SLURM_JOB_ID % RDZV_PORT_SPAN, in 15000-31999, below
# Linux's ephemeral ports (32768-60999), so no outgoing connection on the head node holds it by chance.
RDZV_PORT_BASE, RDZV_PORT_SPAN = 15000, 17000


class _Shell(str):
    """A word the shell must expand (a variable), written as is; every other word is quoted."""


PYTHON = _Shell('"$PYTHON"')


def _shell_join(words: list[str]) -> str:
    return " ".join(word if isinstance(word, _Shell) else shlex.quote(word) for word in words)


def uses_gpus(study_config: StudyConfig) -> bool:
    return not study_config.config.cpu


def slurm_words(study_config: StudyConfig, config_path: Path) -> list[str]:
    """The command one SLURM job runs. torchrun and accelerate run under `srun` on exactly the configuration's
    nodes, one task per node (an array job's allocation has the study's largest node count); python runs
    once, on the job's first node."""
    launcher = study_config.launcher
    run = ["-m", "scaling.run", "--config", str(config_path)]
    if launcher.type == "python":
        return [PYTHON, *run]
    nodes = launcher.nnodes
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}"]
    if launcher.type == "accelerate":
        accelerate = ["--num_processes", str(launcher.nproc * nodes)]
        if launcher.config_file:
            accelerate += ["--config_file", str(Path(launcher.config_file).resolve())]
        if nodes == 1:
            return [*srun, PYTHON, "-m", "accelerate.commands.launch", *accelerate, "--num_machines", "1",
                    "--main_process_port", "0", *run]
        # The machine rank is each node's own SLURM_NODEID, known only inside the srun task: a fixed `bash -c`
        # program puts it in, every other word travels as an argument (nothing from the spec is parsed by it).
        return [*srun, "bash", "-c", 'exec "$1" -m accelerate.commands.launch --machine_rank "$SLURM_NODEID" '
                '"${@:2}"', "scaling-node", PYTHON, *accelerate, "--num_machines", str(nodes),
                "--main_process_ip", _Shell('"$HEAD_NODE"'), "--main_process_port", _Shell('"$RDZV_PORT"'), *run]
    torchrun = [*srun, PYTHON, "-m", "torch.distributed.run"]
    if nodes == 1:
        return [*torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", str(launcher.nproc), *run]
    return [*torchrun, "--nnodes", str(nodes), "--nproc_per_node", str(launcher.nproc), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", _Shell('"$HEAD_NODE:$RDZV_PORT"'), "--rdzv_id", _Shell('"$SLURM_JOB_ID"'), *run]


def launch_mode(out: str | Path) -> str:
    """What a (re)submitted job does with a configuration's folder: "done" (a final result), "resume" (a
    checkpoint of an unfinished run) or "overwrite" (start from scratch)."""
    folder = inspect_run_folder(Path(out))
    return "done" if folder.finished else "resume" if folder.resumable else "overwrite"


def write_slurm(study: StudyPlan, study_dir: Path, array: bool = True,
                settings: SlurmSettings | None = None) -> list[Path]:
    """Write sbatch scripts: one array job over every configuration, or one script per configuration.

    Configurations that already have a complete result are left out, so resubmitting resumes the study; each
    job asks `launch_mode` whether to resume its configuration or start it from scratch. Every word taken from
    the spec or a path is shell-quoted, and nothing is `eval`ed.
    """
    root = study_dir.resolve()
    if not SLURM_SAFE_PATH.fullmatch(str(root)):
        raise ConfigError(f"--slurm: the study folder {shown(str(root), 80)} holds characters a SLURM script cannot "
                          f"carry safely (its #SBATCH lines are not quoted); use a path of letters, digits and "
                          f"'._-/' (--dir)")
    settings = settings or slurm_settings(study.spec.get("slurm"))
    if settings.gpus_per_node is not None and not any(uses_gpus(c) for c in study.configs):
        raise ConfigError(f"--slurm: slurm gpus_per_node is {settings.gpus_per_node} but every configuration "
                          f"runs on the CPU (cpu: true), so its jobs request no GPU; remove gpus_per_node "
                          f"(--gpus-per-node)")
    nodes = max((c.launcher.nnodes for c in study.configs), default=1)
    template = SLURM_TEMPLATE.read_text()
    folder = study_dir / "slurm"
    pending = [c for c in study.configs if read_result(Path(c.config.output_dir) / "result.json") is None]
    configs = [(c, Path(c.config.output_dir)) for c in pending]
    # Every request is worked out (and refused) before the first file is written.
    gpus = {c.id: _gpus(settings, [c]) for c in pending}
    array_gpus = _gpus(settings, pending)
    scripts = [folder / "commands.txt", folder / "array.sbatch"] if array else \
        [folder / f"{c.id}.sbatch" for c in pending]
    # Every file is written atomically and none through a link (scaling/files.py), and every path is checked
    # before the first is written: a script, command list, run folder or config.yaml planted as a link in a
    # shared study folder is refused in one line, never followed, and nothing is left half-written.
    for path in [folder, study_dir / "runs", *scripts, *(p for _, out in configs for p in (out, out / "config.yaml"))]:
        refuse_link(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        jobs = []
        for study_config, out in configs:
            out.mkdir(parents=True, exist_ok=True)
            config_path = out / "config.yaml"
            write_text_atomic(config_path, yaml.safe_dump(study_config.config.to_dict(), sort_keys=False))
            jobs.append((study_config, out.resolve(), slurm_words(study_config, config_path.resolve())))
        written = []
        if array:
            write_text_atomic(folder / "commands.txt", "".join(_shell_join(words) + "\n" for _, _, words in jobs))
            branches = "".join(f"  {index}) OUT={shlex.quote(str(out))}; CMD=({_shell_join(words)}) ;;\n"
                               for index, (_, out, words) in enumerate(jobs))
            body = (f'case "$SLURM_ARRAY_TASK_ID" in\n{branches}'
                    f'  *) echo "scaling: no configuration for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;\nesac\n'
                    + _RUN_BODY)
            script = _fill(template, study.name, nodes, array_gpus,
                           f"#SBATCH --array=0-{max(0, len(jobs) - 1)}", root, body, settings)
            written.append(folder / "array.sbatch")
            write_text_atomic(written[-1], script)
        else:
            for study_config, out, words in jobs:
                body = f"OUT={shlex.quote(str(out))}\nCMD=({_shell_join(words)})\n" + _RUN_BODY
                script = _fill(template, f"{study.name}-{study_config.id}", study_config.launcher.nnodes,
                               gpus[study_config.id], "", root, body, settings)
                written.append(folder / f"{study_config.id}.sbatch")
                write_text_atomic(written[-1], script)
    except OSError as err:
        raise ConfigError(f"cannot write the SLURM scripts under {folder}: {err.strerror or err}") from None
    return written


def _gpus(settings: SlurmSettings, configs: list[StudyConfig]) -> int | None:
    """GPUs per node a job asks for: None when none of its configurations uses a GPU (`cpu: true`), else the
    setting, else the largest process count of its GPU configurations, within SLURM_BOUNDS."""
    gpu_configs = [c for c in configs if uses_gpus(c)]
    if not gpu_configs:
        return None
    if settings.gpus_per_node is not None:
        return settings.gpus_per_node
    nproc = max(c.launcher.nproc for c in gpu_configs)
    low, high = SLURM_BOUNDS["gpus_per_node"]
    if not low <= nproc <= high:
        raise ConfigError(f"--slurm: a process count of {nproc} per node asks for more GPUs than a node has (at most "
                          f"{high}); set slurm gpus_per_node (or --gpus-per-node)")
    return nproc


# Resume an unfinished configuration, skip a finished one, start any other from scratch.
_RUN_BODY = (
    'MODE=$("$PYTHON" -m scaling.study.slurm --launch-mode "$OUT")\n'
    'if [ "$MODE" = done ]; then echo "scaling: $OUT is complete"; exit 0; fi\n'
    '"${CMD[@]}" "--$MODE"\n'
    # A run that exits 0 without its result (os._exit in user code) fails the job, naming why.
    '"$PYTHON" -m scaling.study.slurm --check-result "$OUT"\n'
)


def _environment(settings: SlurmSettings) -> str:
    """The script's environment: the spec's setup lines as written (the user's own shell; nounset is off while
    they run, as activation scripts and `module` read unset variables), then which `python` runs everything."""
    if not settings.setup:
        return ("# No `slurm: setup:` lines in the spec: the interpreter that wrote this script runs the jobs (its\n"
                "# path must exist on the compute nodes).\n"
                f"PYTHON={shlex.quote(sys.executable)}\n")
    lines = "".join(f"{line}\n" for line in settings.setup)
    return ("# The spec's `slurm: setup:` lines, as written; then the `python` they put on PATH runs the jobs.\n"
            f"set +u\n{lines}set -u\nPYTHON=python\n")


def _fill(template: str, name: str, nodes: int, gpus: int | None, array_line: str, study_dir: Path, body: str,
          settings: SlurmSettings) -> str:
    extra = "".join(f"#SBATCH --{key}={value}\n" for key, value in (("partition", settings.partition),
                                                                   ("account", settings.account)) if value)
    gpu_request = f"#SBATCH --gpus-per-node={gpus}\n" if gpus is not None else ""
    return (template.replace("{{NAME}}", name).replace("{{NODES}}", str(nodes))
            .replace("{{GPU_REQUEST}}\n", gpu_request)
            .replace("{{CPUS}}", str(settings.cpus_per_task)).replace("{{TIME}}", settings.time)
            .replace("{{ALLOCATION}}\n", extra)
            .replace("{{ARRAY}}", array_line).replace("{{STUDY_DIR_QUOTED}}", shlex.quote(str(study_dir)))
            .replace("{{STUDY_DIR}}", str(study_dir)).replace("{{RDZV_PORT_BASE}}", str(RDZV_PORT_BASE))
            .replace("{{RDZV_PORT_SPAN}}", str(RDZV_PORT_SPAN))
            .replace("{{ENVIRONMENT}}\n", _environment(settings)).replace("{{COMMAND}}", body))


def _main(argv: list[str]) -> int:
    """`python -m scaling.study.slurm --launch-mode RUN_DIR | --check-result RUN_DIR` (used by the SLURM
    scripts)."""
    if len(argv) == 2 and argv[0] == "--launch-mode":
        print(launch_mode(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "--check-result":  # after the run's command exited 0
        line = ended_without_result(0, Path(argv[1]) / "result.json")
        if line is not None:
            print(f"scaling: error: {argv[1]}: {line}", file=sys.stderr)
        return 1 if line else 0
    print("usage: python -m scaling.study.slurm --launch-mode RUN_DIR | --check-result RUN_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
