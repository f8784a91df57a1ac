"""Validation errors in the user's terms: the key, what was expected, and a close match.

Pydantic reports a union's members by their types (`scaling.workers.int`,
`scaling.workers.tuple[int, int]`) and forbidden keys without the keys allowed; here
each problem becomes one line naming its key in job.yaml, with "did you mean" from
`difflib` for a misspelled key or value.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, get_args, get_origin

from pydantic import BaseModel, ValidationError

import strategies


def describe(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem of `error`, raised validating `root`."""
    problems: list[str] = []
    unions: dict[str, list[dict]] = {}
    for item in error.errors():
        parts = [p for p in item["loc"] if not _is_strategy_tag(p)]
        location = _location(parts)
        tagged = len(parts) < len(item["loc"])  # inside a strategy's options, a union resolved
        if not tagged and _union_member(root, parts) is not None:  # one line per union
            unions.setdefault(_location(parts[:-1]), []).append(item)
            continue
        problems.append(_line(item, location, parts, root))
    for location, items in unions.items():
        expected = " or ".join(dict.fromkeys(_type_words(str(i["loc"][-1])) for i in items))
        problems.append(f"{location}: expected {expected} (got {items[0]['input']!r})")
    return problems


def _location(parts: list) -> str:
    """`data.prepare[0]`: keys joined by dots, list positions in brackets."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)', or '' when nothing is close."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _line(item: dict, location: str, parts: list, root: type[BaseModel]) -> str:
    message = item["msg"].removeprefix("Value error, ")
    kind = item["type"]
    if kind == "extra_forbidden":
        known = _known_keys(root, parts[:-1], item)
        hint = did_you_mean(str(parts[-1]), known) if known else ""
        return f"{location}: unknown key{hint or '; remove it or check the spelling'}"
    if kind == "missing":
        return f"{location}: required key is missing"
    if kind == "literal_error":
        expected = (item.get("ctx") or {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected) or re.split(r", | or ", expected)
        return f"{location}: {item['input']!r} is not one of {', '.join(choices)}{did_you_mean(item['input'], choices)}"
    if location:
        return f"{location}: {message} (got {item['input']!r})"
    return message


def _is_strategy_tag(part: Any) -> bool:
    return isinstance(part, str) and part in strategies.STRATEGY_REGISTRY


def _field_annotation(root: type[BaseModel], parts: list) -> Any:
    """The annotation of the field at `parts` (strategy tags removed), or None."""
    model: Any = root
    annotation = None
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _union_member(root: type[BaseModel], parts: list) -> str | None:
    """The union member tag that ends `parts` (`int` in scaling.workers.int), else None."""
    if len(parts) < 2 or not isinstance(parts[-1], str):
        return None
    annotation = _field_annotation(root, parts[:-1])
    if annotation is None or len(get_args(annotation)) < 2 or get_origin(annotation) in (dict, list, tuple):
        return None
    return parts[-1]


def _known_keys(root: type[BaseModel], parents: list, item: dict) -> list[str]:
    """The keys allowed where an unknown one was found."""
    if parents and parents[0] == "strategy":
        tags = [p for p in item["loc"] if _is_strategy_tag(p)]
        if tags:
            return list(strategies.get_strategy(tags[0]).options.model_fields)
    if not parents:
        return [k for k in root.model_fields if k != "base_dir"]
    annotation = _field_annotation(root, parents)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


_WORDS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false",
          "none": "null", "nonetype": "null"}


def _type_words(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("tuple["):
        count = len(tag[len("tuple["):-1].split(","))
        return f"a list of {count} ({', '.join(['...'] * count)})" if count != 2 else "[min, max]"
    if tag.startswith(("list[", "dict[")):
        return "a list" if tag.startswith("list[") else "a mapping"
    return _WORDS.get(tag.lower(), tag)
