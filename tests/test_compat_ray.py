"""What orchestrator/compat/ray.py relies on is there in the Ray this project pins.

When this fails after an upgrade, re-check each reach in orchestrator/compat/ray.py
against the new Ray and update TESTED_VERSION.
"""
from __future__ import annotations

import ray

from orchestrator.compat import ray as ray_compat


def test_the_pinned_ray_is_the_tested_one():
    assert ray.__version__ == ray_compat.TESTED_VERSION, (
        f"Ray is {ray.__version__}, orchestrator/compat/ray.py was checked against "
        f"{ray_compat.TESTED_VERSION}: re-check its reaches"
    )


def test_the_head_node_is_recognised(ray_session):
    ray_compat.check()
    assert ray_compat.on_head_node.__module__ == "orchestrator.compat.ray"

    @ray.remote(num_cpus=0)
    def where() -> bool:
        return ray_compat.on_head_node()

    assert ray.get(where.remote()) is True  # the embedded Ray is one node, the head


def test_the_embedded_ray_runs_without_a_dashboard_head(ray_session):
    """The session's Ray is started as `launch` starts its own (conftest.ray_session):
    no dashboard process, and Ray's own start_api_server back in place afterwards."""
    import ray._private.services as services
    from ray._private import ray_constants
    from ray._private.worker import _global_node

    assert ray_constants.PROCESS_TYPE_DASHBOARD not in _global_node.all_processes
    assert services.start_api_server.__module__ == "ray._private.services"
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
