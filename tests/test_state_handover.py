"""A checkpoint's state handed to its writer without a copy (strategies/state_handover.py):
the optimizer step after a save writes into spare buffers, with the same numbers."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from strategies.base import optimizer_state_tensors
from strategies.state_handover import MIN_BYTES, StateHandover, put_back

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "sgd-plain": lambda p: torch.optim.SGD(p, lr=0.1),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.01, foreach=False),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, foreach=False),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))


def _backward(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(32, 64, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    nn.functional.cross_entropy(model(inputs), targets).backward()


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": model.state_dict(), "optim": {f"{i}.{k}": v for i, s in enumerate(optimizer.state.values())
                                                   for k, v in s.items()}}


def _train(name: str, steps: int, handover: StateHandover | None):
    """`steps` steps, a handover after each one when given; returns the final tensors,
    whether each handover still held its step's values after the step that followed it,
    and the addresses each one handed over."""
    model = _model()
    optimizer = OPTIMIZERS[name](model.parameters())
    kept, addresses, taken = [], [], None
    for step in range(steps):
        _backward(model, step)
        with handover.first_writes() if handover else contextlib.nullcontext():
            optimizer.step()
        optimizer.zero_grad()
        if taken is not None:  # its writer is done once the next save starts
            handed, at_save = taken
            kept.append(bool(handed) and all(torch.equal(handed[p], at_save[p]) for p in handed))
        if handover is not None:
            state = _state(model, optimizer)
            _, handed = handover.take(state, [*model.parameters(), *optimizer_state_tensors(optimizer)])
            handover.written_by(lambda: None)
            taken = handed, {path: t.clone() for path, t in handed.items()}
            addresses.append({t.data_ptr() for t in handed.values()})
    final = [t.clone() for t in (*model.parameters(), *optimizer_state_tensors(optimizer))]
    return final, kept, addresses


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_steps_after_handovers_compute_the_same_numbers_and_leave_the_handed_state_alone(name):
    plain, _, _ = _train(name, 6, None)
    handed_over, kept, addresses = _train(name, 6, StateHandover())
    assert all(torch.equal(a, b) for a, b in zip(plain, handed_over))
    assert kept == [True] * 5
    # Nothing copied: the live state alternates between two buffers a tensor.
    assert not addresses[2] & addresses[3] and addresses[2] == addresses[4] and addresses[3] == addresses[5]


def test_only_parameters_and_optimizer_state_of_their_own_storage_and_size_are_handed_over():
    model = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.Linear(256, 2))
    model.register_buffer("table", torch.randn(256, 256))
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    _ = model(torch.randn(4, 256)).sum().backward(), optimizer.step()
    state = _state(model, optimizer)
    rest, handed = StateHandover().take(state, [*model.parameters(), *optimizer_state_tensors(optimizer)])
    names = {path[-1] for path in handed}
    assert names == {"0.weight", "0.exp_avg", "0.exp_avg_sq"}  # 256 KiB each; the rest under MIN_BYTES
    assert 256 * 2 * 4 < MIN_BYTES <= 256 * 256 * 4
    assert rest["model"]["table"] is state["model"]["table"]  # a buffer: copied, never handed over
    whole = put_back(rest, handed)
    assert all(torch.equal(whole["model"][k], v) for k, v in state["model"].items())


def test_a_write_that_cannot_be_redirected_waits_for_the_writer_first():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handover = StateHandover()
    _, handed = handover.take(_state(model, optimizer), list(model.parameters()))
    weight = model[2].weight
    events = []
    handover.written_by(lambda: events.append(("written", torch.equal(handed[("model", "2.weight")], weight))))
    with handover.first_writes():
        with torch.no_grad():
            weight[0].add_(1.0)  # a view: the weight cannot be pointed elsewhere
        events.append(("wrote", None))
    assert events == [("written", True), ("wrote", None)]


@pytest.mark.parametrize("write", [
    lambda t: t.normal_(0.0, 1.0),  # torch.normal(t, ...) would take t as the mean: never redirected
    lambda t: t.fill_(2.0),  # torch.fill has no `out=`
    lambda t: t.add_(torch.ones(3)),  # no `out=` form for these arguments (shapes): the call's own error
], ids=["normal_", "fill_", "add_-bad-shape"])
def test_writes_without_a_same_out_form_wait_for_the_writer_and_run_as_written(write):
    torch.manual_seed(0)
    tensor = torch.zeros(256, 256)
    expected = tensor.clone()
    handover = StateHandover()
    _, handed = handover.take({"w": tensor}, [tensor])
    waited = []
    handover.written_by(lambda: waited.append(torch.equal(handed[("w",)], expected)))
    torch.manual_seed(1)
    try:
        with handover.first_writes():
            write(tensor)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            write(expected)
    else:
        torch.manual_seed(1)
        write(expected)
        assert torch.equal(tensor, expected)
    assert waited == [True]


def test_a_transformers_model_with_tied_weights_trains_the_same_numbers_with_handovers():
    """GPT-2 from `transformers` (built from a config): its output layer and token
    embedding are one parameter, listed twice in its state dict."""
    transformers = pytest.importorskip("transformers")

    def train(handover: StateHandover | None):
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=32)
        model = transformers.GPT2LMHeadModel(config)
        optimizer = OPTIMIZERS["adamw"](model.parameters())
        handed_per_save = []
        for step in range(4):
            ids = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(step))
            model(input_ids=ids, labels=ids).loss.backward()
            with handover.first_writes() if handover else contextlib.nullcontext():
                optimizer.step()
            optimizer.zero_grad()
            if handover is not None:
                live = [*model.parameters(), *optimizer_state_tensors(optimizer)]
                _, handed = handover.take(_state(model, optimizer), live)
                handover.written_by(lambda: None)
                handed_per_save.append(len(handed))
        assert model.lm_head.weight is model.transformer.wte.weight
        return [p.detach().clone() for p in model.parameters()], handed_per_save

    plain, _ = train(None)
    handed_over, handed_per_save = train(StateHandover())
    assert all(torch.equal(a, b) for a, b in zip(plain, handed_over))
    assert handed_per_save[0] > 0 and len(set(handed_per_save)) == 1
