"""Indexing, selection, scatter, padding, resampling and in-place slice rules (dynlrp.rules.indexing).

Each case is checked against an independent dense reference: the op's full Jacobian
(``torch.autograd.functional.jacobian``) and the rule's formula in matrix form, routing
``R_k = J_k^T R``, z-rule ``R_k = x_k * J_k^T (R / s(z))``, identity ``R = R``. Every case also
checks the per-node ledger, that the node type under test is in the graph (so a torch version that
renames a node fails here), and that the forward replays reproduce the recorded forward.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import dynlrp
from dynlrp.audit import check_activations
from dynlrp.context import NodeContext
from dynlrp.graph import Graph, node_type
from dynlrp.rules import REGISTRY
from dynlrp.values import NeedValue, ValueStore

EPS = 1e-6  # the "epsilon" preset's stabiliser
D = torch.float64


def _t(*shape):
    return torch.randn(*shape, dtype=D)


def _perm_index(shape, dim, keep):
    """Unique indices along ``dim`` (scatter with duplicates is undefined in torch)."""
    return torch.rand(shape).argsort(dim).narrow(dim, 0, keep)


@dataclass
class Case:
    name: str
    nodes: tuple[str, ...]  # node types that must be in the graph
    kind: str  # "route" | "z" | "identity": the reference formula
    inputs: Callable[[], list[torch.Tensor]]  # the explained operands
    fn: Callable[..., torch.Tensor]
    replay: bool = True  # False: the forward cannot be recomputed post hoc (a named error instead)
    absorbs: tuple[str, ...] = field(default_factory=tuple)
    record: bool = False  # the rule needs a value only a recorded forward has (a constant operand)


IDX = torch.tensor([2, 0, 3])
MASK = torch.rand(3, 4, 5) > 0.5
SIDX = _perm_index((3, 4, 5), 1, 2)
AIDX = torch.randint(0, 4, (3, 6, 5))
CONST = _t(3, 4, 5)


def _setitem(index, value):
    def fn(x, *rest):
        y = x.clone()
        y[index] = value if not rest else rest[0]
        return y
    return fn


def _inplace(method, *args):
    def fn(x):
        y = x.clone()
        getattr(y[:, 1], method)(*args)
        return y
    return fn


def _slice_add(x, v):
    y = x.clone()
    y[:, 1:3] += v
    return y


def _as_strided_inplace(x):
    y = x.clone()
    y.as_strided_((3, 3), (2, 1), 1)
    return y


def _transpose_inplace(x):
    y = x.clone()
    y.transpose_(0, 1)
    return y


def _index_put_view(x, v):
    y = x.clone()
    y[:, 1].index_put_((torch.tensor([2, 0]),), v)
    return y


def _zeros_base(v):
    y = torch.zeros(3, 4, 5, dtype=D)
    y[:, 1] = v
    return y


X345 = lambda: [_t(3, 4, 5)]  # noqa: E731
X2 = lambda: [_t(3, 4, 5), _t(3, 4, 5)]  # noqa: E731
IMG = lambda: [_t(1, 2, 4, 5)]  # noqa: E731
SEQ = lambda: [_t(1, 2, 6)]  # noqa: E731
VOL = lambda: [_t(1, 1, 3, 4, 4)]  # noqa: E731

CASES = [
    # gather / index_select / take / masked_select
    Case("gather", ("GatherBackward0",), "route", X345, lambda x: x.gather(1, AIDX[:, :3])),
    Case("take_along_dim", ("GatherBackward0",), "route", X345, lambda x: torch.take_along_dim(x, AIDX[:, :3], 1)),
    Case("index_select", ("IndexSelectBackward0",), "route", X345, lambda x: x.index_select(1, IDX)),
    Case("take", ("TakeBackward0",), "route", X345, lambda x: x.take(torch.tensor([[0, 7], [59, 7]]))),
    Case("masked_select", ("MaskedSelectBackward0",), "route", X345, lambda x: x.masked_select(MASK)),
    # index_put
    Case("index_put", ("IndexPutBackward0",), "route", lambda: [_t(3, 4, 5), _t(2, 5)],
         lambda x, v: torch.index_put(x, (torch.tensor([0, 2]), torch.tensor([1, 3])), v)),
    Case("setitem_advanced", ("IndexPutBackward0", "CloneBackward0"), "route", lambda: [_t(3, 4, 5), _t(3, 2, 5)],
         _setitem((slice(None), torch.tensor([1, 3])), None)),
    Case("setitem_mask_constant", ("IndexPutBackward0",), "route", X345, _setitem(MASK, 0.5), replay=False,
         absorbs=("constant",)),
    Case("index_put_accumulate", ("IndexPutBackward0",), "z", lambda: [_t(3, 4, 5), _t(4, 5)],
         lambda x, v: torch.index_put(x, (torch.tensor([0, 2, 0, 1]), torch.tensor([1, 3, 1, 0])), v, True)),
    # masked_scatter / scatter family
    Case("masked_scatter", ("MaskedScatterBackward0",), "route", lambda: [_t(3, 4, 5), _t(70)],
         lambda x, s: x.masked_scatter(MASK, s[:60].view(3, 4, 5))),
    Case("scatter_src", ("ScatterBackward0",), "route", lambda: [_t(3, 4, 5), _t(3, 2, 5)],
         lambda x, s: x.scatter(1, SIDX, s)),
    Case("scatter_value", ("ScatterBackward1",), "route", X345, lambda x: x.scatter(1, SIDX, 2.0), replay=False,
         absorbs=("constant",)),
    Case("scatter_add", ("ScatterAddBackward0",), "z", lambda: [_t(3, 4, 5), _t(3, 6, 5)],
         lambda x, s: x.scatter_add(1, AIDX, s)),
    Case("scatter_add_constant_base", ("ScatterAddBackward0",), "z", lambda: [_t(3, 6, 5)],
         lambda s: CONST.scatter_add(1, AIDX, s), replay=False, absorbs=("constant",), record=True),
    Case("scatter_reduce_sum", ("ScatterReduceBackward0",), "z", lambda: [_t(3, 4, 5), _t(3, 6, 5)],
         lambda x, s: x.scatter_reduce(1, AIDX, s, "sum")),
    Case("scatter_reduce_sum_exclude", ("ScatterReduceBackward0",), "z", lambda: [_t(3, 4, 5), _t(3, 6, 5)],
         lambda x, s: x.scatter_reduce(1, AIDX, s, "sum", include_self=False)),
    Case("scatter_reduce_mean", ("ScatterReduceBackward0",), "z", lambda: [_t(3, 4, 5), _t(3, 6, 5)],
         lambda x, s: x.scatter_reduce(1, AIDX, s, "mean")),
    Case("scatter_reduce_amax", ("ScatterReduceBackward0",), "route", lambda: [_t(3, 4, 5), _t(3, 6, 5)],
         lambda x, s: x.scatter_reduce(1, AIDX, s, "amax")),
    Case("index_add", ("IndexAddBackward0",), "z", lambda: [_t(3, 4, 5), _t(3, 3, 5)],
         lambda x, s: x.index_add(1, torch.tensor([1, 3, 1]), s, alpha=0.5)),
    Case("index_fill", ("IndexFillBackward0",), "route", X345, lambda x: x.index_fill(1, IDX, 1.5), replay=False,
         absorbs=("constant",)),
    # sort / topk / selections
    Case("topk", ("TopkBackward0",), "route", X345, lambda x: x.topk(2, 1).values),
    Case("topk_smallest", ("TopkBackward0",), "route", X345, lambda x: x.topk(3, -1, largest=False).values),
    Case("sort", ("SortBackward0",), "route", X345, lambda x: x.sort(1, descending=True).values),
    Case("sort_stable", ("SortBackward1",), "route", X345, lambda x: x.sort(dim=2, stable=True).values),
    Case("max_dim", ("MaxBackward0",), "route", X345, lambda x: x.max(1).values),
    Case("min_dim_keepdim", ("MinBackward0",), "route", X345, lambda x: x.min(2, keepdim=True).values),
    Case("kthvalue", ("KthvalueBackward0",), "route", X345, lambda x: x.kthvalue(2, 1).values),
    Case("median_dim", ("MedianBackward1",), "route", X345, lambda x: x.median(1).values),
    Case("nanmedian_dim", ("NanmedianBackward1",), "route", X345, lambda x: x.nanmedian(2).values),
    Case("mode", ("ModeBackward0",), "route", X345, lambda x: x.mode(1).values),
    Case("amax", ("AmaxBackward0",), "route", X345, lambda x: x.amax((0, 2))),
    Case("amin", ("AminBackward0",), "route", X345, lambda x: x.amin(1, keepdim=True)),
    Case("max_full", ("MaxBackward1",), "route", X345, lambda x: x.max()),
    Case("min_full", ("MinBackward1",), "route", X345, lambda x: x.min()),
    Case("median_full", ("MedianBackward0",), "route", X345, lambda x: x.median()),
    Case("nanmedian_full", ("NanmedianBackward0",), "route", X345, lambda x: x.nanmedian()),
    Case("cummax", ("CummaxBackward0",), "route", X345, lambda x: x.cummax(1).values),
    Case("cummin", ("CumminBackward0",), "route", X345, lambda x: x.cummin(2).values),
    Case("maximum", ("MaximumBackward0",), "route", X2, torch.maximum),
    Case("minimum", ("MinimumBackward0",), "route", X2, torch.minimum),
    Case("fmax", ("FmaxBackward0",), "route", X2, torch.fmax),
    Case("fmin", ("FminBackward0",), "route", X2, torch.fmin),
    Case("maximum_broadcast", ("MaximumBackward0",), "route", lambda: [_t(3, 4, 5), _t(4, 1)], torch.maximum),
    Case("maximum_constant", ("MaximumBackward0",), "route", X345, lambda x: torch.maximum(x, CONST),
         absorbs=("constant",)),
    # cumsum
    Case("cumsum", ("CumsumBackward0",), "z", X345, lambda x: x.cumsum(1)),
    Case("cumsum_last", ("CumsumBackward0",), "z", X345, lambda x: x.cumsum(-1)),
    # already routed elsewhere: flip, roll, narrow, chunk, unsafe_split, tril, repeat_interleave, transpose_
    Case("flip", ("FlipBackward0",), "route", X345, lambda x: x.flip(1, 2)),
    Case("roll", ("RollBackward0",), "route", X345, lambda x: x.roll(2, 1)),
    Case("narrow", ("SliceBackward0",), "route", X345, lambda x: x.narrow(1, 1, 2)),
    Case("chunk", ("SplitBackward0",), "route", X345, lambda x: x.chunk(2, 1)[1]),
    Case("unsafe_split", ("UnsafeSplitBackward0",), "route", X345, lambda x: torch.unsafe_split(x, 2, 1)[0]),
    Case("unsafe_chunk", ("UnsafeSplitBackward0",), "route", X345, lambda x: torch.unsafe_chunk(x, 2, 2)[1]),
    Case("tril", ("TrilBackward0",), "route", X345, lambda x: x.tril(1), absorbs=("constant",)),
    Case("repeat_interleave_int", ("ExpandBackward0",), "route", X345, lambda x: x.repeat_interleave(2, dim=1)),
    Case("repeat_interleave_tensor", ("IndexSelectBackward0",), "route", X345,
         lambda x: x.repeat_interleave(torch.tensor([1, 2, 0, 3]), dim=1)),
    Case("transpose_", ("TransposeBackward1",), "route", X345, _transpose_inplace),
    # padding
    Case("reflect_1d", ("ReflectionPad1DBackward0",), "route", SEQ, lambda x: F.pad(x, (2, 1), mode="reflect")),
    Case("reflect_2d", ("ReflectionPad2DBackward0",), "route", IMG, lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect")),
    Case("reflect_3d", ("ReflectionPad3DBackward0",), "route", VOL,
         lambda x: F.pad(x, (1, 2, 1, 0, 2, 1), mode="reflect")),
    Case("replicate_1d", ("ReplicationPad1DBackward0",), "route", SEQ, lambda x: F.pad(x, (2, 3), mode="replicate")),
    Case("replicate_2d", ("ReplicationPad2DBackward0",), "route", IMG,
         lambda x: F.pad(x, (1, 2, 2, 1), mode="replicate")),
    Case("replicate_3d", ("ReplicationPad3DBackward0",), "route", VOL,
         lambda x: F.pad(x, (1, 1, 2, 0, 1, 2), mode="replicate")),
    Case("circular_1d", ("CopySlices", "SliceBackward0"), "route", SEQ, lambda x: F.pad(x, (2, 1), mode="circular"),
         replay=False),
    Case("circular_2d", ("CopySlices", "SliceBackward0"), "route", IMG,
         lambda x: F.pad(x, (2, 1, 1, 2), mode="circular"), replay=False),
    # upsampling
    Case("nearest_1d", ("UpsampleNearest1DBackward0",), "route", SEQ, lambda x: F.interpolate(x, scale_factor=2)),
    Case("nearest_2d", ("UpsampleNearest2DBackward0",), "route", IMG, lambda x: F.interpolate(x, size=(5, 9))),
    Case("nearest_3d", ("UpsampleNearest3DBackward0",), "route", VOL, lambda x: F.interpolate(x, scale_factor=2)),
    Case("nearest_exact_2d", ("UpsampleNearestExact2DBackward0",), "route", IMG,
         lambda x: F.interpolate(x, size=(7, 8), mode="nearest-exact")),
    Case("linear_1d", ("UpsampleLinear1DBackward0",), "z", SEQ,
         lambda x: F.interpolate(x, scale_factor=2, mode="linear")),
    Case("bilinear", ("UpsampleBilinear2DBackward0",), "z", IMG,
         lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")),
    Case("bilinear_corners", ("UpsampleBilinear2DBackward0",), "z", IMG,
         lambda x: F.interpolate(x, size=(6, 9), mode="bilinear", align_corners=True)),
    Case("bilinear_antialias", ("UpsampleBilinear2DAaBackward0",), "z", IMG,
         lambda x: F.interpolate(x, size=(3, 3), mode="bilinear", antialias=True)),
    Case("bicubic", ("UpsampleBicubic2DBackward0",), "z", IMG,
         lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")),
    Case("bicubic_antialias", ("UpsampleBicubic2DAaBackward0",), "z", IMG,
         lambda x: F.interpolate(x, size=(3, 2), mode="bicubic", antialias=True)),
    Case("trilinear", ("UpsampleTrilinear3DBackward0",), "z", VOL,
         lambda x: F.interpolate(x, scale_factor=2, mode="trilinear")),
    # unfold / fold / shuffles
    Case("im2col", ("Im2ColBackward0",), "route", IMG, lambda x: F.unfold(x, 3, padding=1, stride=(1, 2)),
         absorbs=("constant",)),
    Case("col2im", ("Col2ImBackward0",), "z", lambda: [_t(2, 8, 8)], lambda x: F.fold(x, (4, 5), 2, stride=(2, 1))),
    Case("tensor_unfold", ("UnfoldBackward0",), "route", X345, lambda x: x.unfold(2, 3, 1)),
    Case("pixel_shuffle", ("PixelShuffleBackward0",), "route", lambda: [_t(1, 8, 2, 3)],
         lambda x: F.pixel_shuffle(x, 2)),
    Case("pixel_unshuffle", ("PixelUnshuffleBackward0",), "route", lambda: [_t(1, 2, 4, 6)],
         lambda x: F.pixel_unshuffle(x, 2)),
    Case("channel_shuffle", ("ChannelShuffleBackward0",), "route", lambda: [_t(1, 6, 2, 2)],
         lambda x: F.channel_shuffle(x, 3)),
    # diagonals
    Case("diagonal", ("DiagonalBackward0",), "route", X345, lambda x: x.diagonal(1, 1, 2)),
    Case("diag", ("DiagonalBackward0_copy",), "route", lambda: [_t(4, 5)], lambda x: torch.diag(x, -1)),
    Case("diag_embed", ("DiagEmbedBackward0",), "route", lambda: [_t(2, 3)], lambda x: torch.diag_embed(x, 1),
         absorbs=("constant",)),
    Case("select_scatter", ("SelectScatterBackward0",), "route", lambda: [_t(3, 4, 5), _t(3, 5)],
         lambda x, s: torch.select_scatter(x, s, 1, 2)),
    Case("slice_scatter", ("SliceScatterBackward0",), "route", lambda: [_t(3, 4, 5), _t(3, 2, 5)],
         lambda x, s: torch.slice_scatter(x, s, 1, 0, 4, 2)),
    Case("diagonal_scatter", ("DiagonalScatterBackward0",), "route", lambda: [_t(3, 4, 5), _t(3, 4)],
         lambda x, s: torch.diagonal_scatter(x, s, 0, 1, 2)),
    # as_strided
    Case("as_strided", ("AsStridedBackward0",), "route", X345, lambda x: x.as_strided((3, 4), (20, 2), 1)),
    Case("as_strided_overlap", ("AsStridedBackward0",), "route", X345, lambda x: x.as_strided((5, 3), (2, 1), 3)),
    Case("as_strided_of_view", ("AsStridedBackward0",), "route", X345,
         lambda x: x.transpose(0, 2).as_strided((2, 3), (1, 2), 1)),
    Case("as_strided_", ("AsStridedBackward1",), "route", X345, _as_strided_inplace),
    # in-place copies into slices
    Case("copy_slices", ("CopySlices",), "route", lambda: [_t(3, 4, 5), _t(3, 5)], _setitem((slice(None), 1), None)),
    Case("copy_slices_broadcast", ("CopySlices", "ExpandBackward0"), "route", lambda: [_t(3, 4, 5), _t(5)],
         _setitem((slice(None), slice(1, 3)), None)),
    Case("copy_slices_constant", ("CopySlices",), "route", X345, _setitem((slice(None), 1), 3.0), replay=False,
         absorbs=("constant",)),
    Case("copy_slices_zeros_base", ("CopySlices",), "route", lambda: [_t(3, 5)], _zeros_base, replay=False,
         absorbs=("constant",)),
    Case("copy_slices_add", ("CopySlices", "AsStridedBackward0"), "z", lambda: [_t(3, 4, 5), _t(3, 2, 5)], _slice_add),
    Case("copy_slices_index_put", ("CopySlices",), "route", lambda: [_t(3, 4, 5), _t(2, 5)], _index_put_view),
    Case("copy_slices_zero", ("CopySlices",), "route", X345, _inplace("zero_"), absorbs=("constant",)),
    Case("copy_slices_relu", ("CopySlices",), "identity", X345, _inplace("relu_"), replay=False),
    Case("copy_slices_scale", ("CopySlices",), "identity", X345, _inplace("mul_", 2.0)),
    # weight normalisation
    Case("weight_norm", ("WeightNormInterfaceBackward0",), "identity", lambda: [_t(3, 4)],
         lambda v: torch._weight_norm(v, torch.tensor([[0.5], [2.0], [-1.0]], dtype=D), 0)),
]


def _stabilize(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _reference(case: Case, inputs: list[torch.Tensor], out: torch.Tensor, r0: torch.Tensor) -> list[torch.Tensor]:
    """The rule's formula with the dense Jacobian of the op."""
    if case.kind == "identity":
        return [r0.reshape(inputs[0].shape)]
    plain = [t.detach() for t in inputs]
    jac = torch.autograd.functional.jacobian(case.fn, tuple(plain))
    r = r0.reshape(-1)
    if case.kind == "z":
        r = r / _stabilize(out.detach().reshape(-1))
    refs = []
    for x, j in zip(plain, jac):
        back = j.reshape(out.numel(), x.numel()).T @ r
        refs.append((back * x.reshape(-1) if case.kind == "z" else back).reshape(x.shape))
    return refs


def _leaves(case: Case) -> list[torch.Tensor]:
    return [t.requires_grad_(True) for t in case.inputs()]


def _replay_root(out: torch.Tensor) -> torch.Tensor:
    """Run the root node's own replay post hoc (resolving nested promises), bypassing saved outputs."""
    graph = Graph.build(out.grad_fn)
    store = ValueStore(graph, REGISTRY)
    fn = REGISTRY.replays[node_type(graph.root)]
    ctx = NodeContext(graph.root, store, replaying=True)
    while True:
        try:
            return fn(ctx)[out.output_nr]
        except NeedValue as need:
            store.resolve(need.edge)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_matches_dense_reference(case: Case):
    inputs = _leaves(case)
    with dynlrp.record() as rec:
        out = case.fn(*inputs)
    if not case.record:
        rec.clear()
    types = Graph.build(out.grad_fn).type_counts()
    for name in case.nodes:
        assert name in types, f"{name} not produced by {case.name} on torch {torch.__version__}: {sorted(types)}"
        assert name in REGISTRY.rules
    r0 = torch.randn(out.shape, dtype=D)
    exp = dynlrp.explain(out, target=r0, inputs=inputs, rules="epsilon", recording=rec if case.record else False)
    rec.clear()
    assert set(case.nodes) <= {row.node_type for row in exp.nodes}
    assert not exp.fallbacks
    assert max(row.error for row in exp.nodes) <= 1e-10, [(r.node_type, r.error) for r in exp.nodes]
    assert exp.conservation.unexplained <= 1e-10
    for cause in case.absorbs:
        assert exp.conservation.absorbed.get(cause, 0.0) != 0.0
    for x, ref in zip(inputs, _reference(case, inputs, out, r0)):
        torch.testing.assert_close(exp.relevance(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_reproduces_forward(case: Case):
    inputs = _leaves(case)
    with dynlrp.record(outputs=True) as rec:
        out = case.fn(*inputs)
    root = node_type(out.grad_fn)
    if not case.replay:  # no replay (record() keeps the call), or one that names the fix
        if root in REGISTRY.replays:
            with pytest.raises(dynlrp.MissingValueError, match="record"):
                _replay_root(out)
        rec.clear()
        return
    check = check_activations(Graph.build(out.grad_fn), rec)
    rec.clear()
    assert check.unavailable == {}
    assert check.checked >= 1
    assert check.max_error <= 1e-12
    if root in REGISTRY.replays:
        torch.testing.assert_close(_replay_root(out), out.detach(), rtol=1e-12, atol=1e-12)


def test_copy_slices_post_hoc_value_is_replayed():
    """A rule below a slice assignment that needs its input value (cumsum's z-rule) gets it by the
    CopySlices replay (J v from the node's own backward), post hoc, without a recording."""
    x, v = _t(3, 4, 5).requires_grad_(True), _t(3, 5).requires_grad_(True)
    y = x.clone()
    y[:, 1] = v
    out = y.cumsum(1)
    r0 = torch.randn(out.shape, dtype=D)
    exp = dynlrp.explain(out, target=r0, inputs=[x, v], recording=False)
    assert exp.promises.internal_nodes >= 2  # CopySlices and clone replayed
    z = out.detach()
    c = torch.flip(torch.flip(r0 / _stabilize(z), [1]).cumsum(1), [1])  # cumsum^T
    yv = y.detach()
    torch.testing.assert_close(exp.relevance(v), (yv * c)[:, 1], rtol=1e-10, atol=1e-12)
    expected_x = yv * c
    expected_x[:, 1] = 0
    torch.testing.assert_close(exp.relevance(x), expected_x, rtol=1e-10, atol=1e-12)


def test_fill_value_needs_record_and_record_fixes_it():
    """``y[:, 1] = 3.0`` keeps no trace of 3.0; a rule that needs y's value names the fix, and inside
    record() the assignment is recorded."""
    x = _t(3, 4, 5).requires_grad_(True)

    def forward(t):
        y = t.clone()
        y[:, 1] = 3.0
        return y.cumsum(1)

    with pytest.raises(dynlrp.MissingValueError, match="record"):
        dynlrp.explain(forward(x), target=torch.ones(3, 4, 5, dtype=D), inputs=[x], recording=False)
    with dynlrp.record():
        out = forward(x)
    exp = dynlrp.explain(out, target=torch.ones(3, 4, 5, dtype=D), inputs=[x])
    assert max(row.error for row in exp.nodes) <= 1e-10
    assert exp.conservation.absorbed["constant"] != 0.0


def test_unsupported_inplace_op_on_view_is_a_named_error():
    x = _t(3, 4).requires_grad_(True)
    y = x.clone()
    y[:, 1:].cumsum_(1)
    with pytest.raises(dynlrp.RuleError, match="CumsumBackward0"):
        dynlrp.explain(y, target=torch.ones(3, 4, dtype=D), inputs=[x])


def test_scatter_reduce_prod_is_a_named_error():
    x = _t(3, 4).requires_grad_(True)
    out = x.scatter_reduce(1, torch.tensor([[0, 1], [1, 1], [2, 3]]), _t(3, 2), "prod")
    with pytest.raises(dynlrp.RuleError, match="prod"):
        dynlrp.explain(out, target=torch.ones(3, 4, dtype=D), inputs=[x])


def _grouped_reference(x, w, ends, r):
    x64, w64, r64 = x.detach().double(), w.detach().double(), r.double()
    ref, start = torch.zeros_like(x64), 0
    for g, end in enumerate(ends):
        z = x64[start:end] @ w64[g]
        ref[start:end] = x64[start:end] * ((r64[start:end] / _stabilize(z)) @ w64[g].T)
        start = end
    return ref


def _float32_ledger(exp, r0):
    """float32 ledger: unexplained relevance per node within float32 rounding of the total |R|."""
    scale = r0.abs().sum().item()
    for row in exp.nodes:
        assert row.error * abs(row.relevance_in) <= 1e-6 * scale, (row.node_type, row.error)


def test_grouped_mm_epsilon_per_group():
    """MoE experts: ``torch._grouped_mm`` (float32 only on CPU) against the per-group dense epsilon rule."""
    x = torch.randn(12, 8, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(3, 8, 4))
    offs = torch.tensor([3, 7, 12], dtype=torch.int32)
    out = torch._grouped_mm(x, w, offs=offs)
    assert node_type(out.grad_fn) == "GroupedMmBackward0"
    r0 = torch.randn(out.shape)
    exp = dynlrp.explain(out, target=r0, inputs=[x], recording=False)
    assert "GroupedMmBackward0" in {row.node_type for row in exp.nodes}
    _float32_ledger(exp, r0)
    ref = _grouped_reference(x, w, offs.tolist(), r0)
    torch.testing.assert_close(exp.relevance(x).double(), ref, rtol=1e-4, atol=1e-5)
    with dynlrp.record(outputs=True) as rec:
        out = torch._grouped_mm(x, w, offs=offs)
    check = check_activations(Graph.build(out.grad_fn), rec)
    rec.clear()
    assert check.unavailable == {} and check.max_error <= 1e-6
    torch.testing.assert_close(_replay_root(out), out.detach())


def test_grouped_mm_frozen_experts_inside_a_model():
    """Frozen expert weights: grouped_mm does not save x, a promise recovers it through a view."""
    x = torch.randn(4, 3, 8, requires_grad=True)
    w = torch.randn(2, 8, 4)
    offs = torch.tensor([5, 12], dtype=torch.int32)
    h = torch.relu(x).reshape(12, 8)
    out = torch._grouped_mm(h, w, offs=offs)
    r0 = torch.randn(out.shape)
    exp = dynlrp.explain(out, target=r0, inputs=[x], recording=False)
    _float32_ledger(exp, r0)
    ref = _grouped_reference(h, w, offs.tolist(), r0).reshape(4, 3, 8)
    torch.testing.assert_close(exp.relevance(x).double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad", [torch.nn.ReflectionPad2d(1), torch.nn.ReplicationPad2d(1), torch.nn.PixelUnshuffle(2)])
def test_copies_before_the_first_conv_keep_it_a_first_layer(pad):
    """A conv behind reflection/replication padding or pixel unshuffle still gets the first-layer rule."""
    channels = 12 if isinstance(pad, torch.nn.PixelUnshuffle) else 3
    net = torch.nn.Sequential(pad, torch.nn.Conv2d(channels, 4, 3)).double()
    x = torch.rand(1, 3, 6, 6, dtype=D, requires_grad=True)
    box = dynlrp.presets.get("epsilon_gamma_box")
    as_zbox = dynlrp.presets.get("epsilon").override(ops={"ConvolutionBackward0": box.first})
    r0 = torch.randn(net(x).shape, dtype=D)
    got = dynlrp.explain(net(x), target=r0, inputs=[x], rules=box).relevance(x)
    ref = dynlrp.explain(net(x), target=r0, inputs=[x], rules=as_zbox).relevance(x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
