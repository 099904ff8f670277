"""`module:callable` loading, for user datasets (`--dataset`) and models (`--model`)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
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


def call_factory(spec: str, what: str, *args: Any, offered: dict[str, Any] | None = None) -> Any:
    """Import and call `module:callable`, with those keyword arguments of `offered` that its signature
    accepts (accepted_keywords); an exception it raises is the user's: one line with its type, message and
    the frame that raised it (ConfigError), not a traceback through this tool."""
    fn = load_callable(spec, what)
    kwargs = accepted_keywords(fn, offered or {})
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    signature = _signature(fn)
    try:
        if signature is not None:
            signature.bind(*args, **kwargs)
    except TypeError as err:  # a parameter without a default that nothing supplies: said as such, not as a
        # TypeError raised inside this tool
        offers = (f"; a model factory is offered {', '.join(offered)} as keywords (docs/factories.md)"
                  if offered else "")
        raise ConfigError(f"{what} {spec!r} cannot be called with {given or 'no arguments'}: {err}{offers}") from None
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        raise ConfigError(f"{what} {spec!r} raised {describe_exception(err)}"
                          f"{f' (called with {given})' if given else ''}") from None


def accepted_keywords(fn: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `offered` that `fn` accepts: those it names as parameters that can be passed
    by keyword, or all of them when it takes **kwargs. A callable without a signature Python can read (some
    built-ins), or one taking no parameters, gets none."""
    signature = _signature(fn)
    if signature is None:
        return {}
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(offered)
    named = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
    return {key: value for key, value in offered.items() if key in named}


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of `fn`, or None where Python cannot read one (some built-ins and C extensions)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


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
