"""The autograd graph as data: nodes, edges with input slots, consumers, leaves, topological order.

Built iteratively from an output's ``grad_fn`` (no recursion, so 20,000-node graphs are fine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Node = Any  # torch.autograd.graph.Node (C++ nodes are not subclasses of a public Python type)
Edge = tuple[Node, int]  # (producer node, output number)


def node_type(node: Node) -> str:
    """The node's type name as the reports use it, e.g. ``'AddmmBackward0'``, ``'AccumulateGrad'``."""
    return type(node).__name__


def call_backward(node: Node, grads) -> tuple[torch.Tensor | None, ...]:
    """A built-in node's backward applied to ``grads`` (one per output), without building a graph."""
    with torch.no_grad():
        result = node(*grads)
    return result if isinstance(result, tuple) else (result,)


def output_shapes(node: Node) -> list[torch.Size]:
    """Shapes of the node's forward outputs (one per output number)."""
    return [torch.Size(meta.shape) for meta in node._input_metadata]


@dataclass
class Graph:
    """Every node reachable from ``root``.

    ``order`` is topological with consumers before producers (the order of a relevance sweep);
    ``edges[node]`` lists ``(producer, output_nr)`` per input slot (``(None, 0)`` for operands that are
    not in the graph); ``consumers[node]`` lists ``(consumer, slot, output_nr)``.
    """

    root: Node
    order: list[Node]
    edges: dict[Node, tuple[Edge, ...]]
    consumers: dict[Node, list[tuple[Node, int, int]]] = field(default_factory=dict)

    @classmethod
    def build(cls, root: Node) -> Graph:
        edges: dict[Node, tuple[Edge, ...]] = {}
        stack = [root]
        while stack:
            node = stack.pop()
            if node in edges:
                continue
            node_edges = tuple((child, nr) for child, nr in node.next_functions)
            edges[node] = node_edges
            stack.extend(child for child, _ in node_edges if child is not None and child not in edges)
        consumers: dict[Node, list[tuple[Node, int, int]]] = {node: [] for node in edges}
        for node, node_edges in edges.items():
            for slot, (child, nr) in enumerate(node_edges):
                if child is not None:
                    consumers[child].append((node, slot, nr))
        # Kahn's algorithm from the root: a node comes after all of its consumers.
        pending = {node: len(cons) for node, cons in consumers.items()}
        order, ready = [], [root]
        while ready:
            node = ready.pop()
            order.append(node)
            for child, _ in edges[node]:
                if child is None:
                    continue
                pending[child] -= 1
                if pending[child] == 0:
                    ready.append(child)
        return cls(root=root, order=order, edges=edges, consumers=consumers)

    def __len__(self) -> int:
        return len(self.order)

    def leaves(self) -> list[Node]:
        """Nodes without producers (``AccumulateGrad`` of parameters and inputs)."""
        return [node for node in self.order if not any(child is not None for child, _ in self.edges[node])]

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.order:
            counts[node_type(node)] = counts.get(node_type(node), 0) + 1
        return counts
