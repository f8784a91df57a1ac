"""ZeRO checkpoints: DeepSpeed's own, one optimizer-state file per data-parallel rank.

ZeRO cannot load them at another data-parallel size, so after a resize they are converted
once to DeepSpeed's universal format (`ds_to_universal`) beside the original and loaded
from there, optimizer state included.

Exercised by: pytest tests/test_sharded_strategies.py -k resumes
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from strategies.compat import deepspeed as compat_deepspeed

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

TAG = "zero"  # checkpoint tag: DeepSpeed writes `<directory>/zero/`
UNIVERSAL_TAG = "zero_universal"


def save_checkpoint(engine: DeepSpeedEngine, directory: Path) -> None:
    """Write the engine's model, optimizer and schedule state under `directory`/zero."""
    engine.save_checkpoint(str(directory), tag=TAG, save_latest=False)


def load_checkpoint(engine: DeepSpeedEngine, directory: Path, dp_size: int, stage: int) -> None:
    """Load a checkpoint `save_checkpoint` wrote at any data-parallel size (call on all ranks).

    Raises:
        RuntimeError: when `directory` holds no ZeRO checkpoint, or DeepSpeed finds none.
    """
    # One optimizer-state file per data-parallel rank of the saving run.
    saved_dp = len(list((directory / TAG).glob("*optim_states.pt")))
    if saved_dp == 0:
        raise RuntimeError(
            f"{directory.parent} holds no ZeRO checkpoint; it was saved under another "
            "strategy, which strategy.name: zero cannot resume from"
        )
    if saved_dp == dp_size:
        _load(engine, directory, TAG, universal=False)
        return
    universal = directory / UNIVERSAL_TAG
    if dist.get_rank() == 0 and not universal.is_dir():
        convert_to_universal(directory / TAG, universal, stage)
    dist.barrier()
    if not universal.is_dir():  # this rank loads its own copy (a run on object storage)
        convert_to_universal(directory / TAG, universal, stage)
    _load(engine, directory, UNIVERSAL_TAG, universal=True)


def _load(engine: DeepSpeedEngine, directory: Path, tag: str, universal: bool) -> None:
    with compat_deepspeed.universal_checkpoint_loading(engine, universal):
        path, _ = engine.load_checkpoint(str(directory), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")


def convert_to_universal(source: Path, target: Path, stage: int) -> None:
    """Run DeepSpeed's `ds_to_universal` on one checkpoint tag. It converts inside a
    temporary folder, moved into place when whole, so an interrupted conversion is
    redone rather than used."""
    scratch = target.parent / f".{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    command = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(source), "--output_folder", str(scratch / target.name),
        "--num_extract_workers", "1", "--num_merge_workers", "1",
    ]
    if stage <= 2:
        # Stage 1-2 checkpoints lack state the converter needs, which it can rebuild.
        command.append("--inject_missing_state")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(
            f"converting checkpoint {source} to DeepSpeed's universal format failed "
            f"(exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    os.replace(scratch / target.name, target)
    shutil.rmtree(scratch)
