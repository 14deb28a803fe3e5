"""The Promise System: recovered forward values equal the values recorded during the forward."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import dynlrp
from dynlrp.audit import check_activations
from dynlrp.graph import Graph, node_type
from dynlrp.rules import REGISTRY
from dynlrp.values import ValueStore


def _recorded(model, x):
    with dynlrp.record(outputs=True) as rec:
        out = model(x)
    return out, rec


def _check_all(out, rec, tol=0.0):
    graph = Graph.build(out.grad_fn)
    check = check_activations(graph, rec)
    assert check.unavailable == {}
    assert check.checked > 0
    assert check.max_error <= tol
    return check


class ResidualMLP(nn.Module):
    def __init__(self, width=8, depth=3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for layer in self.layers:
            x = x + torch.relu(layer(x))  # residual: AddBackward0 saves nothing
        return self.head(x.sum(0, keepdim=True) + x)


def test_activation_k_pass_through_nodes_away():
    """A rule that needs its input gets it from an arg node 12 view/permute/clone steps below."""
    x = torch.randn(2, 3, 4, requires_grad=True)

    def forward(t):
        h = torch.tanh(t)  # TanhBackward0 saves its result: the arg node
        for _ in range(4):
            h = h.permute(2, 0, 1).clone().permute(1, 2, 0)
        return h.reshape(4, 6).sum(1) * 2.0  # SumBackward1 saves no input: a promise

    with dynlrp.record(outputs=True) as rec:
        recorded = forward(x)
    _check_all(recorded, rec)
    out = forward(x)
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], recording=False)
    assert exp.promises.promises == 1
    assert exp.promises.delta == 13  # reshape + 4 x (permute, clone, permute) replayed
    assert exp.promises.internal_nodes == 14  # the 13 above, and the sum itself (its z)
    assert exp.conservation.unexplained < 1e-5


def test_lost_constant_is_a_named_error_and_record_fixes_it():
    """``h + 1.0`` keeps no trace of the 1.0 and ``* 2.0`` does not save its input: post hoc the
    add's share cannot be computed; inside record() it can."""
    x = torch.randn(3, 4, requires_grad=True)
    out = (torch.tanh(x).sum(1) + 1.0) * 2.0
    with pytest.raises(dynlrp.MissingValueError, match="record"):
        dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], recording=False)
    with dynlrp.record():
        out = (torch.tanh(x).sum(1) + 1.0) * 2.0
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])
    z = torch.tanh(x).sum(1).detach() + 1.0
    # the mul by 2.0 passes R = 1 through; the add gives the constant 1.0 the share 1.0 * R / s(z)
    assert exp.conservation.absorbed["constant"] == pytest.approx((1.0 / (z + 1e-6 * torch.sign(z))).sum().item(),
                                                                  rel=1e-5)
    assert exp.conservation.unexplained < 1e-5


def test_nested_promises_resolve_once_per_edge():
    """A promise whose resolution needs other promises (sum -> add -> two views of one leaf)."""
    x = torch.randn(3, 4, requires_grad=True)
    a = x.t().reshape(2, 6)
    b = (x * 3.0).t().reshape(2, 6)
    s = (a + b).sum(1)  # SumBackward1 needs its input: promise -> Add (replay) -> views (replay)
    graph = Graph.build(s.grad_fn)
    store = ValueStore(graph, REGISTRY)
    value = store.output_value(graph.root)
    torch.testing.assert_close(value, ((x.t().reshape(2, 6)) * 4.0).sum(1).detach(), rtol=0, atol=1e-6)
    replayed = store.stats.internal_nodes
    store.output_value(graph.root)  # memoised: no new work
    assert store.stats.internal_nodes == replayed


def test_residual_deadlock_pattern():
    """The paper's 4.3.3 pattern: a residual Add whose two branches share a node, one of which
    needs the Add's own output downstream. Every node propagates exactly once."""
    model = ResidualMLP().double()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    out, rec = _recorded(model, x)
    _check_all(out, rec)
    exp = dynlrp.explain(out, target=0, inputs=[x], recording=False)
    types = [row.node_type for row in exp.nodes]
    graph = Graph.build(out.grad_fn)
    data_nodes = [n for n in graph.order if node_type(n) != "AccumulateGrad" or n.variable is x]
    assert len(types) == len([n for n in data_nodes if node_type(n) != "TBackward0"])
    assert max(row.error for row in exp.nodes) < 1e-10
    assert exp.conservation.unexplained < 1e-10


def test_frozen_weights_recover_inputs():
    """With frozen weights mm/addmm/conv do not save their input: promises recover it."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = net(x)
    conv = out.grad_fn
    assert conv is not None
    with dynlrp.record():
        out2 = net(x)
    exp_rec = dynlrp.explain(out2, target=[0, 1], inputs=[x])
    trainable = nn.Sequential(*[m for m in net]).double()
    for p in trainable.parameters():
        p.requires_grad_(True)
    exp_ref = dynlrp.explain(trainable(x), target=[0, 1], inputs=[x])
    torch.testing.assert_close(exp_rec.relevance(x), exp_ref.relevance(x), rtol=1e-9, atol=1e-12)


def test_frozen_bias_without_record_is_a_named_error():
    lin = nn.Linear(4, 3).double().requires_grad_(False)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = lin(x).sum(1)  # SumBackward1 saves no input: the addmm output is nowhere in the graph
    with pytest.raises(dynlrp.MissingValueError, match="record"):
        dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], recording=False)


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_recovered_activations_equal_recorded_torchvision(name):
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out, rec = _recorded(model, x)
    check = _check_all(out, rec, tol=1e-6)
    assert check.checked >= 30


def test_residual_mlp_recovered_activations():
    model = ResidualMLP()
    x = torch.randn(4, 8, requires_grad=True)
    out, rec = _recorded(model, x)
    _check_all(out, rec, tol=1e-6)


def test_plan_cache_reuses_the_structure_and_gives_the_same_explanation():
    """A PlanCache keeps, per graph structure, where each value was found and how each promise was
    resolved; the next input of the same structure reads and replays along it: same relevance,
    same promise statistics, one plan per structure and preset."""
    torch.manual_seed(0)
    model = ResidualMLP().double()
    cache = dynlrp.PlanCache(maxsize=2)
    for step in range(3):
        x = torch.randn(4 + step, 8, dtype=torch.float64, requires_grad=True)  # new shapes, same wiring
        plain = dynlrp.explain(model(x), target=0, inputs=[x], recording=False)
        planned = dynlrp.explain(model(x), target=0, inputs=[x], recording=False, plans=cache)
        torch.testing.assert_close(planned.relevance(x), plain.relevance(x), rtol=0, atol=0)
        assert planned.promises == plain.promises
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 1)
    plan = next(iter(cache._plans.values()))
    assert plan.chains and plan.sources and plan.settings
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    dynlrp.explain(model(x), target=0, inputs=[x], rules="zplus", plans=cache)  # another preset: its own plan
    dynlrp.explain(torch.tanh(model(x)), target=0, inputs=[x], plans=cache)  # another structure
    assert len(cache) == 2 and cache.misses == 3  # maxsize 2: the least recently used was dropped


def _fused_projection(cast: bool = False, keep: int = 3):
    """``x -> linear (fused q, k, v) -> split -> heads -> SDPA``: the projection's output is held
    only as the three pieces attention saved. ``cast``: the pieces pass a float32 cast first;
    ``keep``: how many pieces are used."""
    torch.manual_seed(0)
    proj = nn.Linear(8, 24).double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    z = proj(x)
    pieces = [p.view(1, 5, 2, 4).transpose(1, 2) for p in z.split(8, -1)][:keep]
    if cast:
        pieces = [p.float() for p in pieces]
    if keep < 3:
        pieces = pieces + pieces[: 3 - keep]
    out = torch.nn.functional.scaled_dot_product_attention(*pieces)
    graph = Graph.build(out.grad_fn)
    node = next(n for n in graph.order if node_type(n) == "AddmmBackward0")
    return ValueStore(graph, REGISTRY), node, z.detach()


def test_output_gathered_back_from_the_pieces_attention_saved():
    store, node, z = _fused_projection()
    held = store.held((node, 0))
    assert held is not None and torch.equal(held, z)  # copies only: exact


@pytest.mark.parametrize("kind", ["cast", "part"])
def test_no_gathered_output_unless_every_element_is_copied_once(kind):
    store, node, _ = _fused_projection(cast=kind == "cast", keep=2 if kind == "part" else 3)
    assert store.held((node, 0)) is None


def _packed_projection(picks: tuple[int, ...] = (0, 1, 2)):
    """``nn.MultiheadAttention``'s packed in-projection: ``linear -> unflatten(3, E) -> unsqueeze ->
    transpose -> squeeze -> contiguous -> select(0, i)`` for ``i`` in ``picks`` (q, k, v by default)
    -> SDPA, which saves the selected pieces only."""
    torch.manual_seed(0)
    proj = nn.Linear(8, 24).double()
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    z = proj(x)
    packed = z.unflatten(-1, (3, 8)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    pieces = [packed[i].view(1, 2, 5, 8) for i in picks]
    out = torch.nn.functional.scaled_dot_product_attention(*pieces)
    graph = Graph.build(out.grad_fn)
    node = next(n for n in graph.order if node_type(n) == "AddmmBackward0")
    return ValueStore(graph, REGISTRY), node, z.detach()


def test_packed_projection_gathered_through_rearrangements_and_selects():
    """The chain of one-to-one rearrangements is inverted without a coverage check and the three
    selections of one dim are stacked: the projection's output, exactly, with no tensor of ones."""
    store, node, z = _packed_projection()
    held = store.held((node, 0))
    assert held is not None and torch.equal(held, z)


@pytest.mark.parametrize("picks", [(0, 0, 2), (2, 1, 0)])
def test_selects_gathered_only_when_each_index_is_taken_once(picks):
    store, node, z = _packed_projection(picks)
    held = store.held((node, 0))
    if len(set(picks)) < 3:  # index 1 never taken: the output is not fully held
        assert held is None
    else:  # any order of the selections
        assert held is not None and torch.equal(held, z)


class _Residual(nn.Module):
    """``z = x + scale * W LN(x)`` then a layer norm and a head: the branch output is held by no
    node, the sum ``z`` (the second layer norm's input) and ``x`` are."""

    def __init__(self, scale: float):
        super().__init__()
        self.ln1, self.lin, self.ln2, self.head = nn.LayerNorm(6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.scale = scale

    def forward(self, x):
        return self.head(self.ln2(x + self.lin(self.ln1(x)) * self.scale))


@pytest.mark.parametrize("scale,kept", [(1.0, 1), (1e-4, 0)])
def test_residual_branch_output_derived_from_the_sum(scale, kept):
    """The add rule derives the branch's output as ``z - x`` instead of replaying the linear layer,
    and leaves it for that layer's rule only if its share of the relevance is large enough for the
    rounding of ``z - x`` to stay at rounding level; the relevance matches the all-values recording."""
    torch.manual_seed(0)
    model = _Residual(scale).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    exp = dynlrp.explain(model(x), inputs=[x], recording=False)
    assert exp.promises.derived == kept
    with dynlrp.record(outputs=True):
        out = model(x)
    reference = dynlrp.explain(out, inputs=[x])
    torch.testing.assert_close(exp.relevance(x), reference.relevance(x), rtol=1e-10, atol=1e-14)
    assert max(row.error for row in exp.nodes) < 1e-10


class _MatmulCount(TorchDispatchMode):
    """Counts the matrix products (mm, addmm) run while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
        return func(*args, **(kwargs or {}))


class _SequenceResidual(nn.Module):
    """``z = x + W LN(x)`` on ``B x T x D`` (the linear layer: view, addmm, view), the branch in
    ``T x B x D`` and transposed back when ``transposed`` (as ``nn.MultiheadAttention``'s output)."""

    def __init__(self, transposed: bool):
        super().__init__()
        self.ln1, self.lin, self.ln2, self.head = nn.LayerNorm(6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.transposed = transposed

    def forward(self, x):
        h = self.ln1(x)
        branch = self.lin(h.transpose(0, 1)).transpose(0, 1) if self.transposed else self.lin(h)
        return self.head(self.ln2(x + branch)[:, -1])


@pytest.mark.parametrize("transposed,derived", [(False, 1), (True, 2)])  # transposed: mm, then the bias add
def test_derived_branch_output_passes_back_through_views_and_transposes(transposed, derived):
    """The branch output derived by the add rule reaches the linear layer through the view (and
    transpose) between them: its rule runs one matrix product (the VJP), not a second one to
    recompute ``x W^T``; the relevance matches the all-values recording."""
    torch.manual_seed(0)
    model = _SequenceResidual(transposed).double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    out = model(x)
    with _MatmulCount() as products:
        exp = dynlrp.explain(out, inputs=[x], recording=False)
    assert exp.promises.derived == derived
    assert products.count == 2  # the VJPs of the two linear layers
    with dynlrp.record(outputs=True):
        out = model(x)
    reference = dynlrp.explain(out, inputs=[x])
    torch.testing.assert_close(exp.relevance(x), reference.relevance(x), rtol=1e-10, atol=1e-14)
    assert max(row.error for row in exp.nodes) < 1e-10


def test_values_of_passed_nodes_are_released():
    """Once the sweep has passed a node, its memoised outputs are dropped and not memoised again
    (a gathered read re-reads them from the graph): only values ahead of the sweep stay alive."""
    x = torch.randn(3, 4, requires_grad=True)
    s = ((x.t().reshape(2, 6)) * 3.0).sum(1)  # the sum's input: replayed through mul and views
    graph = Graph.build(s.grad_fn)
    store = ValueStore(graph, REGISTRY)
    mul = next(n for n in graph.order if node_type(n) == "MulBackward0")
    value = store.output_value(mul)
    assert (mul, 0) in store.memo
    store.release(mul)
    assert (mul, 0) not in store.memo
    torch.testing.assert_close(store.output_value(mul), value, rtol=0, atol=0)  # still resolvable


class _Attention(nn.Module):
    """Three self-attention blocks with fused q/k/v projections (values gathered back from pieces)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(3))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x, x, x, need_weights=False)[0]
        return self.head(x.mean(1))


def test_the_store_holds_no_value_behind_the_sweep(monkeypatch):
    torch.manual_seed(0)
    model = _Attention().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    behind = []
    release = ValueStore.release

    def checked(store, node):
        release(store, node)
        behind.append(sum(1 for n, _ in store.memo if n in store._passed))

    monkeypatch.setattr(ValueStore, "release", checked)
    exp = dynlrp.explain(model(x), inputs=[x])
    assert len(behind) == len(Graph.build(model(x).grad_fn).order) and max(behind) == 0
    with dynlrp.record(outputs=True):
        out = model(x)
    monkeypatch.setattr(ValueStore, "release", release)
    reference = dynlrp.explain(out, inputs=[x])
    torch.testing.assert_close(exp.relevance(x), reference.relevance(x), rtol=1e-10, atol=1e-14)


class _ConvCount(TorchDispatchMode):
    """Counts the ``addcmul`` calls (a batch norm's ``y = a z + c``) run while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket is torch.ops.aten.addcmul
        return func(*args, **(kwargs or {}))


class _ResidualConv(nn.Module):
    """``relu(bn(conv(h)) + h)`` with ``h = relu(stem(x))``: the batch norm's output is saved by no
    node, so the residual sum's rule replays it, and the convolution (the batch norm merged into it)
    reads it too."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn, self.head = nn.BatchNorm2d(4), nn.Linear(4, 3)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(self.bn.weight, 0.5, 1.5)
        nn.init.uniform_(self.bn.bias, -0.1, 0.1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(self.conv(h)) + h).mean((2, 3)))


@pytest.mark.parametrize("retain_graph", [True, False])
def test_replayed_batch_norm_output_is_kept_for_the_merged_convolution(monkeypatch, retain_graph):
    """The residual sum replays the batch norm's output ``y`` (one addcmul); the merged batch norm's
    rule keeps that value until the convolution before it has been passed, whose rule reads it
    instead of forming ``y`` again. No value is held behind the sweep once that convolution is done,
    and the relevance equals the all-values recording's."""
    torch.manual_seed(0)
    model = _ResidualConv().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    out = model(x)
    behind, release = [], ValueStore.release

    def checked(store, node):
        release(store, node)
        behind.append((node_type(node), sum(1 for n, _ in store.memo  # leaves: the parameters themselves
                                            if n in store._passed and not hasattr(n, "variable"))))

    monkeypatch.setattr(ValueStore, "release", checked)
    with _ConvCount() as calls:
        exp = dynlrp.explain(out, inputs=[x], rules=dynlrp.presets.get("epsilon", merge_batch_norm=True),
                             retain_graph=retain_graph)
    monkeypatch.setattr(ValueStore, "release", release)
    assert calls.count == 1  # the replay; the convolution's rule reads its result
    names = [name for name, _ in behind]
    start = names.index("NativeBatchNormBackward0")
    end = names.index("ConvolutionBackward0", start)  # the merged convolution
    assert [count for _, count in behind] == [0] * start + [1] * (end - start) + [0] * (len(behind) - end)
    with dynlrp.record(outputs=True):
        out = model(x)
    reference = dynlrp.explain(out, inputs=[x], rules=dynlrp.presets.get("epsilon", merge_batch_norm=True))
    torch.testing.assert_close(exp.relevance(x), reference.relevance(x), rtol=1e-10, atol=1e-14)
    assert max(row.error for row in exp.nodes) < 1e-10


def test_selects_along_a_negative_dim_are_stacked_along_that_dim():
    """``select(-1, i)``: autograd stores the dim as an unsigned 64-bit integer (``2**64 - 1``); it is
    the last dim, also for a 3-d tensor whose every dim has the same size (the value would otherwise
    be stacked along another dim, of the right shape)."""
    torch.manual_seed(0)
    proj = nn.Linear(4, 27).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    z = proj(x).view(2, 3, 3, 3)[0]  # a 3 x 3 x 3 cube
    q, k, v = (z.select(-1, i) for i in range(3))
    graph = Graph.build(((q * k) * v).grad_fn)  # the products save q, k and v
    selects = [n for n in graph.order if node_type(n) == "SelectBackward0"]
    producer, nr = graph.edges[selects[0]][0]
    assert node_type(producer) == "SelectBackward0" and len(graph.consumers[producer]) == 3  # z = [0] of the view
    held = ValueStore(graph, REGISTRY).held((producer, nr))
    assert held is not None and torch.equal(held, z.detach())


def _scaled_projection(scale_op: str, scale: float, x: torch.Tensor):
    """``z = x @ W`` (MmBackward0) that reaches a saved tensor only through a view, a transpose and the
    scalar map ``scale_op`` (``y = t * c``, ``t / c`` or ``-t``), as q in SDPA's reference path: the
    product with a leaf that requires grad (not explained) saves ``y``, and no later node does."""
    torch.manual_seed(0)
    weight = torch.randn(x.shape[1], 6, dtype=x.dtype)
    z = x @ weight
    t = z.view(-1, 2, 3).transpose(1, 2)
    y = {"mul": lambda: torch.ops.aten.mul.Scalar(t, scale), "div": lambda: torch.ops.aten.div.Scalar(t, scale),
         "neg": lambda: -t}[scale_op]()
    other = torch.randn(x.shape[0], 3, 2, dtype=x.dtype, requires_grad=True)
    return z, (y * other).sum()


@pytest.mark.parametrize("scale_op, scale, exact", [
    ("mul", 1.0, True), ("mul", -2.0, True), ("mul", 8.0, True), ("div", 0.25, True), ("neg", -1.0, True),
    ("mul", 0.5, False), ("mul", 3.0, False), ("div", 2.0, False)])
def test_output_read_back_through_an_exactly_invertible_scale(scale_op, scale, exact):
    """``x`` from a held ``y = c x`` when ``x = y / c`` is exact: ``|c|`` a power of two >= 1 (SDPA's
    reference path scales q and k by ``sqrt(scale)``, 1.0 for T5: the projection is not recomputed).
    A scale below 1 may have rounded to subnormals and any other ``c`` rounds: nothing is read back."""
    x = torch.randn(5, 4, requires_grad=True)
    z, out = _scaled_projection(scale_op, scale, x)
    graph = Graph.build(out.grad_fn)
    mm = next(n for n in graph.order if node_type(n) == "MmBackward0")
    held = ValueStore(graph, REGISTRY).held((mm, 0))
    if exact:
        assert held is not None and torch.equal(held, z.detach())
    else:
        assert held is None
    with dynlrp.record(outputs=True):
        _, recorded = _scaled_projection(scale_op, scale, x)
    reference = dynlrp.explain(recorded, inputs=[x]).relevance(x)
    torch.testing.assert_close(dynlrp.explain(out, inputs=[x]).relevance(x), reference, rtol=0, atol=0)
    # saved tensors freed behind the sweep: the product's is kept until the projection has read it back
    freed = dynlrp.explain(_scaled_projection(scale_op, scale, x)[1], inputs=[x], retain_graph=False)
    torch.testing.assert_close(freed.relevance(x), reference, rtol=0, atol=0)


def test_no_value_read_back_through_a_scale_that_overflowed():
    """``y = 2 z`` overflowed to inf: ``z`` is not ``y / 2``, nothing is read back."""
    x = torch.full((1, 4), 1e38, requires_grad=True)
    z, out = _scaled_projection("mul", 2.0, x)
    assert torch.isfinite(z).all() and not torch.isfinite(2 * z).all()  # z finite, the product not
    graph = Graph.build(out.grad_fn)
    mm = next(n for n in graph.order if node_type(n) == "MmBackward0")
    assert ValueStore(graph, REGISTRY).held((mm, 0)) is None
