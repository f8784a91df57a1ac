"""What a job asks of Ray's autoscaler: a worker's resources for every worker it wants.

`ray.autoscaler.sdk.request_resources` sets the smallest cluster the autoscaler keeps:
with the bundles of the most workers the job may use (spares included), a worker
group that starts at 0 nodes gets them, and they stay while the job runs. The request
is replaced (not added to) by each call, and emptied when the job ends, so the nodes go
once idle. On a cluster without an autoscaler the request is kept and nothing acts on
it.

Exercised by: pytest tests/test_autoscaling_e2e.py -m slow
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CapacityDemand:
    def __init__(self, bundle: dict[str, float]) -> None:
        self.bundle = {name: amount for name, amount in bundle.items() if amount}
        self.workers = 0  # asked for now

    def want(self, workers: int) -> None:
        """Ask for `workers` workers' resources in all (a no-op when that is the request)."""
        if workers == self.workers:
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(self.bundle) for _ in range(workers)])
        log.info("asked the autoscaler for %d workers of %s", workers, self.bundle)
        self.workers = workers

    def release(self) -> None:
        if self.workers:
            self.want(0)
