"""Autograd graph statistics used by the zoo's tests and listing (no dependency on the engine)."""
from __future__ import annotations

from collections import Counter

import torch


def count_nodes(output: torch.Tensor) -> Counter:
    """Count every unique autograd node reachable from ``output.grad_fn``, by node type name.

    Walks ``next_functions`` iteratively (graphs of full-size models are deep); AccumulateGrad nodes
    (parameters and inputs that require grad) are included, as in the paper's node counts.
    """
    if output.grad_fn is None:
        raise ValueError("output has no grad_fn: nothing in its computation requires grad")
    seen = {output.grad_fn}
    stack = [output.grad_fn]
    counts: Counter = Counter()
    while stack:
        node = stack.pop()
        counts[type(node).__name__] += 1
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return counts
