"""A regular install (a wheel, not the source tree) has what the commands read: the shipped studies and the
SLURM template travel as package data, and equal the repository's user-facing copies."""

import subprocess
import sys

import pytest

from conftest import REPO, child_env
from scaling.resources import resource, shipped_studies


def test_package_copies_equal_the_repository_copies():
    repository = sorted(p.stem for p in (REPO / "configs" / "studies").glob("*.yaml"))
    assert shipped_studies() == repository
    for name in repository:
        assert resource("studies", f"{name}.yaml").read_text() == (REPO / "configs" / "studies" / f"{name}.yaml").read_text(), (
            f"copy configs/studies/{name}.yaml to scaling/resources/studies/")
    assert resource("slurm.sbatch").read_text() == (REPO / "launch" / "slurm.sbatch").read_text()


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_default_study_dry_run_from_an_empty_folder(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    # The build uses the environment's setuptools (no download); the dependencies are this environment's.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("scaling-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = child_env()
    env["PYTHONPATH"] = str(site)  # the installed copy, not the source tree
    for command in (["study", "--dry-run"], ["sweep", "batch_size", "--dry-run"],
                    ["sweep", "batch_size", "--slurm", "array", "--dir", "slurm-study"]):
        proc = subprocess.run([sys.executable, "-m", "scaling.cli", *command], capture_output=True, text=True,
                              cwd=empty, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
    located = subprocess.run([sys.executable, "-c", "import scaling; print(scaling.__file__)"], capture_output=True,
                             text=True, cwd=empty, env=env, timeout=60).stdout
    assert located.startswith(str(site))
    assert (empty / "slurm-study" / "slurm" / "array.sbatch").is_file()
