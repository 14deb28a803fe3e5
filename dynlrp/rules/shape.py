"""Shape and routing ops: every output element is a copy of one input element (or a sum of copies).

Rule (``route``): ``R_in = J^T R``, the node's own backward applied to the relevance. Each output
element hands its relevance to the element it was copied from, so relevance is conserved exactly
(expand/repeat sum the copies back; ``where`` routes to the operand each element came from).
Constant padding and masking are the exception: filled elements have no source, and their
relevance is absorbed as ``constant``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext, RuleResult
from .common import reduce_to_shape, total
from .registry import replay, rule

RESHAPES = ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "SqueezeBackward0",
            "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0",
            # in-place squeeze_() / squeeze_(dim) / squeeze_(dims) / unsqueeze_(dim); F.linear without
            # bias on a 1-D input ends in squeeze_(-1) (SqueezeBackward4)
            "SqueezeBackward3", "SqueezeBackward4", "SqueezeBackward5", "UnsqueezeBackward1")
IDENTITIES = ("CloneBackward0", "AliasBackward0", "ToCopyBackward0", "LiftFreshBackward0")
COPIES = ("CloneBackward0", "AliasBackward0", "LiftFreshBackward0")
ROUTES = RESHAPES + COPIES + (
    "PermuteBackward0", "TransposeBackward0", "TBackward0", "ExpandBackward0", "SliceBackward0",
    "SelectBackward0", "IndexBackward0", "CatBackward0", "StackBackward0", "SplitBackward0",
    "SplitWithSizesBackward0", "UnsafeSplitBackward0", "UnbindBackward0", "RepeatBackward0",
    "FlipBackward0", "RollBackward0", "TransposeBackward1",  # in-place transpose_ (nn.GRU, batch_first)
    "TBackward1",  # in-place t_
)
MASKS = ("MaskedFillBackward0", "MaskedFillBackward1", "TrilBackward0", "TriuBackward0")


@rule(*ROUTES)
def route(ctx: NodeContext, relevance):
    """Routing: ``R_in = J^T R`` (the node's own VJP). Each output element is a copy of exactly one
    input element, so the map is a 0/1 matrix with one 1 per row: exact conservation, nothing
    absorbed."""
    return RuleResult(ctx.vjp(*relevance))


@rule("ToCopyBackward0")
def dtype_copy(ctx: NodeContext, relevance):
    """``y = x.to(dtype, device)``: ``R_x = R`` on ``x``'s device, in the wider of the two dtypes,
    so a cast inside the model (float64 -> float32 -> float64) never rounds the relevance.
    Exact; nothing absorbed."""
    (r,) = relevance
    child, nr = ctx.edges[0]
    meta = child._input_metadata[nr]
    return RuleResult((r.to(device=meta.device, dtype=torch.promote_types(r.dtype, meta.dtype)),))


@rule("ConstantPadNdBackward0")
def constant_pad(ctx: NodeContext, relevance):
    """Constant padding: ``R_in = crop(R)``; the relevance on padded positions has no source in the
    input and is absorbed as ``constant`` (``sum R * pad_mask``)."""
    (r,) = relevance
    (r_in,) = ctx.vjp(r)
    inside = F.pad(torch.ones_like(r_in), list(ctx.saved("pad")), value=0.0)
    return RuleResult((r_in,), {"constant": total(r * (1 - inside))})


@rule("WhereBackward0")
def where(ctx: NodeContext, relevance):
    """``y = where(c, a, b)``: ``R_a = R * c``, ``R_b = R * (1 - c)``, each summed over the dims it was
    broadcast along. A constant operand's share (``where(mask, x, -inf)``) is absorbed as ``constant``.
    Exact. (Not the node's VJP: autograd skips the constant operand's gradient and leaves broadcast
    gradients unreduced.)"""
    (r,) = relevance
    keep = ctx.saved("condition").to(r.dtype)
    shares = (r * keep, r * (1 - keep))
    return RuleResult(tuple(reduce_to_shape(t, ctx.input_shape(slot)) if ctx.has_input(slot) else t
                            for slot, t in enumerate(shares)))


@rule(*MASKS)
def masking(ctx: NodeContext, relevance):
    """Masking (masked_fill, tril, triu): ``R_x = R * keep`` with ``keep = J^T 1`` (1 where the
    output copies the input); the relevance of filled positions has no source in the input and is
    absorbed as ``constant`` (``sum R * (1 - keep)``)."""
    (r,) = relevance
    keep = ctx.vjp(torch.ones_like(r))[0]
    out: list = [None] * ctx.num_inputs
    out[0] = r * keep
    return RuleResult(tuple(out), {"constant": total(r * (1 - keep))})


# forward replays ---------------------------------------------------------------------------------


@replay(*RESHAPES)
def _reshape_forward(ctx: NodeContext):
    return (ctx.input(0).reshape(ctx.output_shapes[0]),)


@replay(*IDENTITIES)
def _identity_forward(ctx: NodeContext):
    meta = ctx.node._input_metadata[0]
    return (ctx.input(0).to(dtype=meta.dtype, device=meta.device),)


@replay("PermuteBackward0")
def _permute_forward(ctx: NodeContext):
    return (ctx.input(0).permute(ctx.saved("dims")),)


@replay("TransposeBackward0", "TransposeBackward1")  # TransposeBackward1: in-place transpose_
def _transpose_forward(ctx: NodeContext):
    return (ctx.input(0).transpose(ctx.saved("dim0"), ctx.saved("dim1")),)


@replay("TBackward0", "TBackward1")
def _t_forward(ctx: NodeContext):
    return (ctx.input(0).t(),)


@replay("ExpandBackward0")
def _expand_forward(ctx: NodeContext):
    return (ctx.input(0).expand(ctx.output_shapes[0]),)


@replay("SliceBackward0")
def _slice_forward(ctx: NodeContext):
    dim = ctx.saved("dim")
    index = (slice(None),) * dim + (slice(ctx.saved("start"), ctx.saved("end"), ctx.saved("step")),)
    return (ctx.input(0)[index],)


@replay("SelectBackward0")
def _select_forward(ctx: NodeContext):
    return (ctx.input(0).select(ctx.saved("dim"), ctx.saved("index")),)


@replay("IndexBackward0")
def _index_forward(ctx: NodeContext):
    return (ctx.input(0)[tuple(ctx.saved("indices"))],)


@replay("CatBackward0")
def _cat_forward(ctx: NodeContext):
    return (torch.cat([ctx.input(i) for i in range(ctx.num_inputs)], ctx.saved("dim")),)


@replay("StackBackward0")
def _stack_forward(ctx: NodeContext):
    return (torch.stack([ctx.input(i) for i in range(ctx.num_inputs)], ctx.saved("dim")),)


@replay("SplitBackward0", "UnsafeSplitBackward0")
def _split_forward(ctx: NodeContext):
    return tuple(ctx.input(0).split(ctx.saved("split_size"), ctx.saved("dim")))


@replay("SplitWithSizesBackward0")
def _split_sizes_forward(ctx: NodeContext):
    return tuple(ctx.input(0).split(list(ctx.saved("split_sizes")), ctx.saved("dim")))


@replay("UnbindBackward0")
def _unbind_forward(ctx: NodeContext):
    return tuple(ctx.input(0).unbind(ctx.saved("dim")))


@replay("RepeatBackward0")
def _repeat_forward(ctx: NodeContext):
    return (ctx.input(0).repeat(ctx.saved("repeats")),)


@replay("FlipBackward0")
def _flip_forward(ctx: NodeContext):
    return (ctx.input(0).flip(ctx.saved("dims")),)


@replay("WhereBackward0")
def _where_forward(ctx: NodeContext):
    return (torch.where(ctx.saved("condition"), ctx.input(0), ctx.input(1)),)


@replay("TrilBackward0")
def _tril_forward(ctx: NodeContext):
    return (ctx.input(0).tril(ctx.saved("diagonal")),)


@replay("TriuBackward0")
def _triu_forward(ctx: NodeContext):
    return (ctx.input(0).triu(ctx.saved("diagonal")),)


@replay("RollBackward0")
def _roll_forward(ctx: NodeContext):
    return (ctx.input(0).roll(ctx.saved("shifts"), ctx.saved("dims")),)
