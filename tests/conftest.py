"""Shared fixtures: one small Ray for the session, and prepared datasets cached by spec."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.compat.ray import init_without_dashboard_head

    # As `orchestrator launch` starts its embedded Ray, so every test runs without the head.
    init_without_dashboard_head(address="local", num_cpus=2, log_to_driver=False, logging_level="WARNING")
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared(ray_session):
    """`prepared(spec)` -> PreparedData, computed once per distinct data section and seed."""
    from orchestrator.data.pipeline import prepare_data

    cache = {}

    def get(spec):
        key = json.dumps([spec.data.model_dump(mode="json"), spec.train.seed, str(spec.base_dir)])
        if key not in cache:
            cache[key] = prepare_data(spec)
        return cache[key]

    return get
