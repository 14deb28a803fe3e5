"""Reductions: sum and mean over some or all dimensions, with the z-rule."""
from __future__ import annotations

from ..context import NodeContext, RuleResult
from .common import z_rule
from .registry import replay, rule


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
