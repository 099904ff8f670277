"""The error every mistake in a user's input becomes: one line, exit status 2 at the entry."""

from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """A mistake in the user's input. The entry points print it as one line and exit with status 2."""


def shown(value: Any, limit: int = 60) -> str:
    """A bounded repr for error messages: a value from a file can be huge (YAML aliases), and a message must
    never format all of it."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 2, 4, 4, 4, 4
    short.maxstring, short.maxother, short.maxlong = limit, limit, limit
    try:
        text = short.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
