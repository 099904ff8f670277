"""Files the user names (run configs, study specs, study files): bounded UTF-8 text and bounded YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scaling.errors import ConfigError, shown

# Bounds on what a YAML file may hold (docs/config.md): a run config or study spec is a few hundred bytes.
YAML_MAX_BYTES = 1 << 20
YAML_MAX_VALUES = 100_000  # values after every alias is expanded (a "billion laughs" file expands to 10^9)


def read_text_file(path: str | Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of a file the user named, or a ConfigError naming the file and what to do."""
    path = Path(path)
    try:
        if not path.exists():
            raise ConfigError(f"{what} {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a folder, not a file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{what} {path} is {size:,} bytes, over the {max_bytes:,}-byte limit: is it the "
                              f"right file?")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:  # grew, or a device/pipe whose size stat does not tell
        raise ConfigError(f"{what} {path} is over the {max_bytes:,}-byte limit: is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from a file, bounded: size, alias expansion and nesting are limited, duplicate keys are
    refused, and every failure is one ConfigError naming the file."""
    path = Path(path)
    text = read_text_file(path, what, YAML_MAX_BYTES)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{what} {path} is empty; write its keys (docs/config.md), or leave it out")
        _check_yaml_node(node, path, what)
        data = loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or err).splitlines()[0][:200]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        reason = str(err).split(";")[0][:200]
        raise ConfigError(f"{what} {path} holds a value that cannot be read ({reason})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _check_yaml_node(root: yaml.Node, path: Path, what: str) -> None:
    """Count the values the document expands to (an alias counts as everything it points to) without
    expanding it, and refuse duplicate keys. Iterative, so deep nesting cannot overflow the stack."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        pairs = node.value if isinstance(node, yaml.MappingNode) else [(None, item) for item in node.value]
        children = [c for pair in pairs for c in pair if c is not None]
        if children_done:
            active.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > YAML_MAX_VALUES:
                raise ConfigError(f"{what} {path}: its aliases expand to more than {YAML_MAX_VALUES:,} values "
                                  f"(line {node.start_mark.line + 1}); write the values out instead")
            sizes[key] = total
            continue
        if key in active:
            raise ConfigError(f"{what} {path}: an alias refers to itself (line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        raise ConfigError(f"{what} {path}: duplicate key {shown(key_node.value, 40)} at line "
                                          f"{line} (first at line {seen[key_node.value]}); keep one")
                    seen[key_node.value] = line
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
