"""Softmax and scaled-dot-product attention (AttnLRP and CP-LRP).

Softmax (AttnLRP, Prop. 3.1): ``R_x = x * (R - s * sum R)`` over the softmax dim, with ``s`` the
softmax output. It is not conservative: the relevance it does not pass on,
``sum R (1 - x) + sum_rows (sum R)(sum x s)``, is absorbed as ``rule``. Masked positions (``x`` not
finite) get zero. Log-softmax ``y = x - logsumexp(x)`` freezes the normaliser: ``R_x = x R / s(y)``,
the normaliser's share ``(y - x) R / s(y)`` absorbed as ``constant``.

Attention ``out = softmax(scale q k^T + mask) v`` is rebuilt from the node's saved q, k, v (mask,
causal flag, scale, grouped-query heads) and explained as its decomposition: uniform rule on
``A v`` (or, with the preset's ``attention="cp"``, ``A`` constant: all to ``v``), the softmax rule,
then the z-rule on ``scale q k^T + mask`` with the uniform rule on ``q k^T``.
"""
from __future__ import annotations

import math

import torch

from ..context import NodeContext, RuleResult
from ..errors import RuleError
from .common import broadcast_total, divide, total
from .registry import rule, saved_values

SOFTMAXES = ("SoftmaxBackward0", "SafeSoftmaxBackward0")
SDPA = ("ScaledDotProductFlashAttentionForCpuBackward0", "ScaledDotProductEfficientAttentionBackward0",
        "ScaledDotProductFlashAttentionBackward0", "ScaledDotProductCudnnAttentionBackward0",
        "ScaledDotProductFusedAttentionOverrideableBackward0")

saved_values(*SOFTMAXES, "LogSoftmaxBackward0", outputs={0: "_saved_result"})
saved_values(*SDPA, inputs={0: "_saved_query", 1: "_saved_key", 2: "_saved_value"}, outputs={0: "_saved_output"})


def softmax_relevance(x: torch.Tensor, s: torch.Tensor, r: torch.Tensor, dim: int):
    """AttnLRP's softmax rule; returns ``(R_x, absorbed rule term)`` (module docstring).

    Masked logits (``-inf``, ``s = 0`` there) count as ``x = 0``: their ``R_x`` is zero and all their
    ``R`` is absorbed. ``R_x = x R - (x s) sum R``, so the absorbed term is
    ``sum R - sum x R + sum_rows (sum R)(sum x s)``."""
    x0 = x if bool(torch.isfinite(x.sum())) else torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    row = r.sum(dim, keepdim=True)
    xr, xs = x0 * r, x0 * s
    xs = xs.to(torch.promote_types(xs.dtype, r.dtype))  # sum x s at R's precision, as R_x uses it
    r_x = xr - xs * row
    return r_x, total(r) - total(xr) + total(row * xs.sum(dim, keepdim=True))


@rule(*SOFTMAXES)
def softmax(ctx: NodeContext, relevance):
    """Softmax ``s = exp(x) / sum exp(x)``: ``R_x = x * (R - s * sum R)`` (AttnLRP); the
    non-conserved part ``sum R (1 - x) + sum_rows (sum R)(sum x s)`` is absorbed as ``rule``; masked
    (non-finite) positions get zero."""
    r_x, lost = softmax_relevance(ctx.input(0), ctx.output(), relevance[0], ctx.saved("dim"))
    return RuleResult((r_x,), {"rule": lost})


@rule("LogSoftmaxBackward0")
def log_softmax(ctx: NodeContext, relevance):
    """Log-softmax ``y = x - logsumexp(x)`` with the normaliser frozen: ``R_x = x R / s(y)``;
    absorbs the normaliser's share ``(y - x) R / s(y)`` as ``constant`` and the stabiliser share."""
    x, y = ctx.input(0), ctx.output()
    q, lost = divide(relevance[0], y, ctx.settings.epsilon)
    return RuleResult((x * q,), {"constant": total((y - x) * q), "stabiliser": lost})


def _saved_or_none(ctx: NodeContext, name: str):
    try:
        return ctx.saved(name)
    except AttributeError:
        return None


def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[-3] == heads else t.repeat_interleave(heads // t.shape[-3], dim=-3)


def _fold_heads(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if r.shape == like.shape:
        return r
    groups = r.shape[-3] // like.shape[-3]
    return r.unflatten(-3, (like.shape[-3], groups)).sum(-3)


@rule(*SDPA)
def scaled_dot_product_attention(ctx: NodeContext, relevance):
    """``out = softmax(scale q k^T + mask) v`` rebuilt from the saved q, k, v (mask, causal, scale,
    grouped-query heads). ``A v``: uniform rule ``R_A = 1/2 A (c v^T)``, ``R_v = 1/2 v (A^T c)``,
    ``c = R / s(out)`` (with ``attention="cp"``: ``R_v = v (A^T c)``, ``A`` constant, and q, k get
    none). Softmax rule on ``R_A`` (``rule`` absorbed). Scores ``t = scale q k^T + mask``:
    ``R_q = 1/2 q (scale (R_t / s(t)) k)``, ``R_k = 1/2 k (scale (R_t / s(t))^T q)``; the mask's share
    ``mask R_t / s(t)`` is absorbed as ``constant``. Stabiliser shares absorbed. Half-precision
    inputs are computed in float32 (the relevance returned in the inputs' dtype)."""
    if (_saved_or_none(ctx, "dropout_p") or 0.0) > 0.0:
        raise RuleError(f"{ctx.type} ran with attention dropout; explain the model in eval() mode")
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # rebuild attention in float32, as the kernel does
        q, k, v = q.float(), k.float(), v.float()
    eps = ctx.settings.epsilon
    heads = q.shape[-3] if q.dim() >= 3 else 1
    kk, vv = (_repeat_heads(k, heads), _repeat_heads(v, heads)) if q.dim() >= 3 else (k, v)
    scale = _saved_or_none(ctx, "scale") or 1.0 / math.sqrt(q.shape[-1])
    scores = scale * (q @ kk.transpose(-1, -2))
    mask = _saved_or_none(ctx, "attn_mask")
    if mask is None:
        mask = _saved_or_none(ctx, "attn_bias")
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -math.inf)
    elif mask is not None:
        mask = mask.to(q.dtype)
    if _saved_or_none(ctx, "is_causal"):
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        causal_mask = torch.zeros(causal.shape, dtype=q.dtype, device=q.device).masked_fill(~causal, -math.inf)
        mask = causal_mask if mask is None else mask + causal_mask
    logits = scores if mask is None else scores + mask
    weights = torch.softmax(logits, -1)
    out = ctx.held_output() if dtype == q.dtype else None  # the node saved its output
    out = weights @ vv if out is None else out
    r = relevance[0].to(q.dtype)
    c, lost = divide(r, out, eps)
    absorbed = {"stabiliser": lost}
    if ctx.settings.attention == "cp":
        r_v = vv * (weights.transpose(-1, -2) @ c)
        return RuleResult((None, None, _fold_heads(r_v, v).to(dtype)), absorbed)
    r_v = 0.5 * vv * (weights.transpose(-1, -2) @ c)
    r_weights = 0.5 * weights * (c @ vv.transpose(-1, -2))
    r_logits, absorbed["rule"] = softmax_relevance(logits, weights, r_weights, -1)
    # masked logits (-inf) have R = 0: taken as 0 they get g = 0 and no share (no inf * 0)
    if mask is not None and not bool(torch.isfinite(logits.sum())):
        logits, mask = (torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) for t in (logits, mask))
    g, lost = divide(r_logits, logits, eps)
    absorbed["stabiliser"] = absorbed["stabiliser"] + lost
    if mask is not None:
        absorbed["constant"] = broadcast_total(mask, g)
    r_q = 0.5 * q * (scale * (g @ kk))
    r_k = 0.5 * kk * (scale * (g.transpose(-1, -2) @ q))
    return RuleResult((r_q.to(dtype), _fold_heads(r_k, k).to(dtype), _fold_heads(r_v, v).to(dtype)), absorbed)
