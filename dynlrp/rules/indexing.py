"""Indexing, selection, scatter, padding, resampling, in-place slice copies and grouped matmuls.

Four kinds of rule serve these ops:

* **Routing** (gather, index_select, sort/topk values, reflection/replication padding, nearest
  upsampling, pixel shuffle, unfold, as_strided, in-place copies into slices, ...): every output
  element is a copy of one input element, so ``R_in = J^T R``, the node's own VJP, which sums the
  relevance of copies back onto their source. Exactly conservative. Where an output element comes
  from no input in the graph (an operand outside the graph, or a fill such as im2col's zero
  padding or ``scatter(value=c)``), its relevance is absorbed as ``constant``.
* **Winner takes all** (max/min along a dim, amax, full max, median, kthvalue, cummax,
  maximum/minimum of two tensors): the selected element gets all of the relevance (``J^T R``;
  autograd splits ties evenly, which stays conservative).
* **z-rule** for linear, non-routing maps ``z = sum_k J_k x_k`` (cumsum, linear/bilinear/bicubic/
  trilinear upsampling, fold, scatter_add, index_add, accumulating index_put, ``+=`` into a slice):
  ``R_k = x_k * J_k^T (R / s(z))`` with ``s(z) = z + eps * sign(z)``; absorbs the stabiliser share
  ``sum (s - z) R / s`` and, for operands outside the graph, their share as ``constant``.
* **Layers**: ``torch._grouped_mm`` (MoE experts) with the preset's linear rule per group, and
  weight normalisation (``w = g * v / ||v||``: all relevance to ``v``).

Forward replays recompute outputs from inputs and saved indices. Nodes without an explicit forward
(``as_strided``, ``CopySlices``) are linear in their inputs, so their output is recovered from
their own backward: ``y = J v = d/du <J^T u, v>`` (one double-backward), which needs no knowledge of
the view's geometry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext, RuleResult
from ..errors import MissingValueError, RuleError
from ..values import SCALES
from .common import divide, reduce_to_shape, total, z_rule
from .linear import BilinearOp, modified_z, uniform_product
from .registry import REGISTRY, replay, rule, saved_values

aten = torch.ops.aten

# ----------------------------------------------------------------------------------------------
# node type groups

PADS = {
    "ReflectionPad1DBackward0": aten.reflection_pad1d, "ReflectionPad2DBackward0": aten.reflection_pad2d,
    "ReflectionPad3DBackward0": aten.reflection_pad3d, "ReplicationPad1DBackward0": aten.replication_pad1d,
    "ReplicationPad2DBackward0": aten.replication_pad2d, "ReplicationPad3DBackward0": aten.replication_pad3d,
}
# upsampling: (aten op, whether it takes align_corners, names of the saved scales)
_S1, _S2, _S3 = ("scales",), ("scales_h", "scales_w"), ("scales_d", "scales_h", "scales_w")
NEAREST = {
    "UpsampleNearest1DBackward0": (aten.upsample_nearest1d.default, False, _S1),
    "UpsampleNearest2DBackward0": (aten.upsample_nearest2d.default, False, _S2),
    "UpsampleNearest3DBackward0": (aten.upsample_nearest3d.default, False, _S3),
    "UpsampleNearestExact1DBackward0": (aten._upsample_nearest_exact1d.default, False, _S1),
    "UpsampleNearestExact2DBackward0": (aten._upsample_nearest_exact2d.default, False, _S2),
    "UpsampleNearestExact3DBackward0": (aten._upsample_nearest_exact3d.default, False, _S3),
}
INTERPOLATE = {
    "UpsampleLinear1DBackward0": (aten.upsample_linear1d.default, True, _S1),
    "UpsampleBilinear2DBackward0": (aten.upsample_bilinear2d.default, True, _S2),
    "UpsampleBicubic2DBackward0": (aten.upsample_bicubic2d.default, True, _S2),
    "UpsampleTrilinear3DBackward0": (aten.upsample_trilinear3d.default, True, _S3),
    "UpsampleBilinear2DAaBackward0": (aten._upsample_bilinear2d_aa.default, True, _S2),
    "UpsampleBicubic2DAaBackward0": (aten._upsample_bicubic2d_aa.default, True, _S2),
}
SORTS = ("TopkBackward0", "SortBackward0", "SortBackward1")
SCATTERS = ("SelectScatterBackward0", "SliceScatterBackward0", "DiagonalScatterBackward0")
STRIDED = ("AsStridedBackward0", "AsStridedBackward1")
COPIES = (
    "GatherBackward0", "IndexSelectBackward0", "TakeBackward0", "MaskedSelectBackward0", "MaskedScatterBackward0",
    "ScatterBackward0", "DiagonalBackward0", "DiagonalBackward0_copy", "UnfoldBackward0", "PixelShuffleBackward0",
    "PixelUnshuffleBackward0", "ChannelShuffleBackward0", *PADS, *NEAREST, *SORTS, *SCATTERS, *STRIDED,
)
FILLS = ("Im2ColBackward0", "DiagEmbedBackward0", "ScatterBackward1", "IndexFillBackward0")
SELECT_BY_INDEX = ("MaxBackward0", "MinBackward0", "KthvalueBackward0", "MedianBackward1", "NanmedianBackward1",
                   "ModeBackward0")
SELECT_BY_VALUE = ("AmaxBackward0", "AminBackward0", "MaxBackward1", "MinBackward1", "MedianBackward0",
                   "NanmedianBackward0")
RUNNING = ("CummaxBackward0", "CumminBackward0")
BINARY = {"MaximumBackward0": torch.maximum, "MinimumBackward0": torch.minimum, "FmaxBackward0": torch.fmax,
          "FminBackward0": torch.fmin}
WINNERS = SELECT_BY_INDEX + SELECT_BY_VALUE + RUNNING + tuple(BINARY)
LINEAR_MAPS = ("CumsumBackward0", "Col2ImBackward0", *INTERPOLATE)
SUMS = ("ScatterAddBackward0", "IndexAddBackward0")

# what an in-place op on a view (the node that CopySlices wraps) does to the view's elements
WRAPPED_COPY = frozenset({"CopyBackwards", "MaskedScatterBackward0", "ScatterBackward0", *SCATTERS})
WRAPPED_FILL = frozenset({"FillBackward0", "FillBackward1", "FillBackward2", "FillBackward3", "ZeroBackward0",
                          "MaskedFillBackward0", "MaskedFillBackward1", "ScatterBackward1", "IndexFillBackward0",
                          "IndexFillBackward1", "TrilBackward0", "TriuBackward0"})
WRAPPED_SUM = frozenset({"AddBackward0", "SubBackward0", "ScatterAddBackward0", "IndexAddBackward0"})
WRAPPED_SCALE = SCALES  # y = c * x with a constant scalar (neg, mul.Scalar, div.Scalar)
WRAPPED_FACTOR = frozenset({"MulBackward0", "DivBackward0"})

saved_values("GatherBackward0", "TakeBackward0", "MaskedSelectBackward0", *PADS, *RUNNING, inputs={0: "_saved_self"})
saved_values(*SELECT_BY_VALUE, inputs={0: "_saved_self"}, outputs={0: "_saved_result"})
saved_values(*BINARY, inputs={0: "_saved_self", 1: "_saved_other"})
saved_values("ScatterReduceBackward0", inputs={0: "_saved_self", 1: "_saved_src"}, outputs={0: "_saved_result"})
saved_values("IndexAddBackward0", inputs={1: "_saved_source"})
saved_values("GroupedMmBackward0", inputs={0: "_saved_self", 1: "_saved_mat2"})
saved_values("WeightNormInterfaceBackward0", inputs={0: "_saved_v", 1: "_saved_g"}, outputs={1: "_saved_result1"})


# ----------------------------------------------------------------------------------------------
# shared helpers


def _vjp(ctx: NodeContext, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The node's VJP per input slot, summed over broadcast dims to each operand's shape (a node
    called directly skips the engine's reduction; operands outside the graph keep what it returned)."""
    out = tuple(ctx.vjp(*grads))
    out = out + (None,) * (ctx.num_inputs - len(out))
    return tuple(reduce_to_shape(g, ctx.input_shape(slot)) if g is not None and ctx.has_input(slot) else g
                 for slot, g in enumerate(out))


def _route(ctx: NodeContext, relevance, fills: bool = False) -> RuleResult:
    """``R_in = J^T R``; the relevance of elements that no operand in the graph supplied (fills,
    operands outside the graph) is absorbed as ``constant``."""
    grads = _vjp(ctx, *relevance)
    absorbed = {}
    if fills or not all(ctx.has_input(slot) for slot in range(ctx.num_inputs)):
        moved = sum((total(g) for g in grads if g is not None), torch.zeros((), dtype=torch.float64))
        absorbed["constant"] = sum(total(r) for r in relevance if r is not None) - moved
    return RuleResult(grads, absorbed)


def _linear_z(ctx: NodeContext, relevance, z: torch.Tensor) -> RuleResult:
    """The z-rule for a node linear in all its operands, ``z = sum_k J_k x_k (+ constants)``:
    ``R_k = x_k * J_k^T (R / s(z))``. Operands outside the graph get no relevance; their share
    ``sum z R / s - sum_k R_k`` (the adjoint identity) is absorbed as ``constant``."""
    (r,) = relevance
    c, lost = divide(r, z, ctx.settings.epsilon)
    grads = _vjp(ctx, c)
    out: list = [None] * ctx.num_inputs
    for slot, g in enumerate(grads):
        if g is not None and ctx.has_input(slot):
            out[slot] = ctx.input(slot) * g
    absorbed = {"stabiliser": lost}
    if not all(ctx.has_input(slot) for slot in range(ctx.num_inputs)):
        moved = sum((total(t) for t in out if t is not None), torch.zeros((), dtype=torch.float64))
        absorbed["constant"] = total(z * c) - moved
    return RuleResult(tuple(out), absorbed)


def _linear_forward(ctx: NodeContext, values) -> torch.Tensor:
    """Output of a node that is linear in its inputs, from its own backward: ``y = J v``, computed
    as ``d/du <J^T u, v>`` (``u`` the output cotangent). ``values[slot]`` is ``None`` for operands
    outside the graph (their part of ``J v`` is left out)."""
    meta = ctx.node._input_metadata[0]
    u = torch.zeros(tuple(meta.shape), dtype=meta.dtype, device=meta.device, requires_grad=True)
    with torch.enable_grad():
        grads = ctx.node(u)
        grads = grads if isinstance(grads, tuple) else (grads,)
        inner = [(g * v.to(g.dtype)).sum() for g, v in zip(grads, values)
                 if g is not None and v is not None and g.requires_grad]
        if not inner:
            return torch.zeros_like(u).detach()
        (y,) = torch.autograd.grad(sum(inner), u, allow_unused=True)
    return torch.zeros_like(u).detach() if y is None else y.detach()


def _inputs_or_none(ctx: NodeContext) -> list:
    return [ctx.input(slot) if ctx.has_input(slot) else None for slot in range(ctx.num_inputs)]


def _wrapped_kind(ctx: NodeContext) -> tuple[str, str]:
    """``(kind, type)`` of the in-place op that a ``CopySlices`` node applied to the view."""
    wrapped = getattr(ctx.node, "_wrapped_node", None)
    name = type(wrapped).__name__ if wrapped is not None else "None"
    if name == "IndexPutBackward0":
        return ("sum" if wrapped._saved_accumulate else "copy"), name
    if name in WRAPPED_COPY:
        return "copy", name
    if name in WRAPPED_FILL:
        return "fill", name
    if name in WRAPPED_SUM:
        return "sum", name
    if name in WRAPPED_SCALE or (name in WRAPPED_FACTOR and ctx.num_inputs == 2 and not ctx.has_input(1)):
        return "scale", name
    if name in WRAPPED_FACTOR:
        return "factor", name
    info = REGISTRY.rules.get(name)
    if info is not None and info.name == "identity" and ctx.num_inputs == 1:
        return "identity", name
    return "other", name


# ----------------------------------------------------------------------------------------------
# rules


@rule(*COPIES)
def copy_route(ctx: NodeContext, relevance):
    """Copies (gather, index_select, take, masked_select/scatter, scatter with a source, diagonal,
    ``Tensor.unfold``, pixel (un)shuffle, channel shuffle, reflection/replication padding, nearest
    upsampling, sort/topk values, select/slice/diagonal_scatter, as_strided): every output element is
    a copy of one input element, ``R_in = J^T R`` (the node's VJP; copies of one element are summed
    back). Exact conservation; the share of an operand outside the graph (a constant overwritten
    into a scatter) is absorbed as ``constant``. Duplicate scatter indices are undefined in torch
    and are assumed absent."""
    return _route(ctx, relevance)


@rule(*FILLS)
def fill_route(ctx: NodeContext, relevance):
    """Copies with constant fills (im2col/``F.unfold``'s zero padding, ``diag_embed``'s zeros,
    ``scatter(value=c)``, ``index_fill``): ``R_in = J^T R`` (copies summed back); the relevance of
    filled elements has no source in the input and is absorbed as ``constant``
    (``sum R - sum J^T R``)."""
    return _route(ctx, relevance, fills=True)


# pure copies: the engine looks through them (like shape ops) to find a model's first layers
copy_route.routing = fill_route.routing = True


@rule(*WINNERS)
def winner_takes_all(ctx: NodeContext, relevance):
    """Selections: max/min/kthvalue/median/mode along a dim, amax/amin, full max/min/median,
    cummax/cummin, and elementwise maximum/minimum/fmax/fmin of two tensors. Each output is a copy
    of the winning element: ``R_winner = R`` via ``J^T R`` (the node's VJP; autograd splits exact
    ties evenly, still conservative). A constant operand's wins are absorbed as ``constant``."""
    return _route(ctx, relevance)


@rule(*LINEAR_MAPS)
def linear_map(ctx: NodeContext, relevance):
    """Linear maps without bias: cumsum (``z_t = sum_{s<=t} x_s``), linear/bilinear/bicubic/trilinear
    upsampling (with or without antialias) and ``F.fold`` (col2im, overlaps summed):
    ``z_j = sum_i w_ji x_i``, the z-rule ``R_i = x_i sum_j w_ji R_j / s(z_j)`` with ``w^T`` the node's
    VJP. The weights are nonnegative except bicubic's small negative lobes (the signed z-rule, still
    conservative). Absorbs the stabiliser share ``sum (s - z) R / s``."""
    x, z = ctx.input(0), ctx.output()
    r_x, stab = z_rule(x, z, relevance[0], lambda c: ctx.vjp(c)[0], ctx.settings.epsilon)
    return RuleResult((r_x,), {"stabiliser": stab})


@rule(*SUMS)
def scatter_sum(ctx: NodeContext, relevance):
    """scatter_add / index_add: ``z = self + alpha * scatter_sum(src)``, the signed z-rule
    ``R_self = self * R / s(z)``, ``R_src = src * J_src^T (R / s(z))`` (gathers ``alpha R / s`` back to
    each source element). Absorbs the stabiliser share; a constant operand's share as ``constant``."""
    return _linear_z(ctx, relevance, ctx.output())


@rule("ScatterReduceBackward0")
def scatter_reduce(ctx: NodeContext, relevance):
    """scatter_reduce: ``sum``/``mean`` are linear (``z = (include_self * self + sum src) / n``): the
    z-rule ``R_k = x_k * J_k^T (R / s(z))``, absorbing the stabiliser share; ``amax``/``amin`` select
    a winner: ``R = J^T R`` (ties split evenly). ``prod`` is not supported (no LRP rule)."""
    reduce = ctx.saved("reduce")
    if reduce in ("sum", "mean"):
        return _linear_z(ctx, relevance, ctx.output())
    if reduce in ("amax", "amin"):
        return _route(ctx, relevance)
    raise RuleError(f"scatter_reduce(reduce={reduce!r}) has no LRP rule; use sum, mean, amax or amin")


@rule("IndexPutBackward0")
def index_put(ctx: NodeContext, relevance):
    """``index_put(self, indices, values)`` (and ``y[idx] = v``): without accumulation a copy,
    ``R = J^T R`` (``self`` keeps the relevance of the elements not overwritten, ``values`` gets that
    of the elements it wrote; a constant ``values``' share is absorbed as ``constant``). With
    ``accumulate=True`` a sum ``z = self + scatter_sum(values)``: the z-rule
    ``R_k = x_k * J_k^T (R / s(z))``, absorbing the stabiliser share."""
    if ctx.saved("accumulate"):
        return _linear_z(ctx, relevance, ctx.output())
    return _route(ctx, relevance)


@rule("CopySlices")
def copy_slices(ctx: NodeContext, relevance):
    """An in-place op on a view of ``base`` (``y[:, 1] = z``, ``y[i:j] += z``, ``y[m].relu_()``,
    circular padding): slot 0 is ``base``, the others the op's operands. Copies into the view
    (``copy_``, index_put_, masked_scatter_, scatter_, ...): ``R = J^T R`` (the node's VJP: ``base``
    keeps the relevance of elements not overwritten), the share of a constant ``base`` or source is
    absorbed as ``constant``; fills (``fill_``, ``zero_``, ``masked_fill_``, ``y[:, 1] = 3.0``): the
    filled elements' relevance is absorbed as ``constant``. Sums (``add_``, ``sub_``, accumulating
    index_put_, scatter_add_): the z-rule ``R_k = x_k * J_k^T (R / s(z))``, absorbing the
    stabiliser share. In-place activations and scalings of the view (``relu_``, ``mul_(c)``): all
    relevance to ``base`` (identity rule). Other in-place ops on views raise :class:`RuleError`."""
    kind, name = _wrapped_kind(ctx)
    if kind in ("copy", "fill"):
        return _route(ctx, relevance, fills=kind == "fill")
    if kind == "sum":
        return _linear_z(ctx, relevance, ctx.output())
    if kind in ("scale", "identity") or (kind == "factor" and not ctx.is_data(1)):
        out: list = [None] * ctx.num_inputs
        out[0] = relevance[0]
        return RuleResult(tuple(out))
    raise RuleError(f"CopySlices wraps the in-place op {name}, which has no LRP rule on a view; write it out of"
                    " place (y = torch.cat(...), y = y * m) or open an issue for that op")


def _grouped_op(offs, data_first: bool) -> BilinearOp:
    def mm(a, b):
        return torch._grouped_mm(a.contiguous(), b.contiguous(), offs=offs)

    def forward(x, w):
        return mm(x, w) if data_first else mm(w, x)

    def vjp(x, w, g):
        x_ = x.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(forward(x_, w.detach()), x_, g)[0]

    return BilinearOp(forward, vjp, lambda b, z: b)


@rule("GroupedMmBackward0")
def grouped_mm(ctx: NodeContext, relevance):
    """``torch._grouped_mm(x, W, offs)`` (MoE experts): rows ``offs[g-1]:offs[g]`` of ``x`` times
    ``W[g]``, a dense layer per group without bias. The preset's linear rule per group, e.g.
    epsilon: ``R_x = x * (R / s(z)) @ W_g^T`` on each group's rows, using the saved offsets; absorbs
    the stabiliser share. Both operands depending on the input: the uniform rule (AttnLRP). (torch's
    ``bias=`` is not differentiable, so it is not in the graph, and on CPU it is not implemented; a
    bias is not accounted for.)"""
    (r,) = relevance
    offs = ctx.saved("offs")
    a, b = ctx.input(0), ctx.input(1)
    z = torch._grouped_mm(a.contiguous(), b.contiguous(), offs=offs).to(r.dtype)
    out: list = [None] * ctx.num_inputs
    a_data, b_data = ctx.is_data(0), ctx.is_data(1)
    if a_data and b_data and ctx.constant_factor(0, 1):
        a_data = False
    elif a_data and b_data and ctx.constant_factor(1, 0):
        b_data = False
    if a_data and b_data:
        op = _grouped_op(offs, True)
        out[0], out[1], absorbed = uniform_product(a, b, z, r, op.forward, ctx.settings.epsilon)
        return RuleResult(tuple(out), absorbed)
    x, w = (a, b) if a_data else (b, a)
    r_x, absorbed = modified_z(_grouped_op(offs, a_data), x, w, None, z, r, ctx.settings.linear)
    out[0 if a_data else 1] = r_x
    return RuleResult(tuple(out), absorbed)


@rule("WeightNormInterfaceBackward0")
def weight_norm(ctx: NodeContext, relevance):
    """Weight normalisation ``w = g * v / ||v||`` (a parameter subgraph, explained only when ``v`` is
    an explained input): ``||v||`` is a normaliser and ``g`` a scale, so ``R_v = R_w`` (identity rule,
    exact) and ``g`` gets none. Relevance on the second output (the norms, if anything used them) is
    absorbed as ``normaliser``."""
    absorbed = {}
    if len(relevance) > 1 and relevance[1] is not None:
        absorbed["normaliser"] = total(relevance[1])
    return RuleResult((relevance[0], None), absorbed)


# ----------------------------------------------------------------------------------------------
# forward replays


# ScatterBackward1 / IndexFillBackward0 fill with a Python scalar autograd does not save: no replay;
# dynlrp.record() keeps the call (with its scalar) instead.


@replay("GatherBackward0")
def _gather_forward(ctx: NodeContext):
    return (ctx.input(0).gather(ctx.saved("dim"), ctx.saved("index")),)


@replay("IndexSelectBackward0")
def _index_select_forward(ctx: NodeContext):
    return (ctx.input(0).index_select(ctx.saved("dim"), ctx.saved("index")),)


@replay("TakeBackward0")
def _take_forward(ctx: NodeContext):
    return (ctx.input(0).take(ctx.saved("index")),)


@replay("MaskedSelectBackward0")
def _masked_select_forward(ctx: NodeContext):
    return (ctx.input(0).masked_select(ctx.saved("mask")),)


@replay("MaskedScatterBackward0")
def _masked_scatter_forward(ctx: NodeContext):
    return (ctx.input(0).masked_scatter(ctx.saved("mask"), ctx.input(1)),)


@replay("ScatterBackward0")
def _scatter_forward(ctx: NodeContext):
    return (ctx.input(0).scatter(ctx.saved("dim"), ctx.saved("index"), ctx.input(1)),)


@replay("ScatterAddBackward0")
def _scatter_add_forward(ctx: NodeContext):
    return (ctx.input(0).scatter_add(ctx.saved("dim"), ctx.saved("index"), ctx.input(1)),)


@replay("IndexAddBackward0")
def _index_add_forward(ctx: NodeContext):
    return (ctx.input(0).index_add(ctx.saved("dim"), ctx.saved("index"), ctx.input(1), alpha=ctx.saved("alpha")),)


@replay("ScatterReduceBackward0")
def _scatter_reduce_forward(ctx: NodeContext):
    return (ctx.input(0).scatter_reduce(ctx.saved("dim"), ctx.saved("index"), ctx.input(1), ctx.saved("reduce"),
                                        include_self=ctx.saved("include_self")),)


@replay("IndexPutBackward0")
def _index_put_forward(ctx: NodeContext):
    return (aten.index_put.default(ctx.input(0), list(ctx.saved("indices")), ctx.input(1),
                                   ctx.saved("accumulate")),)


@replay(*SORTS, *RUNNING)
def _gather_indices_forward(ctx: NodeContext):
    return (ctx.input(0).gather(ctx.saved("dim"), ctx.saved("indices")),)


@replay(*SELECT_BY_INDEX)
def _select_by_index_forward(ctx: NodeContext):
    x, dim, indices = ctx.input(0), ctx.saved("dim"), ctx.saved("indices")
    if x.dim() == 0:
        return (x.clone(),)
    if ctx.saved("keepdim"):
        return (x.gather(dim, indices),)
    return (x.gather(dim, indices.unsqueeze(dim)).squeeze(dim),)


@replay("AmaxBackward0", "AminBackward0")
def _amax_forward(ctx: NodeContext):
    fn = torch.amax if ctx.type == "AmaxBackward0" else torch.amin
    return (fn(ctx.input(0), ctx.saved("dim"), ctx.saved("keepdim")),)


@replay("MaxBackward1", "MinBackward1", "MedianBackward0", "NanmedianBackward0")
def _full_select_forward(ctx: NodeContext):
    fn = {"MaxBackward1": torch.max, "MinBackward1": torch.min, "MedianBackward0": torch.median,
          "NanmedianBackward0": torch.nanmedian}[ctx.type]
    return (fn(ctx.input(0)),)


@replay(*BINARY)
def _binary_select_forward(ctx: NodeContext):
    return (BINARY[ctx.type](ctx.input(0), ctx.input(1)),)


@replay("CumsumBackward0")
def _cumsum_forward(ctx: NodeContext):
    return (ctx.input(0).cumsum(ctx.saved("dim"), dtype=ctx.node._input_metadata[0].dtype),)


@replay(*PADS)
def _pad_forward(ctx: NodeContext):
    return (PADS[ctx.type](ctx.input(0), list(ctx.saved("padding"))),)


@replay(*NEAREST, *INTERPOLATE)
def _upsample_forward(ctx: NodeContext):
    op, corners, scales = NEAREST.get(ctx.type) or INTERPOLATE[ctx.type]
    args = [ctx.input(0), list(ctx.saved("output_size"))]
    if corners:
        args.append(ctx.saved("align_corners"))
    return (op(*args, *(ctx.saved(name) for name in scales)),)


@replay("Im2ColBackward0")
def _im2col_forward(ctx: NodeContext):
    return (F.unfold(ctx.input(0), ctx.saved("kernel_size"), ctx.saved("dilation"), ctx.saved("padding"),
                     ctx.saved("stride")),)


@replay("Col2ImBackward0")
def _col2im_forward(ctx: NodeContext):
    return (F.fold(ctx.input(0), ctx.output_shapes[0][-2:], ctx.saved("kernel_size"), ctx.saved("dilation"),
                   ctx.saved("padding"), ctx.saved("stride")),)


@replay("UnfoldBackward0")
def _unfold_forward(ctx: NodeContext):
    return (ctx.input(0).unfold(ctx.saved("dimension"), ctx.saved("size"), ctx.saved("step")),)


@replay("PixelShuffleBackward0")
def _pixel_shuffle_forward(ctx: NodeContext):
    return (F.pixel_shuffle(ctx.input(0), ctx.saved("upscale_factor")),)


@replay("PixelUnshuffleBackward0")
def _pixel_unshuffle_forward(ctx: NodeContext):
    return (F.pixel_unshuffle(ctx.input(0), ctx.saved("downscale_factor")),)


@replay("ChannelShuffleBackward0")
def _channel_shuffle_forward(ctx: NodeContext):
    return (torch.channel_shuffle(ctx.input(0), ctx.saved("groups")),)


@replay("DiagonalBackward0", "DiagonalBackward0_copy")
def _diagonal_forward(ctx: NodeContext):
    return (ctx.input(0).diagonal(ctx.saved("offset"), ctx.saved("dim1"), ctx.saved("dim2")).clone(),)


@replay("DiagEmbedBackward0")
def _diag_embed_forward(ctx: NodeContext):
    return (torch.diag_embed(ctx.input(0), ctx.saved("offset"), ctx.saved("dim1"), ctx.saved("dim2")),)


@replay("SelectScatterBackward0")
def _select_scatter_forward(ctx: NodeContext):
    return (torch.select_scatter(ctx.input(0), ctx.input(1), ctx.saved("dim"), ctx.saved("index")),)


@replay("SliceScatterBackward0")
def _slice_scatter_forward(ctx: NodeContext):
    return (torch.slice_scatter(ctx.input(0), ctx.input(1), ctx.saved("dim"), ctx.saved("start"), ctx.saved("end"),
                                ctx.saved("step")),)


@replay("DiagonalScatterBackward0")
def _diagonal_scatter_forward(ctx: NodeContext):
    return (torch.diagonal_scatter(ctx.input(0), ctx.input(1), ctx.saved("offset"), ctx.saved("dim1"),
                                   ctx.saved("dim2")),)


@replay(*STRIDED)
def _as_strided_forward(ctx: NodeContext):
    # as_strided indexes the input's storage, whose layout the node saved but does not expose: J v is exact
    return (_linear_forward(ctx, [ctx.input(0)]),)


@replay("CopySlices", partial=True)
def _copy_slices_forward(ctx: NodeContext):
    kind, name = _wrapped_kind(ctx)
    values = _inputs_or_none(ctx)
    linear = kind in ("copy", "sum") or (kind == "scale" and values[0] is not None) or name == "ZeroBackward0"
    if not linear:
        raise MissingValueError(
            f"the output of CopySlices({name}) (an in-place {name} on a view) cannot be recomputed after the"
            " forward; run the forward inside `with dynlrp.record():`")
    if any(v is None for v in values) and kind != "scale":
        cover = _linear_forward(ctx, [None if v is None else torch.ones_like(v) for v in values])
        if kind != "copy" or not bool((cover == 1).all()):
            raise MissingValueError(
                f"CopySlices({name}) keeps elements of an operand outside the autograd graph (a constant base"
                " tensor, e.g. torch.zeros(...), or circular padding's empty buffer) that autograd did not save;"
                " run the forward inside `with dynlrp.record():`")
    return (_linear_forward(ctx, values),)


@replay("GroupedMmBackward0")
def _grouped_mm_forward(ctx: NodeContext):
    meta = ctx.node._input_metadata[0]
    out = torch._grouped_mm(ctx.input(0).contiguous(), ctx.input(1).contiguous(), offs=ctx.saved("offs"))
    return (out.to(meta.dtype),)


@replay("WeightNormInterfaceBackward0")
def _weight_norm_forward(ctx: NodeContext):
    return tuple(torch._weight_norm_interface(ctx.input(0), ctx.input(1), ctx.saved("dim")))
