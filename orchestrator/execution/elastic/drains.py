"""Nodes about to go: Ray drains a node before it is taken away (`ray drain-node`, and
autoscaler v2's idle and preemption terminations, which cloud spot notices become).
A worker group sees which of its workers are on such nodes and gives them up, so the
controller can move an attempt off them before the deadline (steering.py).

Exercised by: pytest tests/test_elastic_controller.py, and tests/test_elastic_e2e.py -m slow
"""
from __future__ import annotations

import logging
import time

import ray

log = logging.getLogger(__name__)

# How often the drain notices are asked of Ray's control store while an attempt runs.
DRAIN_POLL_S = 1.0


class LeavesDrainingNodes:
    """The part of a worker group (group.py) that deals with draining nodes: it needs
    the group's `members` (each with its `node_id` and `actor`) and `active` ranks."""

    members: list
    active: list
    _drains: tuple[float, dict[str, float]] = (float("-inf"), {})  # (asked at, answer)

    def draining(self) -> dict[str, float]:
        """The nodes of this group's workers that Ray is draining, with their deadlines
        (Unix seconds); asked of Ray at most every DRAIN_POLL_S."""
        from orchestrator.compat.ray import draining_nodes

        asked, drains = self._drains
        if time.monotonic() - asked >= DRAIN_POLL_S:
            drains = draining_nodes()
            self._drains = (time.monotonic(), drains)
        ours = {m.node_id for m in self.members}
        return {node: deadline for node, deadline in drains.items() if node in ours}

    def running_on(self, nodes) -> bool:
        """Whether the current (or last) attempt has a rank on one of `nodes`."""
        return any(m.node_id in nodes for m in self.active)

    def leave(self, nodes) -> None:
        """Give up the workers on `nodes` (no attempt may be running on them): their
        actors end, and the nodes can go."""
        for member in [m for m in self.members if m.node_id in nodes]:
            log.info("leaving worker on draining node %s", member.node_id)
            self.members.remove(member)
            ray.kill(member.actor, no_restart=True)
