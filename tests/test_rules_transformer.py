"""Transformer rules against float64 re-implementations of their formulas, and against LXT's
per-op AttnLRP functions where the conventions match (stabilisers taken to ~0 on both sides)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dynlrp

pytestmark = pytest.mark.usefixtures("float64")
TINY = dynlrp.presets.get("attnlrp", epsilon=1e-30)


def _explain(out, inputs, rules="attnlrp", relevance=None):
    relevance = torch.randn_like(out) if relevance is None else relevance
    return dynlrp.explain(out, target=relevance, inputs=inputs, rules=rules), relevance


def _stab(z, eps=1e-6):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _rows(exp, node_type):
    rows = [row for row in exp.nodes if row.node_type == node_type]
    assert rows, f"{node_type} not in the graph"
    for row in exp.nodes:
        assert row.error < 1e-10, (row.node_type, row.error)
    return rows


@pytest.mark.parametrize("shape,normalized", [((3, 5), 1), ((2, 3, 4), 1), ((2, 3, 4), 2)])
def test_layer_norm_reference(shape, normalized):
    x = torch.randn(shape, requires_grad=True)
    ln = torch.nn.LayerNorm(shape[-normalized:])
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    out = ln(x)
    exp, r = _explain(out, [x])
    _rows(exp, "NativeLayerNormBackward0")
    # dense reference: J of (x - mean) * w * rstd with rstd frozen, R_x = x * J^T (R / s(y))
    dims = tuple(range(x.dim() - normalized, x.dim()))
    xd = x.detach()
    rstd = 1 / torch.sqrt(xd.var(dims, unbiased=False, keepdim=True) + ln.eps)

    def frozen(t):
        return (t - t.mean(dims, keepdim=True)) * rstd * ln.weight.detach()

    _, vjp = torch.autograd.functional.vjp(frozen, xd, r / _stab(out.detach()))
    torch.testing.assert_close(exp.relevance(x), xd * vjp, rtol=1e-10, atol=1e-12)
    bias_share = (ln.bias.detach() * r / _stab(out.detach())).sum().item()
    assert exp.conservation.absorbed["bias"] == pytest.approx(bias_share, rel=1e-10)


def test_group_norm_reference():
    x = torch.randn(2, 6, 5, requires_grad=True)
    gn = torch.nn.GroupNorm(3, 6)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    out = gn(x)
    exp, r = _explain(out, [x])
    _rows(exp, "NativeGroupNormBackward0")
    xd = x.detach()
    g = xd.view(2, 3, -1)
    rstd = (1 / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + gn.eps))

    def frozen(t):
        tg = t.view(2, 3, -1)
        return ((tg - tg.mean(-1, keepdim=True)) * rstd).view_as(t) * gn.weight.detach().view(1, 6, 1)

    _, vjp = torch.autograd.functional.vjp(frozen, xd, r / _stab(out.detach()))
    torch.testing.assert_close(exp.relevance(x), xd * vjp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_reference(dim):
    x = torch.randn(3, 4, 5, requires_grad=True)
    out = torch.softmax(x * 1.0, dim)
    exp, r = _explain(out, [x])
    _rows(exp, "SoftmaxBackward0")
    s, xd = out.detach(), x.detach()
    expected = xd * (r - s * r.sum(dim, keepdim=True))  # AttnLRP Prop. 3.1
    torch.testing.assert_close(exp.relevance(x), expected, rtol=1e-10, atol=1e-12)
    assert exp.conservation.absorbed["rule"] == pytest.approx((r.sum() - expected.sum()).item(), rel=1e-9)


def test_softmax_masked_positions_get_zero():
    x = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, False]] * 2)
    with dynlrp.record():
        out = torch.softmax(x.masked_fill(~mask, -math.inf), -1)
    exp, _ = _explain(out, [x])
    rel = exp.relevance(x)
    assert torch.isfinite(rel).all()
    assert (rel[~mask] == 0).all()


def test_mask_added_to_a_mask_overflows_to_minus_inf():
    """transformers 4.x GPT-2 (eager) adds its padding mask to ``where(causal, w, finfo.min)``:
    ``finfo.min + finfo.min = -inf``. The add rule gives no shares there and the ledger stays finite."""
    x = torch.randn(2, 5, requires_grad=True)
    keep = torch.ones(5, 5, dtype=torch.bool).tril()[-2:]
    lowest = torch.finfo(x.dtype).min
    with dynlrp.record():
        logits = torch.where(keep, x * 1.0, lowest) + torch.where(keep, 0.0, lowest)
        out = torch.softmax(logits, -1)
    assert torch.isinf(logits).any()
    exp, _ = _explain(out, [x])
    rel = exp.relevance(x)
    assert torch.isfinite(rel).all() and (rel[~keep] == 0).all()
    _rows(exp, "AddBackward0")
    assert exp.conservation.unexplained < 1e-10


def test_log_softmax_reference():
    x = torch.randn(3, 6, requires_grad=True)
    out = torch.log_softmax(x * 1.0, -1)
    exp, r = _explain(out, [x])
    _rows(exp, "LogSoftmaxBackward0")
    y, xd = out.detach(), x.detach()
    torch.testing.assert_close(exp.relevance(x), xd * r / _stab(y), rtol=1e-10, atol=1e-12)


def _attention_reference(q, k, v, r, causal, mask, cp):
    """AttnLRP's attention, written out: uniform on A v, softmax rule, uniform on q k^T."""
    heads = q.shape[1]
    kk, vv = (t.repeat_interleave(heads // t.shape[1], 1) for t in (k, v))
    scale = 1 / math.sqrt(q.shape[-1])
    logits = scale * q @ kk.transpose(-1, -2)
    if mask is not None:
        logits = logits + mask
    if causal:
        logits = logits.masked_fill(~torch.ones(logits.shape[-2:], dtype=torch.bool).tril(), -math.inf)
    a = torch.softmax(logits, -1)
    out = a @ vv
    c = r / _stab(out)
    if cp:
        return None, None, (vv * (a.transpose(-1, -2) @ c)).unflatten(1, (k.shape[1], -1)).sum(2)
    r_v = 0.5 * vv * (a.transpose(-1, -2) @ c)
    r_a = 0.5 * a * (c @ vv.transpose(-1, -2))
    finite = torch.isfinite(logits)
    lg = torch.where(finite, logits, 0.0)
    r_l = torch.where(finite, lg * (r_a - a * r_a.sum(-1, keepdim=True)), 0.0)
    g = r_l / _stab(torch.where(finite, logits, 1.0))
    r_q = 0.5 * q * (scale * g @ kk)
    r_k = 0.5 * kk * (scale * g.transpose(-1, -2) @ q)
    fold = lambda t: t.unflatten(1, (k.shape[1], -1)).sum(2)  # noqa: E731
    return r_q, fold(r_k), fold(r_v)


@pytest.mark.parametrize("causal,gqa,use_mask,cp", [(False, False, False, False), (True, True, False, False),
                                                    (False, False, True, False), (True, True, False, True)])
def test_sdpa_reference(causal, gqa, use_mask, cp):
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    kv_heads = 2 if gqa else 4
    k = torch.randn(2, kv_heads, 5, 8, requires_grad=True)
    v = torch.randn(2, kv_heads, 5, 8, requires_grad=True)
    mask = torch.randn(5, 5) if use_mask else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    rules = dynlrp.presets.get("cp_lrp") if cp else "attnlrp"
    exp, r = _explain(out, [q, k, v], rules)
    _rows(exp, "ScaledDotProductFlashAttentionForCpuBackward0")
    expected = _attention_reference(q.detach(), k.detach(), v.detach(), r, causal, mask, cp)
    for t, want in zip((q, k, v), expected):
        if want is None:
            assert (exp.relevance(t) == 0).all()
        else:
            torch.testing.assert_close(exp.relevance(t), want, rtol=1e-10, atol=1e-12)


def test_sdpa_agrees_with_the_decomposed_math_path():
    """The fused node and the same attention written with bmm/softmax agree up to stabiliser terms
    (the fused rule stabilises the scaled scores, the eager graph the unscaled q k^T): O(eps/|z|)."""
    q, k, v = (torch.randn(1, 2, 6, 8, requires_grad=True) for _ in range(3))
    r = torch.randn(1, 2, 6, 8)
    fused = dynlrp.explain(F.scaled_dot_product_attention(q, k, v, is_causal=True), target=r, inputs=[q, k, v],
                           rules=TINY)
    with dynlrp.record():
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        logits = logits.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
        eager = torch.softmax(logits, -1) @ v
    decomposed = dynlrp.explain(eager, target=r, inputs=[q, k, v], rules=TINY)
    for t in (q, k, v):
        torch.testing.assert_close(fused.relevance(t), decomposed.relevance(t), rtol=1e-9, atol=1e-12)


def test_hand_written_rms_norm_keeps_statistics_constant():
    """``x * rsqrt(mean(x^2) + eps) * w``: the statistics path receives no relevance, and the
    result equals the rule with rsqrt treated as a constant: R_x = R (identity through the scale)."""
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    exp, r = _explain(out, [x])
    torch.testing.assert_close(exp.relevance(x), r, rtol=1e-12, atol=1e-12)
    visited = {row.node_type for row in exp.nodes}
    assert not visited & {"RsqrtBackward0", "PowBackward0", "MeanBackward1"}
    assert exp.conservation.unexplained < 1e-12


def test_hand_written_silu_and_gelu_are_activations():
    x = torch.randn(4, 6, requires_grad=True)
    for out in (x * torch.sigmoid(x),
                0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))):
        exp, r = _explain(out, [x])
        torch.testing.assert_close(exp.relevance(x), r, rtol=1e-12, atol=1e-12)


def test_product_of_two_tensors_is_uniform():
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    out = torch.nn.functional.silu(a) * b  # SwiGLU: a gate of another tensor
    exp, r = _explain(out, [a, b])
    torch.testing.assert_close(exp.relevance(b), r / 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exp.relevance(a), r / 2, rtol=1e-12, atol=1e-12)


def test_sum_of_products_is_not_a_statistic():
    """A contraction ``(a * b).sum(-1)`` (einsum, a scan) multiplied with a gate is a product of two
    activations, not a normaliser."""
    a, b, g = (torch.randn(3, 4, requires_grad=True) for _ in range(3))
    out = (a * b).sum(-1, keepdim=True) * torch.sigmoid(g)
    exp, _ = _explain(out, [a, b, g])
    assert exp.relevance(g).abs().sum() > 0
    assert exp.relevance(a).abs().sum() > 0


def test_masking_and_where_route():
    x = torch.randn(4, 4, requires_grad=True)
    y = torch.randn(4, 4, requires_grad=True)
    cond = torch.rand(4, 4) > 0.5
    out = torch.where(cond, x * 1.0, y * 1.0).tril()
    exp, r = _explain(out, [x, y])
    keep = torch.ones(4, 4).tril()
    torch.testing.assert_close(exp.relevance(x), r * keep * cond, rtol=0, atol=0)
    torch.testing.assert_close(exp.relevance(y), r * keep * ~cond, rtol=0, atol=0)
    assert exp.conservation.absorbed["constant"] == pytest.approx((r * (1 - keep)).sum().item(), rel=1e-12)


@pytest.mark.parametrize("fn", [torch.exp, torch.rsqrt, torch.sqrt, torch.log, torch.reciprocal, torch.erf,
                                lambda t: t ** 3, torch.abs])
def test_unary_nonlinearities_are_identity(fn):
    x = (torch.rand(3, 5) + 0.5).requires_grad_(True)
    out = fn(x * 1.0) @ torch.randn(5, 2)
    exp, _ = _explain(out, [x])
    assert exp.conservation.unexplained < 1e-10
    for row in exp.nodes:
        assert row.error < 1e-10


# --- LXT's own per-op functions (AttnLRP), conventions matched by taking eps -> 0 on both sides ----

import lxt.explicit.functional as lxt  # noqa: E402 - installed by the README's install line (--no-deps)


def _lxt_relevance(fn, inputs, r):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(r)
    return [t.grad for t in leaves]


@pytest.mark.parametrize("case", ["softmax", "matmul", "layer_norm", "add2", "mul2", "mean"])
def test_agrees_with_lxt_functions(case):
    a = torch.randn(2, 3, 6)
    b = torch.randn(2, 6, 3) if case == "matmul" else torch.randn(2, 3, 6)
    weight, bias = torch.randn(6), torch.randn(6)
    ops = {
        "softmax": ((lambda x: lxt.softmax(x, -1)), (lambda x: torch.softmax(x * 1.0, -1)), [a]),
        "matmul": ((lambda x, y: lxt.matmul(x, y, epsilon=1e-30)), (lambda x, y: x @ y), [a, b]),
        "layer_norm": ((lambda x: lxt.layer_norm_grad_fn.apply(x, weight, bias, 1e-5, 1e-30)),
                       (lambda x: F.layer_norm(x, (6,), weight, bias, 1e-5)), [a]),
        "add2": ((lambda x, y: lxt.add2(x, y, epsilon=1e-30)), (lambda x, y: x + y), [a, b]),
        "mul2": ((lambda x, y: lxt.mul2(x, y)), (lambda x, y: x * y), [a, b]),
        "mean": ((lambda x: lxt.mean(x, -1, True, epsilon=1e-30)), (lambda x: x.mean(-1, keepdim=True)), [a]),
    }
    lxt_fn, torch_fn, inputs = ops[case]
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = torch_fn(*leaves)
    r = torch.randn_like(out)
    ours = dynlrp.explain(out, target=r, inputs=leaves, rules=TINY)
    theirs = _lxt_relevance(lxt_fn, inputs, r)
    # LXT stabilises with z + eps, dynlrp with z + eps * sign(z): equal once eps -> 0
    for mine, other in zip(theirs, [ours.relevance(t) for t in leaves]):
        torch.testing.assert_close(other, mine, rtol=1e-10, atol=1e-12)


def test_sdpa_in_bfloat16_matches_float32_on_the_same_values():
    """Half-precision attention is rebuilt in float32 (as the fused kernel computes it): on the same
    (bfloat16-representable) values the relevance matches the float32 explanation to bf16 precision."""
    torch.manual_seed(0)
    base = [torch.randn(1, 2, 5, 4).bfloat16().float() for _ in range(3)]

    def relevance(dtype):
        qkv = [t.to(dtype).requires_grad_(True) for t in base]
        out = torch.nn.functional.scaled_dot_product_attention(*qkv)
        exp = dynlrp.explain(out, target=torch.ones(out.shape, dtype=dtype), inputs=qkv, rules="attnlrp")
        return [exp.relevance(t).float() for t in qkv]

    for low, full in zip(relevance(torch.bfloat16), relevance(torch.float32)):
        assert (low - full).abs().max() <= 5e-3 * full.abs().max()
