"""Decompositions of opaque nodes: the oneDNN LSTM kernel, custom autograd Functions, named errors."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dynlrp
from dynlrp.graph import Graph
from dynlrp.modules import track_modules
from dynlrp.rules import REGISTRY, register_decomposition, rnn_layer
from dynlrp.rules.decompose import DECOMPOSITIONS, get_decomposition, remove_decomposition

MKLDNN = "MkldnnRnnLayerBackward0"
CONFIGS = [
    dict(batch_first=True),
    dict(),
    dict(num_layers=2, batch_first=True),
    dict(bidirectional=True, batch_first=True),
    dict(num_layers=2, bidirectional=True),
    dict(bias=False),
]
IDS = ["batch_first", "time_major", "2layers", "bidirectional", "2layers_bidirectional", "no_bias"]
WELL_CONDITIONED = dynlrp.presets.get("epsilon", epsilon=1e-2)  # float32 rounding is not amplified by tiny z


def _norm_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def _input(kw: dict, dtype=torch.float32) -> torch.Tensor:
    return torch.randn((2, 5, 8) if kw.get("batch_first") else (5, 2, 8), dtype=dtype)


def _relevance(model, x, target=None, rules="epsilon", output=lambda result: result[0]):
    x = x.detach().clone().requires_grad_(True)
    exp = dynlrp.explain(output(model(x)), target, rules=rules, inputs=[x])
    return exp.relevance(x), exp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a shared machine (3 s vs 20 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_rnn_decomposition():
    saved = REGISTRY.rules[MKLDNN], REGISTRY.replays[MKLDNN], DECOMPOSITIONS[MKLDNN]
    yield
    REGISTRY.rules[MKLDNN], REGISTRY.replays[MKLDNN], DECOMPOSITIONS[MKLDNN] = saved


@pytest.fixture
def decompose():
    """``decompose(node_type, fn, **options)``: register for this test only."""
    added = []

    def add(node_type, fn, **options):
        added.append(node_type)
        return register_decomposition(node_type, fn, **options)

    yield add
    for node_type in added:
        remove_decomposition(node_type)


# ---------------------------------------------------------------------------------------------
# nn.LSTM / nn.GRU


def test_float32_lstm_uses_the_kernel_and_float64_does_not():
    lstm = nn.LSTM(8, 16)
    types32 = Graph.build(lstm(torch.randn(5, 2, 8, requires_grad=True))[0].grad_fn).type_counts()
    types64 = Graph.build(lstm.double()(torch.randn(5, 2, 8, dtype=torch.float64, requires_grad=True))[0]
                          .grad_fn).type_counts()
    assert types32[MKLDNN] == 1
    assert MKLDNN not in types64 and types64["SigmoidBackward0"] == 15
    gru = nn.GRU(8, 16)  # torch 2.14 runs nn.GRU as native cells in float32 too (oneDNN: LSTM only)
    assert MKLDNN not in Graph.build(gru(torch.randn(5, 2, 8, requires_grad=True))[0].grad_fn).type_counts()


@pytest.mark.parametrize("cls,mode", [(nn.LSTM, 2), (nn.GRU, 3), (nn.RNN, 1), (nn.RNN, 0)],
                         ids=["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_reference_cells_match_torch(cls, mode):
    """``rnn_layer`` (gate orders i, f, g, o and r, z, n) against torch's own layers, both directions."""
    options = {"nonlinearity": "relu"} if mode == 0 else {}
    model = cls(8, 16, bidirectional=True, **options).double()
    x, h0 = torch.randn(5, 2, 8, dtype=torch.float64), torch.randn(2, 2, 16, dtype=torch.float64)
    c0 = torch.randn(2, 2, 16, dtype=torch.float64)
    out, state = model(x, (h0, c0) if mode == 2 else h0)
    h_n = state[0] if mode == 2 else state
    for d, suffix in enumerate(("", "_reverse")):
        weights = [getattr(model, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        got, h, c = rnn_layer(x, *weights, h0[d], c0[d] if mode == 2 else None, mode=mode, reverse=bool(d))
        torch.testing.assert_close(got, out[..., 16 * d:16 * (d + 1)])
        torch.testing.assert_close(h, h_n[d])
        if mode == 2:
            torch.testing.assert_close(c, state[1][d])


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_lstm_audit_is_covered_and_conserves(kw):
    lstm = nn.LSTM(8, 16, **kw)
    report = dynlrp.audit(lstm, _input(kw))
    assert report.error is None and report.needs_record is None
    assert report.coverage == 1.0 and not report.missing
    stats = report.ops[MKLDNN]
    assert stats.covered and stats.rule == "decompose[rnn_layer]"
    assert stats.count == kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    assert stats.max_error < 1e-3  # |in - out - absorbed| / |in|, float32, in can be << absorbed
    assert report.conservation["unexplained"] < 1e-5
    assert report.backward_ok
    x = _input(kw).requires_grad_(True)
    rows = [row for row in dynlrp.explain(lstm(x)[0], inputs=[x]).nodes if row.node_type == MKLDNN]
    for row in rows:  # the residual against the gross flow through the node: float32 rounding only
        gross = abs(row.relevance_in) + abs(row.relevance_out) + sum(abs(v) for v in row.absorbed.values())
        assert row.error * abs(row.relevance_in) < 1e-6 * gross


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_float32_relevance_equals_float64_model(cls, kw):
    model = cls(8, 16, **kw)
    x = _input(kw)
    target = torch.randn(model(x)[0].shape)
    r32, exp = _relevance(model, x, target, WELL_CONDITIONED)
    r64, _ = _relevance(copy.deepcopy(model).double(), x.double(), target.double(), WELL_CONDITIONED)
    assert _norm_error(r32, r64) < 1e-4
    assert exp.fallbacks == {}
    # float32: the residual on the scale of the relevance through the node (|in| alone can be far
    # smaller than what the stabilisers absorb, 20x here)
    assert max(row.flow_error for row in exp.nodes) < 1e-6


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_gru_and_lstm_audit_default_preset(cls):
    model = cls(8, 16, batch_first=True, num_layers=2, bidirectional=True)
    report = dynlrp.audit(model, torch.randn(2, 5, 8))
    assert report.coverage == 1.0 and report.error is None
    assert report.conservation["unexplained"] < 1e-5


@pytest.mark.parametrize("kw", [dict(batch_first=True), dict(), dict(bidirectional=True, batch_first=True)],
                         ids=["batch_first", "time_major", "bidirectional"])
def test_float64_reference_reproduces_native_lrp_exactly(kw, restore_rnn_decomposition):
    """Run the decomposition in float64: the subgraph is then torch's native float64 LSTM graph, so
    the relevance equals dynlrp on model.double() to float64 precision (default epsilon 1e-6)."""
    spec = get_decomposition(MKLDNN)
    register_decomposition(MKLDNN, spec.fn, inputs=spec.inputs, params=spec.params, dtype=torch.float64)
    model = nn.LSTM(8, 16, **kw)
    x = _input(kw)
    target = torch.randn(model(x)[0].shape)
    r32, _ = _relevance(model, x, target)
    r64, _ = _relevance(copy.deepcopy(model).double(), x.double(), target.double())
    assert r32.dtype == torch.float64
    assert _norm_error(r32, r64) < 1e-10


def test_multiple_outputs_h_n_and_c_n():
    """Relevance enters through output, h_n and c_n at once (output numbers 0, 1, 2 of each layer)."""
    model = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 8)

    def head(result):
        out, (h_n, c_n) = result
        return out[:, -1].sum(-1) + h_n.sum((0, 2)) - 0.5 * c_n.sum((0, 2))

    r32, exp = _relevance(model, x, None, WELL_CONDITIONED, head)
    r64, _ = _relevance(copy.deepcopy(model).double(), x.double(), None, WELL_CONDITIONED, head)
    assert _norm_error(r32, r64) < 1e-4
    rows = [row for row in exp.nodes if row.node_type == MKLDNN]
    assert len(rows) == 4 and max(row.error for row in rows) < 1e-5
    assert exp.conservation.unexplained < 1e-5


def test_initial_state_is_explained():
    model = nn.LSTM(8, 16)
    x, h0, c0 = torch.randn(5, 2, 8), torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    got, want = [], []
    for m, dtype, sink in ((model, torch.float32, got), (copy.deepcopy(model).double(), torch.float64, want)):
        ins = [t.to(dtype).requires_grad_(True) for t in (x, h0, c0)]
        out = m(ins[0], (ins[1], ins[2]))[0]
        exp = dynlrp.explain(out, out.detach() * 0 + 1, rules=WELL_CONDITIONED, inputs=ins)
        sink.extend(exp.relevance(t) for t in ins)
        assert exp.conservation.unexplained < 1e-5
    for a, b in zip(got, want):
        assert _norm_error(a, b) < 1e-4


def test_first_layer_rule_only_where_the_layer_reads_the_input():
    """``flat`` on the first layer: inside the first LSTM layer's decomposition, not the second's."""
    rules = dynlrp.presets.get("flat", epsilon=1e-2)
    model = nn.LSTM(8, 16, num_layers=2)
    x = torch.randn(5, 2, 8)
    r32, _ = _relevance(model, x, None, rules)
    r64, _ = _relevance(copy.deepcopy(model).double(), x.double(), None, rules)
    assert _norm_error(r32, r64) < 1e-4
    plain, _ = _relevance(model, x, None, WELL_CONDITIONED)
    assert _norm_error(r32, plain) > 1e-2  # the flat rule did act


def test_module_overrides_apply_inside_the_decomposition():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][-1])

    model, x = Tagger(), torch.randn(5, 2, 8)
    zplus = WELL_CONDITIONED.override(modules={"rnn": dynlrp.LinearRule("zplus", epsilon=1e-2)})
    got = {}
    for name, m, dtype in (("32", model, torch.float32), ("64", copy.deepcopy(model).double(), torch.float64)):
        for rules in (WELL_CONDITIONED, zplus):
            xi = x.to(dtype).requires_grad_(True)
            with track_modules(m) as paths:
                out = m(xi)
            exp = dynlrp.explain(out, 0, rules=rules, inputs=[xi], module_paths=paths)
            got[name, rules is zplus] = exp.relevance(xi)
    assert {row.module for row in exp.nodes if row.node_type == "MulBackward0"} == {"rnn"}
    for overridden in (False, True):
        assert _norm_error(got["32", overridden], got["64", overridden]) < 1e-4
    assert _norm_error(got["32", True], got["32", False]) > 1e-2


def test_frozen_lstm_is_explained_post_hoc():
    """Frozen weights are operands outside the graph; their copies are readable leaves inside."""
    model = nn.LSTM(8, 16, num_layers=2, batch_first=True)
    trainable = copy.deepcopy(model)
    model.requires_grad_(False)
    report = dynlrp.audit(model, torch.randn(2, 5, 8))
    assert report.coverage == 1.0 and report.error is None and report.needs_record is None
    x = torch.randn(2, 5, 8)
    frozen, exp = _relevance(model, x, None, WELL_CONDITIONED)
    want, ref = _relevance(trainable, x, None, WELL_CONDITIONED)
    torch.testing.assert_close(frozen, want)
    assert "parameter" not in exp.conservation.absorbed  # shares of frozen weights are constants
    assert exp.conservation.absorbed["constant"] == pytest.approx(ref.conservation.absorbed["parameter"], rel=1e-6)


def test_strict_mode_accepts_the_decomposed_kernel():
    model = nn.LSTM(8, 16)
    x = torch.randn(5, 2, 8, requires_grad=True)
    exp = dynlrp.explain(model(x)[0], inputs=[x], strict=True)
    assert exp.fallbacks == {}


# ---------------------------------------------------------------------------------------------
# custom autograd Functions


class MySquareReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0) ** 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x.clamp(min=0)


class ScaledLinearTanh(torch.autograd.Function):
    """``z = linear(x, scale * W, b)``; returns ``(z, tanh z)``. ``b`` does not require grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale):
        z = F.linear(x, scale * weight, bias)
        t = z.tanh()
        ctx.save_for_backward(x, weight, bias, t)
        ctx.scale = scale
        return z, t

    @staticmethod
    def backward(ctx, grad_z, grad_t):
        x, weight, _, t = ctx.saved_tensors
        g = grad_z + grad_t * (1 - t * t)
        return g @ (ctx.scale * weight), ctx.scale * g.transpose(-1, -2) @ x, None, None


def _scaled_linear_tanh(x, weight, bias, *, scale):
    """Reference of ScaledLinearTanh: the same ops in plain torch."""
    z = F.linear(x, scale * weight, bias)
    return z, z.tanh()


@pytest.fixture
def custom_functions(decompose):
    decompose(MySquareReLU, lambda x: x.clamp(min=0) ** 2)
    decompose(ScaledLinearTanh, _scaled_linear_tanh,
              inputs=lambda ctx: (ctx.input(0), ctx.input(1), ctx.node.saved_tensors[2]),
              params=lambda ctx: {"scale": ctx.node.scale})


def _mlp(square):
    torch.manual_seed(1)
    first, second = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(x):
        h = first(x)
        return second(MySquareReLU.apply(h) if square == "custom" else h.clamp(min=0) ** 2)
    return forward


def test_custom_function_is_decomposed_like_the_plain_model(custom_functions):
    x = torch.randn(4, 6)
    custom, exp = _relevance(_mlp("custom"), x, output=lambda out: out)
    plain, _ = _relevance(_mlp("plain"), x, output=lambda out: out)
    torch.testing.assert_close(custom, plain, rtol=1e-6, atol=1e-7)
    row = next(row for row in exp.nodes if row.node_type == "MySquareReLUBackward")
    assert row.rule.startswith("decompose[") and not row.fallback and row.error < 1e-6


def test_custom_function_with_parameters_constants_and_two_outputs(custom_functions):
    torch.manual_seed(2)
    weight, bias = nn.Parameter(torch.randn(5, 4)), torch.randn(5)
    x = torch.randn(3, 4)

    def custom(x):
        z, t = ScaledLinearTanh.apply(x, weight, bias, 0.5)
        return z + t

    def plain(x):
        z = F.linear(x, 0.5 * weight, bias)
        return z + z.tanh()

    got, exp = _relevance(custom, x, output=lambda out: out)  # post hoc: checked through the backward
    with dynlrp.record():  # the plain graph needs the frozen bias, which only a recording holds
        want, ref = _relevance(plain, x, output=lambda out: out)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert exp.conservation.absorbed.keys() >= {"bias", "stabiliser"}
    assert abs(exp.conservation.absorbed["bias"] - ref.conservation.absorbed["bias"]) < 1e-6
    assert exp.conservation.unexplained < 1e-6


def test_decomposition_registers_a_forward_replay(custom_functions):
    """A value behind the opaque node (the sum needs its input) is replayed with the reference."""
    x = torch.randn(4, 6, requires_grad=True)
    out = MySquareReLU.apply(x * 2).sum(-1)
    exp = dynlrp.explain(out, torch.ones(4), inputs=[x])
    assert exp.promises.internal_nodes >= 1
    assert exp.conservation.unexplained < 1e-6


# ---------------------------------------------------------------------------------------------
# named errors


class WrongSquare(MySquareReLU):
    """The same Function under another node type name (``WrongSquareBackward``)."""


def test_mismatching_reference_raises_named_error_output_check(decompose):
    decompose(WrongSquare, lambda x: x.clamp(min=0))  # forgot the square
    x = torch.randn(4, 6, requires_grad=True)
    out = nn.Linear(6, 2)(WrongSquare.apply(x))  # addmm saves the node's output: compared directly
    with pytest.raises(dynlrp.DecompositionMismatchError, match="output 0"):
        dynlrp.explain(out, inputs=[x])


def test_mismatching_reference_raises_named_error_vjp_check(decompose):
    decompose(WrongSquare, lambda x: x.clamp(min=0) ** 3)
    x = torch.randn(4, 6, requires_grad=True)
    out = WrongSquare.apply(x) * 2  # nothing holds the node's output: compared by backward
    with pytest.raises(dynlrp.DecompositionMismatchError, match="gradient for input slot 0"):
        dynlrp.explain(out, torch.ones(4, 6), inputs=[x])
    decompose(WrongSquare, lambda x: x.clamp(min=0) ** 3, check="none")
    dynlrp.explain(out, torch.ones(4, 6), inputs=[x])  # unchecked on request


def test_wrong_output_count_or_shape_raises(decompose):
    decompose(WrongSquare, lambda x: ())
    x = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(dynlrp.DecompositionMismatchError, match="no tensor for output 0"):
        dynlrp.explain(WrongSquare.apply(x), inputs=[x])
    decompose(WrongSquare, lambda x: x.clamp(min=0).sum(0) ** 2)
    with pytest.raises(dynlrp.DecompositionMismatchError, match="shape"):
        dynlrp.explain(WrongSquare.apply(x), inputs=[x])


def test_wrong_gate_order_in_lstm_reference_raises(restore_rnn_decomposition):
    spec = get_decomposition(MKLDNN)

    def swapped(input, w_ih, w_hh, b_ih, b_hh, hx, cx, **kw):  # i, f, g, o read as f, g, o, i
        return spec.fn(input, w_ih.roll(16, 0), w_hh.roll(16, 0), b_ih.roll(16, 0), b_hh.roll(16, 0), hx, cx, **kw)

    register_decomposition(MKLDNN, swapped, inputs=spec.inputs, params=spec.params)
    model = nn.LSTM(8, 16)
    x = torch.randn(5, 2, 8, requires_grad=True)
    with pytest.raises(dynlrp.DecompositionMismatchError, match="MkldnnRnnLayerBackward0"):
        dynlrp.explain(model(x)[0], inputs=[x])
    assert dynlrp.audit(model, torch.randn(5, 2, 8)).error.startswith("DecompositionMismatchError")


class Opaque(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


class UsesOpaque(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 6

    @staticmethod
    def backward(ctx, grad):
        return grad * 6


def test_rules_missing_inside_a_decomposition_follow_strictness(decompose):
    decompose(UsesOpaque, lambda x: Opaque.apply(x) * 2, check="vjp")
    x = torch.randn(4, 6, requires_grad=True)
    out = UsesOpaque.apply(x).sum(-1)
    with pytest.raises(dynlrp.MissingRuleError, match="UsesOpaqueBackward/OpaqueBackward"):
        dynlrp.explain(out, torch.ones(4), inputs=[x], strict=True)
    with pytest.warns(dynlrp.MissingRuleWarning, match="UsesOpaqueBackward/OpaqueBackward"):
        exp = dynlrp.explain(out, torch.ones(4), inputs=[x])
    assert exp.fallbacks == {"UsesOpaqueBackward/OpaqueBackward": 1}


def test_opaque_nodes_without_decomposition_keep_the_existing_behaviour():
    x = torch.randn(4, 6, requires_grad=True)
    out = Opaque.apply(x) * 2
    with pytest.raises(dynlrp.MissingRuleError, match="OpaqueBackward"):
        dynlrp.explain(out, torch.ones(4, 6), inputs=[x], strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = dynlrp.explain(out, torch.ones(4, 6), inputs=[x])
    assert exp.fallbacks == {"OpaqueBackward": 1}
    assert any(issubclass(w.category, dynlrp.MissingRuleWarning) for w in caught)


def test_register_decomposition_validates_arguments():
    with pytest.raises(ValueError, match="check"):
        register_decomposition("FooBackward", lambda x: x, check="sometimes")
    with pytest.raises(TypeError, match="node_type"):
        register_decomposition(nn.Linear, lambda x: x)


def test_remove_decomposition_restores_the_node_type(decompose):
    decompose(Opaque, lambda x: x * 3)
    assert "OpaqueBackward" in REGISTRY.rules and "OpaqueBackward" in REGISTRY.replays
    remove_decomposition(Opaque)
    assert "OpaqueBackward" not in REGISTRY.rules and "OpaqueBackward" not in REGISTRY.replays
    assert get_decomposition(Opaque) is None
