"""Which module created which graph node: forward hooks and autograd sequence numbers.

A pre-hook notes the autograd sequence number before the module runs; the forward hook walks down
from the module's outputs and labels every unlabeled node created since then. Modules finish
inside-out, so each node gets the innermost module that created it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_leaves

from .graph import Node


def _next_sequence_nr() -> int | None:
    if not torch.is_grad_enabled():
        return None
    probe = torch.empty(0, requires_grad=True).view(0)
    return probe.grad_fn._sequence_nr()


@contextmanager
def track_modules(model: torch.nn.Module) -> Iterator[dict[Node, str]]:
    """Context manager around a forward; yields ``{node: module path}``, filled as modules finish."""
    paths: dict[Node, str] = {}
    starts: list[int | None] = []
    handles = []

    def before(module, args):
        starts.append(_next_sequence_nr())

    def after_for(name: str):
        def after(module, args, output):
            start = starts.pop() if starts else None
            if start is None:
                return
            stack = [t.grad_fn for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            seen = set()
            while stack:
                node = stack.pop()
                if node in seen or node._sequence_nr() <= start:
                    continue
                seen.add(node)
                paths.setdefault(node, name or "<model>")
                stack.extend(child for child, _ in node.next_functions if child is not None)
        return after

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after_for(name)))
        yield paths
    finally:
        for handle in handles:
            handle.remove()
