"""Slow float64 reference formulas for dynlrp's rules, written in dense (matrix / Jacobian) form.

Nothing here imports dynlrp. Every linear op is turned into its matrix ``w`` (``z = w x + b`` over
the flattened tensors, ``w`` from ``torch.autograd.functional.jacobian``), and the rules are applied
to matrices, following zennit 0.5.1's definitions (``zennit/rules.py``): the stabiliser
``s(z) = z + eps * sign(z)`` with ``sign(0) = +1``; z+ / alpha-beta clamp weights *and* biases of
the positive term and drop the bias of the mixed-sign term; the generalised Gamma has one group
for ``z > 0`` and one for ``z < 0``; ZBox subtracts ``W+ low + b+`` and ``W- high + b-``; Flat sets
all weights to one and drops the bias; WSquare squares weights and bias.

For a convolution the matrix ``w`` holds one kernel weight (or 0) per entry, so the modified
matrices of the rules (``W+``, ``W**2``, all-ones) are elementwise functions of ``w``
(``test_conv_matrix_is_elementwise_in_the_weights`` checks this against Jacobians of the modified
convolutions).

Softmax and attention follow AttnLRP (uniform rule on products of two activations, the softmax rule
``R_x = x * J^T R`` with ``J`` the Jacobian of log-softmax) and CP-LRP (attention weights constant).

Each reference returns the relevance of its operand(s) and the absorbed amounts, by cause, computed
from the formula's own terms.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def sign0(z: torch.Tensor) -> torch.Tensor:
    """``sign(z)`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * sign0(z)


def jacobian(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``d f(x) / d x`` as a ``(f(x).numel(), x.numel())`` float64 matrix."""
    x = x.detach().to(torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: f(t).to(torch.float64), x, vectorize=True)
    return jac.reshape(-1, x.numel())


def _f(value: torch.Tensor) -> float:
    return float(value.sum())


# -------------------------------------------------------------------------------------------------
# linear layers: z = w x + b


def linear(kind: str, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor, r: torch.Tensor, *,
           eps: float, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
           low: torch.Tensor | None = None, high: torch.Tensor | None = None):
    """A zennit rule on ``z = w x + b`` (flat vectors). Returns ``(R_x, absorbed)``."""
    x, r = x.flatten(), r.flatten()
    n_out = w.shape[0]
    b = torch.zeros(n_out, dtype=w.dtype) if b is None else b.flatten()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    bp, bn = b.clamp(min=0), b.clamp(max=0)
    if kind == "epsilon":  # zennit Epsilon
        z = w @ x + b
        s = stab(z, eps)
        c = r / s
        return x * (w.T @ c), {"bias": _f(b * c), "stabiliser": _f((s - z) * c), "rule": 0.0}
    if kind == "zplus":  # zennit ZPlus: (x+, W+, b+) + (x-, W-, no bias)
        z = wp @ xp + wn @ xn + bp
        s = stab(z, eps)
        c = r / s
        rx = xp * (wp.T @ c) + xn * (wn.T @ c)
        return rx, {"bias": _f(bp * c), "stabiliser": _f((s - z) * c), "rule": 0.0}
    if kind == "alpha_beta":  # zennit AlphaBeta
        zp = wp @ xp + wn @ xn + bp
        zn = wn @ xp + wp @ xn + bn
        sp, sn = stab(zp, eps), stab(zn, eps)
        cp, cn = r / sp, r / sn
        rx = alpha * (xp * (wp.T @ cp) + xn * (wn.T @ cp)) - beta * (xp * (wn.T @ cn) + xn * (wp.T @ cn))
        absorbed = {"bias": alpha * _f(bp * cp) - beta * _f(bn * cn),
                    "stabiliser": alpha * _f((sp - zp) * cp) - beta * _f((sn - zn) * cn),
                    "rule": _f(r) * (1.0 - alpha + beta)}
        return rx, absorbed
    if kind == "gamma":  # zennit's generalised Gamma: one group for z > 0, one for z < 0
        z = w @ x + b
        up, down = w + gamma * wp, w + gamma * wn
        b_up, b_down = b + gamma * bp, b + gamma * bn
        zp = up @ xp + down @ xn + b_up  # bias only in the (x+) term
        zn = down @ xp + up @ xn + b_down
        sp, sn = stab(zp, eps), stab(zn, eps)
        cp = r * (z > 0).to(r) / sp
        cn = r * (z < 0).to(r) / sn
        rx = xp * (up.T @ cp) + xn * (down.T @ cp) + xp * (down.T @ cn) + xn * (up.T @ cn)
        absorbed = {"bias": _f(b_up * cp) + _f(b_down * cn),
                    "stabiliser": _f((sp - zp) * cp) + _f((sn - zn) * cn),
                    "rule": _f(r * (z == 0).to(r))}
        return rx, absorbed
    if kind == "zbox":  # zennit ZBox: (x, W, b) - (low, W+, b+) - (high, W-, b-)
        lo, hi = low.flatten(), high.flatten()
        z = (w @ x + b) - (wp @ lo + bp) - (wn @ hi + bn)
        s = stab(z, eps)
        c = r / s
        rx = x * (w.T @ c) - lo * (wp.T @ c) - hi * (wn.T @ c)
        return rx, {"bias": _f((b - bp - bn) * c), "stabiliser": _f((s - z) * c), "rule": 0.0}
    if kind == "flat":  # zennit Flat: ones as input, all weights one, no bias
        ones_w = (w != 0).to(w)
        z = ones_w @ torch.ones_like(x)
        s = stab(z, eps)
        c = r / s
        return ones_w.T @ c, {"bias": 0.0, "stabiliser": _f((s - z) * c), "rule": 0.0}
    if kind == "wsquare":  # zennit WSquare: ones as input, squared weights and bias
        w2, b2 = w * w, b * b
        z = w2 @ torch.ones_like(x) + b2
        s = stab(z, eps)
        c = r / s
        return w2.T @ c, {"bias": _f(b2 * c), "stabiliser": _f((s - z) * c), "rule": 0.0}
    raise ValueError(kind)


# -------------------------------------------------------------------------------------------------
# z-rule / signed sums / products


def z_rule(ws: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], r: torch.Tensor, eps: float,
           const: torch.Tensor | None = None):
    """``z = sum_k M_k x_k + const``: ``R_k = x_k * M_k^T (r / s(z))``.

    Returns ``(R_k per operand, stabiliser, constant share)``.
    """
    r = r.flatten()
    const = torch.zeros_like(r) if const is None else const.flatten().expand_as(r)
    z = sum(w @ x.flatten() for w, x in zip(ws, xs)) + const
    s = stab(z, eps)
    c = r / s
    shares = [(x.flatten() * (w.T @ c)).view_as(x) for w, x in zip(ws, xs)]
    return shares, _f((s - z) * c), _f(const * c)


def uniform(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
            r: torch.Tensor, eps: float, bias: torch.Tensor | None = None):
    """AttnLRP's uniform rule for ``z = f(a, b) + bias`` bilinear in ``a, b``.

    ``R_a = 1/2 a * J_a^T (r / s(z))`` with ``J_a = d f / d a`` at fixed ``b`` (and likewise ``R_b``).
    """
    a, b = a.detach(), b.detach()
    ja = jacobian(lambda t: f(t, b), a)
    jb = jacobian(lambda t: f(a, t), b)
    z = f(a, b).flatten()
    bias_v = torch.zeros_like(z) if bias is None else torch.broadcast_to(bias, f(a, b).shape).flatten()
    z = z + bias_v
    s = stab(z, eps)
    c = r.flatten() / s
    ra = 0.5 * a.flatten() * (ja.T @ c)
    rb = 0.5 * b.flatten() * (jb.T @ c)
    absorbed = {"stabiliser": _f((s - z) * c)}
    if bias is not None:
        absorbed["bias"] = _f(bias_v * c)
    return ra.view_as(a), rb.view_as(b), absorbed


def route(jac: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A copy map ``y = jac x`` (0/1 matrix): ``R_x = jac^T r`` (flat); output rows with no source
    (constant padding) keep their relevance, returned as the ``constant`` share."""
    r = r.flatten().to(torch.float64)
    sourced = (jac != 0).any(dim=1)
    return jac.T @ r, _f(r[~sourced])


def winner_takes_all(x: torch.Tensor, indices: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Max pooling: every output hands its relevance to the input element it copied (``indices``
    as returned by ``return_indices=True``, flat over the spatial dims)."""
    out = torch.zeros(x.shape[0], x.shape[1], x[0, 0].numel(), dtype=r.dtype)
    out.scatter_add_(2, indices.flatten(2), r.flatten(2))
    return out.view_as(x)


# -------------------------------------------------------------------------------------------------
# softmax and attention (AttnLRP / CP-LRP)


def softmax_rule(x: torch.Tensor, r: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, float]:
    """AttnLRP's softmax rule in Jacobian form: ``R_x = x * J^T R`` with ``J = d log softmax(x) / d x``
    (``= d s / d x`` divided by ``s``, well defined where ``s = 0``); masked (non-finite) inputs get 0.
    Returns ``(R_x, relevance not passed on)``."""
    x, r = x.detach(), r.detach()
    jac = jacobian(lambda t: torch.log_softmax(t, dim), x)
    valid = torch.isfinite(x)
    rx = torch.where(valid, torch.where(valid, x, 0.0) * (jac.T @ r.flatten()).view_as(x), 0.0)
    return rx, _f(r) - _f(rx)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, eps: float, scale: float,
              mask: torch.Tensor | None = None, cp: bool = False):
    """``out = softmax(scale q k^T + mask) v`` (k, v broadcast over grouped query heads), explained
    as its decomposition: uniform rule on ``A v`` (CP: ``A`` constant, epsilon rule on ``v``), the
    softmax rule, then the z-rule on ``scale q k^T + mask`` with the uniform rule on the product.
    Returns ``(R_q, R_k, R_v, absorbed, out)``."""
    q, k, v = q.detach(), k.detach(), v.detach()
    heads = q.shape[-3]

    def rep(t):
        return t.repeat_interleave(heads // t.shape[-3], dim=-3)

    logits = scale * (q @ rep(k).transpose(-1, -2))
    if mask is not None:
        logits = logits + mask
    a = torch.softmax(logits, -1)
    out = a @ rep(v)
    s_out = stab(out, eps)
    c = (r / s_out).flatten()
    absorbed = {"stabiliser": _f((s_out - out).flatten() * c)}
    jv = jacobian(lambda t: a @ rep(t), v)
    if cp:
        return None, None, (v.flatten() * (jv.T @ c)).view_as(v), absorbed, out
    ja = jacobian(lambda t: t @ rep(v), a)
    r_v = 0.5 * (v.flatten() * (jv.T @ c)).view_as(v)
    r_a = 0.5 * (a.flatten() * (ja.T @ c)).view_as(a)
    r_t, absorbed["rule"] = softmax_rule(logits, r_a, -1)
    finite = torch.isfinite(logits)
    s_t = stab(torch.where(finite, logits, 1.0), eps)
    g = torch.where(finite, r_t / s_t, 0.0)
    absorbed["stabiliser"] += _f(torch.where(finite, (s_t - logits) * g, 0.0))
    if mask is not None:
        absorbed["constant"] = _f(torch.where(finite, mask.expand_as(logits) * g, 0.0))
    jq = jacobian(lambda t: scale * (t @ rep(k).transpose(-1, -2)), q)
    jk = jacobian(lambda t: scale * (q @ rep(t).transpose(-1, -2)), k)
    r_q = 0.5 * (q.flatten() * (jq.T @ g.flatten())).view_as(q)
    r_k = 0.5 * (k.flatten() * (jk.T @ g.flatten())).view_as(k)
    return r_q, r_k, r_v, absorbed, out
