"""`module:callable` loading, for user datasets (`--dataset`) and models (`--model`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
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
    except Exception as err:  # the user's module raised while it was imported (SyntaxError, ...)
        raise ConfigError(f"{what} {spec!r}: importing module {module_name!r} raised {describe_exception(err)}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def call_factory(spec: str, what: str, *args: Any) -> Any:
    """Import and call `module:callable`; an exception it raises is the user's: one line with its type, message
    and the frame that raised it (ConfigError), not a traceback through this tool."""
    fn = load_callable(spec, what)
    try:
        return fn(*args)
    except Exception as err:
        raise ConfigError(f"{what} {spec!r} raised {describe_exception(err)}") from None


def describe_exception(err: BaseException) -> str:
    """`Type: first line of the message (at file.py:LINE in function)`: an exception in one line."""
    text = (err.msg if isinstance(err, SyntaxError) else str(err)).strip()
    message = text.splitlines()[0][:200] if text else ""
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" (at {Path(err.filename).name}:{err.lineno})"
    elif err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
    return f"{type(err).__name__}: {message}{where}" if message else f"{type(err).__name__}{where}"
