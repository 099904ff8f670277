"""Files shipped inside the package (package data), so that a regular install (`pip install .`, a wheel)
has them: the shipped study specs and the SLURM template. The repository keeps the user-facing copies in
configs/studies/ and launch/slurm.sbatch; tests/test_install.py checks that both are the same."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from scaling.config import ConfigError


def resource(*parts: str) -> Path:
    """A shipped file as a path (the package is installed as files, not zipped)."""
    return Path(str(files("scaling.resources").joinpath(*parts)))


def shipped_studies() -> list[str]:
    return sorted(path.stem for path in resource("studies").glob("*.yaml"))


def study_spec(name_or_path: str) -> Path:
    """A study spec: a file that exists, or the name of a shipped study (`default`, `batch_size`, ...)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return path
    shipped = resource("studies", f"{name_or_path}.yaml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"study spec {name_or_path!r} is neither a file nor a shipped study "
                      f"({', '.join(shipped_studies())})")
