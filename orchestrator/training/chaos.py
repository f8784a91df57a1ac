"""Fault injection: kill a worker process, or remove a node, at chosen or random steps.

Each fault fires once: a marker file is created (exclusively) before the kill, so a
run that resumes from an earlier checkpoint and passes the same step again goes on.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from orchestrator.compat.ray import on_head_node
from orchestrator.config.spec import ChaosSection
from orchestrator.run.files import RunFiles
from orchestrator.run.storage import ObjectPath


class Chaos:
    def __init__(self, chaos: ChaosSection, run_dir: Path, rank: int, world_size: int) -> None:
        self.chaos = chaos
        self.markers = RunFiles(run_dir).chaos
        self.rank = rank
        self.world_size = world_size

    def after_step(self, step: int) -> None:
        if not self.chaos.enabled:
            return
        last = self.world_size - 1
        if step in self.chaos.kill_worker_at_steps and self.rank == last:
            self._fire(f"kill_worker_{step}", node=False)
        if step in self.chaos.remove_node_at_steps and self.rank == last:
            self._fire(f"remove_node_{step}", node=True)
        if self.chaos.kill_probability:
            rng = np.random.default_rng([self.chaos.seed, step])
            if rng.random() < self.chaos.kill_probability and self.rank == rng.integers(self.world_size):
                self._fire(f"random_kill_{step}", node=False)

    def _fire(self, name: str, node: bool) -> None:
        if isinstance(self.markers, ObjectPath):  # no exclusive create: one rank fires each fault
            if (self.markers / name).exists():
                return
            (self.markers / name).write_text(str(os.getpid()))
            self._kill(node)
        self.markers.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.markers / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # fired in an earlier attempt
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        os.close(fd)
        self._kill(node)

    @staticmethod
    def _kill(node: bool) -> None:
        if node and not on_head_node():
            # A Ray worker process is a child of its node's raylet: killing the raylet
            # takes the node, and every worker on it, out of the cluster.
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
