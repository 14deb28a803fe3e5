"""Small numeric helpers shared by the rule families."""
from __future__ import annotations

import torch


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (zennit's convention), so ``|s| >= epsilon``."""
    e = z.new_tensor(epsilon)
    return z + torch.where(z >= 0, e, -e)


def reduce_to_shape(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Sum ``t`` over the dimensions that broadcasting added or expanded to reach ``t.shape``."""
    shape = torch.Size(shape)
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    if lead > 0:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, (have, want) in enumerate(zip(t.shape, shape)) if want == 1 and have != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


def total(t: torch.Tensor) -> torch.Tensor:
    """Sum in float64 (ledger precision independent of the model's dtype, so that a float32 part of
    a float64 model, e.g. an upcast softmax, is checked to float64 precision too).

    Cast first, then sum: on CPU (torch 2.14) ``t.sum(dtype=torch.float64)`` of a float32 tensor
    takes a slow multi-threaded path, about 40x slower than summing the float64 copy."""
    return t.detach().to(torch.float64).sum()


def broadcast_total(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """``total(small * big)`` for ``small`` broadcasting against ``big`` (a bias against the output):
    ``big`` is first summed down to ``small``'s shape, so no output-sized product is formed."""
    if small.dim() > big.dim() or torch.broadcast_shapes(small.shape, big.shape) != big.shape:
        return total(small * big)
    return total(small * reduce_to_shape(big, small.shape))


def z_rule(x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, vjp, epsilon: float):
    """The z-rule for a homogeneous linear map ``z = f(x)``: ``R_x = x * f^T(R / s(z))``.

    Returns ``(R_x, absorbed stabiliser)``, the latter ``sum (s - z) R / s``.
    """
    s = stabilize(z, epsilon)
    c = relevance / s
    return x * vjp(c), total((s - z) * c)
