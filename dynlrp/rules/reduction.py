"""Reductions: sum and mean over some or all dimensions (z-rule); vector norms (share of |x|^p)."""
from __future__ import annotations

import math

import torch

from ..context import NodeContext, RuleResult
from .common import z_rule
from .registry import replay, rule, saved_values


@rule("SumBackward0", "SumBackward1", "MeanBackward0", "MeanBackward1")
def reduce_sum(ctx: NodeContext, relevance):
    """``z = sum_i w_i x_i`` (w = 1 for sum, 1/n for mean): the z-rule
    ``R_i = x_i w_i R / s(z)``. Absorbs the stabiliser share ``sum (s - z) R / s``."""
    x, z = ctx.input(0), ctx.output()
    r_x, stab = z_rule(x, z, relevance[0], lambda c: ctx.vjp(c)[0], ctx.settings.epsilon)
    return RuleResult((r_x,), {"stabiliser": stab})


@replay("SumBackward0")
def _sum_all(ctx: NodeContext):
    return (ctx.input(0).sum(),)


@replay("MeanBackward0")
def _mean_all(ctx: NodeContext):
    return (ctx.input(0).mean(),)


@replay("SumBackward1")
def _sum_dims(ctx: NodeContext):
    return (ctx.input(0).sum(ctx.saved("dim"), keepdim=ctx.saved("keepdim")),)


@replay("MeanBackward1")
def _mean_dims(ctx: NodeContext):
    return (ctx.input(0).mean(ctx.saved("dim"), keepdim=ctx.saved("keepdim")),)


saved_values("LinalgVectorNormBackward0", inputs={0: "_saved_self"}, outputs={0: "_saved_result"})


@rule("LinalgVectorNormBackward0")
def vector_norm(ctx: NodeContext, relevance):
    """``z = ||x||_p`` over ``dim``: each element's share of the p-th power of the norm,
    ``R_i = |x_i|^p / sum_j |x_j|^p * R`` (p = inf: the largest magnitudes share it; a zero norm
    spreads evenly). Exact conservation; nothing absorbed. (A norm that only normalises, as in
    ``x / ||x||``, receives no relevance at all: the division treats it as a constant.)"""
    x, p = ctx.input(0), ctx.saved("ord")
    dim, keepdim = ctx.saved("dim"), ctx.saved("keepdim")
    dims = tuple(range(x.dim())) if dim is None or len(dim) == 0 else tuple(d % x.dim() for d in dim)
    if math.isinf(p):
        peak = x.abs().amax(dims, keepdim=True)
        weight = (x.abs() == peak).to(x.dtype)
    else:
        weight = x.abs() ** p
    total_weight = weight.sum(dims, keepdim=True)
    share = torch.where(total_weight > 0, weight / total_weight.clamp_min(torch.finfo(x.dtype).tiny),
                        torch.ones_like(weight) / math.prod(x.shape[d] for d in dims))
    r = relevance[0]
    if not keepdim:
        for d in sorted(dims):
            r = r.unsqueeze(d)
    return RuleResult((share * r,))
