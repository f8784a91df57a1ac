"""What the orchestrator uses of Ray beyond its public API, in one place.

Each function says why the public API does not serve. `check()` fails loudly,
naming the versions, when an internal it relies on is not there; tests/test_compat.py
pins the version these were checked against.
"""
from __future__ import annotations

TESTED_VERSION = "2.60.0"

# Ray gives the head node this resource; no public call says whether a node is the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head_node() -> bool:
    """Whether this process runs on the cluster's head node (removing it would end
    the cluster, so node faults skip it)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == here:
            return HEAD_NODE_RESOURCE in node["Resources"]
    return True


def draining_nodes() -> dict[str, float]:
    """The nodes Ray is draining, as {node id (hex): deadline (Unix seconds, inf when
    none)}. A drain is how Ray says a node is about to go: `ray drain-node`, and
    autoscaler v2's idle and preemption terminations, which cloud spot notices become.
    No public call lists them; Ray Train's own preemption watcher reads the same."""
    from ray._private.state import state

    return {node: deadline_ms / 1000 if deadline_ms else float("inf")
            for node, deadline_ms in state.get_draining_nodes().items()}


def check() -> None:
    """Raise when the running Ray lacks what this module relies on.

    Raises:
        RuntimeError: naming the installed and the tested version.
    """
    import ray
    from ray._private.state import state

    if not hasattr(state, "get_draining_nodes"):
        raise RuntimeError(
            f"Ray {ray.__version__} has no ray._private.state.state.get_draining_nodes (checked with Ray "
            f"{TESTED_VERSION}); orchestrator/compat/ray.py needs updating"
        )
    if ray.is_initialized() and not any(HEAD_NODE_RESOURCE in n["Resources"] for n in ray.nodes()):
        raise RuntimeError(
            f"Ray {ray.__version__} gives no node the {HEAD_NODE_RESOURCE!r} resource "
            f"(checked with Ray {TESTED_VERSION}); orchestrator/compat/ray.py needs updating"
        )
