"""Where a job's workers go, and which rank each gets.

New workers are put on chosen nodes (soft node affinity: Ray places a worker elsewhere
when its node fills first). `pack` fills the nodes that already hold the job's
workers, then those with the most room, so few nodes hold the job and tensor or
pipeline groups can share one; `spread` puts each on the node with the fewest of the
job's workers. Ranks are then handed out node by node (tensor ranks vary fastest in
the mesh, strategies/mesh.py), so a node of 2 slots holds a tensor pair of 2.

Exercised by: pytest tests/test_placement.py
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, TypeVar

Member = TypeVar("Member")


def choose_nodes(free: dict[str, int], ours: Counter, count: int, policy: str) -> list[str | None]:
    """Nodes for `count` new workers, given each node's free worker slots and how many
    of the job's workers it holds; None where no node is known to have room (Ray places
    that worker when capacity comes)."""
    free, ours, chosen = dict(free), Counter(ours), []
    for _ in range(count):
        open_nodes = [node for node, slots in free.items() if slots > 0]
        if not open_nodes:
            chosen.append(None)
            continue
        if policy == "pack":
            node = min(open_nodes, key=lambda n: (-ours[n], -free[n], n))
        else:
            node = min(open_nodes, key=lambda n: (ours[n], -free[n], n))
        chosen.append(node)
        free[node] -= 1
        ours[node] += 1
    return chosen


def free_slots_per_node(available: dict[str, dict[str, float]], resources: dict[str, float]) -> dict[str, int]:
    """How many workers of `resources` each node has room for."""
    return {node: slots_in(have, resources) for node, have in available.items()}


def slots_in(have: dict[str, float], resources: dict[str, float]) -> int:
    """How many workers of `resources` fit in `have` (0 when they need nothing countable)."""
    fits = [math.floor(have.get(name, 0.0) / need + 1e-9) for name, need in resources.items() if need]
    return max(0, min(fits)) if fits else 0


def by_node(members: Iterable[Member], node_of) -> list[Member]:
    """`members` with those on one node next to each other: nodes in the order their
    first member comes, members of a node in their order (so the first stays first)."""
    groups: dict[str | None, list[Member]] = {}
    for member in members:
        groups.setdefault(node_of(member), []).append(member)
    return [member for group in groups.values() for member in group]
