"""``explain(..., retain_graph=False)``: saved tensors freed behind the sweep, nothing else changes."""
from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn as nn

import dynlrp
from dynlrp.graph import Graph
from dynlrp.saved import release_saved, release_schedule
from dynlrp.values import ValueStore


class ConvBnHead(nn.Module):
    """conv -> batch norm (merged into the conv) -> flatten -> linear: the conv's rule reads the
    linear's saved input across the reshape, two nodes above it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1))


class SplitHeads(nn.Module):
    """A fused projection split in three and routed through transposes (values gathered back)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(6, 18), nn.Linear(6, 3)

    def forward(self, x):
        q, k, v = self.qkv(x).split(6, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.out(a.transpose(0, 1).transpose(0, 1)).sum(1)


def _model(cls):
    torch.manual_seed(0)
    return cls().eval().double()


@pytest.mark.parametrize("cls, shape, rules", [
    (ConvBnHead, (2, 3, 8, 8), "epsilon"),
    (ConvBnHead, (2, 3, 8, 8), "epsilon_gamma_box"),
    (SplitHeads, (2, 5, 6), "attnlrp"),
])
def test_freed_graph_gives_the_same_relevance_bit_for_bit(cls, shape, rules):
    model = _model(cls)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = model(x)
    kept = dynlrp.explain(out, target=1, rules=rules, inputs=[x])
    freed = dynlrp.explain(out, target=1, rules=rules, inputs=[x], retain_graph=False)
    assert torch.equal(kept.relevance(x), freed.relevance(x))
    assert freed.conservation == kept.conservation


def test_every_saved_tensor_is_freed_and_a_second_use_is_a_named_error():
    model = _model(ConvBnHead)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = model(x)
    dynlrp.explain(out, target=1, inputs=[x], retain_graph=False)
    graph = Graph.build(out.grad_fn)
    for node in graph.order:
        for name in dir(node):
            if name.startswith("_raw_saved_") and getattr(node, name) is not None:
                with pytest.raises(RuntimeError, match="retain_graph=False"):
                    getattr(node, "_saved_" + name.removeprefix("_raw_saved_"))
    with pytest.raises(dynlrp.GraphFreedError, match="retain_graph=True"):
        dynlrp.explain(out, target=1, inputs=[x])
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.sum().backward()
    kept_out = model(x)  # the default reads only: the graph still backpropagates
    dynlrp.explain(kept_out, target=1, inputs=[x])
    kept_out.sum().backward()


def test_an_activation_dies_while_the_sweep_is_still_below_it(monkeypatch):
    """The tensor a layer near the output saved is freed before the sweep reaches the input (not
    only when the explanation ends), and not at all with the default."""
    torch.manual_seed(0)
    layers = [nn.Linear(8, 8) for _ in range(4)]
    x = torch.randn(3, 8, requires_grad=True)
    h = x
    for layer in layers[:3]:
        h = torch.tanh(layer(h))
    probe = weakref.ref(h)  # saved by the last tanh (its result) and the last linear (its input)
    out = layers[3](h)
    del h
    alive_at: list[bool] = []
    release = ValueStore.release

    def watch(self, node):
        release(self, node)
        alive_at.append(probe() is not None)
    monkeypatch.setattr(ValueStore, "release", watch)
    dynlrp.explain(out, target=0, inputs=[x])
    assert all(alive_at) and probe() is not None
    alive_at.clear()
    dynlrp.explain(out, target=0, inputs=[x], retain_graph=False)
    assert probe() is None
    first_dead = alive_at.index(False)
    assert first_dead < len(alive_at) // 2, alive_at


def test_saved_tensors_with_user_hooks_are_left_alone():
    model = _model(ConvBnHead)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t * 1, lambda t: t):
        out = model(x)
    expected = dynlrp.explain(out, target=1, inputs=[x]).relevance(x)
    got = dynlrp.explain(out, target=1, inputs=[x], retain_graph=False).relevance(x)
    assert torch.equal(expected, got)
    node = out.grad_fn
    release_saved(node)  # twice: nothing to do, no error
    release_saved(node)


def test_the_release_schedule_is_part_of_the_plan():
    model = _model(SplitHeads)
    cache = dynlrp.PlanCache()
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
        out = model(x)
        expected = dynlrp.explain(out, target=0, rules="attnlrp", inputs=[x]).relevance(x)
        got = dynlrp.explain(out, target=0, rules="attnlrp", inputs=[x], plans=cache, retain_graph=False)
        results.append(torch.equal(expected, got.relevance(x)))
    (plan,) = cache._plans.values()
    assert results == [True, True] and plan.release is not None and cache.hits == 1


def test_schedule_waits_for_every_reader():
    """A node's saved tensors go after its producers, theirs, and along shape chains below it."""
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(6, 6, requires_grad=True)
    y = (x @ w).view(2, 12).transpose(0, 1).tanh() * 2
    graph = Graph.build(y.grad_fn)
    order = graph.order
    index = {n: i for i, n in enumerate(order)}
    shape = {"ViewBackward0", "TransposeBackward0"}
    schedule = release_schedule(graph, lambda n: type(n).__name__ in shape, depth=10)
    when = {order[p]: at for at, positions in schedule.items() for p in positions}
    assert set(when) == set(order)
    tanh = y.grad_fn.next_functions[0][0]
    mm = next(n for n in order if type(n).__name__ == "MmBackward0")
    assert when[tanh] >= index[mm]  # tanh -> transpose -> view -> mm, and mm's producers
    assert all(when[n] >= index[n] for n in order)
