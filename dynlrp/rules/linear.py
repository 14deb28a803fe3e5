"""Linear layers: addmm / mm / bmm with a parameter operand, and every convolution.

All of them are ``z = f(x, W) + b`` with ``f`` bilinear, so one implementation of the
*modified-z* rules serves them all (zennit's BasicHook in closed form):

    R_x = sum_g c_g * sum_{k in g} sign_k * m_k(x) * f_x^T(W_k, R_g / s(Z_g)),
    Z_g = sum_{k in g} sign_k * (f(m_k(x), W_k) + b_k)

where a *term* k modifies the input (``m_k``: x, x+, x-, 1, low, high) and the parameters
(``W_k``, ``b_k``), a *group* g has a coefficient ``c_g``, a denominator ``Z_g`` and an output
selection (all, z > 0, z < 0), and ``s(z) = z + eps * sign(z)``. Absorbed, per group:
``bias = c_g * sum B_g R_g / s``, ``stabiliser = c_g * sum (s - Z_g) R_g / s`` (``B_g`` the
signed modified biases), and ``rule = sum R - sum_g c_g * sum R_g`` (outputs no group selects, or
coefficients that do not sum to one). Products of two activations get the uniform rule.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..context import NodeContext, RuleResult
from .common import broadcast_total, broadcasts_into, divide, divide_selected, total
from .normalization import batch_norm_affine, batch_norm_after
from .registry import replay, rule, saved_values

# ----------------------------------------------------------------------------------------------
# rule specifications


@dataclass(frozen=True)
class LinearRule:
    """A linear-layer rule with its conventions.

    ``kind``: ``epsilon`` | ``zplus`` | ``alpha_beta`` | ``gamma`` | ``zbox`` | ``flat`` |
    ``wsquare``. ``epsilon`` is the stabiliser of every kind (``s = z + eps * sign(z)``, sign(0)=+1).
    ``gamma`` for the gamma rule; ``alpha``/``beta`` for alpha-beta; ``low``/``high`` (float or a
    tensor broadcastable to the input) for ZBox.
    """

    kind: str = "epsilon"
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: float | torch.Tensor = 0.0
    high: float | torch.Tensor = 1.0

    def __post_init__(self):
        if self.kind not in GROUPS:
            raise ValueError(f"unknown linear rule kind {self.kind!r}; choose from {sorted(GROUPS)}")
        if self.kind == "alpha_beta" and abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError("alpha_beta needs alpha - beta == 1 to conserve relevance")


@dataclass(frozen=True)
class Parts:
    """The map ``t -> pos * t+ + neg * t-`` (``t+ = max(t, 0)``, ``t- = min(t, 0)``) of a weight or
    bias: the identity is (1, 1), ``t+`` (1, 0), ``t-`` (0, 1), gamma's ``t + g t+`` (1 + g, 1).
    Since ``t- = t - t+``, ``f(x, map(W)) = neg f(x, W) + (pos - neg) f(x, W+)``."""

    pos: float
    neg: float

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        pos, neg = self.pos, self.neg
        if pos == neg:
            return t if pos == 1.0 else pos * t
        if neg == 0.0 or pos == 0.0:
            part = t.clamp(min=0) if neg == 0.0 else t.clamp(max=0)
            scale = pos if neg == 0.0 else neg
            return part if scale == 1.0 else part.mul_(scale)
        if neg == 1.0:
            return t.clamp(min=0).mul_(pos - 1.0).add_(t)
        if pos == 1.0:
            return t.clamp(max=0).mul_(neg - 1.0).add_(t)
        return pos * t.clamp(min=0) + neg * t.clamp(max=0)


@dataclass(frozen=True)
class Term:
    sign: float
    x: str  # "x" | "pos" | "neg" | "ones" | "low" | "high"
    w: Callable[[torch.Tensor], torch.Tensor]  # a Parts map, or any elementwise map (1, W^2)
    b: Callable[[torch.Tensor], torch.Tensor] | None  # None: no bias in this term


@dataclass(frozen=True)
class Group:
    coef: float
    select: str  # "all" | "pos" | "neg" (sign of the unmodified output z)
    terms: tuple[Term, ...]


_same, _pos, _neg = Parts(1.0, 1.0), Parts(1.0, 0.0), Parts(0.0, 1.0)


def _gamma_pos(gamma):
    return Parts(1.0 + gamma, 1.0)  # t + gamma t+


def _gamma_neg(gamma):
    return Parts(1.0, 1.0 + gamma)  # t + gamma t-


PLAIN = Term(1.0, "x", _same, _same)  # the layer as it is


def _epsilon(spec):
    return (Group(1.0, "all", (PLAIN,)),)


def _zplus(spec):
    return (Group(1.0, "all", (Term(1.0, "pos", _pos, _pos), Term(1.0, "neg", _neg, None))),)


def _alpha_beta(spec):
    return (
        Group(spec.alpha, "all", (Term(1.0, "pos", _pos, _pos), Term(1.0, "neg", _neg, None))),
        Group(-spec.beta, "all", (Term(1.0, "pos", _neg, _neg), Term(1.0, "neg", _pos, None))),
    )


def _gamma(spec):
    up, down = _gamma_pos(spec.gamma), _gamma_neg(spec.gamma)
    return (
        Group(1.0, "pos", (Term(1.0, "pos", up, up), Term(1.0, "neg", down, None))),
        Group(1.0, "neg", (Term(1.0, "pos", down, down), Term(1.0, "neg", up, None))),
    )


def _zbox(spec):
    return (Group(1.0, "all", (Term(1.0, "x", _same, _same), Term(-1.0, "low", _pos, _pos),
                               Term(-1.0, "high", _neg, _neg))),)


def _flat(spec):
    return (Group(1.0, "all", (Term(1.0, "ones", torch.ones_like, None),)),)


def _wsquare(spec):
    square = lambda t: t * t  # noqa: E731
    return (Group(1.0, "all", (Term(1.0, "ones", square, square),)),)


GROUPS = {"epsilon": _epsilon, "zplus": _zplus, "alpha_beta": _alpha_beta, "gamma": _gamma,
          "zbox": _zbox, "flat": _flat, "wsquare": _wsquare}


# ----------------------------------------------------------------------------------------------
# the bilinear ops


@dataclass
class BilinearOp:
    """``z = forward(x, W) + b``; ``vjp(W, g)`` is the gradient w.r.t. ``x``; ``bias(b, z)`` the bias in a
    shape that broadcasts against ``z``."""

    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    vjp: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, W, g) -> grad x
    bias: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _matmul_op(data_first: bool) -> BilinearOp:
    if data_first:
        return BilinearOp(lambda x, w: x @ w, lambda x, w, g: g @ w.transpose(-1, -2), lambda b, z: b)
    return BilinearOp(lambda x, w: w @ x, lambda x, w, g: w.transpose(-1, -2) @ g, lambda b, z: b)


def _conv_op(ctx: NodeContext) -> BilinearOp:
    stride, padding, dilation = ctx.saved("stride"), ctx.saved("padding"), ctx.saved("dilation")
    transposed, out_pad, groups = ctx.saved("transposed"), ctx.saved("output_padding"), ctx.saved("groups")

    def forward(x, w):
        return torch.ops.aten.convolution(x, w, None, stride, padding, dilation, transposed, out_pad, groups)

    def vjp(x, w, g):
        return torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, dilation, transposed, out_pad, groups, [True, False, False])[0]

    def bias(b, z):  # a per-channel bias, or an output-shaped one recovered from z
        return b if b.dim() == z.dim() else b.view((1, -1) + (1,) * (z.dim() - 2))

    return BilinearOp(forward, vjp, bias)


def _input_sign(x: torch.Tensor) -> int:
    """+1 if every element of ``x`` is >= 0 (e.g. after a ReLU), -1 if every one is <= 0, else 0
    (also for NaN). One min/max reduction."""
    if x.numel() == 0 or not x.dtype.is_floating_point:
        return 0
    low, high = (float(v) for v in torch.aminmax(x))
    return 1 if low >= 0 else -1 if high <= 0 else 0


def _vanishes(kind: str, sign: int) -> bool:
    """Whether the modified input (or output selection) ``kind`` is exactly zero for a tensor of
    sign ``sign``."""
    return (kind == "neg" and sign > 0) or (kind == "pos" and sign < 0)


def _modified_input(kind: str, x: torch.Tensor, spec: LinearRule, sign: int = 0) -> torch.Tensor:
    if kind == "x":
        return x
    if kind == "pos":
        return x if sign > 0 else x.clamp(min=0)
    if kind == "neg":
        return x if sign < 0 else x.clamp(max=0)
    if kind == "ones":
        return torch.ones_like(x)
    bound = spec.low if kind == "low" else spec.high
    # materialised, not a stride-0 expand: a convolution's backward on an expanded input is several
    # times slower (ResNet-50's first layer: 6 ms against 1 ms per call)
    return torch.empty_like(x, memory_format=torch.contiguous_format).copy_(torch.as_tensor(bound).to(x))


def _is_x(kind: str, sign: int) -> bool:
    """Whether the modified input ``kind`` of a tensor of sign ``sign`` is that tensor itself."""
    return kind == "x" or (kind == "pos" and sign > 0) or (kind == "neg" and sign < 0)


def _group_bias(op: BilinearOp, group: Group, b: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor | None:
    """``B_g = sum_k sign_k b_k`` in a shape that broadcasts against ``z`` (None: no bias)."""
    big_b = None
    if b is not None:
        for term in group.terms:
            if term.b is not None:
                part = op.bias(term.b(b), z)
                part = part if term.sign == 1.0 else term.sign * part
                big_b = part if big_b is None else big_b + part
    return big_b


def _plus_bias(big_z: torch.Tensor, own: bool, big_b: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    if big_b is None:
        return big_z, own
    return (big_z.add_(big_b) if own and broadcasts_into(big_b.shape, big_z.shape) else big_z + big_b), True


def _reads_product(term: Term) -> bool:
    """Whether the term is ``f(x, W)`` itself, which the layer's output gives without a forward."""
    return term.x == "x" and term.w == _same


class _Terms:
    """Each group's terms evaluated as they are: ``Z_g = sum_k sign_k f(m_k(x), W_k) + B_g`` and
    ``R_x += c_g sum_k sign_k m_k(x) f_x^T(W_k, R_g / s)`` (one forward and one VJP per term)."""

    def __init__(self, op, x, w, spec, sign, product, live_groups):
        self.op, self.x, self.w, self.spec, self.sign, self.product = op, x, w, spec, sign, product
        self.r_x = None
        # the terms that read f(x, W): the product is dropped after the last (peak memory)
        self.uses = sum(_reads_product(t) for g, live in live_groups if g.terms != (PLAIN,) for t in live)

    def z(self, group, live, z, big_b):
        # modified inputs (x+, x-, bounds) are formed where used, not held through the group (memory)
        self.inputs = [lambda kind=term.x: _modified_input(kind, self.x, self.spec, self.sign) for term in live]
        self.weights = [term.w(self.w) for term in live]
        if group.terms == (PLAIN,):  # the unmodified layer: Z = z
            return z, False
        big_z, own = None, False  # own: big_z is a new tensor of this rule (summed into in place)
        for term, xk, wk in zip(live, self.inputs, self.weights):
            if _reads_product(term) and self.product is not None:
                product = self.product() if callable(self.product) else self.product
                self.uses -= 1
                self.product = product if self.uses else None
                part, new = (product, False) if term.sign == 1.0 else (term.sign * product, True)
                product = None
            else:
                part, new = self.op.forward(xk(), wk), True
                part = part if term.sign == 1.0 else part.mul_(term.sign)
            if big_z is None:
                big_z, own = part, new
            elif own or new:  # summed into whichever is this rule's own (a + b == b + a exactly)
                big_z, own = (big_z.add_(part) if own else part.add_(big_z)), True
            else:
                big_z, own = big_z + part, True
            part = None
        return _plus_bias(big_z, own, big_b)

    def add(self, group, live, c):
        for term, xk, wk in zip(live, self.inputs, self.weights):
            xk = xk()
            part = self.op.vjp(xk, wk, c)  # a new tensor: scaled in place
            part = part.mul_(xk) if broadcasts_into(xk.shape, part.shape) else part * xk
            factor = group.coef * term.sign
            part = part if factor == 1.0 else part.mul_(factor)
            self.r_x = part if self.r_x is None else self.r_x.add_(part)
        self.inputs = self.weights = None

    def relevance(self):
        return self.r_x


class _Shared:
    """Groups whose terms all take ``x`` itself and ``Parts`` maps of ``W`` (gamma's two groups on a
    sign-definite input; see :meth:`applies`), evaluated through ``f(x, W)`` and one ``f(x, W+)`` shared by all groups:
    ``Z_g = n_g f(x, W) + d_g f(x, W+) + B_g`` with ``n_g = sum_k sign_k neg_k``,
    ``d_g = sum_k sign_k (pos_k - neg_k)``, and
    ``R_x = x (f_x^T(W, sum_g c_g n_g R_g / s) + f_x^T(W+, sum_g c_g d_g R_g / s))``: one forward and
    two VJPs for any number of groups, no modified weight but ``W+``."""

    def __init__(self, op, x, w, product):
        self.op, self.x, self.w, self.product = op, x, w, product() if callable(product) else product
        self.w_pos = self.positive = None
        self.grads = [None, None]  # the output gradients of f_x^T(W, .) and f_x^T(W+, .)

    @staticmethod
    def coefficients(live):
        return (sum(t.sign * t.w.neg for t in live), sum(t.sign * (t.w.pos - t.w.neg) for t in live))

    @classmethod
    def applies(cls, live_groups, sign: int) -> bool:
        """Whether it saves work (two groups or more) and keeps the rounding of the terms: a group
        of ``W-`` alone (``n = -d``) would be ``f(x, W) - f(x, W+)``, which cancels where ``f(x, W-)``
        is small against ``f(x, W+)`` (alpha-beta's beta group); it is evaluated term by term."""
        if len(live_groups) < 2 or not all(isinstance(t.w, Parts) and _is_x(t.x, sign)
                                           for _, live in live_groups for t in live):
            return False
        return all(n + d != 0.0 or n == 0.0 for n, d in (cls.coefficients(live) for _, live in live_groups))

    def z(self, group, live, z, big_b):
        n, d = self.coefficients(live)
        big_z, own = (None, False) if n == 0.0 else (self.product, False) if n == 1.0 else (n * self.product, True)
        if d:
            if self.positive is None:
                self.w_pos = self.w.clamp(min=0)
                self.positive = self.op.forward(self.x, self.w_pos)
            if big_z is None:
                big_z, own = (self.positive, False) if d == 1.0 else (d * self.positive, True)
            else:
                big_z, own = (big_z.add_(self.positive, alpha=d) if own else
                              torch.add(big_z, self.positive, alpha=d)), True
        return _plus_bias(big_z, own, big_b)

    def add(self, group, live, c):
        """Adds ``c_g n_g c`` and ``c_g d_g c`` to the two output gradients; ``c`` is this rule's own
        tensor, scaled in place for its last use."""
        scales = [coef * group.coef for coef in self.coefficients(live)]
        last = max(slot for slot, scale in enumerate(scales) if scale) if any(scales) else -1
        for slot, scale in enumerate(scales):
            if scale:
                grad = self.grads[slot]
                if grad is not None:
                    grad.add_(c, alpha=scale)
                else:
                    self.grads[slot] = (c if scale == 1.0 else c.mul_(scale)) if slot == last else c * scale

    def relevance(self):
        self.product = self.positive = None  # freed before the VJPs (peak memory)
        r_x = None
        for grad, wk in zip(self.grads, (self.w, self.w_pos)):
            if grad is not None:
                part = self.op.vjp(self.x, wk, grad)
                r_x = part if r_x is None else r_x.add_(part)
        if r_x is None:
            return None
        return r_x.mul_(self.x) if broadcasts_into(self.x.shape, r_x.shape) else r_x * self.x


def _book(absorbed: dict, cause: str, coef: float, value: torch.Tensor) -> None:
    """``absorbed[cause] += coef * value`` with no tensor op for a coefficient of 1 or a first entry
    (the ledger's scalars: each op on a 0-dim tensor costs as much as a small kernel's launch)."""
    value = value if coef == 1.0 else coef * value
    held = absorbed[cause]
    absorbed[cause] = value if isinstance(held, float) and held == 0.0 else held + value


def modified_z(op: BilinearOp, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
               z: torch.Tensor, relevance: torch.Tensor, spec: LinearRule, product: torch.Tensor | None = None,
               z_own: bool = False):
    """The modified-z rule (module docstring) for one layer; returns ``(R_x, absorbed)``.

    ``z`` is ``f(x, W) + b``. ``product``: ``f(x, W)`` if already at hand, or a function that returns
    it (called only if a group needs it); the unmodified term is then not recomputed. ``z_own``: ``z`` is
    the caller's temporary, which a rule of one unmodified group (epsilon) may overwrite (its buffer
    then holds ``s - z``: one output-sized tensor fewer)."""
    groups = GROUPS[spec.kind](spec)
    # a sign-definite input (x >= 0 after a ReLU): x+ is x itself and x- is 0, so the terms of x- add
    # exactly nothing to Z_g or R_x and are skipped (their biases stay). Halves gamma / z+ / alpha-beta.
    sign = _input_sign(x) if any(t.x in ("pos", "neg") for g in groups for t in g.terms) else 0
    # outputs of one sign (z >= 0 where a ReLU's result stands in for z, on R's support): a group that
    # selects the other sign selects nothing, R_g = 0, and is skipped (all its shares are exactly 0)
    z_sign = _input_sign(z) if any(g.select != "all" for g in groups) else 0
    # rule = sum R - sum_g c_g sum R_g: groups that select all outputs contribute c_g sum R
    whole = 1.0 - sum(g.coef for g in groups if g.select == "all")
    absorbed = {"bias": 0.0, "stabiliser": 0.0, "rule": whole * total(relevance) if whole else 0.0}
    live_groups = [(g, [t for t in g.terms if not _vanishes(t.x, sign)] or list(g.terms))
                   for g in groups if not _vanishes(g.select, z_sign)]
    shared = product is not None and _Shared.applies(live_groups, sign)
    terms = _Shared(op, x, w, product) if shared else _Terms(op, x, w, spec, sign, product, live_groups)
    for group, live in live_groups:
        big_b = _group_bias(op, group, b, z)
        big_z, own = terms.z(group, live, z, big_b)
        own = own or (z_own and big_z is z and len(live_groups) == 1)  # z's last use
        if group.select == "all":
            c, lost = divide(relevance, big_z, spec.epsilon, overwrite=own)  # own Z: its buffer reused
        else:  # R_g = R where z > 0 (z < 0), else 0: applied to c = R / s (no R_g)
            c, lost, kept = divide_selected(relevance, big_z, spec.epsilon, z, group.select == "pos", overwrite=own)
            _book(absorbed, "rule", -group.coef, kept)
        big_z = None  # not needed below: freed before the VJPs (peak memory)
        if big_b is not None:
            _book(absorbed, "bias", group.coef, broadcast_total(big_b, c))
        _book(absorbed, "stabiliser", group.coef, lost)
        terms.add(group, live, c)  # may scale c in place
    r_x = terms.relevance()
    return (torch.zeros_like(x) if r_x is None else r_x), absorbed


def uniform_product(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor,
                    forward, epsilon: float, bias: torch.Tensor | None = None):
    """AttnLRP's uniform rule for ``z = f(a, b) (+ bias)`` bilinear in two activations.

    ``R_a = 1/2 * a * d f(a, b)/da^T (R / s(z))`` and likewise ``R_b``; since ``f`` is bilinear,
    ``sum R_a = sum R_b = 1/2 sum f(a, b) R / s(z)``. Absorbed: ``stabiliser = sum (s - z) R / s``
    and, with a ``bias`` (broadcasting against ``z``), ``bias = sum bias R / s``.
    """
    c, lost = divide(relevance, z, epsilon)
    a_ = a.detach().requires_grad_(True)
    b_ = b.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward(a_, b_)
        grad_a, grad_b = torch.autograd.grad(out, (a_, b_), c)
    absorbed = {"stabiliser": lost}
    if bias is not None:
        absorbed["bias"] = broadcast_total(bias, c)
    return 0.5 * a * grad_a, 0.5 * b * grad_b, absorbed


# ----------------------------------------------------------------------------------------------
# rules

saved_values("AddmmBackward0", inputs={1: "_saved_mat1", 2: "_saved_mat2"})
saved_values("BaddbmmBackward0", inputs={1: "_saved_batch1", 2: "_saved_batch2"})
saved_values("MmBackward0", "BmmBackward0", inputs={0: "_saved_self", 1: "_saved_mat2"})
saved_values("ConvolutionBackward0", inputs={0: "_saved_input", 1: "_saved_weight"})


#: rows of a relevance that :func:`_live_rows` probes before it scans them all
PROBED_ROWS = 16


def _live_rows(relevance: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows of a 2-D relevance that are not all zero, when they are at most half
    of the rows (e.g. a language model's head explained at one position), else ``None``. Every
    ``n / PROBED_ROWS``-th row is probed first: if most of those are live, the relevance is taken
    as dense (at worst the row selection is not used; the result is the same) without a scan of
    all of it. The scan is a per-row min/max: ``ne(0).any`` or ``any`` would form a bool tensor of
    the relevance's size (3 MiB for GPT-2's head at 64 tokens, at the sweep's peak)."""
    if relevance.dim() != 2 or relevance.shape[0] < 2 or relevance.shape[1] == 0:
        return None
    stride = relevance.shape[0] // PROBED_ROWS
    if stride > 1:
        probe = relevance[::stride]
        if int(probe.ne(0).any(1).sum()) > probe.shape[0] // 2:
            return None
    low, high = torch.aminmax(relevance, dim=1)  # per-row reductions: no mask of the relevance's size
    live = low.ne(0) | high.ne(0)  # NaN rows count as live
    return live.nonzero().squeeze(1) if int(live.sum()) <= relevance.shape[0] // 2 else None


def _product_rule(ctx: NodeContext, relevance: torch.Tensor, a_slot: int, b_slot: int,
                  bias_slot: int | None, scale: tuple[float, float] = (1.0, 1.0)) -> RuleResult:
    """Shared by mm / bmm / addmm: linear rule when one operand is a parameter, else uniform.

    With a 2-D data operand ``x @ W``, rows of the output depend on the same rows of ``x`` only: rows
    without relevance give none, so only the live rows are computed (same result, less work)."""
    a, b = ctx.input(a_slot), ctx.input(b_slot)
    alpha, beta = scale
    a_data, b_data = ctx.is_data(a_slot), ctx.is_data(b_slot)
    if a_data and b_data and ctx.constant_factor(a_slot, b_slot):
        a_data = False
    elif a_data and b_data and ctx.constant_factor(b_slot, a_slot):
        b_data = False
    rows = _live_rows(relevance) if a_data and not b_data and a.dim() == 2 and b.dim() == 2 else None
    count = a.shape[0]

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if rows is None or t is None or t.dim() != 2 or t.shape[0] != count else t[rows]

    relevance_full = relevance
    x_a, relevance = pick(a), pick(relevance)
    bias = None if bias_slot is None else ctx.operand(bias_slot)
    bias = bias if bias is None else pick(beta * bias)
    known_bias = bias_slot is None or bias is not None
    z = pick(ctx.output_on_support(relevance_full)) if known_bias else None  # kept by a node: no matmul
    own = z is None
    if z is not None:  # f(x, W) only if a rule term needs it
        product = z if bias is None else (lambda: z - bias)
    else:
        product = x_a @ b if alpha == 1 else alpha * (x_a @ b)
        if bias_slot is not None and bias is None:
            bias = pick(ctx.output()) - product
        z = product if bias is None else product + bias
    out: list[torch.Tensor | None] = [None] * ctx.num_inputs
    if a_data and b_data:
        r_a, r_b, absorbed = uniform_product(a, b, z, relevance, lambda p, q: alpha * (p @ q),
                                             ctx.settings.epsilon, bias)
        out[a_slot], out[b_slot] = r_a, r_b
        return RuleResult(tuple(out), absorbed)
    data_first = a_data
    x, w = (x_a, b) if data_first else (b, a)
    if alpha != 1:  # no scaled copy of the weight in the usual case
        w = alpha * w
    op = _matmul_op(data_first)
    r_x, absorbed = modified_z(op, x, w, bias, z, relevance, ctx.settings.linear, product, z_own=own)
    if rows is not None:
        r_x = torch.zeros_like(a).index_copy_(0, rows, r_x)
    out[a_slot if data_first else b_slot] = r_x
    return RuleResult(tuple(out), absorbed)


@rule("AddmmBackward0")
def addmm(ctx: NodeContext, relevance):
    """``z = beta * b + alpha * x @ W``: the preset's linear rule (epsilon, gamma, z+, ...) with ``x``
    the operand that depends on the input. Absorbs the bias share ``sum b_j R_j / s_j``, the
    stabiliser share, and any rule term (module docstring). Both operands data: uniform rule."""
    return _product_rule(ctx, relevance[0], 1, 2, 0, (ctx.saved("alpha"), ctx.saved("beta")))


@rule("BaddbmmBackward0")
def baddbmm(ctx: NodeContext, relevance):
    """``z = beta * c + alpha * A @ B`` batched (e.g. attention scores plus ALiBi's bias ``c``): as
    addmm, the preset's linear rule when one of ``A``, ``B`` is a parameter or constant, the uniform
    rule when both depend on the input. The share ``beta c_j R_j / s_j`` of the added term is
    absorbed (``bias``, or ``constant``/``parameter`` by its origin), with the stabiliser share."""
    return _product_rule(ctx, relevance[0], 1, 2, 0, (ctx.saved("alpha"), ctx.saved("beta")))


@rule("MmBackward0", "BmmBackward0")
def matmul(ctx: NodeContext, relevance):
    """``z = A @ B`` (batched or not): the preset's linear rule when one operand is a parameter,
    a constant, a normaliser statistic or (preset ``attention="cp"``) softmax attention weights (no
    bias; absorbs the stabiliser share); when both depend on the input, the uniform rule
    ``R_A = R_B = 1/2 * epsilon-LRP`` (AttnLRP)."""
    return _product_rule(ctx, relevance[0], 0, 1, None)


def _has_bias(ctx: NodeContext) -> bool:
    """Whether the convolution had a bias: autograd saves ``bias_sym_sizes_opt`` as ``(0,)``, not
    ``None``, for a convolution without one."""
    sizes = ctx.saved("bias_sym_sizes_opt")
    return sizes is not None and tuple(sizes) != (0,)


@rule("ConvolutionBackward0")
def convolution(ctx: NodeContext, relevance):
    """Every ``aten.convolution`` (1d/2d/3d, transposed, grouped/depthwise, strided, dilated, with
    or without bias): ``z = conv(x, W) + b`` with the preset's linear rule. Absorbs the bias share
    ``sum b_c R / s``, the stabiliser share and any rule term (module docstring). With a batch norm
    ``y = a z + c`` merged into it (preset ``merge_batch_norm``), the rule explains ``y`` (whose
    relevance the batch norm passed on) as the layer ``W' = a W``, ``b' = a b + c``."""
    x, w = ctx.input(0), ctx.input(1)
    op = _conv_op(ctx)
    bias = ctx.operand(2) if _has_bias(ctx) else None
    norm = batch_norm_after(ctx)
    if norm is not None:
        return _merged_convolution(ctx, op, x, w, bias, norm, relevance[0])
    known_bias = bias is not None or not _has_bias(ctx)
    z = ctx.output_on_support(relevance[0]) if known_bias else None  # kept by a node: no convolution
    own = z is None
    if z is not None:  # f(x, W) only if a rule term needs it
        product = z if bias is None else (lambda: z - op.bias(bias, z))
    else:
        product = op.forward(x, w)
        if _has_bias(ctx) and bias is None:
            bias = ctx.output() - product
        z = product if bias is None else product + op.bias(bias, product)
    r_x, absorbed = modified_z(op, x, w, bias, z, relevance[0], ctx.settings.linear, product, z_own=own)
    return RuleResult((r_x, None, None), absorbed)


def _output_scaled(op: BilinearOp, a: torch.Tensor) -> BilinearOp:
    """``op`` for the weights ``a W`` (``a`` per output channel, broadcasting against ``z``), given ``W``:
    ``f(x, a W) = a f(x, W)``, ``f_x^T(a W, g) = f_x^T(W, a g)``."""
    return BilinearOp(lambda x, w: a * op.forward(x, w), lambda x, w, g: op.vjp(x, w, a * g), op.bias)


def _merged_convolution(ctx: NodeContext, op: BilinearOp, x, w, bias, norm: NodeContext, relevance) -> RuleResult:
    """The convolution and the batch norm after it as one layer ``y = conv(x, a W) + (a b + c)``.
    Under rules that select outputs by sign (gamma), a following ReLU's result is ``y`` on the
    relevance's support, as for a plain convolution: no pass forms it, and the ``y < 0`` group,
    which has no relevance there, is skipped. Otherwise ``y`` is read where a node holds it, or formed
    from the batch norm's saved input (one addcmul)."""
    z, a, c = batch_norm_affine(norm)  # z: this convolution's output, saved by the batch norm
    raw = None  # f(x, W), formed only where needed
    if _has_bias(ctx) and bias is None:  # a frozen bias nothing holds: recovered from z
        raw = op.forward(x, w)
        bias = z - raw

    def unscaled() -> torch.Tensor:
        return raw if raw is not None else z if bias is None else z - op.bias(bias, z)

    merged = c if bias is None else a * op.bias(bias, z) + c
    spec = ctx.settings.linear
    groups = GROUPS[spec.kind](spec)
    # y held by a node; else a following ReLU's result where a group selects outputs by sign (gamma: the
    # y < 0 group is skipped); elsewhere y is only a denominator, and one addcmul costs less than the
    # check that the relevance lies on that result's support
    y = norm.held_output()
    if y is None and any(g.select != "all" for g in groups):
        y = norm.output_on_support(relevance)
    own = y is None
    if own:
        y = torch.addcmul(merged, a, unscaled())
    if y.numel() < w.numel() and all(t.w == _same for g in groups for t in g.terms):
        # W' = a W enters only as f_x^T(W', g) = f_x^T(W, a g): scale the (smaller) output instead
        op = _output_scaled(op, a)
    else:
        w = w * a.reshape((-1,) + (1,) * (w.dim() - 1))
    r_x, absorbed = modified_z(op, x, w, merged, y, relevance, spec, lambda: a * unscaled(), z_own=own)
    return RuleResult((r_x, None, None), absorbed)


# ----------------------------------------------------------------------------------------------
# forward replays


@replay("AddmmBackward0")
def _addmm_forward(ctx: NodeContext):
    return (torch.addmm(ctx.input(0), ctx.input(1), ctx.input(2), beta=ctx.saved("beta"), alpha=ctx.saved("alpha")),)


@replay("BaddbmmBackward0")
def _baddbmm_forward(ctx: NodeContext):
    return (torch.baddbmm(ctx.input(0), ctx.input(1), ctx.input(2), beta=ctx.saved("beta"), alpha=ctx.saved("alpha")),)


@replay("MmBackward0", "BmmBackward0")
def _matmul_forward(ctx: NodeContext):
    return (ctx.input(0) @ ctx.input(1),)


@replay("ConvolutionBackward0")
def _conv_forward(ctx: NodeContext):
    bias = ctx.input(2) if _has_bias(ctx) else None
    return (torch.ops.aten.convolution(ctx.input(0), ctx.input(1), bias, ctx.saved("stride"),
                                       ctx.saved("padding"), ctx.saved("dilation"), ctx.saved("transposed"),
                                       ctx.saved("output_padding"), ctx.saved("groups")),)


__all__ = ["LinearRule", "modified_z", "uniform_product"]
