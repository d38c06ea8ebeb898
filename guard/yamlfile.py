"""YAML files read with the line of every key, and their errors as ConfigErrors naming key and line
(for the config and the policy files alike)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from guard.errors import ConfigError

__all__ = ["LineMap", "Loc", "format_key", "read_yaml", "validation_error"]

Loc = tuple[str | int, ...]
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class LineMap:
    """The 1-based line of every key and list item of a YAML document, by its loc."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {(): 1}

    def line(self, loc: Iterable[str | int]) -> int | None:
        """The line of `loc`, or of its nearest ancestor written in the file."""
        parts = tuple(loc)
        while parts and parts not in self.lines:
            parts = parts[:-1]
        return self.lines.get(parts)


def format_key(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def _walk(node: yaml.Node, loc: Loc, lines: LineMap, file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*loc, key)
            if child in lines.lines:
                raise ConfigError(file, format_key(child), "duplicate key", key_node.start_mark.line + 1)
            lines.lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.lines[(*loc, i)] = item.start_mark.line + 1
            _walk(item, (*loc, i), lines, file)


def read_yaml(path: Path) -> tuple[Any, LineMap]:
    """Parse one YAML file; a syntax error or duplicate key is a ConfigError with its line."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(file, "", f"YAML syntax error: {exc.problem}", line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", f"YAML error: {exc}") from None
    lines = LineMap()
    if node is not None:
        _walk(node, (), lines, file)
    return data, lines


_PYDANTIC_REASONS = {"extra_forbidden": "unknown key", "missing": "required key missing"}


def validation_error(file: str, lines: LineMap, exc: ValidationError, prefix: Loc = ()) -> ConfigError:
    """The first pydantic error as a ConfigError with key and line (`prefix`: where the value sits)."""
    err = exc.errors(include_url=False)[0]
    loc: Loc = (*prefix, *err["loc"])
    reason = _PYDANTIC_REASONS.get(err["type"], err["msg"].removeprefix("Value error, "))
    return ConfigError(file, format_key(loc), reason, lines.line(loc))
