"""Pooling: max pooling routes to the winner, average pooling uses the z-rule."""
from __future__ import annotations

import torch.nn.functional as F

from ..context import NodeContext, RuleResult
from .common import z_rule
from .registry import replay, rule, saved_values

MAX_POOLS = ("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0",
             "AdaptiveMaxPool2DBackward0", "AdaptiveMaxPool3DBackward0")
AVG_POOLS = ("AvgPool2DBackward0", "AvgPool3DBackward0", "AdaptiveAvgPool2DBackward0",
             "AdaptiveAvgPool3DBackward0")

saved_values(*MAX_POOLS, inputs={0: "_saved_self"})
saved_values(*AVG_POOLS, inputs={0: "_saved_self"})


@rule(*MAX_POOLS)
def winner_takes_all(ctx: NodeContext, relevance):
    """Max pooling: ``R_i = sum_j [i = argmax of window j] R_j`` (the node's own VJP, which routes
    each output to the input it copied). Exact conservation; nothing absorbed."""
    return RuleResult(ctx.vjp(*relevance))


@rule(*AVG_POOLS)
def average(ctx: NodeContext, relevance):
    """Average pooling ``z_j = sum_i w_ji x_i``: the z-rule ``R_i = x_i sum_j w_ji R_j / s(z_j)``
    (zennit's ``Norm``). Absorbs the stabiliser share ``sum (s - z) R / s``."""
    x, z = ctx.input(0), ctx.output()
    r_x, stab = z_rule(x, z, relevance[0], lambda c: ctx.vjp(c)[0], ctx.settings.epsilon)
    return RuleResult((r_x,), {"stabiliser": stab})


@replay("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0", "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0")
def _max_pool_forward(ctx: NodeContext):
    x, indices = ctx.input(0), ctx.saved("result1")
    values = x.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return (values,)


@replay("AvgPool2DBackward0", "AvgPool3DBackward0")
def _avg_pool_forward(ctx: NodeContext):
    pool = F.avg_pool2d if ctx.type == "AvgPool2DBackward0" else F.avg_pool3d
    return (pool(ctx.input(0), ctx.saved("kernel_size"), ctx.saved("stride"), ctx.saved("padding"),
                 ctx.saved("ceil_mode"), ctx.saved("count_include_pad"), ctx.saved("divisor_override")),)


@replay("AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0")
def _adaptive_avg_forward(ctx: NodeContext):
    pool = F.adaptive_avg_pool2d if ctx.type == "AdaptiveAvgPool2DBackward0" else F.adaptive_avg_pool3d
    shape = ctx.output_shapes[0]
    return (pool(ctx.input(0), shape[-2:] if ctx.type == "AdaptiveAvgPool2DBackward0" else shape[-3:]),)
