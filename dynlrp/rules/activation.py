"""Elementwise activations and unary nonlinearities: the identity (pass-through) rule, ``R_x = R_y``.

For ``y = sigma(x)`` applied elementwise (ReLU, GELU, tanh, exp, pow, rsqrt, ...), LRP treats the
function as a gate that passes its output's relevance to its input unchanged (zennit's ``Pass``;
AttnLRP's identity rule). Exactly conservative; nothing absorbed. Parameters of the activation
(PReLU's slope) get no relevance. Normaliser paths (``rsqrt(mean(x^2))``) receive no relevance in the
first place: the product that uses them treats them as constants (:mod:`dynlrp.analysis`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext, RuleResult
from .registry import replay, rule, saved_values

SAVES_INPUT = ("GeluBackward0", "SiluBackward0", "SoftplusBackward0", "HardswishBackward0",
               "HardsigmoidBackward0", "LeakyReluBackward0", "HardtanhBackward0", "ClampBackward1",
               "ClampMinBackward0", "ClampMaxBackward0", "MishBackward0", "ThresholdBackward0",
               "PreluKernelBackward0", "PowBackward0", "LogBackward0", "ErfBackward0", "AbsBackward0",
               "SinBackward0", "CosBackward0", "Log1PBackward0", "LogSigmoidBackward0", "CeluBackward0")
SAVES_RESULT = ("ReluBackward0", "TanhBackward0", "SigmoidBackward0", "RsqrtBackward0", "SqrtBackward0",
                "ExpBackward0", "ReciprocalBackward0", "Expm1Backward0")

saved_values(*SAVES_INPUT, inputs={0: "_saved_self"})
saved_values(*SAVES_RESULT, outputs={0: "_saved_result"})
saved_values("EluBackward0", inputs={0: "_saved_self"})
saved_values("PowBackward1", inputs={0: "_saved_self", 1: "_saved_exponent"}, outputs={0: "_saved_result"})
saved_values("EluBackward1", outputs={0: "_saved_self_or_result"})


@rule(*SAVES_INPUT, *SAVES_RESULT, "EluBackward0", "EluBackward1", "NativeDropoutBackward0", "PowBackward1")
def identity(ctx: NodeContext, relevance):
    """Pass-through: ``R_x = R_y`` elementwise (the activation is a gate; dropout in train mode is a
    masked identity; ``x ** e`` with a tensor exponent passes to ``x``). Exact conservation on the
    data operand; parameters (PReLU weight) and exponents get none."""
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


UNARY = {"PowBackward0": None, "LogBackward0": torch.log, "ErfBackward0": torch.erf, "AbsBackward0": torch.abs,
         "SinBackward0": torch.sin, "CosBackward0": torch.cos, "Log1PBackward0": torch.log1p,
         "LogSigmoidBackward0": F.logsigmoid}


@replay(*UNARY)
def _unary(ctx: NodeContext):
    if ctx.type == "PowBackward0":
        return (ctx.input(0) ** ctx.saved("exponent"),)
    return (UNARY[ctx.type](ctx.input(0)),)


@replay("ClampMinBackward0")
def _clamp_min(ctx: NodeContext):
    return (ctx.input(0).clamp(min=ctx.saved("min")),)


@replay("ClampMaxBackward0")
def _clamp_max(ctx: NodeContext):
    return (ctx.input(0).clamp(max=ctx.saved("max")),)


@replay("CeluBackward0")
def _celu(ctx: NodeContext):
    return (F.celu(ctx.input(0), ctx.saved("alpha")),)


@replay("EluBackward0")
def _elu(ctx: NodeContext):
    x = ctx.input(0) * ctx.saved("input_scale")
    alpha, scale = ctx.saved("alpha"), ctx.saved("scale")
    return (scale * torch.where(x > 0, x, alpha * torch.expm1(x)),)
