"""Structural questions a product rule asks about its operands, answered from the graph alone.

* **Statistics** (normalisers): an operand computed from a *reduction* of activations through
  elementwise steps only, e.g. ``rsqrt(mean(x^2) + eps)`` (RMSNorm written by hand),
  ``1 / sqrt(var + eps)``, ``x.sum(-1)`` of a hand-written softmax. The LN-rule treats such factors
  as constants, so relevance never leaks into the statistics path.
* **Gates of the other factor**: ``x * sigmoid(x)``, GPT-2's ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))``:
  one factor is an elementwise function of the same tensor the other factor scales. Such a product
  is an elementwise activation of that tensor and gets the identity rule (all to the scaled factor),
  as AttnLRP treats activations. A product of two *different* tensors (SwiGLU, attention) is not
  a gate and gets the uniform rule.
* **Attention weights**: an operand that is a softmax output (through shape ops), which CP-LRP
  treats as constant.

Answers are memoised per explanation; walks are iterative.
"""
from __future__ import annotations

from collections.abc import Callable

from .graph import Edge, Graph, Node, node_type

REDUCTIONS = frozenset({
    "VarBackward0", "StdBackward0", "VarMeanBackward0", "StdMeanBackward0", "LinalgVectorNormBackward0",
    "NormBackward0", "NormBackward1", "AmaxBackward0", "MaxBackward1", "LogsumexpBackward0",
})
# a sum or mean is a statistic only of a power, magnitude or exponential (x^2, |x|, exp x, x * x);
# a sum of a product of two tensors (einsum, a scan's contraction) is not a normaliser
MOMENTS = frozenset({"MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1"})
MOMENT_INPUTS = frozenset({"PowBackward0", "AbsBackward0", "ExpBackward0"})
ELEMENTWISE = frozenset({
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward0", "RsubBackward1",
    "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "NegBackward0", "PowBackward0",
    "PowBackward1", "SqrtBackward0", "RsqrtBackward0", "ReciprocalBackward0", "ExpBackward0", "LogBackward0",
    "TanhBackward0", "SigmoidBackward0", "ErfBackward0", "AbsBackward0", "ClampBackward1", "ClampMinBackward0",
    "ClampMaxBackward0", "ReluBackward0", "GeluBackward0", "SiluBackward0", "SoftplusBackward0",
    "CloneBackward0", "ToCopyBackward0", "AliasBackward0",
})
# broadcasting a statistic back over the reduced dims keeps it a statistic
STAT_SHAPES = frozenset({"ExpandBackward0", "ViewBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
                         "SqueezeBackward1", "ReshapeAliasBackward0", "UnsafeViewBackward0"})
ATTENTION_PATH = frozenset({"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "ExpandBackward0",
                            "CloneBackward0", "TransposeBackward0", "PermuteBackward0", "ToCopyBackward0",
                            "MulBackward0", "NativeDropoutBackward0", "UnsqueezeBackward0", "SqueezeBackward1"})
SOFTMAXES = frozenset({"SoftmaxBackward0", "SafeSoftmaxBackward0"})
SCALERS = frozenset({"MulBackward0", "DivBackward0", "MulBackward1", "DivBackward1", "NegBackward0",
                     "CloneBackward0", "ToCopyBackward0", "AliasBackward0"})


class Analysis:
    """Memoised structural answers for one graph; ``is_data(edge)`` says which edges carry data."""

    def __init__(self, graph: Graph, is_data: Callable[[Edge], bool]):
        self.graph = graph
        self.is_data = is_data
        self._statistic: dict[Node, bool] = {}

    def _data_children(self, node: Node) -> list[Edge]:
        return [edge for edge in self.graph.edges[node] if self.is_data(edge)]

    def is_statistic(self, edge: Edge) -> bool:
        """Whether the operand on ``edge`` is a normaliser (a reduction, then elementwise steps)."""
        root = edge[0]
        if root is None or not self.is_data(edge):
            return False
        stack = [root]
        while stack:
            node = stack[-1]
            if node in self._statistic:
                stack.pop()
                continue
            name = node_type(node)
            if name in REDUCTIONS or (name in MOMENTS and self._is_moment(node)):
                self._statistic[node] = True
                stack.pop()
                continue
            if name not in ELEMENTWISE and name not in STAT_SHAPES:
                self._statistic[node] = False
                stack.pop()
                continue
            children = [child for child, _ in self._data_children(node)]
            todo = [child for child in children if child not in self._statistic]
            if todo:
                stack.extend(todo)
                continue
            self._statistic[node] = bool(children) and all(self._statistic[c] for c in children)
            stack.pop()
        return self._statistic[root]

    def _is_moment(self, node: Node) -> bool:
        data = self._data_children(node)
        if len(data) != 1:
            return False
        inner = data[0][0]
        while node_type(inner) in STAT_SHAPES and len(self._data_children(inner)) == 1:
            inner = self._data_children(inner)[0][0]
        if node_type(inner) in MOMENT_INPUTS:
            return True
        factors = self._data_children(inner)
        return node_type(inner) == "MulBackward0" and len(factors) == 2 and factors[0] == factors[1]

    def scaled_source(self, edge: Edge) -> Edge:
        """Follow ``edge`` down through scalings by constants (``0.5 * x``, ``x / c``, clones)."""
        while edge[0] is not None and node_type(edge[0]) in SCALERS:
            data = self._data_children(edge[0])
            if len(data) != 1:
                break
            edge = data[0]
        return edge

    def is_gate_of(self, gate: Edge, other: Edge) -> bool:
        """Whether ``gate`` is an elementwise function of the tensor that ``other`` scales."""
        source = self.scaled_source(other)
        if source == gate or gate[0] is None:
            return False
        frontier: set[Edge] = set()
        stack, seen = [gate], set()
        while stack:
            edge = stack.pop()
            if edge in seen:
                continue
            seen.add(edge)
            if edge == source:
                frontier.add(edge)
                continue
            node = edge[0]
            if node_type(node) not in ELEMENTWISE:
                return False
            children = self._data_children(node)
            if not children:
                return False
            stack.extend(children)
        return frontier == {source}

    def is_attention_weights(self, edge: Edge) -> bool:
        """Whether the operand on ``edge`` is a softmax output (through shape ops / scalings)."""
        node = edge[0]
        while node is not None:
            name = node_type(node)
            if name in SOFTMAXES:
                return True
            if name not in ATTENTION_PATH:
                return False
            data = self._data_children(node)
            if len(data) != 1:
                return False
            node = data[0][0]
        return False
