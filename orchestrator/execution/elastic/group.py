"""The real worker group: Ray actors we hold ourselves, with warm spares.

Holding the actors (rather than letting a trainer restart the whole group) is what
makes recovery fast: survivors keep their processes, imports and data; a failed
worker is replaced by a spare that is already running; a lost node only shrinks
the group, without waiting for the cluster to notice the node is gone.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator.execution.elastic.demand import CapacityDemand
from orchestrator.compat.ray import available_per_node
from orchestrator.execution.elastic.drains import LeavesDrainingNodes
from orchestrator.execution.elastic.placement import by_node, choose_nodes, free_slots_per_node, slots_in
from orchestrator.execution.elastic.worker import TrainWorker
from orchestrator.execution.failures import HANG, TIMEOUT, FailureReport, diagnose, read_ray_error

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0
# After a rank's attempt fails, how long the others get to fail too before the attempt
# is judged: a killed worker's death and its peers' broken collectives arrive together.
SETTLE_S = 2.0


@dataclass
class Member:
    actor: Any
    node_id: str | None = None
    ready_ref: Any = None  # pending until the actor has started


@dataclass
class AttemptStatus:
    running: bool
    outcomes: list[str] = field(default_factory=list)
    failure: FailureReport | None = None  # what ended the attempt, when it failed


class RayWorkerGroup(LeavesDrainingNodes):
    def __init__(self, spec, run_dir: str, resources: dict[str, float], threads: int,
                 reserved_cpus: float) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.data_holder: list = []  # [reference]: a list, so Ray passes it instead of the data
        self.resources = resources
        self.threads = threads
        self.reserved_cpus = reserved_cpus
        self.members: list[Member] = []  # ready actors
        self.pending: list[Member] = []  # starting actors
        self.active: list[Member] = []  # the ranks of the current attempt, in rank order
        self.futures: list[Any] = []
        self.stuck: set[int] = set()  # ranks of the failed attempt that never returned
        self.suspect_nodes: set[str] = set()
        self.demand = CapacityDemand(resources)

    # ---- membership --------------------------------------------------------------------------
    def spawn_up_to(self, total: int) -> None:
        """Ask the autoscaler for `total` workers, and start actors until ready + starting
        reaches it, as far as free resources allow (more start as nodes come), on the
        nodes `scaling.placement` chooses (placement.py)."""
        self.demand.want(total)
        missing = total - len(self.members) - len(self.pending)
        slots = free_slots(self.resources, self.reserved_cpus) if missing > 0 else 0
        if min(missing, slots) > 0:
            ours = Counter(m.node_id for m in self.members + self.pending)
            free = free_slots_per_node(available_per_node(), self.resources)
            for node in choose_nodes(free, ours, min(missing, slots), self.spec.scaling.placement):
                self.pending.append(start_worker(self.spec, self.run_dir, self.threads, self.resources, node,
                                                 beside_training=bool(self.futures)))
        if missing > 0:
            log.info("workers: %d ready, %d starting, %d missing, %d free slots",
                     len(self.members), len(self.pending), missing, slots)

    def refresh(self, wait_s: float = 0.0) -> int:
        """Move started actors to the ready pool; returns how many are ready."""
        if self.pending:
            refs = [m.ready_ref for m in self.pending]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
            for member in [m for m in self.pending if m.ready_ref in done]:
                self.pending.remove(member)
                try:
                    member.node_id = ray.get(member.ready_ref)["node_id"]
                    self.members.append(member)
                except ray.exceptions.RayError as error:
                    log.warning("a new worker failed to start: %s", error)
        return len(self.members)

    def ready_count(self) -> int:
        return len(self.members)

    def starting_count(self) -> int:
        return len(self.pending)

    def provide_data(self, data_ref) -> None:
        """The prepared data, given to each worker with its first job (workers start
        before it is ready)."""
        self.data_holder = [data_ref]

    # ---- attempts ----------------------------------------------------------------------------
    def start(self, world_size: int, attempt: int, failure: dict | None, owner: str,
              job: tuple[Any, str] | None = None) -> None:
        """Start an attempt on `world_size` ready workers; `job` (spec, run directory)
        trains another job than the group's own (see TrainWorker.run_attempt)."""
        assert self.data_holder, "provide_data() before the first attempt"
        # Keep surviving ranks first so rank 0 stays where it was when it can; ranks on
        # one node next to each other (placement.py).
        ordered = [m for m in self.active if m in self.members]
        ordered += [m for m in self.members if m not in ordered]
        self.active = by_node(ordered, lambda m: m.node_id)[:world_size]
        address = ray.get(self.active[0].actor.rendezvous_address.remote())
        driver = (ray.get_runtime_context().get_node_id(), os.getpid())
        self.futures = [
            member.actor.run_attempt.remote(rank, world_size, address, attempt, failure, owner, driver,
                                            self.data_holder, job)
            for rank, member in enumerate(self.active)
        ]

    def poll(self, timeout_s: float) -> AttemptStatus:
        done, pending = ray.wait(self.futures, num_returns=len(self.futures), timeout=timeout_s)
        errors = _failed_ranks(self.futures, done)
        if pending and not errors:
            return AttemptStatus(running=True)
        # A rank failed: give the others a moment to fail with it; after a collective
        # timeout there is no need, the missing ranks have had the whole timeout.
        if pending and any(self._report(rank, e).kind != TIMEOUT for rank, e in errors.items()):
            done, pending = ray.wait(self.futures, num_returns=len(self.futures), timeout=SETTLE_S)
            errors = _failed_ranks(self.futures, done)
        if not errors:
            return AttemptStatus(running=False, outcomes=ray.get(self.futures))
        for rank, error in errors.items():
            log.info("rank %d failed:\n%s", rank, error)  # the whole traceback, for controller.log
        reports = [self._report(rank, error) for rank, error in errors.items()]
        waiting = [rank for rank, ref in enumerate(self.futures) if ref in pending]
        timed_out = any(r.kind == TIMEOUT for r in reports)
        where = _where({rank: self.active[rank].actor for rank in waiting}) if timed_out else {}
        failure = diagnose(reports, where)
        self.stuck = set(failure.stuck_ranks) if failure.kind == HANG else set()
        return AttemptStatus(running=False, failure=failure)

    def _report(self, rank: int, error: ray.exceptions.RayError) -> FailureReport:
        return read_ray_error(error, rank, self.active[rank].node_id)

    def recover(self, drain_timeout_s: float) -> list[str]:
        """After a failed attempt: let survivors unwind, kill the ranks that hang, drop
        the actors that are gone. Returns the node ids of the dead actors whose node
        looks lost as well."""
        unwinding = [ref for rank, ref in enumerate(self.futures) if rank not in self.stuck]
        ray.wait(unwinding, num_returns=len(unwinding), timeout=drain_timeout_s)
        pings = {id(m): m.actor.ready.remote() for m in self.members}
        ray.wait(list(pings.values()), num_returns=len(pings), timeout=PING_TIMEOUT_S)
        dead = []
        for member in list(self.members):
            try:
                ray.get(pings[id(member)], timeout=0)
            except (ray.exceptions.RayError, TimeoutError) as error:
                log.info("worker on node %s is gone: %s", member.node_id, type(error).__name__)
                dead.append(member)
        for member in dead:
            self.members.remove(member)
            ray.kill(member.actor, no_restart=True)
        alive_nodes = {m.node_id for m in self.members}
        lost_nodes = sorted({m.node_id for m in dead} - alive_nodes)
        self.suspect_nodes.update(lost_nodes)
        self._kill_stuck()
        self.futures, self.stuck = [], set()
        return lost_nodes

    def _kill_stuck(self) -> None:
        """A rank whose actor answers but whose attempt is still running after the drain
        will not unwind by itself (it hangs in Python or in a collective): kill its actor,
        so no later attempt waits on it. Its node is alive: this is no lost node."""
        _, running = ray.wait(self.futures, num_returns=len(self.futures), timeout=0)
        for rank, ref in enumerate(self.futures):
            member = self.active[rank]
            if ref in running and member in self.members:
                log.warning("rank %d did not unwind; killing its worker", rank)
                self.members.remove(member)
                ray.kill(member.actor, no_restart=True)

    def shutdown(self) -> None:
        self.demand.release()
        for member in self.members + self.pending:
            ray.kill(member.actor, no_restart=True)
        self.members, self.pending, self.active, self.futures = [], [], [], []


def start_worker(spec, run_dir: str, threads: int, resources: dict[str, float], node: str | None,
                 beside_training: bool = False) -> Member:
    """A worker actor on `node` if it has room when Ray places it (soft affinity), else
    wherever `scaling.placement` has Ray put it; `beside_training`: an attempt runs (and
    has not failed), so the worker warms up at idle priority (TrainWorker)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    resources = dict(resources)
    where = (NodeAffinitySchedulingStrategy(node, soft=True) if node
             else "SPREAD" if spec.scaling.placement == "spread" else "DEFAULT")
    options = {"num_cpus": resources.pop("CPU", 0), "num_gpus": resources.pop("GPU", 0),
               "resources": resources or None, "scheduling_strategy": where}
    actor = TrainWorker.options(**options).remote(spec, run_dir, threads, bool(options["num_gpus"]), beside_training)
    return Member(actor=actor, node_id=node, ready_ref=actor.ready.remote())  # node: the one meant, until ready


def free_slots(resources: dict[str, float], reserved_cpus: float) -> int:
    """How many more workers of `resources` the cluster has room for now, keeping
    `reserved_cpus` free (for Ray Data)."""
    available = dict(ray.available_resources())
    available["CPU"] = available.get("CPU", 0.0) - reserved_cpus
    return slots_in(available, resources)


def _failed_ranks(futures: list[Any], done: list[Any]) -> dict[int, ray.exceptions.RayError]:
    """The failed ranks among the finished, with what `ray.get` raised for each."""
    errors = {}
    for rank, ref in enumerate(futures):
        if ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as error:
                errors[rank] = error
    return errors


def _where(actors: dict[int, Any]) -> dict[int, tuple[str, ...]]:
    """Where each rank's attempt is in the code, asked of its actor (empty if it cannot say)."""
    asked = {rank: actor.where.remote() for rank, actor in actors.items()}
    ray.wait(list(asked.values()), num_returns=len(asked), timeout=PING_TIMEOUT_S)
    found = {}
    for rank, ref in asked.items():
        try:
            found[rank] = ray.get(ref, timeout=0)
        except (ray.exceptions.RayError, TimeoutError):
            found[rank] = ()
    return found
