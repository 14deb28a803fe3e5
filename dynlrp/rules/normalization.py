"""Batch normalisation, as the per-channel affine map it is at inference.

``y = a * x + c`` with ``a = w / sqrt(var + eps)``, ``c = b - mean * a`` (running statistics in eval,
the batch statistics the node saved in train mode). The statistics are constants, so the rule is
the epsilon rule of this affine map: ``R_x = a x R / s(y)``; absorbed ``bias = sum c R / s(y)`` and
``stabiliser = sum (s - y) R / s``. zennit instead folds batch norm into the preceding layer (its
canonizer); with the epsilon rule both agree up to terms of order ``eps / |z|`` (tested).
"""
from __future__ import annotations

import torch

from ..context import NodeContext, RuleResult
from .common import stabilize, total
from .registry import replay, rule, saved_values

saved_values("NativeBatchNormBackward0", inputs={0: "_saved_input", 1: "_saved_weight"})


def _affine(ctx: NodeContext):
    """``(x, a, c)`` with ``a``, ``c`` broadcasting against ``x`` (channels in dim 1)."""
    x = ctx.input(0)
    if ctx.saved("training"):
        mean, inv_std = ctx.saved("result1"), ctx.saved("result2")
    else:
        mean = ctx.saved("running_mean")
        inv_std = torch.rsqrt(ctx.saved("running_var") + ctx.saved("eps"))
    weight = ctx.saved("weight")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    a = (inv_std * (weight if weight is not None else 1.0)).to(x.dtype).view(shape)
    mean = mean.to(x.dtype).view(shape)
    if ctx.has_input(2):
        c = ctx.input(2).view(shape) - mean * a
    elif weight is None:  # affine=False: no bias either
        c = -mean * a
    else:  # a bias outside the graph (frozen): recovered from the output, elementwise
        c = ctx.output() - a * x
    return x, a, c


@rule("NativeBatchNormBackward0")
def batch_norm(ctx: NodeContext, relevance):
    """Batch norm ``y = a x + c`` (module docstring): epsilon rule ``R_x = a x R / s(y)``; absorbs
    ``bias = sum c R / s(y)`` and the stabiliser share. Weight and bias get no relevance."""
    (r,) = relevance
    x, a, c = _affine(ctx)
    y = a * x + c
    s = stabilize(y, ctx.settings.epsilon)
    q = r / s
    return RuleResult((a * x * q, None, None), {"bias": total(c * q), "stabiliser": total((s - y) * q)})


@replay("NativeBatchNormBackward0")
def _batch_norm_forward(ctx: NodeContext):
    x, a, c = _affine(ctx)
    return (a * x + c, None, None)
