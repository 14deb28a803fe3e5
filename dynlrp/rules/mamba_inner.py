"""mamba-ssm's fused Mamba mixer: ``MambaInnerFnBackward`` (``mamba_ssm``'s ``MambaInnerFn``).

``mamba_ssm.ops.selective_scan_interface.mamba_inner_fn`` runs the inner part of a Mamba block (everything
between ``in_proj`` and the block's output) as one custom autograd Function whose forward calls the
``causal_conv1d`` and ``selective_scan`` CUDA kernels, so the graph holds one opaque
``MambaInnerFnBackward`` node. It is explained by decomposition (:mod:`dynlrp.rules.decompose`):
:func:`mamba_inner` re-runs it with plain torch ops, the math of mamba_ssm's ``mamba_inner_ref`` (real
``A`` only) plus the optional RMS norms of ``B``, ``C`` and ``dt`` of ``MambaInnerFn``::

    x, z   = xz.chunk(2, dim=1)                                  (batch, dim, L) each
    x      = silu(causal_conv1d(x, conv1d_weight, conv1d_bias))  depthwise, left zero padding
    x_dbl  = x^T @ x_proj_weight^T                               ((batch L), rank + 2 N)
    delta  = delta_proj_weight @ x_dbl[:, :rank]^T               (no bias: delta_bias goes to the scan)
    B, C   = x_dbl[:, rank:rank+N] (+ B_proj_bias), x_dbl[:, -N:] (+ C_proj_bias)   if not given
    B, C, delta = rms_norm(., b/c/dt_rms_weight, eps)            (each optional)
    y      = selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out    = y^T @ out_proj_weight^T (+ out_proj_bias)           (batch, L, d_model)

Node layout: the input slots are the Function's *tensor* arguments in forward order, the ``None`` ones
having no slot: ``xz, conv1d_weight[, conv1d_bias], x_proj_weight, delta_proj_weight, out_proj_weight
[, out_proj_bias], A[, B][, C][, D][, delta_bias][, B_proj_bias][, C_proj_bias][, b_rms_weight]
[, c_rms_weight][, dt_rms_weight]``. Which are present is read from the node (``ctx.saved_tensors``
and the flags ``out_proj_bias_is_None``, ``is_variable_B``/``is_variable_C``, ``B_proj_bias_is_None``/
``C_proj_bias_is_None``); values come from ``ctx.saved_tensors`` (``conv1d_weight`` is saved as
``(dim, width)`` and unsqueezed back), except ``out_proj_bias``, ``B_proj_bias`` and ``C_proj_bias``,
which the Function does not save (``ctx.input(slot)``: a parameter's value, or the Promise System).
``delta_softplus`` and ``b_c_dt_rms_eps`` are node attributes; ``checkpoint_lvl`` only decides what
the Function saves and does not change the math.

The check (``"auto"``) compares the reference with the node's output where the graph holds it, else its
vector-Jacobian product with the Function's backward. With RMS-norm weights, mamba_ssm 2.3's backward
skips the norms' Jacobians (and at ``checkpoint_lvl=1`` re-normalises the already normalised ``B``/``C``),
so it is not the derivative of the forward and the VJP check fails: let the graph hold the node's
output (``Function.apply`` bypasses ``dynlrp.record()``'s recorder, so keep it explicitly:
``with dynlrp.record() as rec: out = mamba_inner_fn(...); rec.keep(out)``) so the check compares outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext
from ..errors import RuleError
from .decompose import register_decomposition
from .selective_scan import selective_scan

# ruff: noqa: N803, N806 -- the names of mamba_ssm's arguments (A, B, C, D, B_proj_bias, ...)

ARGUMENTS = ("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "out_proj_weight",
             "out_proj_bias", "A", "B", "C", "D", "delta_bias", "B_proj_bias", "C_proj_bias", "b_rms_weight",
             "c_rms_weight", "dt_rms_weight")

#: the order of ``MambaInnerFn``'s ``ctx.save_for_backward``
SAVED = ("xz", "conv1d_weight", "conv1d_bias", "x_dbl", "x_proj_weight", "delta_proj_weight", "out_proj_weight",
         "conv1d_out", "delta", "A", "B", "C", "D", "delta_bias", "scan_intermediates", "b_rms_weight",
         "c_rms_weight", "dt_rms_weight", "out")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """Depthwise causal 1-d convolution (causal_conv1d's ``causal_conv1d_ref``, no initial states).

    ``x: (batch, dim, L)``; ``weight: (dim, width)`` or ``(dim, 1, width)``; ``bias: (dim,)``;
    ``activation``: ``None`` or ``"silu"``/``"swish"``.
    """
    if weight.dim() == 2:
        weight = weight.unsqueeze(1)
    width, length = weight.shape[-1], x.shape[-1]
    out = F.conv1d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=width - 1,
                   groups=x.shape[1])[..., :length]
    return F.silu(out) if activation in ("silu", "swish") else out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2, -1) + eps) * weight`` (mamba_ssm's ``rms_norm_ref`` without bias)."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def mamba_inner(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: torch.Tensor | None,
                x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                out_proj_bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor | None = None,
                C: torch.Tensor | None = None, D: torch.Tensor | None = None,
                delta_bias: torch.Tensor | None = None, B_proj_bias: torch.Tensor | None = None,
                C_proj_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                b_rms_weight: torch.Tensor | None = None, c_rms_weight: torch.Tensor | None = None,
                dt_rms_weight: torch.Tensor | None = None, b_c_dt_rms_eps: float = 1e-6) -> torch.Tensor:
    """``MambaInnerFn`` in plain torch (mamba_ssm's ``mamba_inner_ref`` with the B/C/dt RMS norms).

    ``xz: (batch, 2 dim, L)``; ``conv1d_weight: (dim, 1, width)``; ``x_proj_weight: (rank + 2 N, dim)``;
    ``delta_proj_weight: (dim, rank)``; ``out_proj_weight: (d_model, dim)``; ``A: (dim, N)`` (real);
    ``B``/``C``: given (as for :func:`~dynlrp.rules.selective_scan.selective_scan`) or ``None`` (taken
    from ``x_dbl``). Unlike ``mamba_inner_ref``, ``delta_softplus`` is honoured as the Function does.
    Returns ``(batch, L, d_model)``.
    """
    if A.is_complex():
        raise RuleError("mamba_inner: complex A is not supported (real A only)")
    length = xz.shape[-1]
    rank, state = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d(x, conv1d_weight, conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # ((batch L), rank + 2N)
    delta = F.linear(x_dbl[:, :rank], delta_proj_weight)  # ((batch L), dim)
    if dt_rms_weight is not None:
        delta = rms_norm(delta, dt_rms_weight, b_c_dt_rms_eps)
    delta = delta.reshape(-1, length, delta.shape[-1]).transpose(1, 2)  # (batch, dim, L)

    def variable(m, bias, rms_weight, columns):
        if m is None:
            m = x_dbl[:, columns]
            if bias is not None:
                m = m + bias.to(m.dtype)
        elif rms_weight is None:
            return m
        elif m.dim() == 4 and m.shape[1] == 1:  # (batch, 1, N, L), as MambaInnerFn takes it: over N
            return rms_norm(m.transpose(2, 3), rms_weight, b_c_dt_rms_eps).transpose(2, 3)
        else:
            raise RuleError("mamba_inner: an RMS norm of a given B/C is only defined for (batch, 1, N, L)")
        if rms_weight is not None:
            m = rms_norm(m, rms_weight, b_c_dt_rms_eps)
        return m.reshape(-1, length, state).transpose(1, 2)  # (batch, N, L)

    B = variable(B, B_proj_bias, b_rms_weight, slice(rank, rank + state))
    C = variable(C, C_proj_bias, c_rms_weight, slice(x_dbl.shape[1] - state, x_dbl.shape[1]))
    y = selective_scan(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _mamba_inner_node(*values, present: tuple[str, ...], delta_softplus: bool, b_c_dt_rms_eps: float):
    """``MambaInnerFn`` on its input slots (the tensor arguments in ``present``), via :func:`mamba_inner`."""
    args = {"conv1d_bias": None, "out_proj_bias": None, **dict(zip(present, values))}
    return mamba_inner(**args, delta_softplus=delta_softplus,
                       b_c_dt_rms_eps=b_c_dt_rms_eps)


def _layout(ctx: NodeContext) -> tuple[dict[str, torch.Tensor | None], tuple[str, ...]]:
    """The saved values by argument name and the names of the tensor arguments that have a slot."""
    fn = ctx.node
    saved = fn.saved_tensors
    if len(saved) != len(SAVED):
        raise RuleError(f"MambaInnerFnBackward: {len(saved)} saved tensors, expected {len(SAVED)}"
                        " (mamba_ssm's MambaInnerFn changed?)")
    values = dict(zip(SAVED, saved))
    if values["conv1d_weight"] is not None:
        values["conv1d_weight"] = values["conv1d_weight"].unsqueeze(1)  # saved as (dim, width)
    if fn.is_variable_B:
        values["B"] = None  # the saved B was computed from x_dbl
    if fn.is_variable_C:
        values["C"] = None
    flags = {"out_proj_bias": not fn.out_proj_bias_is_None, "B_proj_bias": not fn.B_proj_bias_is_None,
             "C_proj_bias": not fn.C_proj_bias_is_None}
    present = tuple(name for name in ARGUMENTS
                    if (flags[name] if name in flags else values[name] is not None))
    if len(present) != ctx.num_inputs:
        raise RuleError(f"MambaInnerFnBackward: {len(present)} tensor arguments found, {ctx.num_inputs} input"
                        " slots (mamba_ssm's MambaInnerFn changed?)")
    if any(values[name] is not None and values[name].is_complex() for name in ("A", "B", "C")):
        raise RuleError("MambaInnerFnBackward: complex A is not supported (real A only)")
    return values, present


def _inputs(ctx: NodeContext):
    values, present = _layout(ctx)
    # out_proj_bias, B_proj_bias and C_proj_bias are not saved: the graph's value (a leaf) or a promise
    return [values[name] if name in values else ctx.input(slot) for slot, name in enumerate(present)]


def _params(ctx: NodeContext):
    _, present = _layout(ctx)
    return {"present": present, "delta_softplus": bool(ctx.node.delta_softplus),
            "b_c_dt_rms_eps": float(ctx.node.b_c_dt_rms_eps)}


register_decomposition("MambaInnerFnBackward", _mamba_inner_node, inputs=_inputs, params=_params)

__all__ = ["causal_conv1d", "mamba_inner", "rms_norm"]
