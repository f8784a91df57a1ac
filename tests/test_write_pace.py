"""A paced background write proceeds only in the turns the training thread lends it, and
the files dcp writes through it are hashed on the way (orchestrator/training/write_pace.py,
checkpoint_files.py)."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest
import torch

from orchestrator.training import manifest
from orchestrator.training.checkpoint_files import paced_writer, tensor_bytes, without_zip_checksums
from orchestrator.training.safe_pickle import find_unsafe
from orchestrator.training.write_pace import MIN_TURN_BYTES, WriteAbandoned, WritePace

MB = 1 << 20


class _Writer(threading.Thread):
    """Writes `total` bytes through `pace` in pieces of `piece`, as dcp's streams do,
    keeping how many were written when."""

    def __init__(self, pace: WritePace, total: int, piece: int) -> None:
        super().__init__(daemon=True)
        self.pace, self.total, self.piece = pace, total, piece
        self.written = 0
        self.planned = threading.Event()

    def run(self) -> None:
        with self.pace.writes():
            self.planned.set()  # the first turn: dcp's planning
            while self.written < self.total:
                wanted = min(self.piece, self.total - self.written)
                while wanted:
                    granted = self.pace.allowance(wanted)
                    self.written += granted
                    wanted -= granted


def _started(pace: WritePace, total: int, piece: int) -> _Writer:
    writer = _Writer(pace, total, piece)
    writer.start()
    deadline = time.monotonic() + 10
    while not pace._asking and time.monotonic() < deadline:  # waits for its first turn
        time.sleep(0.001)
    return writer


def test_a_paced_write_runs_only_in_the_turns_it_is_lent():
    pace = WritePace(paced=True)
    pace.begin(turns=4)
    pace.expect(8 * MB)  # 2 MB a turn
    writer = _started(pace, 8 * MB, piece=3 * MB)
    time.sleep(0.05)
    assert not writer.planned.is_set() and writer.written == 0  # nothing before its first turn

    pace.turn()  # the first turn plans, and writes nothing
    assert writer.planned.is_set() and writer.written == 0
    seen = []
    for _ in range(4):
        pace.turn()  # returns once the writer has written its budget and asks for more
        seen.append(writer.written)
    writer.join(5)
    assert seen == [2 * MB, 4 * MB, 6 * MB, 8 * MB] and not writer.is_alive()
    pace.turn()  # no write in progress: returns at once


def test_a_released_write_runs_on_without_turns():
    pace = WritePace(paced=True)
    pace.begin(turns=100)
    pace.expect(64 * MB)
    writer = _started(pace, 64 * MB, piece=MB)
    pace.turn()
    pace.turn()
    assert writer.written == MIN_TURN_BYTES
    pace.release()  # what waiting for the save does
    writer.join(5)
    assert writer.written == 64 * MB and not writer.is_alive()


def test_an_abandoned_write_stops_at_its_next_turn():
    """An attempt that ends without waiting for its save abandons it: a writer that
    outlived its attempt must never go on to publish a checkpoint."""
    pace = WritePace(paced=True)
    pace.begin(turns=100)
    pace.expect(64 * MB)
    errors = []

    def write():
        try:
            _Writer.run(writer)
        except WriteAbandoned as error:
            errors.append(error)

    writer = _Writer(pace, 64 * MB, piece=MB)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not pace._asking and time.monotonic() < deadline:
        time.sleep(0.001)
    pace.turn()
    pace.abandon()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1 and writer.written < 64 * MB

    unpaced = WritePace(paced=False)  # a free writer is stopped the same way
    unpaced.begin(turns=1)
    unpaced.abandon()
    with pytest.raises(WriteAbandoned):
        unpaced.allowance(MB)


def test_an_unpaced_write_never_waits():
    pace = WritePace(paced=False)
    pace.begin(turns=10)
    writer = _Writer(pace, 16 * MB, piece=MB)
    writer.start()
    writer.join(5)
    assert writer.written == 16 * MB and not writer.is_alive()


def test_the_files_dcp_writes_through_a_pace_are_hashed_on_the_way_and_load(tmp_path):
    """Every file's entry (the metadata's under its final name) is what the manifest
    would have computed; written without zip checksums, they still load, and the
    checkpoint passes the manifest's checks, its pickles read as data."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"weight": torch.randn(256, 512), "bias": torch.randn(512)},
             "scheduler": {"last_epoch": 7, "lrs": [0.1, 0.01]}}
    assert tensor_bytes(state) == (256 * 512 + 512) * 4
    pace = WritePace(paced=False)
    pace.begin(turns=1)
    storage, files = paced_writer(tmp_path / "state", pace)
    before = torch.serialization.get_crc32_options()
    with pace.writes(), without_zip_checksums():
        dcp.save(state, storage_writer=storage)
    assert torch.serialization.get_crc32_options() == before
    files.sync()

    on_disk = {p for p in (tmp_path / "state").rglob("*") if p.is_file()}
    assert set(files.written) == on_disk and tmp_path / "state" / ".metadata" in on_disk
    for path, entry in files.written.items():
        assert entry == manifest.entry(path)
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    loaded = {"model": {"weight": torch.zeros(256, 512), "bias": torch.zeros(512)},
              "scheduler": {"last_epoch": 0, "lrs": [0.0, 0.0]}}
    dcp.load(loaded, checkpoint_id=str(tmp_path / "state"))
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["scheduler"] == state["scheduler"]
    manifest.write_manifest(tmp_path, {p.relative_to(tmp_path).as_posix(): e for p, e in files.written.items()})
    assert manifest.check(tmp_path) is None and find_unsafe(tmp_path) is None


@pytest.mark.parametrize("change", ["size", "content"])
def test_a_manifest_takes_a_hashed_entry_only_where_the_file_still_has_its_size(change, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    real = manifest.entry(tmp_path / "a.bin")
    claimed = dict(real, size=99) if change == "size" else dict(real, sha256="0" * 64)
    manifest.write_manifest(tmp_path, {"a.bin": claimed})
    problem = manifest.check(tmp_path)
    if change == "size":  # not its size: hashed again
        assert problem is None
    else:  # a writer's digest is taken as it is: a wrong one makes the checkpoint invalid
        assert problem == "a.bin does not match its checksum"


@pytest.mark.parametrize("pace, device, ranks, expected", [
    ("steps", "cpu", 1, 15), ("free", "cpu", 64, 0),
    ("auto", "cpu", "every core", 15), ("auto", "cuda", "every core", 0), ("auto", "cpu", "a core free", 0),
])
def test_a_write_is_paced_where_training_takes_every_core_or_where_asked(pace, device, ranks, expected):
    import os

    from orchestrator.training.context import WorkerContext
    from orchestrator.training.loop import paced_over
    from tests.distributed import make_spec
    from tests.jobs import MLP_JOB

    cores, threads = os.cpu_count(), torch.get_num_threads()
    if ranks == "a core free" and cores == 1:
        pytest.skip("one core: none can be left free")
    spec = make_spec(MLP_JOB, checkpoint__every_steps=20, checkpoint__pace=pace)
    w = WorkerContext(spec=spec, run_dir=None, data=None, rank=0, device=torch.device(device),
                      world_size=1 if ranks == "a core free" else -(-cores // threads) if ranks == "every core" else ranks)
    torch.set_num_threads(1 if ranks == "a core free" else threads)
    try:
        assert paced_over(w) == expected
    finally:
        torch.set_num_threads(threads)
