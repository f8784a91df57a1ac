"""The installed torch and DeepSpeed are the versions strategies/compat/ was checked
against, and every private internal it reaches is there.

A pin change fails here first, on purpose: re-check the reaches in the module named,
then update its TESTED_VERSION.

Exercised by: pytest tests/test_compat.py
"""
from __future__ import annotations

import importlib.util

import pytest

from strategies.compat import deepspeed as compat_deepspeed
from strategies.compat import torch as compat_torch

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install -e .[zero])"
)


def _recheck(library: str, module, installed: str) -> str:
    return (
        f"{library} {installed} is installed, strategies/compat/{library}.py was checked against "
        f"{library} {module.TESTED_VERSION}: re-check every reach in that module for {installed}, "
        "then update its TESTED_VERSION"
    )


def test_torch_is_the_tested_version():
    installed = compat_torch.installed_version()
    assert installed == compat_torch.TESTED_VERSION, _recheck("torch", compat_torch, installed)


def test_torch_internals_are_there():
    compat_torch.check()


@needs_deepspeed
def test_deepspeed_is_the_tested_version():
    installed = compat_deepspeed.installed_version()
    assert installed == compat_deepspeed.TESTED_VERSION, _recheck("deepspeed", compat_deepspeed, installed)


@needs_deepspeed
def test_deepspeed_internals_are_there():
    compat_deepspeed.check()  # imports DeepSpeed: a few seconds


def test_every_attribute_memory_accounting_reads_is_checked():
    checked = {name for names in compat_deepspeed.INSTANCE_ATTRIBUTES.values() for name in names}
    read = {*compat_deepspeed.MASTER_WEIGHTS, *compat_deepspeed.GRADIENTS, *compat_deepspeed.STAGE3_PARTITIONS}
    assert read <= checked


def test_a_missing_internal_names_both_versions_and_what_is_missing():
    with pytest.raises(RuntimeError) as error:
        compat_torch.saved_other(object())
    message = str(error.value)
    assert f"torch {compat_torch.installed_version()}" in message
    assert f"torch {compat_torch.TESTED_VERSION}" in message
    assert "object._saved_other" in message
