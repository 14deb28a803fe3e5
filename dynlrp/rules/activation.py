"""Elementwise activations: the identity (pass-through) rule, ``R_x = R_y``.

For ``y = sigma(x)`` applied elementwise, LRP treats the activation as a gate that passes its
output's relevance to its input unchanged (zennit's ``Pass``; AttnLRP's identity rule). Exactly
conservative; nothing absorbed. Parameters of the activation (PReLU's slope) get no relevance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext, RuleResult
from .registry import replay, rule, saved_values

SAVES_INPUT = ("GeluBackward0", "SiluBackward0", "SoftplusBackward0", "HardswishBackward0",
               "HardsigmoidBackward0", "LeakyReluBackward0", "HardtanhBackward0", "ClampBackward1",
               "ClampMinBackward0", "MishBackward0", "ThresholdBackward0", "PreluKernelBackward0")
SAVES_RESULT = ("ReluBackward0", "TanhBackward0", "SigmoidBackward0")

saved_values(*SAVES_INPUT, inputs={0: "_saved_self"})
saved_values(*SAVES_RESULT, outputs={0: "_saved_result"})
saved_values("EluBackward0", inputs={0: "_saved_self"})
saved_values("EluBackward1", outputs={0: "_saved_self_or_result"})


@rule(*SAVES_INPUT, *SAVES_RESULT, "EluBackward0", "EluBackward1", "NativeDropoutBackward0")
def identity(ctx: NodeContext, relevance):
    """Pass-through: ``R_x = R_y`` elementwise (the activation is a gate; dropout in train mode is a
    masked identity). Exact conservation on the data operand; parameters (PReLU weight) get none."""
    out: list = [None] * ctx.num_inputs
    out[0] = relevance[0]
    return RuleResult(tuple(out))


@replay("GeluBackward0")
def _gelu(ctx: NodeContext):
    return (F.gelu(ctx.input(0), approximate=ctx.saved("approximate")),)


@replay("SiluBackward0")
def _silu(ctx: NodeContext):
    return (F.silu(ctx.input(0)),)


@replay("SoftplusBackward0")
def _softplus(ctx: NodeContext):
    return (F.softplus(ctx.input(0), ctx.saved("beta"), ctx.saved("threshold")),)


@replay("HardswishBackward0")
def _hardswish(ctx: NodeContext):
    return (F.hardswish(ctx.input(0)),)


@replay("HardsigmoidBackward0")
def _hardsigmoid(ctx: NodeContext):
    return (F.hardsigmoid(ctx.input(0)),)


@replay("LeakyReluBackward0")
def _leaky_relu(ctx: NodeContext):
    return (F.leaky_relu(ctx.input(0), ctx.saved("negative_slope")),)


@replay("HardtanhBackward0")
def _hardtanh(ctx: NodeContext):
    return (F.hardtanh(ctx.input(0), ctx.saved("min_val"), ctx.saved("max_val")),)


@replay("ClampBackward1")
def _clamp(ctx: NodeContext):
    return (ctx.input(0).clamp(ctx.saved("min"), ctx.saved("max")),)


@replay("MishBackward0")
def _mish(ctx: NodeContext):
    return (F.mish(ctx.input(0)),)


@replay("PreluKernelBackward0")
def _prelu(ctx: NodeContext):
    return (F.prelu(ctx.input(0), ctx.saved("weight")),)


@replay("EluBackward0")
def _elu(ctx: NodeContext):
    x = ctx.input(0) * ctx.saved("input_scale")
    alpha, scale = ctx.saved("alpha"), ctx.saved("scale")
    return (scale * torch.where(x > 0, x, alpha * torch.expm1(x)),)
