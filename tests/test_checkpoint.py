"""Checkpoints: atomic, verified, skipped when damaged, and resumed bit for bit, also
at another world size. Real gloo processes, the loop `orchestrator launch` runs.

Exercised by: pytest tests/test_checkpoint.py
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.training.checkpoint import CheckpointManager, TrainerState, verify
from tests.distributed import (
    WorkerKilled, assert_bitwise_equal, final_weights, make_spec, read_metrics, run_processes,
    train_in_processes, train_with_restarts,
)
from tests.jobs import MLP_JOB

# Layers of 64 KiB: their parameters and momenta are handed to background writers
# uncopied (strategies/state_handover.py), which these tests then check.
JOB = dict(MLP_JOB, model={"name": "mlp", "options": {"hidden": [128, 128]}},
           checkpoint={"every_steps": 10, "keep": 3})


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """The 30-step job at 2 workers, run straight through."""
    spec = make_spec(JOB)
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train_in_processes(spec, prepared(spec), 2, run_dir)
    return run_dir


def _first_state_file(checkpoint):
    return sorted((checkpoint / "state").glob("*.distcp"))[0]


def _truncate(checkpoint):
    path = _first_state_file(checkpoint)
    path.write_bytes(path.read_bytes()[:-7])


def _flip_bit(checkpoint):
    path = _first_state_file(checkpoint)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checkpoints_are_committed_with_a_manifest(uninterrupted):
    names = [p.name for p in CheckpointManager.list_checkpoints(uninterrupted)]
    assert names == ["step_00000010", "step_00000020", "step_00000030"]
    for checkpoint in CheckpointManager.list_checkpoints(uninterrupted):
        assert verify(checkpoint) is None
        manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
        assert "trainer.json" in manifest and "rng/rank_1.pt" in manifest
    assert not list((uninterrupted / "checkpoints").glob(".partial-*"))


@pytest.mark.parametrize("damage", [_truncate, _flip_bit], ids=["truncated", "bit-flipped"])
def test_a_damaged_latest_checkpoint_is_skipped(damage, prepared, uninterrupted, tmp_path, caplog):
    spec = make_spec(JOB, train__steps=20)
    train_in_processes(spec, prepared(spec), 2, tmp_path)
    latest = CheckpointManager.list_checkpoints(tmp_path)[-1]
    damage(latest)
    assert verify(latest) is not None
    # an interrupted save leaves only a .partial directory, which is never loaded
    shutil.copytree(latest, tmp_path / "checkpoints" / ".partial-step_00000025")

    train_in_processes(make_spec(JOB), prepared(spec), 2, tmp_path)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in events if e["event"] == "resumed"] == ["step_00000010"]
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))


def test_a_killed_worker_resumes_bit_for_bit(prepared, uninterrupted, tmp_path):
    spec = make_spec(JOB, chaos__kill_worker_at_steps=[15])
    restarts = train_with_restarts(spec, prepared(spec), [2, 2], tmp_path)
    assert restarts == 1 and (tmp_path / "chaos" / "kill_worker_15").exists()
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))


def test_resume_at_another_world_size_continues_the_same_run(prepared, uninterrupted, tmp_path):
    """Saved at 2 workers, resumed at 1: same global batch, same data order, same losses."""
    spec = make_spec(JOB, train__steps=20)
    train_in_processes(spec, prepared(spec), 2, tmp_path)
    one_worker = make_spec(JOB, scaling__workers=1)
    train_in_processes(one_worker, prepared(spec), 1, tmp_path)
    expected = {r["step"]: r["loss"] for r in read_metrics(uninterrupted)}
    resumed = [r for r in read_metrics(tmp_path) if r["world_size"] == 1]
    assert [r["step"] for r in resumed] == list(range(21, 31))
    assert resumed[0]["accumulation"] == 2 * read_metrics(tmp_path)[0]["accumulation"]
    for record in resumed:
        assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-5)


@pytest.mark.parametrize(
    "strategy,workers",
    # hybrid's resume is slow (4 workers) and its layout's loading is in the default tier:
    # test_model_parallel.py::test_checkpoint_loads_under_another_layout.
    [({"name": "zero", "stage": 2}, 2),
     pytest.param({"name": "hybrid", "tp": 2}, 4, marks=pytest.mark.slow)],
    ids=["zero2", "hybrid-dp2-tp2"],
)
def test_a_killed_worker_resumes_bit_for_bit_under(strategy, workers, prepared, tmp_path):
    """The same guarantee for sharded and model-parallel state: the restart reloads each
    rank's shards exactly, so the weights end bitwise equal to an uninterrupted run."""
    spec = make_spec(JOB, strategy=strategy, scaling__workers=workers)
    train_in_processes(spec, prepared(spec), workers, tmp_path / "uninterrupted")
    killed = make_spec(JOB, strategy=strategy, scaling__workers=workers, chaos__kill_worker_at_steps=[15])
    assert train_with_restarts(killed, prepared(spec), [workers, workers], tmp_path / "killed") == 1
    assert_bitwise_equal(final_weights(tmp_path / "killed"), final_weights(tmp_path / "uninterrupted"))


# ---- background saves -------------------------------------------------------------------------
def _save_then_train_on(rank: int, world_size: int, spec, data, run_dir: str, writer: str):
    """Twice: start a background checkpoint, change the weights before its write can run
    (in place, as the next optimizer step does), and keep this rank's weights as they were
    at the checkpoint's step. A thread writer is handed the weights of 64 KiB uncopied; a
    paced one writes in the turns this lends it, then runs on when waited for."""
    import threading

    import torch

    from orchestrator.planning.layout import batch_layout
    from orchestrator.training.context import WorkerContext
    from orchestrator.training.loop import build_strategy

    w = WorkerContext(spec=spec, run_dir=Path(run_dir), data=data, rank=rank,
                      world_size=world_size, device=torch.device("cpu"))
    strategy = build_strategy(w, batch_layout(spec, world_size))
    manager = CheckpointManager(w.run_dir, keep=2, rank=rank, world_size=world_size, background=True,
                                writer=writer.removeprefix("paced "), paced_over=2 if "paced" in writer else 0)
    saves = []
    for step in (1, 2):
        held = threading.Event()

        def snapshot(folder, copy, held=held):
            write = strategy.snapshot(folder, copy)
            return lambda save: (held.wait(60), write(save))

        manager.start_save(TrainerState(step, world_size, world_size, 0), snapshot)
        # As arrays: a tensor would cross the result queue as a shared-memory handle, which
        # its reader cannot open once this process has exited (a race seen in CI).
        at_save = {n: p.detach().clone().numpy() for n, p in strategy.model.named_parameters()}
        with torch.no_grad(), strategy.handover.first_writes():  # as the optimizer step runs
            for parameter in strategy.model.parameters():
                parameter.add_(1.0)  # what the next optimizer step would do, before the write
        unpublished = CheckpointManager.list_checkpoints(w.run_dir)
        held.set()
        for _ in range(2):
            manager.turn()  # as each step's end does
        saves.append({"at_save": at_save, "unpublished": [p.name for p in unpublished],
                      "written": str(manager.wait())})
    manager.close()
    return saves


@pytest.mark.parametrize("writer", ["thread", "paced thread", "process"])
def test_a_background_checkpoint_holds_the_state_of_its_step(writer, prepared, tmp_path):
    """The state is copied at the checkpoint's step: weights changed while the write is
    still to come do not reach it, and nothing is published before every rank wrote."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    spec = make_spec(JOB)
    results = run_processes(_save_then_train_on, 2, spec, prepared(spec), str(tmp_path), writer)
    for step, published_before in ((1, []), (2, ["step_00000001"])):
        assert [r[step - 1]["unpublished"] for r in results] == [published_before] * 2
        checkpoint = Path(results[0][step - 1]["written"])
        assert checkpoint.name == f"step_{step:08d}" and verify(checkpoint) is None
        dcp_to_torch_save(checkpoint / "state", tmp_path / f"state{step}.pt")
        saved = torch.load(tmp_path / f"state{step}.pt", weights_only=True)["model"]
        for name, array in results[0][step - 1]["at_save"].items():
            key, tensor = name.removeprefix("module."), torch.from_numpy(array)
            assert torch.equal(saved[key], tensor), (step, key)
            assert not torch.equal(saved[key], tensor + 1.0)


def test_an_error_in_a_background_save_is_raised_at_the_next_wait_and_publishes_nothing(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2, rank=0, world_size=1, background=True)

    def snapshot(folder, copy):
        def write(save):
            raise OSError("No space left on device")
        return write

    manager.start_save(TrainerState(5, 1, 1, 0), snapshot)
    with pytest.raises(OSError, match="No space left"):
        manager.wait()
    assert CheckpointManager.list_checkpoints(tmp_path) == []
    assert manager.wait() is None  # reported once


def test_background_and_in_line_saves_write_the_same_checkpoints(prepared, uninterrupted, tmp_path):
    """`checkpoint.async_save: false` writes before the next step; runs whose saves a
    thread writes meanwhile (as fast as it goes, or in the turns the steps lend it) or a
    writer process writes (from a copy made while the next step computes) train the same
    losses and leave the same state in every checkpoint they keep."""
    spec = make_spec(JOB, checkpoint__async_save=False)
    assert spec.checkpoint.async_save is False and make_spec(JOB).checkpoint.async_save is True
    in_line = train_in_processes(spec, prepared(spec), 2, tmp_path / "in_line")
    others = {"process": {"checkpoint__writer": "process"}, "free": {"checkpoint__pace": "free"},
              "steps": {"checkpoint__pace": "steps"}}
    for name, change in others.items():
        other = make_spec(JOB, **change)
        train_in_processes(other, prepared(other), 2, tmp_path / name)
    for background in (uninterrupted, *(tmp_path / name for name in others)):
        assert [r["loss"] for r in in_line] == [r["loss"] for r in read_metrics(background)]
        _assert_same_checkpoints(background, tmp_path / "in_line", tmp_path / "converted")


def _assert_same_checkpoints(run, other, scratch):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    names = [p.name for p in CheckpointManager.list_checkpoints(run)]
    assert names == [p.name for p in CheckpointManager.list_checkpoints(other)] == [
        "step_00000010", "step_00000020", "step_00000030"]
    scratch.mkdir(exist_ok=True)
    for name in names:
        states = []
        for folder in (run, other):
            dcp_to_torch_save(folder / "checkpoints" / name / "state", scratch / f"{name}.pt")
            states.append(torch.load(scratch / f"{name}.pt", weights_only=True))
        for part in ("model", "optim"):
            background_state, in_line_state = states[0][part], states[1][part]
            assert background_state.keys() == in_line_state.keys()
            for key, value in background_state.items():  # tensors, and param-group numbers
                same = torch.equal(value, in_line_state[key]) if torch.is_tensor(value) else value == in_line_state[key]
                assert same, f"{name}: {part} {key} differs"
    saves = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
             if e["event"] == "checkpoint"]
    assert [e["path"] for e in saves] == names and all(e["save_s"] >= 0 for e in saves)


def test_data_parallel_ranks_each_copy_a_share_of_the_state_they_all_hold():
    """A replicated state is dealt by size: each rank copies about half, every tensor is
    taken by exactly one rank, and the plain values (param-group numbers) by both."""
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from strategies.base import replicated_share, state_dict_options

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.Linear(32, 10))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    model_state, optim_state = get_state_dict(model, optimizer, options=state_dict_options())
    shares = [replicated_share(model_state, optim_state, rank, 2) for rank in (0, 1)]

    def tensor_bytes(state):
        return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))

    for whole, part in ((model_state, 0), (optim_state, 1)):
        keys = [set(k for k, v in share[part].items() if isinstance(v, torch.Tensor)) for share in shares]
        assert not keys[0] & keys[1]
        assert keys[0] | keys[1] == {k for k, v in whole.items() if isinstance(v, torch.Tensor)}
        plain = {k for k, v in whole.items() if not isinstance(v, torch.Tensor)}
        assert all(plain <= share[part].keys() for share in shares)
    total = tensor_bytes(model_state) + tensor_bytes(optim_state)
    largest = 64 * 128 * 4
    mine = [tensor_bytes(a) + tensor_bytes(b) for a, b in shares]
    assert abs(mine[0] - mine[1]) <= largest and sum(mine) == total


def _start_a_writer_then_die(rank: int, world_size: int, run_dir: str) -> None:
    """Start a writer for a group of two whose second rank never comes, so the writer
    waits for its peer; then die."""
    import signal
    from datetime import timedelta

    from orchestrator.training.checkpoint_process import WriterProcess

    writer = WriterProcess(None, 0, 2, timedelta(seconds=120))
    time.sleep(3.0)
    assert not writer.ready()
    policy = os.sched_getscheduler(writer.pid)  # of its main thread
    Path(run_dir, "writer.json").write_text(json.dumps({"pid": writer.pid, "idle": policy == os.SCHED_IDLE}))
    os.kill(os.getpid(), signal.SIGKILL)  # as a lost node or the OOM killer ends a worker


def test_a_checkpoint_writer_process_runs_at_idle_priority_and_ends_with_its_rank(tmp_path):
    """A killed worker leaves no writer behind, not even one blocked waiting for a peer
    (each writer watches the rank that started it). While it lives, it takes only the
    CPU that training leaves."""
    import psutil

    with pytest.raises(WorkerKilled):
        run_processes(_start_a_writer_then_die, 1, str(tmp_path))
    writer = json.loads((tmp_path / "writer.json").read_text())
    assert writer["idle"]

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 15
    while alive(writer["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(writer["pid"])


def test_host_copy_reuses_its_shared_buffers_and_holds_the_values_of_its_call():
    import torch

    from strategies.host_copy import host_copier

    source = {"model": {"w": torch.randn(1000, 100)}, "optim": {"w.exp_avg": torch.randn(7), "step": 3}}
    copier = host_copier(torch.device("cpu"), shared=True)
    first = copier.stage(source).result()
    assert torch.equal(first["model"]["w"], source["model"]["w"]) and first["optim"]["step"] == 3
    assert first["model"]["w"].is_shared()
    buffer = first["model"]["w"].data_ptr()
    source["model"]["w"].add_(1.0)
    second = copier.stage(source).result()
    assert second["model"]["w"].data_ptr() == buffer  # the same shared memory, refilled
    assert torch.equal(second["model"]["w"], source["model"]["w"])
    assert second["model"]["w"].data_ptr() != source["model"]["w"].data_ptr()


def test_host_copy_leaves_the_interpreter_to_the_training_thread_while_it_copies():
    """A copy on the stager's thread must not hold Python's lock: torch's own storage
    copy does, and the training thread then runs no Python line until it is done."""
    import torch

    from strategies.host_copy import copy_bytes

    source = torch.randn(64 * 2**20).untyped_storage()  # 256 MB: a copy of tens of ms
    target = torch.empty(64 * 2**20).untyped_storage()
    copy_bytes(target, source)  # its pages touched: the timed copy only copies

    def lines_run_during(copy) -> int:
        import threading

        started, done, lines = threading.Event(), threading.Event(), 0
        thread = threading.Thread(target=lambda: (started.set(), copy(), done.set()))
        thread.start()
        started.wait()
        while not done.is_set():
            lines += 1
        thread.join()
        return lines

    held = lines_run_during(lambda: target.copy_(source))  # torch's: the lock held
    released = lines_run_during(lambda: copy_bytes(target, source))
    assert released > 5 * max(held, 1), (held, released)
