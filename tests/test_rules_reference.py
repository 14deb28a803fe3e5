"""Every registered rule against a slow, independent float64 reference (zennit's test_rules.py pattern).

Each case feeds a random starting relevance ``R0`` as the target of one op (``x -> op -> out``), so
the rule is tested in isolation, and compares ``exp.relevance(x)`` with the dense / Jacobian-form
formula of :mod:`reference_impl` (rtol 1e-10, float64). Every ledger row must close
(``row.error <= 1e-10``), and the absorbed amounts (bias, stabiliser, rule, constant, parameter) must
equal the reference's own terms. ``test_every_node_type_has_a_reference_case`` makes a rule
registered without a case here fail (node types torch only creates on CUDA must share the rule of a
tested CPU twin).

Larger grids (more seeds, a large epsilon) are marked ``extended`` and run with ``-m extended``.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from ledger import conserved
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import dynlrp
from dynlrp.presets import NAMES, Preset
from dynlrp.rules import REGISTRY, LinearRule
from dynlrp.rules.linear import GROUPS

try:  # tests/ as a package or as a rootdir-relative directory
    from . import reference_impl as ref
except ImportError:
    import reference_impl as ref

pytestmark = pytest.mark.usefixtures("float64")

RTOL = 1e-10
EPS = 1e-6
KINDS = ("epsilon", "zplus", "alpha_beta", "gamma", "zbox", "flat", "wsquare")
# non-default hyper-parameters, so a rule that ignores its spec fails
GAMMA, ALPHA, BETA = 0.3, 3.0, 2.0


# -------------------------------------------------------------------------------------------------
# helpers


def explain(out, r0, inputs, rules="epsilon", **kwargs) -> dynlrp.Explanation:
    """``dynlrp.explain`` with the ledger checks every case shares."""
    exp = dynlrp.explain(out, target=r0, inputs=inputs, rules=rules, strict=True, **kwargs)
    for row in exp.nodes:
        assert not row.fallback, row
        assert conserved(row, RTOL), row
    assert exp.conservation.unexplained <= RTOL, exp.conservation
    return exp


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    expected = expected.detach().to(torch.float64)
    assert tuple(actual.shape) == tuple(expected.shape)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().to(torch.float64), expected, rtol=RTOL, atol=1e-12 * scale)


def row_of(exp, node_type: str):
    rows = [row for row in exp.nodes if row.node_type == node_type]
    assert len(rows) == 1, f"expected one {node_type} row, got {[r.node_type for r in exp.nodes]}"
    return rows[0]


def check_absorbed(row, expected: dict[str, float]) -> None:
    """The row's absorbed amounts equal the reference's terms (causes missing on a side count as 0)."""
    scale = max(1.0, abs(row.relevance_in), *(abs(v) for v in expected.values()))
    for cause in set(row.absorbed) | set(expected):
        got, want = row.absorbed.get(cause, 0.0), expected.get(cause, 0.0)
        assert abs(got - want) <= RTOL * scale, (row.node_type, cause, got, want)


def check_others_absorb_nothing(exp, *node_types: str) -> None:
    for row in exp.nodes:
        if row.node_type not in node_types:
            assert all(v == 0.0 for v in row.absorbed.values()), row


def node_types(exp) -> set[str]:
    return {row.node_type for row in exp.nodes}


def leaf(*shape, positive: bool = False) -> torch.Tensor:
    x = torch.randn(*shape)
    return (x.abs() + 0.5 if positive else x).requires_grad_(True)


def preset(kind: str, eps: float, low=0.0, high=1.0) -> Preset:
    spec = LinearRule(kind, epsilon=eps, gamma=GAMMA, alpha=ALPHA, beta=BETA, low=low, high=high)
    return Preset(name=f"ref-{kind}", dense=spec, conv=spec, first=spec, epsilon=eps)


def bounds(shape) -> tuple[torch.Tensor, torch.Tensor]:
    return -(1.0 + torch.rand(shape)), 1.0 + torch.rand(shape)


def forward(build: Callable, record: bool):
    if record:
        with dynlrp.record():
            return build()
    return build()


# -------------------------------------------------------------------------------------------------
# linear layers (addmm / mm / bmm with a parameter operand): every rule kind


@dataclass
class Dense:
    """One dense layer as a reference problem: ``out = M x + b`` over flattened tensors."""

    x: torch.Tensor
    out: torch.Tensor
    matrix: torch.Tensor
    bias: torch.Tensor | None  # out-shaped
    bound_shape: tuple[int, ...]  # for ZBox low/high (broadcast against the data operand)


def _signed(x: torch.Tensor, sign: int) -> torch.Tensor:
    """``x`` made sign-definite (``sign`` +1: >= 0, as after a ReLU; -1: <= 0; 0: as it is)."""
    return x.abs() * sign if sign else x


def _linear(bias: bool, batch: tuple[int, ...], record: bool = False, frozen: bool = False, sign: int = 0,
            out_sign: int = 0) -> Dense:
    """``out_sign``: with ``sign=1``, weights and bias of that sign, so that every output has it."""
    x = _signed(torch.randn(*batch, 5), sign)
    if batch:
        x.view(-1, 5)[1] = 0.0  # a zero row: z = b (or exactly 0 without bias, sign(0) = +1)
    x.requires_grad_(True)
    lin = nn.Linear(5, 3, bias=bias)
    if out_sign:
        with torch.no_grad():
            for p in lin.parameters():
                p.copy_(_signed(p, out_sign))
    if frozen:
        lin.requires_grad_(False)
    out = forward(lambda: lin(x), record)
    matrix = ref.jacobian(lambda t: F.linear(t, lin.weight.detach()), x)
    b = lin.bias.detach().expand(out.shape) if bias else None
    return Dense(x, out, matrix, b, (5,))


def _addmm_scaled_constants() -> Dense:
    x = leaf(4, 5)
    b, w = torch.randn(3), torch.randn(5, 3)  # outside the graph: the bias is recovered from the output
    out = forward(lambda: torch.addmm(b, x, w, beta=0.5, alpha=2.0), record=True)
    return Dense(x, out, ref.jacobian(lambda t: 2.0 * (t @ w), x), (0.5 * b).expand(out.shape), (5,))


def _mm_parameter_first() -> Dense:
    x, p = leaf(4, 5), nn.Parameter(torch.randn(3, 4))
    out = p @ x
    return Dense(x, out, ref.jacobian(lambda t: p.detach() @ t, x), None, (4, 1))


def _bmm_parameter(first: bool) -> Dense:
    if first:
        x, p = leaf(2, 3, 4), nn.Parameter(torch.randn(2, 5, 3))
        out = torch.bmm(p, x)
        return Dense(x, out, ref.jacobian(lambda t: torch.bmm(p.detach(), t), x), None, (3, 1))
    x, p = leaf(2, 3, 4), nn.Parameter(torch.randn(2, 4, 5))
    out = torch.bmm(x, p)
    return Dense(x, out, ref.jacobian(lambda t: torch.bmm(t, p.detach()), x), None, (4,))


def _baddbmm(record: bool) -> Dense:
    """``beta * c + alpha * x @ P`` batched; ``c`` a constant outside the graph (ALiBi) or a parameter."""
    x, p = leaf(2, 3, 4), nn.Parameter(torch.randn(2, 4, 5))
    c = torch.randn(2, 1, 5) if record else nn.Parameter(torch.randn(2, 1, 5))
    out = forward(lambda: torch.baddbmm(c, x, p, beta=0.5, alpha=2.0), record=record)
    matrix = ref.jacobian(lambda t: 2.0 * torch.bmm(t, p.detach()), x)
    return Dense(x, out, matrix, (0.5 * c.detach()).expand(out.shape), (4,))


DENSE: dict[str, tuple[str, Callable[[], Dense]]] = {
    "linear2d_bias": ("AddmmBackward0", partial(_linear, True, (4,))),
    "linear2d_nobias": ("MmBackward0", partial(_linear, False, (4,))),
    "linear3d_bias": ("AddmmBackward0", partial(_linear, True, (2, 3))),
    # sign-definite inputs: the rules skip the terms of x- (x+) there, exactly
    "linear_nonnegative_input": ("AddmmBackward0", partial(_linear, True, (4,), sign=1)),
    "linear_nonpositive_input": ("AddmmBackward0", partial(_linear, True, (4,), sign=-1)),
    # sign-definite outputs: the groups that select the other sign (gamma) select nothing and are skipped
    "linear_nonnegative_output": ("AddmmBackward0", partial(_linear, True, (4,), sign=1, out_sign=1)),
    "linear_nonpositive_output": ("AddmmBackward0", partial(_linear, True, (4,), sign=1, out_sign=-1)),
    "linear3d_nobias": ("MmBackward0", partial(_linear, False, (2, 3))),
    "linear1d_nobias": ("MmBackward0", partial(_linear, False, ())),  # ends in squeeze_(-1)
    "linear1d_bias": ("AddmmBackward0", partial(_linear, True, ())),
    "linear_frozen": ("AddmmBackward0", partial(_linear, True, (4,), record=True, frozen=True)),
    "addmm_scaled_constants": ("AddmmBackward0", _addmm_scaled_constants),
    "mm_parameter_first": ("MmBackward0", _mm_parameter_first),
    "bmm_parameter": ("BmmBackward0", partial(_bmm_parameter, False)),
    "bmm_parameter_first": ("BmmBackward0", partial(_bmm_parameter, True)),
    "baddbmm_constant_bias": ("BaddbmmBackward0", partial(_baddbmm, True)),
    "baddbmm_parameter_bias": ("BaddbmmBackward0", partial(_baddbmm, False)),
}


def check_linear_rule(node_type: str, case: Dense, kind: str, eps: float, float_bounds: bool = False):
    """Shared by dense layers and convolutions."""
    if float_bounds:
        low, high = -1.5, 2.0
        low_x, high_x = torch.full_like(case.x, low), torch.full_like(case.x, high)
    else:
        low, high = bounds(case.bound_shape)
        low_x, high_x = low.expand_as(case.x), high.expand_as(case.x)
    r0 = torch.randn(case.out.shape)
    exp = explain(case.out, r0, [case.x], rules=preset(kind, eps, low, high))
    expected, absorbed = ref.linear(kind, case.matrix, case.bias, case.x.detach(), r0, eps=eps, gamma=GAMMA,
                                    alpha=ALPHA, beta=BETA, low=low_x, high=high_x)
    close(exp.relevance(case.x), expected.view_as(case.x))
    row = row_of(exp, node_type)
    assert row.rule == REGISTRY.rules[node_type].name
    check_absorbed(row, absorbed)
    check_others_absorb_nothing(exp, node_type)
    return exp


def check_dense(name: str, kind: str = "epsilon", seed: int = 0, eps: float = EPS, float_bounds: bool = False):
    torch.manual_seed(seed)
    node_type, build = DENSE[name]
    return check_linear_rule(node_type, build(), kind, eps, float_bounds)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_layer(name, kind):
    check_dense(name, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_dense_layer_large_epsilon(kind):
    check_dense("linear2d_bias", kind, eps=0.5)
    check_dense("linear2d_nobias", kind, eps=0.5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frozen", [False, True])
def test_dense_layer_with_relevance_in_few_rows(kind, frozen):
    """Only rows with relevance are computed (a language model head explained at one position):
    the result equals the float64 reference over all rows."""
    torch.manual_seed(0)
    x = leaf(6, 5)
    lin = nn.Linear(5, 3)
    if frozen:
        lin.requires_grad_(False)
    out = forward(lambda: lin(x), record=frozen)
    r0 = torch.zeros(out.shape)
    r0[4] = torch.randn(3)
    low, high = bounds((5,))
    exp = explain(out, r0, [x], rules=preset(kind, EPS, low, high))
    matrix = ref.jacobian(lambda t: F.linear(t, lin.weight.detach()), x)
    expected, absorbed = ref.linear(kind, matrix, lin.bias.detach().expand(out.shape), x.detach(), r0, eps=EPS,
                                    gamma=GAMMA, alpha=ALPHA, beta=BETA, low=low.expand_as(x), high=high.expand_as(x))
    close(exp.relevance(x), expected.view_as(x))
    check_absorbed(row_of(exp, "AddmmBackward0"), absorbed)
    assert exp.relevance(x)[[0, 1, 2, 3, 5]].abs().max() == 0


@pytest.mark.parametrize(("live", "selected"), [
    ([63], True), ([15, 31, 47, 63], True), (list(range(1, 64, 4)), True),  # positions no probe reads
    (list(range(0, 64, 4)), False),  # every probed row live: taken as dense, no full scan
    (list(range(33)), False), (list(range(64)), False), ([], True)])
def test_live_rows_of_a_relevance(live, selected):
    """The rows with relevance are selected (exactly those) when they are at most half of them,
    unless most of the probed rows (every 4th of 64 here) are live: then the relevance is taken as
    dense, which computes the same result over all rows."""
    from dynlrp.rules.linear import _live_rows

    torch.manual_seed(0)
    r = torch.zeros(64, 3)
    r[live] = torch.rand(len(live), 3) - 0.5
    with _LargestResult() as largest:
        rows = _live_rows(r)
    assert (rows is not None) == selected
    assert rows is None or rows.tolist() == live
    assert largest.numel < r.numel()  # no mask or copy of the relevance's size


def test_live_rows_count_nan_rows_and_skip_empty_rows():
    from dynlrp.rules.linear import _live_rows

    r = torch.zeros(64, 3)
    r[7, 1] = float("nan")
    assert _live_rows(r).tolist() == [7]
    assert _live_rows(torch.zeros(64, 0)) is None


class _LargestResult(TorchDispatchMode):
    """The largest ``numel`` of a tensor that an op returns while active."""

    numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("dense_relevance", [False, True])
def test_conv_before_relu_reads_z_from_the_relu_only_where_that_is_exact(dense_relevance):
    """A ReLU keeps ``max(z, 0)``, not ``z``. The conv rule may use it in place of ``z`` only when
    the relevance is zero wherever the ReLU output is (its terms vanish there); with relevance on
    the ReLU's zeros it must recompute ``z``. Both agree with the float64 reference."""
    torch.manual_seed(0)
    x = leaf(1, 2, 6, 6)
    conv = nn.Conv2d(2, 3, 3)
    out = torch.relu(conv(x))
    r0 = torch.randn(out.shape)
    if not dense_relevance:
        r0 = r0 * (out.detach() > 0)
    exp = explain(out, r0, [x])
    matrix = ref.jacobian(lambda t: F.conv2d(t, conv.weight.detach()), x)
    bias = conv.bias.detach().view(1, -1, 1, 1).expand(out.shape)
    expected, absorbed = ref.linear("epsilon", matrix, bias, x.detach(), r0, eps=EPS)
    close(exp.relevance(x), expected.view_as(x))
    check_absorbed(row_of(exp, "ConvolutionBackward0"), absorbed)


def test_zbox_float_bounds():
    check_dense("linear2d_bias", "zbox", float_bounds=True)
    check_conv("conv2d", "zbox", float_bounds=True)


def test_every_linear_rule_kind_is_tested():
    assert set(KINDS) == set(GROUPS)


def _antisymmetric(*shape) -> torch.Tensor:
    """Random values whose pairs along the last dim cancel exactly: ``x[..., 2k+1] = -x[..., 2k]``."""
    half = torch.randn(*shape[:-1], shape[-1] // 2, 1)
    return torch.cat([half, -half], -1).flatten(-2)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_zero_output_of_a_linear_layer(kind):
    """``z = 0`` exactly with ``x != 0``: ``s(0) = +eps`` (sign(0) = +1), and the gamma rule's groups
    (z > 0, z < 0) select nothing there, so that relevance is absorbed as ``rule``."""
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, -0.5], [1.0, 2.0]]))
    x = torch.tensor([[0.75, 0.75], [1.0, -0.5]], requires_grad=True)
    out = lin(x)
    assert (out == 0).sum() == 3
    matrix = ref.jacobian(lambda t: F.linear(t, lin.weight.detach()), x)
    exp = check_linear_rule("MmBackward0", Dense(x, out, matrix, None, (2,)), kind, EPS)
    if kind == "gamma":
        assert row_of(exp, "MmBackward0").absorbed["rule"] != 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_stabiliser_sign_convention(dtype):
    """``s(z) = z + eps * sign(z)`` with ``sign(+0) = sign(-0) = +1`` (zennit's), NaN kept."""
    from dynlrp.rules.common import stabilize
    z = torch.tensor([0.0, -0.0, 2.0, -3.0, 1e-9, -1e-9, float("nan")], dtype=dtype)
    signs = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0], dtype=dtype)
    expected = torch.add(z, signs, alpha=1e-3)  # in z's dtype, rounded as the rule's kernel rounds
    torch.testing.assert_close(stabilize(z, 1e-3), expected, rtol=0, atol=0, equal_nan=True)


def test_stabiliser_of_an_integer_tensor_is_floating():
    from dynlrp.rules.common import stabilize
    got = stabilize(torch.tensor([0, -2, 3]), 0.5)
    assert got.is_floating_point() and got.tolist() == [0.5, -2.5, 3.5]


def test_exact_zero_output_of_the_z_rules():
    """Sums, reductions and average pools whose output is exactly 0 (s = +eps)."""
    x = torch.randn(2, 3, 4)
    exp = check_sum(lambda a, b: a + b, None, "AddBackward0", xs=[x, -x])
    assert row_of(exp, "AddBackward0").absorbed["stabiliser"] != 0.0
    check_z_rule(lambda t: t.sum(-1), None, "SumBackward1", x=_antisymmetric(2, 3, 2))
    check_z_rule(lambda t: F.avg_pool2d(t, (1, 2)), None, "AvgPool2DBackward0", x=_antisymmetric(1, 2, 3, 4))


@pytest.mark.extended
@pytest.mark.parametrize("eps", [EPS, 0.1])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_layer_extended(name, kind, seed, eps):
    check_dense(name, kind, seed, eps)


# -------------------------------------------------------------------------------------------------
# convolutions: 1d/2d/3d, transposed, grouped/depthwise, strided, dilated, with/without bias


@dataclass(frozen=True)
class Conv:
    name: str
    dim: int
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    transposed: bool = False
    output_padding: int = 0
    bias: bool = True
    frozen: bool = False
    size: int = 5
    batch: int = 2
    sign: int = 0  # the input made sign-definite (``_signed``)

    def module(self) -> nn.Module:
        cls = [[nn.Conv1d, nn.Conv2d, nn.Conv3d], [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]]
        kwargs = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                      bias=self.bias)
        if self.transposed:
            kwargs["output_padding"] = self.output_padding
        return cls[self.transposed][self.dim - 1](self.cin, self.cout, self.kernel, **kwargs)

    def functional(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            fn = [F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d][self.dim - 1]
            return fn(x, weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation)
        fn = [F.conv1d, F.conv2d, F.conv3d][self.dim - 1]
        return fn(x, weight, None, self.stride, self.padding, self.dilation, self.groups)


CONVS = {c.name: c for c in [
    Conv("conv1d", 1, 3, 4, 3, stride=2, padding=1, dilation=2, size=9),
    Conv("conv2d", 2, 3, 4, 3),
    Conv("conv2d_nonnegative_input", 2, 3, 4, 3, padding=1, sign=1),
    Conv("conv2d_nonpositive_input_nobias", 2, 3, 4, 3, bias=False, sign=-1),
    Conv("conv2d_strided_padded_nobias", 2, 3, 4, 3, stride=2, padding=1, bias=False, size=6),
    Conv("conv2d_dilated_grouped", 2, 4, 6, 2, dilation=2, groups=2, padding=1),
    Conv("conv2d_depthwise", 2, 3, 6, 3, groups=3, padding=1, size=4),
    Conv("conv2d_frozen", 2, 3, 4, 3, frozen=True, size=4),
    Conv("conv3d", 3, 2, 3, 2, stride=2, padding=1, size=4),
    Conv("conv_transpose1d_grouped", 1, 4, 2, 3, stride=2, padding=1, output_padding=1, groups=2,
         transposed=True, size=4),
    Conv("conv_transpose2d", 2, 3, 2, 3, stride=2, padding=1, output_padding=1, transposed=True, size=3),
    Conv("conv_transpose2d_dilated_nobias", 2, 2, 3, 2, dilation=2, bias=False, transposed=True, size=3),
    Conv("conv_transpose3d_nobias", 3, 2, 2, 2, stride=2, bias=False, transposed=True, size=2, batch=1),
]}


def _conv_case(cfg: Conv) -> Dense:
    conv = cfg.module()
    if cfg.frozen:
        conv.requires_grad_(False)
    x = _signed(torch.randn(cfg.batch, cfg.cin, *(cfg.size,) * cfg.dim), cfg.sign).requires_grad_(True)
    out = forward(lambda: conv(x), record=cfg.frozen)
    weight = conv.weight.detach()
    matrix = ref.jacobian(lambda t: cfg.functional(t, weight), x)
    b = conv.bias.detach().view((1, -1) + (1,) * cfg.dim).expand(out.shape) if cfg.bias else None
    return Dense(x, out, matrix, b, (1, cfg.cin) + (1,) * cfg.dim)


def check_conv(name: str, kind: str = "epsilon", seed: int = 0, eps: float = EPS, float_bounds: bool = False):
    torch.manual_seed(seed)
    return check_linear_rule("ConvolutionBackward0", _conv_case(CONVS[name]), kind, eps, float_bounds)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution(name, kind):
    check_conv(name, kind)


class _ConvolutionCount(TorchDispatchMode):
    """Counts the convolutions and convolution VJPs run while active, and the tensor operands of
    theirs that are not contiguous (``strided``)."""

    def __init__(self):
        super().__init__()
        self.forward = self.backward = self.strided = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        is_forward = func.overloadpacket is torch.ops.aten.convolution
        is_backward = func.overloadpacket is torch.ops.aten.convolution_backward
        self.forward += is_forward
        self.backward += is_backward
        if is_forward or is_backward:
            self.strided += sum(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in args)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("float_bounds", [False, True])
def test_box_bounds_reach_the_convolutions_as_dense_tensors(float_bounds):
    """ZBox's bounds enter the convolution and its VJP as materialised tensors, not as stride-0
    expansions of a scalar or per-channel bound (a VJP over an expanded input ran about 6x slower
    on ResNet-50's first layer); the relevance still agrees with the reference."""
    torch.manual_seed(0)
    case = _conv_case(CONVS["conv2d"])
    with _ConvolutionCount() as count:
        check_linear_rule("ConvolutionBackward0", case, "zbox", EPS, float_bounds)
    assert count.forward >= 2 and count.backward == 3
    assert count.strided == 0


@pytest.mark.parametrize("kind, forwards", [("gamma", 1), ("alpha_beta", 2)])
def test_two_groups_on_a_sign_definite_input_share_the_positive_weights(kind, forwards):
    """x >= 0 and z of both signs: gamma's two groups are ``Z_g = n_g z' + d_g f(x, W+) + B_g`` (z' the
    layer's own ``f(x, W)``) with ``R_x = x (f^T(W, .) + f^T(W+, .))``: one convolution and two VJPs in
    all, still equal to the reference. Alpha-beta's beta group (``W-`` alone) is not rewritten: it
    would cancel, so each group convolves its own weights."""
    torch.manual_seed(0)
    case = _conv_case(CONVS["conv2d_nonnegative_input"])
    assert case.out.min() < 0 < case.out.max()
    with _ConvolutionCount() as count:
        check_linear_rule("ConvolutionBackward0", case, kind, EPS)
    assert (count.forward, count.backward) == (forwards, 2)


def _conv_bn_relu(fold: bool) -> nn.Module:
    """conv -> ReLU -> conv + batch norm -> ReLU -> conv; ``fold``: the batch norm folded into the
    convolution before it (``W' = a W``, ``b' = a b + c``)."""
    torch.manual_seed(0)
    first, middle, last, head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 2, 3), nn.Linear(200, 1)
    norm = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    layers = [first, nn.ReLU(), middle, norm, nn.ReLU(), last]
    if fold:
        a = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        folded = nn.Conv2d(4, 6, 3)
        with torch.no_grad():
            folded.weight.copy_(middle.weight * a.view(-1, 1, 1, 1))
            folded.bias.copy_(a * (middle.bias - norm.running_mean) + norm.bias)
        layers[2:4] = [folded]
    return nn.Sequential(*layers, nn.Flatten(), head).double()


def test_a_merged_batch_norm_before_a_relu_costs_what_the_folded_layer_costs():
    """A convolution + batch norm merged (``merge_batch_norm``) and followed by a ReLU takes ``y`` on
    the relevance's support from the ReLU's result, as the folded convolution does: gamma's ``y < 0``
    group, which has no relevance, is skipped, and the merged network runs as many convolutions and
    VJPs as the folded one, with the same relevance."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    preset = dynlrp.presets.get("epsilon_gamma_box", merge_batch_norm=True)
    results = []
    for fold in (False, True):
        model, leaf = _conv_bn_relu(fold), x.clone().requires_grad_(True)
        out = model(leaf)
        with _ConvolutionCount() as count:
            exp = dynlrp.explain(out, target=0, rules=preset, inputs=[leaf])
        assert exp.conservation.unexplained < 1e-12
        results.append((exp.relevance(leaf), count.forward, count.backward))
    (merged, *merged_count), (folded, *folded_count) = results
    assert merged_count == folded_count
    torch.testing.assert_close(merged, folded, rtol=1e-10, atol=1e-12)


@pytest.mark.extended
@pytest.mark.parametrize("eps", [EPS, 0.1])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution_extended(name, kind, seed, eps):
    check_conv(name, kind, seed, eps)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_matrix_is_elementwise_in_the_weights(name):
    """The reference's premise: the matrix of conv(., f(W)) is f applied to the matrix of conv(., W)."""
    cfg = CONVS[name]
    conv = cfg.module()
    x = torch.randn(cfg.batch, cfg.cin, *(cfg.size,) * cfg.dim)
    w = conv.weight.detach()
    matrix = ref.jacobian(lambda t: cfg.functional(t, w), x)
    modified = [(lambda v: v.clamp(min=0), matrix.clamp(min=0)), (lambda v: v.clamp(max=0), matrix.clamp(max=0)),
                (lambda v: v * v, matrix * matrix), (torch.ones_like, (matrix != 0).to(matrix))]
    for fn, of_matrix in modified:
        got = ref.jacobian(lambda t, fn=fn: cfg.functional(t, fn(w)), x)
        torch.testing.assert_close(got, of_matrix, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# the preset roles: first layer / other convolutions / dense layers


G130, G001 = ("gamma", {"gamma": 130.0}), ("gamma", {"gamma": 0.001})
EPS_, ZP, AB, GA = ("epsilon", {}), ("zplus", {}), ("alpha_beta", {}), ("gamma", {})
ROLES = {  # preset -> (first conv, second conv, dense): kind and its non-default parameters
    "epsilon": (EPS_, EPS_, EPS_),
    "zplus": (ZP, ZP, ZP),
    "alpha_beta": (AB, AB, AB),
    "gamma": (GA, GA, GA),
    "epsilon_plus": (ZP, ZP, EPS_),
    "epsilon_alpha2_beta1": (AB, AB, EPS_),
    "epsilon_gamma_box": (("zbox", {}), GA, EPS_),
    "flat": (("flat", {}), EPS_, EPS_),
    "wsquare": (("wsquare", {}), EPS_, EPS_),
    "attnlrp": (EPS_, EPS_, EPS_),
    "cp_lrp": (EPS_, EPS_, EPS_),
    "dynamiclrp_vit": (G130, G130, G001),
}


def test_roles_table_covers_every_preset():
    assert set(ROLES) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_preset_roles(name):
    """x -> conv -> relu -> conv -> relu -> flatten -> linear -> relu -> linear, with the named preset:
    the reference chains the per-layer formulas with the kind each role gets (presets defaults)."""
    conv1, conv2 = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 3, 3)
    lin1, lin2 = nn.Linear(12, 5), nn.Linear(5, 3)
    x = leaf(1, 2, 6, 6)
    h1 = conv1(x)
    h2 = conv2(torch.relu(h1))
    f = torch.relu(h2).flatten(1)
    h3 = lin1(f)
    out = lin2(torch.relu(h3))
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x], rules=name)
    first, conv, dense = ROLES[name]

    def layer(role, fn, inp, bias_vec, r):
        kind, params = role
        inp = inp.detach()
        kw = dict(eps=EPS, gamma=0.25, alpha=2.0, beta=1.0, low=torch.zeros_like(inp), high=torch.ones_like(inp))
        rel, _ = ref.linear(kind, ref.jacobian(fn, inp), bias_vec.flatten(), inp, r, **{**kw, **params})
        return rel.view_as(inp)

    a3 = torch.relu(h3).detach()
    r = layer(dense, lambda t: F.linear(t, lin2.weight.detach()), a3, lin2.bias.detach().expand(out.shape), r0)
    r = layer(dense, lambda t: F.linear(t, lin1.weight.detach()), f, lin1.bias.detach().expand(h3.shape), r)
    r = r.view(h2.shape)
    a1 = torch.relu(h1)
    r = layer(conv, lambda t: F.conv2d(t, conv2.weight.detach()), a1,
              conv2.bias.detach().view(1, -1, 1, 1).expand(h2.shape), r)
    r = layer(first, lambda t: F.conv2d(t, conv1.weight.detach()), x,
              conv1.bias.detach().view(1, -1, 1, 1).expand(h1.shape), r)
    close(exp.relevance(x), r)


# -------------------------------------------------------------------------------------------------
# products of two activations: the uniform rule


UNIFORM = {  # name: (node type, shape of a, shape of b, f(a, b))
    "mm_two_activations": ("MmBackward0", (3, 4), (4, 5), lambda p, q: p @ q),
    "bmm_two_activations": ("BmmBackward0", (2, 3, 4), (2, 4, 5), torch.bmm),
    "matmul_4d_two_activations": ("BmmBackward0", (2, 2, 3, 4), (2, 2, 4, 5), torch.matmul),
    "matmul_3d_2d_two_activations": ("MmBackward0", (2, 3, 4), (4, 5), torch.matmul),
}


def check_uniform(name: str, seed: int = 0):
    torch.manual_seed(seed)
    node_type, shape_a, shape_b, fn = UNIFORM[name]
    a, b = leaf(*shape_a), leaf(*shape_b)
    out = fn(a, b)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [a, b])
    ra, rb, absorbed = ref.uniform(fn, a, b, r0, EPS)
    close(exp.relevance(a), ra)
    close(exp.relevance(b), rb)
    check_absorbed(row_of(exp, node_type), absorbed)
    check_others_absorb_nothing(exp, node_type)
    return exp


@pytest.mark.parametrize("name", sorted(UNIFORM))
def test_uniform_product(name):
    check_uniform(name)


def test_uniform_addmm_with_bias():
    a, b = leaf(3, 4), leaf(4, 5)
    bias = nn.Parameter(torch.randn(5))
    out = torch.addmm(bias, a, b, beta=0.5, alpha=1.5)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [a, b])
    ra, rb, absorbed = ref.uniform(lambda p, q: 1.5 * (p @ q), a, b, r0, EPS, bias=0.5 * bias.detach())
    close(exp.relevance(a), ra)
    close(exp.relevance(b), rb)
    check_absorbed(row_of(exp, "AddmmBackward0"), absorbed)


def test_uniform_baddbmm_with_a_constant_bias():
    """Attention scores plus ALiBi: both factors data (uniform rule), the added term a constant that
    only record() keeps."""
    a, b = leaf(2, 3, 4), leaf(2, 4, 5)
    c = torch.randn(2, 1, 5)
    with dynlrp.record():
        out = torch.baddbmm(c, a, b, beta=0.5, alpha=1.5)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [a, b])
    ra, rb, absorbed = ref.uniform(lambda p, q: 1.5 * torch.bmm(p, q), a, b, r0, EPS, bias=0.5 * c)
    close(exp.relevance(a), ra)
    close(exp.relevance(b), rb)
    check_absorbed(row_of(exp, "BaddbmmBackward0"), absorbed)


def test_uniform_product_of_one_input_with_itself():
    x = leaf(3, 4)
    out = x @ x.t()
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    ra, rb, absorbed = ref.uniform(lambda p, q: p @ q, x, x.t(), r0, EPS)
    close(exp.relevance(x), ra + rb.t())
    check_absorbed(row_of(exp, "MmBackward0"), absorbed)
    assert "TBackward0" in node_types(exp)


# -------------------------------------------------------------------------------------------------
# single cases (activations, pooling, normalisation, elementwise, reductions, shapes, sources):
# each is registered with the node types it must exercise


@dataclass
class Case:
    fn: Callable[[], dynlrp.Explanation]
    node_types: tuple[str, ...]


CASES: dict[str, Case] = {}


def case(name: str, *types: str):
    def register(fn):
        def run():
            exp = fn()
            missing = set(types) - node_types(exp)
            assert not missing, f"case {name} did not produce {missing}"
            return exp

        CASES[name] = Case(run, types)
        return fn

    return register


def check_identity(fn: Callable, node_type: str, shape=(2, 3, 4), positive: bool = False):
    x = leaf(*shape, positive=positive)
    out = fn(x)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    close(exp.relevance(x), r0)
    assert next(row for row in exp.nodes if row.node_type == node_type).rule == REGISTRY.rules[node_type].name
    check_others_absorb_nothing(exp)
    return exp


# activations: identity ---------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": (torch.relu, "ReluBackward0"),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), "LeakyReluBackward0"),
    "elu": (lambda x: F.elu(x, 0.7), "EluBackward0"),
    "selu": (F.selu, "EluBackward0"),
    "elu_inplace": (lambda x: F.elu(x.clone(), inplace=True), "EluBackward1"),
    "gelu": (F.gelu, "GeluBackward0"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), "GeluBackward0"),
    "silu": (F.silu, "SiluBackward0"),
    "tanh": (torch.tanh, "TanhBackward0"),
    "sigmoid": (torch.sigmoid, "SigmoidBackward0"),
    "softplus": (lambda x: F.softplus(x, beta=2.0), "SoftplusBackward0"),
    "hardswish": (F.hardswish, "HardswishBackward0"),
    "hardsigmoid": (F.hardsigmoid, "HardsigmoidBackward0"),
    "hardtanh": (lambda x: F.hardtanh(x, -0.5, 0.5), "HardtanhBackward0"),
    "relu6": (F.relu6, "HardtanhBackward0"),
    "clamp": (lambda x: x.clamp(-0.5, 0.5), "ClampBackward1"),
    "clamp_min": (lambda x: torch.clamp_min(x, 0.1), "ClampMinBackward0"),
    "mish": (F.mish, "MishBackward0"),
    "threshold": (lambda x: F.threshold(x, 0.1, -1.0), "ThresholdBackward0"),
    "prelu": (lambda x: nn.PReLU(3, 0.2)(x), "PreluKernelBackward0"),
    "clamp_max": (lambda x: torch.clamp_max(x, 0.3), "ClampMaxBackward0"),
    "celu": (lambda x: F.celu(x, 0.8), "CeluBackward0"),
    "logsigmoid": (F.logsigmoid, "LogSigmoidBackward0"),
    "pow": (lambda x: x**3, "PowBackward0"),
    "pow_tensor_exponent": (lambda x: x.abs().pow(torch.full(x.shape, 3.0)), "PowBackward1"),
    "exp": (torch.exp, "ExpBackward0"),
    "expm1": (torch.expm1, "Expm1Backward0"),
    "erf": (torch.erf, "ErfBackward0"),
    "abs": (torch.abs, "AbsBackward0"),
    "sin": (torch.sin, "SinBackward0"),
    "cos": (torch.cos, "CosBackward0"),
    "log": (torch.log, "LogBackward0"),
    "log1p": (torch.log1p, "Log1PBackward0"),
    "sqrt": (torch.sqrt, "SqrtBackward0"),
    "rsqrt": (torch.rsqrt, "RsqrtBackward0"),
    "reciprocal": (torch.reciprocal, "ReciprocalBackward0"),
    "native_dropout_train": (lambda x: torch.native_dropout(x, 0.5, True)[0], "NativeDropoutBackward0"),
    "dropout_module_train": (lambda x: nn.Dropout(0.5).train()(x), "MulBackward0"),
    # products that are elementwise functions of one tensor: all relevance to the scaled factor
    "gate_silu_by_hand": (lambda x: x * torch.sigmoid(x), "MulBackward0"),
    "gate_gelu_tanh_by_hand": (lambda x: 0.5 * x * (1.0 + torch.tanh(0.79788 * (x + 0.044715 * x**3))),
                               "MulBackward0"),
    "statistic_rmsnorm_by_hand": (lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), "MulBackward0"),
}
POSITIVE_INPUT = {"log", "log1p", "sqrt", "rsqrt", "reciprocal"}

for _name, (_fn, _type) in ACTIVATIONS.items():
    case(f"activation_{_name}", _type)(partial(check_identity, _fn, _type, positive=_name in POSITIVE_INPUT))


# pooling -------------------------------------------------------------------------------------------

MAX_POOLS = {  # name: (f(x, return_indices), input shape, node type)
    "max_pool2d_overlapping": (lambda x, ri: F.max_pool2d(x, 3, stride=2, padding=1, return_indices=ri),
                               (2, 3, 7, 7), "MaxPool2DWithIndicesBackward0"),
    "max_pool2d_dilated_ceil": (lambda x, ri: F.max_pool2d(x, 2, stride=2, dilation=2, ceil_mode=True,
                                                           return_indices=ri), (1, 2, 7, 6),
                                "MaxPool2DWithIndicesBackward0"),
    "max_pool3d": (lambda x, ri: F.max_pool3d(x, 2, stride=1, return_indices=ri), (1, 2, 4, 4, 3),
                   "MaxPool3DWithIndicesBackward0"),
    "adaptive_max_pool2d": (lambda x, ri: F.adaptive_max_pool2d(x, (3, 2), return_indices=ri), (2, 2, 7, 5),
                            "AdaptiveMaxPool2DBackward0"),
    "adaptive_max_pool3d": (lambda x, ri: F.adaptive_max_pool3d(x, (2, 3, 2), return_indices=ri),
                            (1, 2, 4, 5, 3), "AdaptiveMaxPool3DBackward0"),
}


def check_max_pool(name: str):
    fn, shape, _ = MAX_POOLS[name]
    x = leaf(*shape)
    out = fn(x, False)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    _, indices = fn(x.detach(), True)
    close(exp.relevance(x), ref.winner_takes_all(x, indices, r0))
    check_others_absorb_nothing(exp)
    return exp


for _name, (_fn, _shape, _type) in MAX_POOLS.items():
    case(_name, _type)(partial(check_max_pool, _name))


AVG_POOLS = {  # name: (f, input shape, node type)
    "avg_pool2d_padded": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), (2, 3, 7, 7), "AvgPool2DBackward0"),
    "avg_pool2d_exclude_pad_ceil": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                                           count_include_pad=False), (1, 2, 6, 6),
                                    "AvgPool2DBackward0"),
    "avg_pool2d_divisor_override": (lambda x: F.avg_pool2d(x, 2, divisor_override=3), (1, 2, 4, 6),
                                    "AvgPool2DBackward0"),
    "avg_pool3d": (lambda x: F.avg_pool3d(x, 2, stride=1, padding=1), (1, 2, 3, 3, 4), "AvgPool3DBackward0"),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), (2, 2, 7, 5), "AdaptiveAvgPool2DBackward0"),
    "adaptive_avg_pool3d": (lambda x: F.adaptive_avg_pool3d(x, (2, 3, 2)), (1, 2, 4, 5, 3),
                            "AdaptiveAvgPool3DBackward0"),
}


def check_z_rule(fn: Callable, shape, node_type: str, eps: float = EPS, r0: torch.Tensor | None = None,
                 x: torch.Tensor | None = None):
    """``z = M x`` homogeneous linear (average pools, sums, means): the z-rule."""
    x = leaf(*shape) if x is None else x.detach().clone().requires_grad_(True)
    out = fn(x)
    r0 = torch.randn(out.shape) if r0 is None else r0
    exp = explain(out, r0, [x], rules=Preset("ref", epsilon=eps))
    (expected,), stabiliser, _ = ref.z_rule([ref.jacobian(fn, x)], [x.detach()], r0, eps)
    close(exp.relevance(x), expected)
    check_absorbed(row_of(exp, node_type), {"stabiliser": stabiliser})
    check_others_absorb_nothing(exp, node_type)
    return exp


for _name, (_fn, _shape, _type) in AVG_POOLS.items():
    case(_name, _type)(partial(check_z_rule, _fn, _shape, _type))


@pytest.mark.parametrize("name", sorted(AVG_POOLS))
def test_average_pool_large_epsilon(name):
    fn, shape, node_type = AVG_POOLS[name]
    check_z_rule(fn, shape, node_type, eps=0.3)


# reductions ------------------------------------------------------------------------------------------

REDUCTIONS = {
    "sum_all": (torch.sum, "SumBackward0"),
    "sum_dims": (lambda x: x.sum((0, 2)), "SumBackward1"),
    "sum_negative_dim_keepdim": (lambda x: x.sum(-1, keepdim=True), "SumBackward1"),
    "mean_all": (torch.mean, "MeanBackward0"),
    "mean_dims": (lambda x: x.mean((1, -1)), "MeanBackward1"),
    "mean_keepdim": (lambda x: x.mean(0, keepdim=True), "MeanBackward1"),
    "adaptive_avg_pool2d_to_1": (lambda x: F.adaptive_avg_pool2d(x, 1), "MeanBackward1"),
}

for _name, (_fn, _type) in REDUCTIONS.items():
    case(_name, _type)(partial(check_z_rule, _fn, (2, 3, 4) if "pool" not in _name else (2, 3, 4, 4), _type))


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_large_epsilon(name):
    fn, node_type = REDUCTIONS[name]
    check_z_rule(fn, (2, 3, 4) if "pool" not in name else (2, 3, 4, 4), node_type, eps=0.3)


# batch norm ------------------------------------------------------------------------------------------

def _batch_norm(dim: int, train: bool = False, affine: bool = True, frozen_bias: bool = False):
    cls = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dim - 1]
    bn = cls(3, affine=affine, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.copy_(torch.rand(3) + 0.5)
        if affine:
            bn.weight.copy_(torch.randn(3))
            bn.bias.copy_(torch.randn(3))
    if frozen_bias:
        bn.bias.requires_grad_(False)
    bn.train(train)
    x = leaf(4, 3, *(3,) * dim)
    dims = (0,) + tuple(range(2, x.dim()))
    if train:
        mean, var = x.detach().mean(dims), x.detach().var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = forward(lambda: bn(x), record=frozen_bias)
    shape = (1, -1) + (1,) * dim
    a = (bn.weight.detach() if affine else torch.ones(3)) / torch.sqrt(var + bn.eps)
    c = (bn.bias.detach() if affine else torch.zeros(3)) - mean * a
    a, c = a.view(shape).expand(x.shape), c.view(shape).expand(x.shape)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    # the affine map y = a x + c as a (diagonal) matrix, epsilon rule
    expected, absorbed = ref.linear("epsilon", torch.diag(a.flatten()), c.flatten(), x.detach(), r0, eps=EPS)
    close(exp.relevance(x), expected.view_as(x))
    check_absorbed(row_of(exp, "NativeBatchNormBackward0"), absorbed)
    return exp


case("batch_norm2d_eval", "NativeBatchNormBackward0")(partial(_batch_norm, 2))
case("batch_norm2d_eval_frozen_bias", "NativeBatchNormBackward0")(partial(_batch_norm, 2, frozen_bias=True))
case("batch_norm1d_eval_no_affine", "NativeBatchNormBackward0")(partial(_batch_norm, 1, affine=False))
case("batch_norm3d_eval", "NativeBatchNormBackward0")(partial(_batch_norm, 3))
case("batch_norm2d_train", "NativeBatchNormBackward0")(partial(_batch_norm, 2, train=True))


# layer norm / group norm: the LN-rule (statistic rstd frozen, the mean stays linear) ------------------

def check_frozen_statistics(module: nn.Module, shape, normalised, groups: int | None = None, record: bool = False,
                            node_type: str = "NativeLayerNormBackward0", mean_frozen: bool = False):
    """``y = w * (x - mean) * rstd + b`` with ``rstd`` (and, for batch/instance norm, ``mean``) held
    constant: the epsilon rule on the matrix of that map. ``normalised``: the dims the statistics
    run over (after grouping channels into ``groups``)."""
    x = leaf(*shape)
    out = forward(lambda: module(x), record)
    xd = x.detach()

    def grouped(t):
        return t if groups is None else t.reshape(t.shape[0], groups, -1)

    g = grouped(xd)
    mean_fixed = g.mean(normalised, keepdim=True)
    rstd = torch.rsqrt(g.var(normalised, unbiased=False, keepdim=True) + module.eps)
    channel = (1, -1) + (1,) * (x.dim() - 2)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.LayerNorm):
        w = weight.detach() if weight is not None else torch.ones(())
        b = bias.detach() if bias is not None else torch.zeros(())
    else:
        w = weight.detach().view(channel) if weight is not None else torch.ones(())
        b = bias.detach().view(channel) if bias is not None else torch.zeros(())

    def frozen(t):
        tg = grouped(t)
        centred = (tg - (mean_fixed if mean_frozen else tg.mean(normalised, keepdim=True))) * rstd
        return w * centred.reshape(t.shape)

    matrix = ref.jacobian(frozen, xd)
    shift = frozen(xd) - (matrix @ xd.flatten()).view_as(xd)  # 0, or -w mean rstd with the mean frozen
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    expected, absorbed = ref.linear("epsilon", matrix, (shift + b).expand(x.shape), xd, r0, eps=EPS)
    close(exp.relevance(x), expected.view_as(x))
    check_absorbed(row_of(exp, node_type), absorbed)
    return exp


def _instance_norm():
    """InstanceNorm runs as batch norm over a (1, N*C, ...) view: the batch-norm rule, mean frozen too."""
    inorm = nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        inorm.weight.copy_(torch.randn(3))
        inorm.bias.copy_(torch.randn(3))
    return check_frozen_statistics(inorm, (2, 3, 3, 4), (2, 3), node_type="NativeBatchNormBackward0",
                                   mean_frozen=True)


def _affine(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape))
    return module


NORMS = {
    "layer_norm": (lambda: _affine(nn.LayerNorm(4)), (2, 3, 4), (-1,), {}),
    "layer_norm_two_dims": (lambda: _affine(nn.LayerNorm([3, 4])), (2, 3, 4), (-2, -1), {}),
    "layer_norm_no_bias": (lambda: _affine(nn.LayerNorm(4, bias=False)), (2, 3, 4), (-1,), {}),
    "layer_norm_no_affine": (lambda: nn.LayerNorm(4, elementwise_affine=False), (2, 3, 4), (-1,), {}),
    "group_norm": (lambda: _affine(nn.GroupNorm(2, 4)), (2, 4, 3, 2), (-1,),
                   dict(groups=2, node_type="NativeGroupNormBackward0")),
    "group_norm_no_affine": (lambda: nn.GroupNorm(4, 4, affine=False), (2, 4, 5), (-1,),
                             dict(groups=4, node_type="NativeGroupNormBackward0")),
    "group_norm_frozen_bias": (lambda: _affine(nn.GroupNorm(2, 4)).requires_grad_(False), (2, 4, 3), (-1,),
                               dict(groups=2, node_type="NativeGroupNormBackward0", record=True)),
}

def _norm_case(name: str):
    build, shape, dims, kw = NORMS[name]
    return check_frozen_statistics(build(), shape, dims, **kw)


for _name, (*_, _kw) in NORMS.items():
    case(_name, _kw.get("node_type", "NativeLayerNormBackward0"))(partial(_norm_case, _name))
case("instance_norm", "NativeBatchNormBackward0")(_instance_norm)


# softmax, log-softmax, attention --------------------------------------------------------------------

def check_softmax(fn: Callable, dim: int, node_type: str, masked: bool = False):
    x = leaf(2, 3, 5)
    if masked:  # masked_fill saves no fill value, so softmax's input is kept by record()
        with dynlrp.record():
            y = x.masked_fill(_pattern(x.shape), float("-inf"))
            out = fn(y, dim)
    else:
        y = x
        out = fn(y, dim)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    expected, lost = ref.softmax_rule(y, r0, dim)
    close(exp.relevance(x), expected)
    check_absorbed(row_of(exp, node_type), {"rule": lost})
    check_others_absorb_nothing(exp, node_type)
    return exp


case("softmax", "SoftmaxBackward0")(partial(check_softmax, torch.softmax, -1, "SoftmaxBackward0"))
case("softmax_dim1", "SoftmaxBackward0")(partial(check_softmax, torch.softmax, 1, "SoftmaxBackward0"))
case("softmax_masked", "SoftmaxBackward0", "MaskedFillBackward0")(
    partial(check_softmax, torch.softmax, -1, "SoftmaxBackward0", masked=True))
case("safe_softmax", "SafeSoftmaxBackward0")(
    partial(check_softmax, torch.ops.aten._safe_softmax, -1, "SafeSoftmaxBackward0"))


@case("log_softmax", "LogSoftmaxBackward0")
def _log_softmax():
    x = leaf(2, 3, 5)
    out = torch.log_softmax(x, 1)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    normaliser = -torch.logsumexp(x.detach(), 1, keepdim=True).expand(x.shape)
    (expected,), stabiliser, constant = ref.z_rule([torch.eye(x.numel())], [x.detach()], r0, EPS, const=normaliser)
    close(exp.relevance(x), expected)
    check_absorbed(row_of(exp, "LogSoftmaxBackward0"), {"stabiliser": stabiliser, "constant": constant})
    return exp


def check_sdpa(mask: str | None = None, kv_heads: int = 2, scale: float | None = None, cp: bool = False):
    q, k, v = leaf(1, 2, 3, 4), leaf(1, kv_heads, 5, 4), leaf(1, kv_heads, 5, 4)
    kwargs: dict = {"enable_gqa": kv_heads != 2} if kv_heads != 2 else {}
    ref_mask = None
    if mask == "float":
        kwargs["attn_mask"] = ref_mask = torch.randn(3, 5)
    elif mask == "bool":
        keep = torch.rand(3, 5) > 0.4
        keep[:, 0] = True
        kwargs["attn_mask"] = keep
        ref_mask = torch.zeros(3, 5).masked_fill(~keep, float("-inf"))
    elif mask == "causal":
        kwargs["is_causal"] = True
        ref_mask = torch.zeros(3, 5).masked_fill(~torch.ones(3, 5, dtype=torch.bool).tril(), float("-inf"))
    if scale is not None:
        kwargs["scale"] = scale
    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [q, k, v], rules=Preset("ref", epsilon=EPS, attention="cp" if cp else "uniform"))
    r_q, r_k, r_v, absorbed, ref_out = ref.attention(q, k, v, r0, EPS, scale or 4**-0.5, ref_mask, cp=cp)
    torch.testing.assert_close(ref_out, out.detach(), rtol=1e-12, atol=1e-12)  # the reference's semantics
    close(exp.relevance(q), torch.zeros_like(q) if cp else r_q)
    close(exp.relevance(k), torch.zeros_like(k) if cp else r_k)
    close(exp.relevance(v), r_v)
    check_absorbed(row_of(exp, "ScaledDotProductFlashAttentionForCpuBackward0"), absorbed)
    return exp


SDPA_CPU = "ScaledDotProductFlashAttentionForCpuBackward0"
SDPAS = {
    "sdpa": {},
    "sdpa_scale": dict(scale=0.3),
    "sdpa_float_mask": dict(mask="float"),
    "sdpa_bool_mask": dict(mask="bool"),
    "sdpa_causal": dict(mask="causal"),
    "sdpa_grouped_query": dict(kv_heads=1),
    "sdpa_cp": dict(cp=True),
    "sdpa_cp_causal_grouped": dict(cp=True, mask="causal", kv_heads=1),
}
for _name, _kw in SDPAS.items():
    case(_name, SDPA_CPU)(partial(check_sdpa, **_kw))


def _attention_by_hand(preset_name: str):
    """softmax(q k^T / 2) v written out, with a named preset: attnlrp (uniform rule on both
    products) or cp_lrp (the attention weights are constant: epsilon rule on ``A v``, nothing to q, k)."""
    q, k, v = leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 4)
    scores = q @ k.transpose(-1, -2) / 2.0
    a = torch.softmax(scores, -1)
    out = a @ v
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [q, k, v], rules=preset_name)
    a, scores = a.detach(), scores.detach()
    if preset_name == "cp_lrp":
        r_v, _ = ref.linear("epsilon", ref.jacobian(lambda t: a @ t, v), None, v.detach(), r0, eps=EPS)
        close(exp.relevance(v), r_v.view_as(v))
        close(exp.relevance(q), torch.zeros_like(q))
        close(exp.relevance(k), torch.zeros_like(k))
        return exp
    r_a, r_v, _ = ref.uniform(lambda p, t: p @ t, a, v, r0, EPS)
    r_scores, _ = ref.softmax_rule(scores, r_a, -1)
    r_q, r_kt, _ = ref.uniform(lambda p, t: p @ t, q, k.transpose(-1, -2), r_scores, EPS)  # div: R passes
    close(exp.relevance(v), r_v)
    close(exp.relevance(q), r_q)
    close(exp.relevance(k), r_kt.transpose(-1, -2))
    return exp


case("attention_by_hand_attnlrp", "SoftmaxBackward0", "BmmBackward0", "DivBackward0")(
    partial(_attention_by_hand, "attnlrp"))
case("attention_by_hand_cp_lrp", "BmmBackward0")(partial(_attention_by_hand, "cp_lrp"))


# elementwise sums: signed z-rule ---------------------------------------------------------------------

def check_sum(fn: Callable, shapes, node_type: str, param: tuple[int, ...] | None = None,
              const: Callable[[], torch.Tensor] | float | None = None, record: bool = False,
              ref_fn: Callable | None = None, xs: list[torch.Tensor] | None = None):
    """``z = fn(x, y, ...)``, a signed sum of the leaves (and one parameter or constant operand);
    ``ref_fn``: the same sum written with tensor operands, for the Jacobians."""
    xs = [leaf(*s) for s in shapes] if xs is None else [x.detach().clone().requires_grad_(True) for x in xs]
    extra = nn.Parameter(torch.randn(param)) if param is not None else const() if callable(const) else const
    args = xs + ([extra] if extra is not None else [])
    out = forward(lambda: fn(*args), record)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, xs)
    values = [a.detach() if isinstance(a, torch.Tensor) else torch.tensor(float(a)) for a in args]

    def call(i, t):
        vals = list(values)
        vals[i] = t
        return (ref_fn or fn)(*vals)

    matrices = [ref.jacobian(partial(call, i), v) for i, v in enumerate(values)]
    shares, stabiliser, _ = ref.z_rule(matrices, values, r0, EPS)
    for x, share in zip(xs, shares):
        close(exp.relevance(x), share)
    expected = {"stabiliser": stabiliser}
    if extra is not None:
        expected["parameter" if param is not None else "constant"] = float(shares[-1].sum())
    check_absorbed(row_of(exp, node_type), expected)
    check_others_absorb_nothing(exp, node_type)
    return exp


SUMS = {
    "add_broadcast": (lambda x, y: x + y, [(2, 3, 4), (3, 1)], "AddBackward0", {}),
    "add_alpha": (lambda x, y: torch.add(x, y, alpha=2.5), [(2, 3, 4), (4,)], "AddBackward0", {}),
    "add_same_input": (lambda x: x + x, [(2, 3)], "AddBackward0", {}),
    "sub_broadcast_alpha": (lambda x, y: torch.sub(x, y, alpha=0.5), [(2, 3, 4), (2, 1, 4)], "SubBackward0", {}),
    "rsub_tensor": (lambda x, y: torch.rsub(x, y, alpha=2.0), [(2, 3, 4), (3, 4)], "RsubBackward0", {}),
    "add_parameter": (lambda x, p: x + p, [(2, 3, 4)], "AddBackward0", dict(param=(4,))),
    "sub_parameter_first": (lambda x, p: p - x, [(3, 4)], "SubBackward0", dict(param=(2, 3, 4))),
    "add_constant_tensor": (lambda x, c: x + c, [(2, 3, 4)], "AddBackward0",
                            dict(const=lambda: torch.tensor([1.0, -2.0, 0.5, 3.0]), record=True)),
    "add_python_scalar": (lambda x, c: x + c, [(2, 3, 4)], "AddBackward0", dict(const=3.0, record=True)),
    "sub_python_scalar": (lambda x, c: x - c, [(2, 3, 4)], "SubBackward0", dict(const=3.0, record=True)),
    "add_scalar_op": (lambda x, c: torch.ops.aten.add.Scalar(x, c, 2.0), [(2, 3, 4)], "AddBackward1",
                      dict(const=3.0, record=True, ref_fn=lambda x, c: x + 2.0 * c)),
    "sub_scalar_op": (lambda x, c: torch.ops.aten.sub.Scalar(x, c, 2.0), [(2, 3, 4)], "SubBackward1",
                      dict(const=3.0, record=True, ref_fn=lambda x, c: x - 2.0 * c)),
    "rsub_scalar": (lambda x, c: c - x, [(2, 3, 4)], "RsubBackward1", dict(const=3.0, record=True)),
    "rsub_scalar_alpha": (lambda x, c: torch.ops.aten.rsub.Scalar(x, c, 2.0), [(2, 3, 4)], "RsubBackward1",
                          dict(const=3.0, record=True, ref_fn=lambda x, c: c - 2.0 * x)),
}

for _name, (_fn, _shapes, _type, _kw) in SUMS.items():
    case(_name, _type)(partial(check_sum, _fn, _shapes, _type, **_kw))


# elementwise products / scalings: exact routing ------------------------------------------------------

def _broadcast_matrix(shape, out_shape):
    return ref.jacobian(lambda t: t.expand(out_shape), torch.zeros(shape))


def check_product(fn: Callable, shapes, node_type: str, shares: tuple[float, ...], extra=None):
    """``z = fn(x, y[, extra])`` gated products: input k gets ``shares[k] * R`` summed over its broadcast
    dims (``E_k^T R`` with ``E_k`` the broadcast matrix); nothing is absorbed."""
    xs = [leaf(*s, positive=True) for s in shapes]
    out = fn(*xs) if extra is None else fn(*xs, extra())
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, xs)
    for x, share in zip(xs, shares):
        expected = share * (_broadcast_matrix(x.shape, out.shape).T @ r0.flatten())
        close(exp.relevance(x), expected.view(x.shape))
    assert row_of(exp, node_type).rule == REGISTRY.rules[node_type].name
    check_others_absorb_nothing(exp)
    return exp


PRODUCTS = {
    "mul_two_activations": (lambda x, y: x * y, [(2, 3, 4), (3, 1)], "MulBackward0", (0.5, 0.5), None),
    "mul_same_input": (lambda x: x * x, [(2, 3)], "MulBackward0", (1.0,), None),
    "mul_python_scalar": (lambda x: x * 2.5, [(2, 3, 4)], "MulBackward0", (1.0,), None),
    "mul_parameter_broadcast": (lambda x, p: x * p, [(3, 1)], "MulBackward0", (1.0,),
                                lambda: nn.Parameter(torch.randn(2, 3, 4))),
    "mul_constant_mask": (lambda x, m: m * x, [(2, 3, 4)], "MulBackward0", (1.0,),
                          lambda: torch.tensor([1.0, 0.0, 2.0, 1.0])),
    "div_two_activations": (lambda x, y: x / y, [(2, 3, 4), (4,)], "DivBackward0", (1.0, 0.0), None),
    "div_python_scalar": (lambda x: x / 2.5, [(2, 3, 4)], "DivBackward0", (1.0,), None),
    "div_parameter_by_input": (lambda x, p: p / x, [(4,)], "DivBackward0", (1.0,),
                               lambda: nn.Parameter(torch.randn(2, 3, 4))),
    "neg": (torch.neg, [(2, 3, 4)], "NegBackward0", (1.0,), None),
    "mul_scalar_op": (lambda x: torch.ops.aten.mul.Scalar(x, -2.5), [(2, 3, 4)], "MulBackward1", (1.0,), None),
    "div_scalar_op": (lambda x: torch.ops.aten.div.Scalar(x, -2.5), [(2, 3, 4)], "DivBackward1", (1.0,), None),
}

for _name, (_fn, _shapes, _type, _shares, _extra) in PRODUCTS.items():
    case(_name, _type)(partial(check_product, _fn, _shapes, _type, _shares, _extra))


# shape and routing ops: R_x = J^T R (constant padding: the padded share is absorbed) -----------------

def check_route(fn: Callable, shapes, types: tuple[str, ...]):
    xs = [leaf(*s) for s in shapes]
    out = fn(*xs)
    r0 = torch.randn(out.shape, dtype=out.dtype)
    exp = explain(out, r0, xs)
    values = [x.detach() for x in xs]

    def call(i, t):
        vals = list(values)
        vals[i] = t
        return fn(*vals)

    jac = torch.cat([ref.jacobian(partial(call, i), v) for i, v in enumerate(values)], dim=1)
    flat, constant = ref.route(jac, r0)
    for x, expected in zip(xs, flat.split([x.numel() for x in xs])):
        close(exp.relevance(x), expected.view(x.shape))
    # positions with no source (padding, masked_fill / tril / triu fills, a constant where-operand)
    booked = sum(row.absorbed.get("constant", 0.0) for row in exp.nodes)
    assert abs(booked - constant) <= RTOL * max(1.0, abs(constant)), (booked, constant)
    for row in exp.nodes:
        assert all(v == 0.0 for cause, v in row.absorbed.items() if cause != "constant"), row
    for name in types:
        row = next(row for row in exp.nodes if row.node_type == name)
        assert row.rule == REGISTRY.rules[name].name
    return exp


def _pattern(shape) -> torch.Tensor:
    """A fixed boolean mask (every third element)."""
    return torch.arange(torch.Size(shape).numel()).view(shape) % 3 == 0


def _cat_parts(parts, order, dim):
    return torch.cat([parts[i] for i in order], dim)


SHAPES = {  # name: (f, input shapes, node types)
    "view": (lambda x: x.view(6, 4), [(2, 3, 4)], ("ViewBackward0",)),
    "reshape_noncontiguous": (lambda x: x.transpose(0, 1).reshape(3, 8), [(2, 3, 4)],
                              ("UnsafeViewBackward0", "CloneBackward0", "TransposeBackward0")),
    "reshape_alias": (lambda x: torch.ops.aten._reshape_alias(x, (6, 4), (4, 1)), [(2, 3, 4)],
                      ("ReshapeAliasBackward0",)),
    "flatten": (lambda x: x.flatten(1), [(2, 3, 4)], ("ViewBackward0",)),
    "squeeze_all": (lambda x: x.unsqueeze(0).unsqueeze(2).squeeze(), [(2, 3, 4)],
                    ("SqueezeBackward0", "UnsqueezeBackward0")),
    "squeeze_dim": (lambda x: x.unsqueeze(1).squeeze(1), [(2, 3, 4)], ("SqueezeBackward1",)),
    "squeeze_dims": (lambda x: x.unsqueeze(0).unsqueeze(-1).squeeze((0, -1)), [(2, 3, 4)], ("SqueezeBackward2",)),
    "unsqueeze": (lambda x: x.unsqueeze(-1), [(2, 3, 4)], ("UnsqueezeBackward0",)),
    "squeeze_inplace_all": (lambda x: x.unsqueeze(1).clone().squeeze_(), [(2, 3, 4)], ("SqueezeBackward3",)),
    "squeeze_inplace_dim": (lambda x: x.unsqueeze(1).clone().squeeze_(1), [(2, 3, 4)], ("SqueezeBackward4",)),
    "squeeze_inplace_dims": (lambda x: x.unsqueeze(1).clone().squeeze_((1,)), [(2, 3, 4)], ("SqueezeBackward5",)),
    "unsqueeze_inplace": (lambda x: x.clone().unsqueeze_(2), [(2, 3, 4)], ("UnsqueezeBackward1",)),
    "permute": (lambda x: x.permute(2, 0, 1), [(2, 3, 4)], ("PermuteBackward0",)),
    "transpose_inplace": (lambda x: x.clone().transpose_(0, 2), [(2, 3, 4)], ("TransposeBackward1",)),
    "transpose": (lambda x: x.transpose(0, 2), [(2, 3, 4)], ("TransposeBackward0",)),
    "t": (lambda x: x.t(), [(3, 4)], ("TBackward0",)),
    "expand": (lambda x: x.expand(2, 3, 5), [(3, 1)], ("ExpandBackward0",)),
    "clone": (lambda x: x.clone(), [(2, 3, 4)], ("CloneBackward0",)),
    "contiguous": (lambda x: x.transpose(1, 2).contiguous(), [(2, 3, 4)], ("CloneBackward0",)),
    "alias": (lambda x: torch.ops.aten.alias(x), [(2, 3, 4)], ("AliasBackward0",)),
    # lift_fresh returns its argument with a new grad_fn, so it must not see the leaf itself
    "lift_fresh": (lambda x: torch.ops.aten.lift_fresh(x.clone()), [(2, 3, 4)], ("LiftFreshBackward0",)),
    "to_float32": (lambda x: x.to(torch.float32), [(2, 3, 4)], ("ToCopyBackward0",)),
    "slice": (lambda x: x[:, 1:3, ::2], [(2, 3, 5)], ("SliceBackward0",)),
    "select": (lambda x: x[:, 1].select(-1, 2), [(2, 3, 4)], ("SelectBackward0",)),
    "index_list": (lambda x: x[[0, 1, 1]], [(2, 3, 4)], ("IndexBackward0",)),
    "index_list_inner_dim": (lambda x: x[:, [2, 0, 2]], [(2, 3, 4)], ("IndexBackward0",)),
    "cat": (lambda x, y: torch.cat([x, y], 1), [(2, 3, 4), (2, 1, 4)], ("CatBackward0",)),
    "cat_same_input": (lambda x: torch.cat([x, x], 0), [(2, 3)], ("CatBackward0",)),
    "stack": (lambda x, y: torch.stack([x, y], 1), [(2, 3, 4), (2, 3, 4)], ("StackBackward0",)),
    "split_unused_part": (lambda x: _cat_parts(x.split(2, 2), (2, 0), 2), [(2, 3, 5)], ("SplitBackward0",)),
    "split_with_sizes": (lambda x: _cat_parts(x.split([1, 3], 2), (1, 0), 2), [(2, 3, 4)],
                         ("SplitWithSizesBackward0",)),
    "chunk": (lambda x: x.chunk(2, 1)[1], [(2, 3, 4)], ("SplitBackward0",)),
    "unsafe_split": (lambda x: _cat_parts(x.unsafe_split(2, 2), (1, 0), 2), [(2, 3, 4)], ("UnsafeSplitBackward0",)),
    "unbind": (lambda x: torch.stack(list(x.unbind(1))[::-2], 0), [(2, 3, 4)], ("UnbindBackward0",)),
    "repeat": (lambda x: x.repeat(2, 1, 3), [(2, 3, 4)], ("RepeatBackward0",)),
    "flip": (lambda x: x.flip(0, 2), [(2, 3, 4)], ("FlipBackward0",)),
    "roll": (lambda x: x.roll(1, 2), [(2, 3, 4)], ("RollBackward0",)),
    "roll_multi": (lambda x: x.roll((1, -2), (1, 2)), [(2, 3, 4)], ("RollBackward0",)),
    "roll_flat": (lambda x: x.roll(3), [(2, 3, 4)], ("RollBackward0",)),
    "constant_pad": (lambda x: F.pad(x, (1, 2, 0, 1)), [(2, 3, 4)], ("ConstantPadNdBackward0",)),
    "constant_pad_value": (lambda x: F.pad(x, (2, 0), value=0.5), [(2, 3, 4)], ("ConstantPadNdBackward0",)),
    "constant_pad_negative": (lambda x: F.pad(x, (-1, 2, 1, -1)), [(2, 3, 4)], ("ConstantPadNdBackward0",)),
    "to_float32_and_back": (lambda x: x.to(torch.float32).to(torch.float64), [(2, 3, 4)], ("ToCopyBackward0",)),
    "masked_fill": (lambda x: x.masked_fill(_pattern(x.shape), 0.5), [(2, 3, 4)], ("MaskedFillBackward0",)),
    "masked_fill_tensor_value": (lambda x: x.masked_fill(_pattern(x.shape), torch.tensor(0.5)), [(2, 3, 4)],
                                 ("MaskedFillBackward1",)),
    "t_inplace": (lambda x: x.clone().t_(), [(3, 4)], ("TBackward1",)),
    "tril": (lambda x: x.tril(-1), [(2, 3, 4)], ("TrilBackward0",)),
    "triu": (lambda x: x.triu(1), [(2, 4, 3)], ("TriuBackward0",)),
    "where_two_inputs": (lambda x, y: torch.where(_pattern(x.shape), x, y), [(2, 3, 4), (3, 4)], ("WhereBackward0",)),
    "where_constant": (lambda x: torch.where(_pattern(x.shape), x, 0.0), [(2, 3, 4)], ("WhereBackward0",)),
}

for _name, (_fn, _shapes, _types) in SHAPES.items():
    case(_name, *_types)(partial(check_route, _fn, _shapes, _types))


# sources: embedding lookups (token relevance) and input leaves ----------------------------------------

def _embedding(through_linear: bool):
    ids = torch.tensor([[1, 2, 3], [0, 4, 4]])
    emb = nn.Embedding(6, 4)
    h = emb(ids)
    lin = nn.Linear(4, 3)
    out = lin(h) if through_linear else h
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, None)
    if through_linear:
        matrix = ref.jacobian(lambda t: F.linear(t, lin.weight.detach()), h)
        rh, _ = ref.linear("epsilon", matrix, lin.bias.detach().expand(out.shape), h.detach(), r0, eps=EPS)
        rh = rh.view(h.shape)
    else:
        rh = r0
    (tokens,) = exp.tokens
    assert torch.equal(tokens.ids, ids)
    close(tokens.relevance, rh.sum(-1))
    assert exp.inputs == []
    assert row_of(exp, "EmbeddingBackward0").absorbed == {}
    return exp


case("embedding", "EmbeddingBackward0")(partial(_embedding, False))
case("embedding_linear", "EmbeddingBackward0", "AddmmBackward0")(partial(_embedding, True))


@case("input_leaf", "AccumulateGrad")
def _input_leaf():
    x = leaf(2, 3)
    r0 = torch.randn(2, 3)
    exp = explain(x * 1.0, r0, [x])
    close(exp.relevance(x), r0)
    row = row_of(exp, "AccumulateGrad")
    assert row.relevance_in == pytest.approx(float(r0.sum()), rel=RTOL) and row.absorbed == {}
    return exp


# indexing, selection, scatter, padding, resampling (dynlrp.rules.indexing) --------------------------
# copies and winners: R_in = J^T R with J the op's Jacobian (fills / constant operands: absorbed
# ``constant``); linear maps and scatter sums: the z-rule with the Jacobian as the matrix.

def _idx(*shape, high: int) -> torch.Tensor:
    """A fixed integer index tensor (no duplicates along the last dim when ``shape[-1] <= high``)."""
    base = torch.arange(torch.Size(shape).numel()).view(shape)
    return (base + base.div(shape[-1], rounding_mode="floor")) % high


def _slice_copy(x, z):
    y = x.clone()
    y[:, 1] = z
    return y


def _slice_fill(x):
    y = x.clone()
    y[:, 1] = 3.0
    return y


def _slice_add(x, z):
    y = x.clone()
    y[:, 1:3].add_(z)  # (``y[:, 1:3] += z`` adds a second CopySlices for the copy back)
    return y


X4 = [(1, 4, 2, 3)]
ROUTES_INDEXING = {  # name: (f, input shapes, node types); copies, fills and winners
    "gather": (lambda x: x.gather(2, _idx(2, 3, 2, high=4)), [(2, 3, 4)], ("GatherBackward0",)),
    "index_select": (lambda x: x.index_select(1, torch.tensor([2, 0, 2])), [(2, 3, 4)], ("IndexSelectBackward0",)),
    "take": (lambda x: x.take(torch.tensor([0, 5, 5, 23])), [(2, 3, 4)], ("TakeBackward0",)),
    "masked_select": (lambda x: x.masked_select(_pattern(x.shape)), [(2, 3, 4)], ("MaskedSelectBackward0",)),
    "masked_scatter": (lambda x, s: x.masked_scatter(_pattern(x.shape), s), [(2, 3, 4), (10,)],
                       ("MaskedScatterBackward0",)),
    "scatter_src": (lambda x, s: x.scatter(2, _idx(2, 3, 2, high=4), s), [(2, 3, 4), (2, 3, 2)],
                    ("ScatterBackward0",)),
    "scatter_value": (lambda x: x.scatter(2, _idx(2, 3, 2, high=4), 2.0), [(2, 3, 4)], ("ScatterBackward1",)),
    "index_fill": (lambda x: x.index_fill(1, torch.tensor([0, 2]), 2.0), [(2, 3, 4)], ("IndexFillBackward0",)),
    "diag_embed": (torch.diag_embed, [(2, 3)], ("DiagEmbedBackward0",)),
    "im2col": (lambda x: F.unfold(x, 2, padding=1, stride=2), X4, ("Im2ColBackward0",)),
    "diagonal": (lambda x: x.diagonal(0, 1, 2), [(2, 3, 4)], ("DiagonalBackward0",)),
    "diagonal_copy": (lambda x: torch.diagonal_copy(x, 1, 1, 2), [(2, 3, 4)], ("DiagonalBackward0_copy",)),
    "unfold_overlapping": (lambda x: x.unfold(2, 2, 1), [(2, 3, 4)], ("UnfoldBackward0",)),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2), X4, ("PixelShuffleBackward0",)),
    "pixel_unshuffle": (lambda x: F.pixel_unshuffle(x, 2), [(1, 1, 4, 6)], ("PixelUnshuffleBackward0",)),
    "channel_shuffle": (lambda x: torch.channel_shuffle(x, 2), X4, ("ChannelShuffleBackward0",)),
    "reflection_pad1d": (lambda x: F.pad(x, (2, 1), mode="reflect"), [(2, 3, 4)], ("ReflectionPad1DBackward0",)),
    "reflection_pad2d": (lambda x: F.pad(x, (1, 2, 1, 0), mode="reflect"), X4, ("ReflectionPad2DBackward0",)),
    "reflection_pad3d": (lambda x: F.pad(x, (1, 0, 1, 1, 0, 1), mode="reflect"), [(1, 1, 2, 3, 3)],
                         ("ReflectionPad3DBackward0",)),
    "replication_pad1d": (lambda x: F.pad(x, (2, 1), mode="replicate"), [(2, 3, 4)], ("ReplicationPad1DBackward0",)),
    "replication_pad2d": (lambda x: F.pad(x, (1, 2, 1, 0), mode="replicate"), X4, ("ReplicationPad2DBackward0",)),
    "replication_pad3d": (lambda x: F.pad(x, (1, 0, 1, 1, 0, 1), mode="replicate"), [(1, 1, 2, 3, 3)],
                          ("ReplicationPad3DBackward0",)),
    "circular_pad": (lambda x: F.pad(x, (1, 2), mode="circular"), [(2, 3, 4)], ()),
    "nearest1d": (lambda x: F.interpolate(x, size=7, mode="nearest"), [(2, 3, 4)], ("UpsampleNearest1DBackward0",)),
    "nearest2d": (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), X4, ("UpsampleNearest2DBackward0",)),
    "nearest3d": (lambda x: F.interpolate(x, size=(3, 2, 5), mode="nearest"), [(1, 1, 2, 3, 3)],
                  ("UpsampleNearest3DBackward0",)),
    "nearest_exact1d": (lambda x: F.interpolate(x, size=7, mode="nearest-exact"), [(2, 3, 4)],
                        ("UpsampleNearestExact1DBackward0",)),
    "nearest_exact2d": (lambda x: F.interpolate(x, size=(3, 5), mode="nearest-exact"), X4,
                        ("UpsampleNearestExact2DBackward0",)),
    "nearest_exact3d": (lambda x: F.interpolate(x, size=(3, 2, 5), mode="nearest-exact"), [(1, 1, 2, 3, 3)],
                        ("UpsampleNearestExact3DBackward0",)),
    "sort_values": (lambda x: x.sort(-1, descending=True)[0], [(2, 3, 4)], ("SortBackward0",)),
    "sort_stable": (lambda x: torch.sort(x, dim=1, stable=True)[0], [(2, 3, 4)], ("SortBackward1",)),
    "topk": (lambda x: x.topk(2, dim=1)[0], [(2, 3, 4)], ("TopkBackward0",)),
    "select_scatter": (lambda x, s: torch.select_scatter(x, s, 1, 0), [(2, 3, 4), (2, 4)], ("SelectScatterBackward0",)),
    "slice_scatter": (lambda x, s: torch.slice_scatter(x, s, 1, 1, 3), [(2, 3, 4), (2, 2, 4)],
                      ("SliceScatterBackward0",)),
    "diagonal_scatter": (lambda x, s: torch.diagonal_scatter(x, s, 0, 1, 2), [(2, 3, 3), (2, 3)],
                         ("DiagonalScatterBackward0",)),
    "as_strided": (lambda x: x.as_strided((3, 2), (1, 3)), [(2, 3, 4)], ("AsStridedBackward0",)),
    "as_strided_overlapping": (lambda x: x.as_strided((3, 3), (1, 1)), [(2, 3, 4)], ("AsStridedBackward0",)),
    "as_strided_inplace": (lambda x: x.clone().as_strided_((3, 2), (1, 3)), [(2, 3, 4)], ("AsStridedBackward1",)),
    "index_put": (lambda x, v: x.index_put((torch.tensor([0, 2]),), v), [(3, 4), (2, 4)], ("IndexPutBackward0",)),
    "index_put_constant": (lambda x: x.index_put((torch.tensor([1]),), torch.ones(4)), [(3, 4)],
                           ("IndexPutBackward0",)),
    "copy_into_slice": (_slice_copy, [(2, 3, 4), (2, 4)], ("CopySlices",)),
    "fill_slice": (_slice_fill, [(2, 3, 4)], ("CopySlices",)),
    "amax": (lambda x: x.amax((0, 2)), [(2, 3, 4)], ("AmaxBackward0",)),
    "amin": (lambda x: x.amin(-1, keepdim=True), [(2, 3, 4)], ("AminBackward0",)),
    "max_dim": (lambda x: x.max(1)[0], [(2, 3, 4)], ("MaxBackward0",)),
    "min_dim": (lambda x: x.min(2, keepdim=True)[0], [(2, 3, 4)], ("MinBackward0",)),
    "max_all": (torch.max, [(2, 3, 4)], ("MaxBackward1",)),
    "min_all": (torch.min, [(2, 3, 4)], ("MinBackward1",)),
    "kthvalue": (lambda x: x.kthvalue(2, 1)[0], [(2, 3, 4)], ("KthvalueBackward0",)),
    "median_dim": (lambda x: x.median(2)[0], [(2, 3, 4)], ("MedianBackward1",)),
    "median_all": (torch.median, [(2, 3, 4)], ("MedianBackward0",)),
    "nanmedian_dim": (lambda x: x.nanmedian(1)[0], [(2, 3, 4)], ("NanmedianBackward1",)),
    "nanmedian_all": (torch.nanmedian, [(2, 3, 4)], ("NanmedianBackward0",)),
    "mode": (lambda x: x.mode(1)[0], [(2, 3, 4)], ("ModeBackward0",)),
    "cummax": (lambda x: x.cummax(2)[0], [(2, 3, 4)], ("CummaxBackward0",)),
    "cummin": (lambda x: x.cummin(1)[0], [(2, 3, 4)], ("CumminBackward0",)),
    "maximum": (torch.maximum, [(2, 3, 4), (3, 4)], ("MaximumBackward0",)),
    "minimum_constant": (lambda x: torch.minimum(x, torch.zeros(4)), [(2, 3, 4)], ("MinimumBackward0",)),
    "fmax": (torch.fmax, [(2, 3, 4), (2, 3, 4)], ("FmaxBackward0",)),
    "fmin": (torch.fmin, [(2, 3, 4), (4,)], ("FminBackward0",)),
    "scatter_reduce_amax": (lambda x, s: x.scatter_reduce(2, _idx(2, 3, 2, high=4), s, "amax"),
                            [(2, 3, 4), (2, 3, 2)], ("ScatterReduceBackward0",)),
}

for _name, (_fn, _shapes, _types) in ROUTES_INDEXING.items():
    case(_name, *_types)(partial(check_route, _fn, _shapes, _types))

LINEAR_MAPS = {  # name: (f, input shape, node type): the z-rule
    "cumsum": (lambda x: x.cumsum(1), (2, 3, 4), "CumsumBackward0"),
    "linear1d": (lambda x: F.interpolate(x, size=7, mode="linear"), (2, 3, 4), "UpsampleLinear1DBackward0"),
    "bilinear2d_align_corners": (lambda x: F.interpolate(x, size=(3, 5), mode="bilinear", align_corners=True),
                                 X4[0], "UpsampleBilinear2DBackward0"),
    "bicubic2d": (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), X4[0], "UpsampleBicubic2DBackward0"),
    "trilinear3d": (lambda x: F.interpolate(x, size=(3, 2, 5), mode="trilinear"), (1, 1, 2, 3, 3),
                    "UpsampleTrilinear3DBackward0"),
    "bilinear2d_antialias": (lambda x: F.interpolate(x, size=(2, 2), mode="bilinear", antialias=True), (1, 2, 5, 4),
                             "UpsampleBilinear2DAaBackward0"),
    "bicubic2d_antialias": (lambda x: F.interpolate(x, size=(2, 3), mode="bicubic", antialias=True), (1, 2, 5, 4),
                            "UpsampleBicubic2DAaBackward0"),
    "col2im_overlapping": (lambda x: F.fold(x, (4, 4), 2, stride=1), (1, 8, 9), "Col2ImBackward0"),
}

for _name, (_fn, _shape, _type) in LINEAR_MAPS.items():
    case(_name, _type)(partial(check_z_rule, _fn, _shape, _type))

SCATTER_SUMS = {  # name: (f, input shapes, node type): signed z-rule over all operands
    "scatter_add": (lambda x, s: x.scatter_add(2, _idx(2, 3, 3, high=2), s), [(2, 3, 4), (2, 3, 3)],
                    "ScatterAddBackward0"),
    "index_add_alpha": (lambda x, s: x.index_add(1, torch.tensor([0, 2, 0]), s, alpha=2.0), [(2, 3, 4), (2, 3, 4)],
                        "IndexAddBackward0"),
    "scatter_reduce_sum": (lambda x, s: x.scatter_reduce(2, _idx(2, 3, 3, high=2), s, "sum"), [(2, 3, 4), (2, 3, 3)],
                           "ScatterReduceBackward0"),
    "scatter_reduce_mean": (lambda x, s: x.scatter_reduce(2, _idx(2, 3, 3, high=2), s, "mean", include_self=False),
                            [(2, 3, 4), (2, 3, 3)], "ScatterReduceBackward0"),
    "index_put_accumulate": (lambda x, v: x.index_put((torch.tensor([0, 2, 0]),), v, accumulate=True),
                             [(3, 4), (3, 4)], "IndexPutBackward0"),
    "add_into_slice": (_slice_add, [(2, 3, 4), (2, 2, 4)], "CopySlices"),
}

for _name, (_fn, _shapes, _type) in SCATTER_SUMS.items():
    case(_name, _type)(partial(check_sum, _fn, _shapes, _type))

case("weight_norm", "WeightNormInterfaceBackward0")(partial(
    check_identity, lambda v: torch._weight_norm(v, nn.Parameter(torch.randn(2, 1, 1)), 0),
    "WeightNormInterfaceBackward0"))


@case("grouped_mm_float32", "GroupedMmBackward0")
def _grouped_mm():
    """``torch._grouped_mm`` (float32/bf16 only): a dense layer per group of rows, epsilon rule.
    Reference: the block matrix in float64; float32 tolerances."""
    x = torch.randn(8, 8, dtype=torch.float32, requires_grad=True)
    w = nn.Parameter(torch.randn(2, 8, 8, dtype=torch.float32))
    offs = torch.tensor([3, 8], dtype=torch.int32)
    out = torch._grouped_mm(x, w, offs=offs)
    r0 = torch.randn(out.shape, dtype=torch.float32)
    exp = dynlrp.explain(out, target=r0, inputs=[x], strict=True)
    assert all(row.error <= 1e-5 for row in exp.nodes), exp.nodes
    w64 = w.detach().double()
    matrix = ref.jacobian(lambda t: torch.cat([t[:3] @ w64[0], t[3:] @ w64[1]]), x.detach().double())
    expected, _ = ref.linear("epsilon", matrix, None, x.detach().double(), r0.double(), eps=EPS)
    got = exp.relevance(x).double()
    assert (got - expected.view_as(got)).abs().max() <= 1e-4 * expected.abs().max()
    return exp


# decompositions: a fused node explained through a plain-torch re-run of its forward ----------------

@case("lstm_fused_float32", "MkldnnRnnLayerBackward0")
def _lstm_fused():
    """``nn.LSTM`` in float32 on CPU is one fused ``MkldnnRnnLayerBackward0`` node per layer and
    direction; its rule re-runs the layer as torch's native cells. Reference: the same LSTM in
    float64, which torch runs as native cells (sigmoid/tanh gates, products, sums, linear layers:
    rules checked above), explained with the same starting relevance. Float32 tolerances."""
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).float()
    x = torch.randn(2, 5, 3, dtype=torch.float32, requires_grad=True)
    out, _ = lstm(x)
    r0 = torch.randn(out.shape, dtype=torch.float32)
    exp = dynlrp.explain(out, target=r0, inputs=[x], strict=True)
    assert all(row.error <= 1e-4 for row in exp.nodes), exp.nodes
    x64 = x.detach().double().requires_grad_(True)
    out64, _ = lstm.double()(x64)
    reference = explain(out64, r0.double(), [x64]).relevance(x64)
    assert "MkldnnRnnLayerBackward0" not in node_types(explain(out64, r0.double(), [x64]))
    got = exp.relevance(x).double()
    assert (got - reference).abs().max() <= 1e-4 * reference.abs().max()
    return exp


@case("selective_scan_fused_float64", "SelectiveScanFnBackward")
def _selective_scan_fused():
    """mamba-ssm's ``SelectiveScanFn`` (one ``SelectiveScanFnBackward`` node; on CPU with a fake kernel
    built on ``selective_scan_ref``, see tests/test_selective_scan.py); its rule re-runs the scan in
    plain torch. Reference: the same scan written with plain torch ops (exp, products, sums, softplus,
    silu: rules checked above), explained with the same starting relevance. float64, rtol 1e-6."""
    try:
        from . import test_selective_scan as sst
    except ImportError:
        import test_selective_scan as sst
    from model_zoo.ssm import import_mamba_ssm

    import_mamba_ssm()
    import mamba_ssm.ops.selective_scan_interface as interface

    saved = interface.selective_scan_cuda
    interface.selective_scan_cuda = sst.FakeKernel(interface.selective_scan_ref)
    try:
        data, params, options = sst._operands(sst.CONFIGS["full"], torch.float64)
        out = sst._call(interface.SelectiveScanFn.apply, data, params, options)
        r0 = torch.randn(out.shape, dtype=torch.float64)
        exp = dynlrp.explain(out, target=r0, inputs=list(data.values()), strict=True)
    finally:
        interface.selective_scan_cuda = saved
    assert all(row.error <= 1e-9 for row in exp.nodes), exp.nodes
    ref_data, ref_params, _ = sst._operands(sst.CONFIGS["full"], torch.float64)
    ref_out = sst._call(sst.selective_scan, ref_data, ref_params, options)
    reference = explain(ref_out, r0, list(ref_data.values()))
    assert "SelectiveScanFnBackward" not in node_types(reference)
    for name, t in data.items():
        want = reference.relevance(ref_data[name])
        assert (exp.relevance(t) - want).abs().max() <= 1e-6 * want.abs().max() + 1e-12, name
    return exp


@case("mamba_inner_fused_float64", "MambaInnerFnBackward")
def _mamba_inner_fused():
    """mamba-ssm's ``MambaInnerFn`` (one ``MambaInnerFnBackward`` node: causal conv1d, x_proj, dt_proj,
    selective scan, out_proj; on CPU with fake kernels, see tests/test_mamba_inner.py); its rule re-runs
    the mixer in plain torch. Reference: the same mixer written with plain torch ops (conv1d, linear,
    the scan's ops: rules checked above), explained with the same starting relevance. float64, rtol 1e-6."""
    try:
        from . import test_mamba_inner as tmi
    except ImportError:
        import test_mamba_inner as tmi
    from model_zoo.ssm import import_mamba_ssm

    import_mamba_ssm()
    import mamba_ssm.ops.selective_scan_interface as interface

    saved = {}

    def patch(module, name, value):
        saved.setdefault(name, getattr(module, name))
        setattr(module, name, value)

    cfg = tmi.CONFIGS["biases_lvl0"]
    try:
        tmi.patch_kernels(interface, patch)
        data, params, options = tmi._operands(cfg, torch.float64)
        out = tmi.call_fused(interface, data, params, options)
        r0 = torch.randn(out.shape, dtype=torch.float64)
        exp = dynlrp.explain(out, target=r0, inputs=list(data.values()), strict=True)
    finally:
        for name, value in saved.items():
            setattr(interface, name, value)
    assert all(row.error <= 1e-9 for row in exp.nodes), exp.nodes
    ref_data, ref_params, _ = tmi._operands(cfg, torch.float64)
    ref_out = tmi.call_reference(ref_data, ref_params, options)
    reference = explain(ref_out, r0, list(ref_data.values()))
    assert "MambaInnerFnBackward" not in node_types(reference)
    for name, t in data.items():
        want = reference.relevance(ref_data[name])
        assert (exp.relevance(t) - want).abs().max() <= 1e-6 * want.abs().max() + 1e-12, name
    return exp


class GeLUFunction(torch.autograd.Function):
    """The tanh GELU as a custom Function, as BLOOM (transformers) and Megatron-DeepSpeed write it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x))
        return g * (0.5 * x * ((1 - t * t) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1 + t))


@case("gelu_function_decomposed", "GeLUFunctionBackward")
def _gelu_function():
    """The opaque ``GeLUFunctionBackward`` node is explained through the registered plain-torch tanh
    GELU (``dynlrp.rules.gelu_function``). Reference: the same formula written out in torch ops,
    explained with the same starting relevance (the gate rule: ``R_x = x g(x) R / s(z)``, i.e. ``R``
    up to the stabiliser)."""
    lin = nn.Linear(4, 6)
    x = leaf(3, 4)
    out = GeLUFunction.apply(lin(x))
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    x2 = x.detach().clone().requires_grad_(True)
    plain = dynlrp.rules.gelu_function.tanh_gelu(lin(x2))
    reference = explain(plain, r0, [x2])
    assert "GeLUFunctionBackward" not in node_types(reference)
    close(exp.relevance(x), reference.relevance(x2))
    return exp


def test_a_different_function_with_the_same_name_is_refused_by_name():
    class GeLUFunction(torch.autograd.Function):  # the name is the point
        @staticmethod
        def forward(ctx, x):
            return torch.relu(x)

        @staticmethod
        def backward(ctx, g):
            return g

    x = leaf(3, 4)
    with pytest.raises(dynlrp.DecompositionMismatchError, match="GeLUFunctionBackward"):
        explain(GeLUFunction.apply(x * 2.0), torch.randn(3, 4), [x])


# norms and GLU ----------------------------------------------------------------------------------------


@case("vector_norm_l2_dims", "LinalgVectorNormBackward0")
def _vector_norm_l2():
    x = leaf(2, 3, 4)
    out = torch.linalg.vector_norm(x, dim=(1, 2))
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    xd = x.detach()
    close(exp.relevance(x), xd**2 / (xd**2).sum((1, 2), keepdim=True) * r0.view(2, 1, 1))
    return exp


@case("vector_norm_l1_keepdim", "LinalgVectorNormBackward0")
def _vector_norm_l1():
    x = leaf(3, 5)
    out = torch.linalg.vector_norm(x, ord=1, dim=-1, keepdim=True)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    xd = x.detach()
    close(exp.relevance(x), xd.abs() / xd.abs().sum(-1, keepdim=True) * r0)
    return exp


@case("glu", "GluBackward0")
def _glu():
    x = leaf(2, 6)
    out = F.glu(x, -1)
    r0 = torch.randn(out.shape)
    exp = explain(out, r0, [x])
    close(exp.relevance(x), torch.cat([r0 / 2, r0 / 2], -1))  # uniform rule on a * sigmoid(b)
    return exp


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name):
    CASES[name].fn()


# -------------------------------------------------------------------------------------------------
# coverage: every registered node type has a reference case here


def _coverage() -> dict[str, Callable[[], dynlrp.Explanation]]:
    table: dict[str, Callable[[], dynlrp.Explanation]] = {}
    for name, (node_type, _) in DENSE.items():
        table.setdefault(node_type, partial(check_dense, name))
    table.setdefault("ConvolutionBackward0", partial(check_conv, "conv2d"))
    for name, (node_type, *_) in UNIFORM.items():
        table.setdefault(node_type, partial(check_uniform, name))
    for entry in CASES.values():
        for node_type in entry.node_types:
            table.setdefault(node_type, entry.fn)
    return table


COVERAGE = _coverage()


# node types torch only creates on CUDA: their rule must be one tested here through a CPU twin
CUDA_ONLY = {
    "ScaledDotProductEfficientAttentionBackward0": SDPA_CPU,
    "ScaledDotProductFlashAttentionBackward0": SDPA_CPU,
    "ScaledDotProductCudnnAttentionBackward0": SDPA_CPU,
    "ScaledDotProductFusedAttentionOverrideableBackward0": SDPA_CPU,
}


def _package_node_types() -> list[str]:
    """The node types dynlrp itself registers, read in a fresh interpreter: other test modules
    register decompositions of their own custom Functions in the shared registry while they run."""
    code = "import dynlrp.rules as r; print(' '.join(sorted(r.REGISTRY.rules)))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return done.stdout.split()
    except (subprocess.SubprocessError, OSError):
        return sorted(REGISTRY.rules)


PACKAGE_NODE_TYPES = _package_node_types()


def test_package_registry_was_read():
    assert "AccumulateGrad" in PACKAGE_NODE_TYPES and "ConvolutionBackward0" in PACKAGE_NODE_TYPES


@pytest.mark.parametrize("node_type", sorted(set(PACKAGE_NODE_TYPES) - set(CUDA_ONLY)))
def test_every_node_type_has_a_reference_case(node_type):
    assert node_type in COVERAGE, f"rule for {node_type} has no reference case in {__name__}: add one"
    assert node_type in node_types(COVERAGE[node_type]())


@pytest.mark.parametrize("node_type", sorted(CUDA_ONLY))
def test_cuda_only_node_types_share_a_tested_rule(node_type):
    assert REGISTRY.rules[node_type].fn is REGISTRY.rules[CUDA_ONLY[node_type]].fn
    assert CUDA_ONLY[node_type] in COVERAGE


def test_every_rule_is_covered():
    covered = {(REGISTRY.rules[t].family, REGISTRY.rules[t].name) for t in COVERAGE if t in REGISTRY.rules}
    package = {(REGISTRY.rules[t].family, REGISTRY.rules[t].name) for t in PACKAGE_NODE_TYPES if t in REGISTRY.rules}
    assert package <= covered, package - covered

