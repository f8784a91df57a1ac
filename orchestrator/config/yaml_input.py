"""Reading YAML from a job file or a `--set` value, with the limits of untrusted input.

A job file is small and plain: it is refused, with the reason, when it is not UTF-8,
is over MAX_FILE_BYTES, names a key twice in one mapping (YAML would keep the last
silently), nests deeper than MAX_DEPTH, or expands (through anchors and aliases) to
more than MAX_NODES values: an 872-byte alias bomb would otherwise become gigabytes.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


class YamlInputError(ValueError):
    """Why a text is not an acceptable job (file or value)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                raise YamlInputError(f"line {key_node.start_mark.line + 1}: a key must be a plain value")
            if key in seen:
                raise YamlInputError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(data: bytes | str, what: str) -> Any:
    """Parse `data` (the contents of `what`, for messages).

    Raises:
        YamlInputError: saying what is wrong and where.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise YamlInputError(f"{what}: {len(data)} bytes; a job file is at most {MAX_FILE_BYTES}")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise YamlInputError(f"{what}: not UTF-8 text (byte {error.start})") from None
    try:
        loaded = yaml.load(data, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except YamlInputError as error:
        raise YamlInputError(f"{what}: {error}") from None
    except yaml.YAMLError as error:
        raise YamlInputError(_syntax_error(error, data, what)) from None
    except RecursionError:
        raise YamlInputError(f"{what}: nested too deeply") from None
    _check_size(loaded, what)
    return loaded


def _syntax_error(error: yaml.YAMLError, text: str, what: str) -> str:
    """`what, line L, column C: problem`, then the line and a caret under the column."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f"{what}: not valid YAML: {error}"
    problem = getattr(error, "problem", None) or "not valid YAML"
    context = getattr(error, "context", None)
    lines = text.splitlines()
    shown = lines[mark.line] if mark.line < len(lines) else ""
    return (f"{what}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"
            + (f" ({context})" if context else "") + f"\n    {shown}\n    {' ' * mark.column}^")


def _check_size(value: Any, what: str) -> None:
    """Refuse a value nested past MAX_DEPTH or expanding to over MAX_NODES values; the
    count follows aliases (shared objects) as often as they are used."""
    memo: dict[int, int] = {}

    def count(node: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise YamlInputError(f"{what}: nested more than {MAX_DEPTH} levels deep")
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in memo:
            return memo[id(node)]
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += count(child, depth + 1)
            if total > MAX_NODES:
                raise YamlInputError(f"{what}: expands to more than {MAX_NODES} values (anchors and aliases?)")
        memo[id(node)] = total
        return total

    count(value, 0)
