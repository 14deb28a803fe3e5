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
from ..graph import Node, node_type
from .common import broadcast_total, divide
from .registry import replay, rule, saved_values

saved_values("NativeBatchNormBackward0", inputs={0: "_saved_input", 1: "_saved_weight"})


def batch_norm_affine(ctx: NodeContext):
    """``(x, a, c)`` with ``a``, ``c`` broadcasting against ``x`` (channels in dim 1)."""
    x = ctx.input(0)
    if ctx.saved("training"):
        mean, inv_std = ctx.saved("result1"), ctx.saved("result2")
    else:
        mean = ctx.saved("running_mean")
        inv_std = torch.rsqrt(ctx.saved("running_var") + ctx.saved("eps"))
    weight = ctx.saved("weight")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    a = (inv_std if weight is None else inv_std * weight).to(x.dtype).view(shape)
    mean = mean.to(x.dtype).view(shape)
    bias = ctx.operand(2)
    if bias is not None:
        c = bias.view(shape) - mean * a
    elif weight is None:  # affine=False: no bias either
        c = -mean * a
    else:  # a frozen bias nothing holds: recovered from the output, elementwise
        c = ctx.output() - a * x
    return x, a, c


MERGES_INTO = ("ConvolutionBackward0",)


def _mergeable(ctx: NodeContext, linear: Node, norm: Node) -> bool:
    """Whether ``norm`` is an eval-mode batch norm reading ``linear``'s output as its only consumer,
    with the preset's ``merge_batch_norm`` on (checked the same way from either node)."""
    consumers = ctx.store.graph.consumers.get(linear, ())
    return (ctx.settings is not None and ctx.settings.merge_batch_norm and node_type(linear) in MERGES_INTO
            and node_type(norm) == "NativeBatchNormBackward0" and len(consumers) == 1
            and consumers[0] == (norm, 0, 0) and not ctx.neighbour(norm).saved("training")
            and not ctx.neighbour(linear).saved("transposed"))


def batch_norm_after(ctx: NodeContext) -> NodeContext | None:
    """For a convolution: the context of the batch norm merged into it (see :func:`_mergeable`)."""
    consumers = ctx.store.graph.consumers.get(ctx.node, ())
    if len(consumers) != 1 or not _mergeable(ctx, ctx.node, consumers[0][0]):
        return None
    return ctx.neighbour(consumers[0][0])


@rule("NativeBatchNormBackward0")
def batch_norm(ctx: NodeContext, relevance):
    """Batch norm ``y = a x + c`` (module docstring): epsilon rule ``R_x = a x R / s(y)``; absorbs
    ``bias = sum c R / s(y)`` and the stabiliser share. Weight and bias get no relevance. Merged into
    the convolution before it (preset ``merge_batch_norm``): ``R_x = R`` (that convolution's rule
    explains ``y`` with ``W' = a W``, ``b' = a b + c``), exact."""
    (r,) = relevance
    producer = ctx.edges[0][0]
    if producer is not None and _mergeable(ctx, producer, ctx.node):
        ctx.store.keep_until((ctx.node, 0), producer)  # y, if a consumer's rule replayed it: read there again
        return RuleResult((r, None, None))
    x, a, c = batch_norm_affine(ctx)
    ax = a * x
    q, lost = divide(r, ax + c, ctx.settings.epsilon)
    return RuleResult((ax.mul_(q), None, None), {"bias": broadcast_total(c, q), "stabiliser": lost})


@replay("NativeBatchNormBackward0")
def _batch_norm_forward(ctx: NodeContext):
    x, a, c = batch_norm_affine(ctx)
    return (torch.addcmul(c, a, x), None, None)


# layer norm and group norm: the LN-rule ----------------------------------------------------------

saved_values("NativeLayerNormBackward0", inputs={0: "_saved_input", 1: "_saved_weight", 2: "_saved_bias"})
saved_values("NativeGroupNormBackward0", inputs={0: "_saved_input", 1: "_saved_weight"})


def _ln_rule(x, y, bias_term, relevance, scale, center, epsilon):
    """``y = scale * center(x) + b``, linear in ``x`` once the statistics are frozen:
    ``R_x = x * J^T(R / s(y))`` with ``J^T g = center^T(scale * g)``; returns ``(R_x, absorbed)``."""
    q, lost = divide(relevance, y, epsilon)
    return x * center(scale * q), {"bias": broadcast_total(bias_term, q), "stabiliser": lost}


def _layer_norm_parts(ctx: NodeContext):
    """``(x, dims, scale, centered, bias)`` with ``y = centered * scale + bias``; the node saves its
    input, weight, bias (``None`` when absent) and the statistics (mean, rstd)."""
    x = ctx.input(0)
    dims = tuple(range(x.dim() - len(ctx.saved("normalized_shape")), x.dim()))
    weight, bias = ctx.saved("weight"), ctx.saved("bias")
    scale = ctx.saved("result2") * (weight if weight is not None else 1.0)
    bias = bias if bias is not None else torch.zeros((), dtype=x.dtype, device=x.device)
    return x, dims, scale, x - ctx.saved("result1"), bias


@rule("NativeLayerNormBackward0")
def layer_norm(ctx: NodeContext, relevance):
    """LayerNorm ``y = w * (x - mean(x)) * rstd + b`` with the statistic ``rstd`` frozen (the
    LN-rule of AttnLRP): ``R_x = x * (g - mean(g))`` over the normalised dims, ``g = w rstd R / s(y)``.
    ``sum R_x = sum (y - b) R / s(y)``: absorbs the bias share ``sum b R / s`` and the stabiliser
    share. Weight and bias get none."""
    x, dims, scale, centered, bias = _layer_norm_parts(ctx)
    y = centered * scale + bias
    r_x, absorbed = _ln_rule(x, y, bias, relevance[0], scale,
                             lambda g: g - g.mean(dims, keepdim=True), ctx.settings.epsilon)
    return RuleResult((r_x, None, None), absorbed)


@replay("NativeLayerNormBackward0")
def _layer_norm_forward(ctx: NodeContext):
    _, _, scale, centered, bias = _layer_norm_parts(ctx)
    return (centered * scale + bias,)


def _group_norm_parts(ctx: NodeContext):
    """``(x, grouped view, per-channel scale, centered, bias)`` for ``y = centered * scale + bias``."""
    x = ctx.input(0)
    n, c, groups = ctx.saved("N"), ctx.saved("C"), ctx.saved("group")
    shape = (1, c) + (1,) * (x.dim() - 2)
    mean, rstd = ctx.saved("result1").view(n, groups, 1), ctx.saved("result2").view(n, groups, 1)
    weight = ctx.saved("weight")
    grouped = x.reshape(n, groups, -1)
    rstd_x = (rstd.expand(n, groups, grouped.shape[-1])).reshape(x.shape)
    scale = rstd_x * (weight.view(shape) if weight is not None else 1.0)
    centered = (grouped - mean).reshape(x.shape)
    bias = ctx.operand(2)
    if bias is not None:
        bias = bias.view(shape)
    elif weight is None:
        bias = torch.zeros((), dtype=x.dtype, device=x.device)
    else:  # a frozen bias nothing holds: recovered from the output
        bias = ctx.output() - centered * scale
    return x, (n, groups), scale, centered, bias


@rule("NativeGroupNormBackward0")
def group_norm(ctx: NodeContext, relevance):
    """GroupNorm (InstanceNorm runs as train-mode batch norm on an (N*C) view instead)
    ``y = w_c (x - mean_g) rstd_g + b_c`` with the group statistics frozen: ``R_x = x * (g - mean_g(g))``,
    ``g = w rstd R / s(y)``. Absorbs the bias share and the stabiliser share."""
    x, (n, groups), scale, centered, bias = _group_norm_parts(ctx)
    y = centered * scale + bias

    def center(g):
        grouped = g.reshape(n, groups, -1)
        return (grouped - grouped.mean(-1, keepdim=True)).reshape(g.shape)

    r_x, absorbed = _ln_rule(x, y, bias, relevance[0], scale, center, ctx.settings.epsilon)
    return RuleResult((r_x, None, None), absorbed)


@replay("NativeGroupNormBackward0")
def _group_norm_forward(ctx: NodeContext):
    _, _, scale, centered, bias = _group_norm_parts(ctx)
    return (centered * scale + bias,)
