"""Reaches into other libraries' private internals, one module per library.

Everything here depends on a library's internals staying as they were in the version it
was checked against. Each module names that version (`TESTED_VERSION`), wraps each reach
in a small function saying why it is needed, and has a `check()` that finds every reached
internal. A missing one raises `missing(...)`'s error, which names the installed and the
tested versions, at setup rather than as a silently different run.

Exercised by: pytest tests/test_compat.py
"""
from __future__ import annotations

import importlib
from typing import Any


def release(version: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: a local build tag (CPU, CUDA) does not change internals."""
    return version.split("+")[0]


def missing(library: str, installed: str, tested: str, what: str) -> RuntimeError:
    """The error for an internal `library` no longer has."""
    return RuntimeError(
        f"{library} {installed} has no {what}, which strategies/compat/{library}.py reaches into; "
        f"its reaches were checked against {library} {tested}. Install {library}=={tested}, or "
        f"re-check that module's reaches for {library} {installed} and update its TESTED_VERSION"
    )


def reach(module: str, attribute: str, library: str, installed: str, tested: str) -> Any:
    """`module.attribute`, or the `missing` error when either is gone."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise missing(library, installed, tested, f"{module}.{attribute}") from error
