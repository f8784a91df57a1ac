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


# Where the v1 autoscaler's monitor publishes its status (what `ray status` reads).
AUTOSCALER_STATUS_KEY = b"__autoscaling_status"


def autoscaler_running() -> bool:
    """Whether the cluster this process joined has an autoscaler that can add nodes
    when asked (execution/elastic/demand.py). No public call says so.

    Every Ray head runs the autoscaler's monitor; without a cluster config (an embedded
    Ray, `ray start` by hand) it is read-only and names each node type after the node
    itself (`format_readonly_node_type`). Autoscaler v2 publishes its cluster config,
    with the most nodes of each group."""
    import json

    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return False
    if is_autoscaler_v2(fetch_from_server=True):
        from ray._private.state import state

        config = state.get_cluster_config()
        return config is not None and any(group.max_count != 0 for group in config.node_group_configs)
    status = _internal_kv_get(AUTOSCALER_STATUS_KEY)
    if status is None:
        return False
    report = json.loads(status).get("autoscaler_report") or {}
    readonly = format_readonly_node_type("")
    return any(not name.startswith(readonly) for name in report.get("active_nodes") or {})


def available_per_node() -> dict[str, dict[str, float]]:
    """Each node's free resources now, by node id (hex). `ray.available_resources()`
    gives only the cluster's sum; placing workers on chosen nodes needs each node's."""
    from ray._private.state import available_resources_per_node

    return available_resources_per_node()


def draining_nodes() -> dict[str, float]:
    """The nodes Ray is draining, as {node id (hex): deadline (Unix seconds, inf when
    none)}. A drain is how Ray says a node is about to go: `ray drain-node`, and
    autoscaler v2's idle and preemption terminations, which cloud spot notices become.
    No public call lists them; Ray Train's own preemption watcher reads the same."""
    from ray._private.state import state

    return {node: deadline_ms / 1000 if deadline_ms else float("inf")
            for node, deadline_ms in state.get_draining_nodes().items()}


def init_without_dashboard_head(**init_args) -> None:
    """`ray.init(**init_args)` for an embedded Ray started with `include_dashboard=False`,
    without the dashboard head process.

    With `include_dashboard=False` Ray still starts its dashboard head, loading only
    the usage-stats module, and `ray.init` waits for it to register before it starts
    the raylet: 1-2 s of a 3-5 s start on 2 cores (benchmarks/results/startup.md).
    Such a head serves nothing (no Jobs API, no state API, no UI); no public option
    leaves it out. Only this call is affected: Ray's function is put back after it."""
    import ray
    import ray._private.services as services

    start_api_server = services.start_api_server

    def no_dashboard(include_dashboard, *args, **kwargs):
        if include_dashboard:
            return start_api_server(include_dashboard, *args, **kwargs)
        return None, None  # Node.start_api_server: no URL, no process to watch

    services.start_api_server = no_dashboard
    try:
        ray.init(include_dashboard=False, **init_args)
    finally:
        services.start_api_server = start_api_server


def check() -> None:
    """Raise when the running Ray lacks what this module relies on.

    Raises:
        RuntimeError: naming the installed and the tested version.
    """
    import ray
    import ray._private.services as services
    from ray._private.state import state

    if not hasattr(services, "start_api_server"):
        raise RuntimeError(
            f"Ray {ray.__version__} has no ray._private.services.start_api_server (checked with Ray "
            f"{TESTED_VERSION}); orchestrator/compat/ray.py needs updating"
        )
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
