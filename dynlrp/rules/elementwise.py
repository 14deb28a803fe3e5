"""Elementwise arithmetic: sums (add, sub, rsub, neg) and products (mul, div).

Sums use the signed z-rule: for ``z = sum_k c_k a_k`` (``c_k`` = +-alpha), ``R_k = c_k a_k R / s(z)``
with ``s(z) = z + eps * sign(z)``; absorbed: ``stabiliser = sum (s - z) R / s`` and, for operands
that are outside the graph or are parameters, their share (booked as ``constant`` / ``parameter``).
Broadcast operands get their relevance summed back to their own shape.
"""
from __future__ import annotations

import torch

from ..context import NodeContext, RuleResult
from .common import abs_total, broadcasts_into, divide, reduce_to_shape, stabilize, total
from .registry import replay, rule, saved_values

saved_values("MulBackward0", "DivBackward0", inputs={0: "_saved_self", 1: "_saved_other"})


#: a derived addend is kept for its producer only if its share carries at least this fraction of
#: the relevance: the producer's ledger then errs by at most ~eps / fraction of its flow (rounding
#: of ``z - rest`` is ``eps |z|``, its effect on the producer's rule scales with ``|z| / |addend|``)
DERIVED_SHARE = 0.05


def _operands(ctx: NodeContext, coefficients: tuple[float, ...]):
    """``(values, derived slot or None)``. A single operand that nothing holds is recovered as
    ``(z - rest) / c``: when the output and the other operands are held, instead of recomputing it
    (e.g. a residual branch's last linear layer, whose rule may then reuse the value, see
    :data:`DERIVED_SHARE`); when it is a constant outside the graph, because nothing else can."""
    held = [ctx.store.held_input(ctx.node, slot) for slot in range(ctx.num_inputs)]
    unheld = [slot for slot, value in enumerate(held) if value is None]
    if len(unheld) == 1 and ctx.has_input(unheld[0]):
        slot = unheld[0]
        child, nr = ctx.edges[slot]
        z, meta = ctx.held_output(), child._input_metadata[nr]
        if z is not None and tuple(meta.shape) == tuple(z.shape) and meta.dtype == z.dtype:
            rest = sum(c * v for c, v in zip(coefficients, held) if v is not None)
            held[slot] = (z - rest) / coefficients[slot]
            ctx.store.derive(ctx.edges[slot], held[slot])
            return held, slot
    values = [ctx.operand(slot) for slot in range(ctx.num_inputs)]
    missing = [slot for slot, value in enumerate(values) if value is None]
    if len(missing) == 1:
        rest = sum(c * v for c, v in zip(coefficients, values) if v is not None)
        values[missing[0]] = (ctx.output() - rest) / coefficients[missing[0]]
    elif missing:
        values = [ctx.input(slot) for slot in range(ctx.num_inputs)]  # raises the named error
    return values, None


def _signed_sum(ctx: NodeContext, relevance, coefficients: tuple[float, ...]) -> RuleResult:
    (r,) = relevance
    values, derived = _operands(ctx, coefficients)
    terms = [v if c == 1.0 else c * v for c, v in zip(coefficients, values)]

    def output() -> torch.Tensor:
        z = terms[0]
        for t in terms[1:]:
            z = z + t
        return z

    z = output()
    own = len(terms) > 1 and z.shape == r.shape  # a new tensor that no share reads: divide may reuse it
    c, lost = divide(r, torch.broadcast_to(z, r.shape), ctx.settings.epsilon, overwrite=own)
    finite = None
    # a mask added to a mask overflows to -inf: no shares there (inf * 0 = nan). An infinite z makes
    # the stabiliser's share NaN ((inf - inf) * 0), so a finite share means every z is finite; else
    # the slow path, with z formed again (divide may have taken its buffer)
    if not bool(torch.isfinite(lost)):
        z = torch.broadcast_to(output(), r.shape)
        finite = torch.isfinite(z)
        s = stabilize(z, ctx.settings.epsilon)
        c = r / s
        lost = total(torch.where(finite, (s - z) * c, 0.0))
    shares = []
    for k, (t, v) in enumerate(zip(terms, values)):
        in_place = (finite is None and k == len(terms) - 1 and broadcasts_into(t.shape, c.shape)
                    and torch.promote_types(c.dtype, t.dtype) == c.dtype)  # c's last use: c is divide's own
        share = c.mul_(t) if in_place else t * c if finite is None else torch.where(finite, t * c, 0.0)
        shares.append(reduce_to_shape(share, ctx.output_shapes[0] if v is None else v.shape))
    if derived is not None and (finite is not None  # z - rest is not the addend where z overflowed
                                or not float(abs_total(shares[derived])) >= DERIVED_SHARE * float(abs_total(r))):
        ctx.store.forget(ctx.edges[derived])
    return RuleResult(tuple(shares), {"stabiliser": lost})


@rule("AddBackward0", "SubBackward0")
def add(ctx: NodeContext, relevance):
    """``z = a + alpha * b`` (Sub: ``a - alpha * b``): signed z-rule ``R_a = a R / s(z)``,
    ``R_b = +-alpha b R / s(z)``. Absorbs the stabiliser share; shares of parameters/constants are
    booked as ``parameter``/``constant``. A constant operand that is not saved is recovered exactly
    as ``z - a`` when the output value is available."""
    alpha = ctx.saved("alpha")
    sign = 1.0 if ctx.type == "AddBackward0" else -1.0
    return _signed_sum(ctx, relevance, (1.0, sign * alpha))


@rule("RsubBackward0")
def rsub(ctx: NodeContext, relevance):
    """``z = other - alpha * self`` (slots: self, other): signed z-rule as for add,
    ``R_self = -alpha self R / s(z)``, ``R_other = other R / s(z)``; absorbs the stabiliser share."""
    return _signed_sum(ctx, relevance, (-ctx.saved("alpha"), 1.0))


@rule("AddBackward1", "SubBackward1", "RsubBackward1")
def add_scalar(ctx: NodeContext, relevance):
    """``z = x + c`` with a scalar ``c`` (aten's ``.Scalar`` overloads; ``x + 3.0`` in Python gives an
    AddBackward0 with a constant operand instead) (``x - c``, ``c - alpha x``): ``R_x = a_x x R / s(z)``
    with ``a_x = +1`` or ``-alpha``; the scalar's share ``(z - a_x x) R / s(z)`` is absorbed as
    ``constant``, the stabiliser share as ``stabiliser``."""
    (r,) = relevance
    x, z = ctx.input(0), ctx.output()
    coef = -ctx.saved("alpha") if ctx.type == "RsubBackward1" else 1.0
    c, lost = divide(r, z, ctx.settings.epsilon)
    return RuleResult((coef * x * c,), {"constant": total((z - coef * x) * c), "stabiliser": lost})


@rule("NegBackward0", "MulBackward1", "DivBackward1")
def scale(ctx: NodeContext, relevance):
    """``z = c * x`` with a constant scalar ``c`` (neg: -1; aten's ``mul.Scalar`` / ``div.Scalar``; a
    Python ``x * 2.0`` gives a MulBackward0 with a constant operand, same result): the z-rule
    ``R_x = c x R / (c x) = R`` exactly (no stabiliser needed for a one-term, bias-free map)."""
    return RuleResult((relevance[0],))


@rule("MulBackward0")
def mul(ctx: NodeContext, relevance):
    """``z = a * b`` elementwise. One factor a parameter/constant (a scale, a mask, rotary cos/sin),
    a normaliser statistic (``rsqrt(mean(x^2) + eps)``), or a gate computed from the other factor's
    own tensor (``x * sigmoid(x)``): all relevance to the other factor, ``R_x = R`` (summed over
    broadcast dims), exact. Two independent activations (a gate): the uniform rule
    ``R_a = R_b = R / 2`` (AttnLRP), exact."""
    (r,) = relevance
    data = [slot for slot in range(2) if ctx.is_data(slot)]
    if len(data) == 2:
        for slot, other in ((0, 1), (1, 0)):
            if ctx.constant_factor(slot, other):
                data = [other]
                break
    out: list = [None, None]
    for slot in data:
        out[slot] = reduce_to_shape(r / len(data), ctx.input_shape(slot))
    return RuleResult(tuple(out))


@rule("DivBackward0")
def div(ctx: NodeContext, relevance):
    """``z = a / b``: the divisor is a normaliser and treated as a constant, ``R_a = R`` (summed over
    broadcast dims), exact. If only the divisor depends on the input (``c / x``), it is an
    elementwise nonlinearity of ``x`` and gets ``R_b = R`` (identity rule)."""
    (r,) = relevance
    slot = 0 if ctx.is_data(0) else 1
    out: list = [None, None]
    out[slot] = reduce_to_shape(r, ctx.input_shape(slot))
    return RuleResult(tuple(out))


saved_values("GluBackward0", inputs={0: "_saved_self"})


@rule("GluBackward0")
def glu(ctx: NodeContext, relevance):
    """GLU ``y = a * sigmoid(b)`` with ``a, b = x.chunk(2, dim)``: a product of two different
    tensors, so the uniform rule ``R_a = R_b = R / 2`` (AttnLRP), then ``R_x = cat(R_a, R_b)``.
    Exact conservation."""
    half = relevance[0] / 2
    return RuleResult((torch.cat([half, half], ctx.saved("dim")),))


@replay("GluBackward0")
def _glu_forward(ctx: NodeContext):
    return (torch.nn.functional.glu(ctx.input(0), ctx.saved("dim")),)


@replay("AddBackward0", "SubBackward0")
def _add_forward(ctx: NodeContext):
    sign = 1.0 if ctx.type == "AddBackward0" else -1.0
    return (ctx.input(0) + sign * ctx.saved("alpha") * ctx.input(1),)


@replay("RsubBackward0")
def _rsub_forward(ctx: NodeContext):
    return (ctx.input(1) - ctx.saved("alpha") * ctx.input(0),)


@replay("NegBackward0")
def _neg_forward(ctx: NodeContext):
    return (-ctx.input(0),)


@replay("MulBackward0")
def _mul_forward(ctx: NodeContext):
    return (ctx.input(0) * ctx.input(1),)


@replay("DivBackward0")
def _div_forward(ctx: NodeContext):
    return (ctx.input(0) / ctx.input(1),)


@replay("MulBackward1")
def _mul_scalar_forward(ctx: NodeContext):
    return (ctx.input(0) * ctx.saved("other"),)


@replay("DivBackward1")
def _div_scalar_forward(ctx: NodeContext):
    return (ctx.input(0) / ctx.saved("other"),)
