"""`module:callable` loading, for user datasets (`--dataset`) and models (`--model`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.config import ConfigError


def load_callable(spec: str, what: str) -> Callable[[], Any]:
    """Import `module:callable` (the module may be a dotted name or a path to a .py file)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must be a built-in name or 'module:callable'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"{what} {spec!r}: file {module_name} does not exist")
            spec_obj = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules.setdefault(path.stem, module)
            spec_obj.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # torchrun/accelerate do not put the cwd on sys.path
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except ImportError as err:
        raise ConfigError(f"{what} {spec!r}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn
