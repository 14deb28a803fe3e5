"""Decomposition of the tanh-GELU custom ``autograd.Function`` named ``GeLUFunction`` (BLOOM in
transformers, from Megatron-DeepSpeed): ``y = x/2 (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))``.

The node (``GeLUFunctionBackward``) is opaque to the graph; the registered reference re-runs the
formula in plain torch ops and the inner sweep explains it like any tanh GELU: ``x * g(x)`` with the
gate ``g`` computed from ``x`` itself, which passes ``R_x = R`` (see :mod:`dynlrp.analysis`). The
decomposition's check compares the reference's VJP with the node's own backward, so a different
function that happens to share the name is refused by name (``DecompositionMismatchError``).
"""
from __future__ import annotations

import torch

from .decompose import register_decomposition


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * 0.5 * (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))``, the constants of the Function."""
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


register_decomposition("GeLUFunctionBackward", tanh_gelu)

__all__ = ["tanh_gelu"]
