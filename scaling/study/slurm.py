"""SLURM: a study's configurations as sbatch scripts, one array job or one script per configuration.

Every word taken from the spec or a path is shell-quoted, nothing is `eval`ed, and each job asks
`python -m scaling.study.slurm --launch-mode RUN_DIR` whether to resume, skip or start its configuration, and
after the run `--check-result RUN_DIR` whether it wrote its result (a job whose run did not fails).
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
from scaling.study.spec import RUN_PY, SLURM_BOUNDS, SlurmSettings, StudyConfig, StudyPlan, slurm_settings

SLURM_TEMPLATE = resource("slurm.sbatch")  # package data; launch/slurm.sbatch is the repository's copy
# `#SBATCH --output=STUDY_DIR/...` cannot be quoted: the study folder must be a plain path.
SLURM_SAFE_PATH = re.compile(r"[A-Za-z0-9._/+,@=:-]+")


class _Shell(str):
    """A word the shell must expand (a variable), written as is; every other word is quoted."""


def _shell_join(words: list[str]) -> str:
    return " ".join(word if isinstance(word, _Shell) else shlex.quote(word) for word in words)


def slurm_words(study_config: StudyConfig, config_path: Path) -> list[str]:
    """The command one SLURM job runs: torchrun on every node (srun starts one task per node)."""
    launcher = study_config.launcher
    run = [str(RUN_PY), "--config", str(config_path)]
    if launcher.type == "python":
        return ["python", *run]
    return ["srun", "torchrun", "--nnodes", str(launcher.nnodes), "--nproc_per_node", str(launcher.nproc),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", _Shell('"$HEAD_NODE:29500"'), "--rdzv_id",
            _Shell('"$SLURM_JOB_ID"'), *run]


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
    nodes = max((c.launcher.nnodes for c in study.configs), default=1)
    gpus = _gpus(settings, max((c.launcher.nproc for c in study.configs), default=1))
    template = SLURM_TEMPLATE.read_text()
    folder = study_dir / "slurm"
    pending = [c for c in study.configs if read_result(Path(c.config.output_dir) / "result.json") is None]
    configs = [(c, Path(c.config.output_dir)) for c in pending]
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
            script = _fill(template, study.name, nodes, gpus, f"#SBATCH --array=0-{max(0, len(jobs) - 1)}", root,
                           body, settings)
            written.append(folder / "array.sbatch")
            write_text_atomic(written[-1], script)
        else:
            for study_config, out, words in jobs:
                body = f"OUT={shlex.quote(str(out))}\nCMD=({_shell_join(words)})\n" + _RUN_BODY
                per_config = _gpus(settings, study_config.launcher.nproc)
                script = _fill(template, f"{study.name}-{study_config.id}", study_config.launcher.nnodes, per_config,
                               "", root, body, settings)
                written.append(folder / f"{study_config.id}.sbatch")
                write_text_atomic(written[-1], script)
    except OSError as err:
        raise ConfigError(f"cannot write the SLURM scripts under {folder}: {err.strerror or err}") from None
    return written


def _gpus(settings: SlurmSettings, nproc: int) -> int:
    """GPUs per node a job asks for: the setting, else the launcher's process count, within SLURM_BOUNDS."""
    if settings.gpus_per_node is not None:
        return settings.gpus_per_node
    low, high = SLURM_BOUNDS["gpus_per_node"]
    if not low <= nproc <= high:
        raise ConfigError(f"--slurm: a process count of {nproc} per node asks for more GPUs than a node has (at most "
                          f"{high}); set slurm gpus_per_node (or --gpus-per-node)")
    return nproc


# Resume an unfinished configuration, skip a finished one, start any other from scratch.
_RUN_BODY = (
    f"MODE=$(PYTHONPATH={shlex.quote(str(RUN_PY.parent.parent))} python -m scaling.study.slurm --launch-mode \"$OUT\")\n"
    'if [ "$MODE" = done ]; then echo "scaling: $OUT is complete"; exit 0; fi\n'
    '"${CMD[@]}" "--$MODE"\n'
    # A run that exits 0 without its result (os._exit in user code) fails the job, naming why.
    f"PYTHONPATH={shlex.quote(str(RUN_PY.parent.parent))} python -m scaling.study.slurm --check-result \"$OUT\"\n"
)


def _fill(template: str, name: str, nodes: int, gpus: int, array_line: str, study_dir: Path, body: str,
          settings: SlurmSettings) -> str:
    extra = "".join(f"#SBATCH --{key}={value}\n" for key, value in (("partition", settings.partition),
                                                                   ("account", settings.account)) if value)
    return (template.replace("{{NAME}}", name).replace("{{NODES}}", str(nodes)).replace("{{GPUS}}", str(gpus))
            .replace("{{CPUS}}", str(settings.cpus_per_task)).replace("{{TIME}}", settings.time)
            .replace("{{ALLOCATION}}\n", extra)
            .replace("{{ARRAY}}", array_line).replace("{{STUDY_DIR_QUOTED}}", shlex.quote(str(study_dir)))
            .replace("{{STUDY_DIR}}", str(study_dir)).replace("{{COMMAND}}", body))


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
