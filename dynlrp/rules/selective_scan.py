"""mamba-ssm's fused selective scan: ``SelectiveScanFnBackward`` (``mamba_ssm``'s ``SelectiveScanFn``).

On a GPU, ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` runs the whole selective scan of
a Mamba block as one CUDA kernel inside a custom autograd Function, so the graph holds one opaque
``SelectiveScanFnBackward`` node. It is explained by decomposition (:mod:`dynlrp.rules.decompose`):
:func:`selective_scan` re-runs the scan with plain torch ops, the math of mamba_ssm's
``selective_scan_ref`` (real ``A`` only)::

    delta = softplus(delta + delta_bias)                  (each step optional)
    deltaA[b, d, l, n]   = exp(delta[b, d, l] * A[d, n])
    deltaB_u[b, d, l, n] = delta[b, d, l] * B[., n, l] * u[b, d, l]
    x_l = deltaA_l * x_{l-1} + deltaB_u_l                 (x_0 = 0, sequential over l)
    y_l = sum_n x_l[., n] * C[., n, l]
    out = (y + D * u) * silu(z)                           (D and z optional)

``B``/``C`` are constant ``(D, N)``, or input-dependent ``(batch, N, L)`` or ``(batch, G, N, L)`` (groups
repeated over the channels). Inputs of lower precision than float32 are computed in float32 and cast
back, like the kernel and the reference.

Node layout: the input slots are the Function's *tensor* arguments in forward order, the ``None``
ones having no slot: ``u, delta, A, B, C[, D][, z][, delta_bias]``. Their values are read from
``ctx.saved_tensors`` (``u, delta, A, B, C, D, delta_bias, x`` or, with ``z``,
``u, delta, A, B, C, D, z, delta_bias, x, out``; ``None`` kept), with the 3-d ``B``/``C`` that forward
unsqueezed to 4-d squeezed back (``ctx.squeeze_B``/``ctx.squeeze_C``), so no promise is needed.
``delta_softplus`` and ``has_z`` are node attributes; ``return_last_state`` is the node's number of
outputs (output 0: ``out``, output 1: the last state ``(batch, dim, dstate)``, whose gradient the
Function ignores). The check (``"auto"``) compares the reference with the node's output where the graph
holds it, else its vector-Jacobian product with the kernel's backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext
from ..errors import RuleError
from .decompose import register_decomposition

# ruff: noqa: N803, N806 -- the names of the selective-scan math (A, B, C, D, deltaA, deltaB_u)

ARGUMENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def _per_channel(m: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, G, N, L)`` -> ``(batch, dim, N, L)``: group ``g`` serves channels ``g*H .. (g+1)*H - 1``."""
    return m.repeat_interleave(dim // m.shape[1], dim=1)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False):
    """The selective scan in plain torch (mamba_ssm's ``selective_scan_ref``, real ``A``).

    ``u, delta, z: (batch, dim, L)``; ``A: (dim, N)``; ``B, C: (dim, N)``, ``(batch, N, L)`` or
    ``(batch, G, N, L)``; ``D, delta_bias: (dim,)``. Returns ``out (batch, dim, L)`` in ``u``'s dtype,
    and ``(out, last_state (batch, dim, N))`` if ``return_last_state``.
    """
    if A.is_complex():
        raise RuleError("selective_scan: complex A is not supported (real A only)")
    dtype_in = u.dtype
    work = _compute_dtype(dtype_in)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim, length = A.shape[0], u.shape[2]
    deltaA = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (batch, dim, L, N)
    delta_u = (delta * u).unsqueeze(-1)  # (batch, dim, L, 1)
    if B.dim() == 2:  # (dim, N)
        deltaB_u = delta_u * B.unsqueeze(1)
    elif B.dim() == 3:  # (batch, N, L)
        deltaB_u = delta_u * B.transpose(1, 2).unsqueeze(1)
    else:  # (batch, G, N, L)
        deltaB_u = delta_u * _per_channel(B, dim).transpose(2, 3)
    if C.dim() == 4:
        C = _per_channel(C, dim)
    x = None
    ys = []
    for i in range(length):
        x = deltaB_u[:, :, i] if x is None else deltaA[:, :, i] * x + deltaB_u[:, :, i]  # (batch, dim, N)
        if C.dim() == 2:
            c = C.unsqueeze(0)
        elif C.dim() == 3:
            c = C[:, :, i].unsqueeze(1)
        else:
            c = C[:, :, :, i]
        ys.append((x * c).sum(-1))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.to(work).unsqueeze(-1)
    if z is not None:
        out = out * F.silu(z.to(work))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def _selective_scan_node(*values, present: tuple[str, ...], delta_softplus: bool, return_last_state: bool):
    """``SelectiveScanFn`` on its input slots (the tensor arguments in ``present``), via :func:`selective_scan`."""
    return selective_scan(**dict(zip(present, values)), delta_softplus=delta_softplus,
                          return_last_state=return_last_state)


def _saved(ctx: NodeContext) -> dict[str, torch.Tensor | None]:
    fn = ctx.node
    saved = fn.saved_tensors
    if fn.has_z:
        names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    else:
        names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    values = dict(zip(names, saved))
    values.setdefault("z", None)
    for name in ("B", "C"):
        if getattr(fn, f"squeeze_{name}", False):
            values[name] = values[name].squeeze(1)
    return values


def _scan_inputs(ctx: NodeContext):
    values = _saved(ctx)
    present = [values[name] for name in ARGUMENTS if values[name] is not None]
    if len(present) != ctx.num_inputs:
        raise RuleError(f"SelectiveScanFnBackward: {len(present)} tensor arguments saved, {ctx.num_inputs}"
                        " input slots (mamba_ssm's SelectiveScanFn changed?)")
    return present


def _scan_params(ctx: NodeContext):
    values = _saved(ctx)
    return {"present": tuple(name for name in ARGUMENTS if values[name] is not None),
            "delta_softplus": bool(ctx.node.delta_softplus), "return_last_state": len(ctx.output_shapes) > 1}


register_decomposition("SelectiveScanFnBackward", _selective_scan_node, inputs=_scan_inputs, params=_scan_params)

__all__ = ["selective_scan"]
