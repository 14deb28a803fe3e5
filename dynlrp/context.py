"""What a rule or replay sees of one node: saved tensors, input/output values, roles, settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import MissingValueError
from .graph import Node, call_backward, node_type, output_shapes
from .saved import read_saved, signed

if TYPE_CHECKING:
    from .analysis import Analysis
    from .presets import NodeSettings
    from .values import ValueStore


@dataclass
class RuleResult:
    """Relevance per input slot (``None`` where nothing flows) and absorbed relevance by cause.

    ``absorbed`` values are summed relevance (tensors or floats) computed from the rule's own terms,
    e.g. ``{"bias": sum_j b_j R_j / s_j, "stabiliser": sum_j (s_j - z_j) R_j / s_j}``.
    ``sources`` is relevance that ends here as input relevance (an input leaf, token relevance).
    """

    inputs: tuple[torch.Tensor | None, ...]
    absorbed: dict[str, Any] = field(default_factory=dict)
    sources: torch.Tensor | None = None


def _zero_where_zero(relevance: torch.Tensor, result: torch.Tensor) -> bool:
    """Whether ``relevance`` is zero wherever the non-negative ``result`` (a ReLU's) is zero."""
    from .rules.common import zero_where_zero  # the rule modules import this one

    return zero_where_zero(relevance, result)


class NodeContext:
    """A view of one node for rules and replays.

    ``input(slot)`` and ``output(k)`` give forward values (through the Promise System when the node
    did not save them); ``is_data(slot)`` says whether the operand depends on an explained input;
    ``settings`` carries the preset's choices for this node; ``vjp`` calls the node's own backward.
    """

    def __init__(self, node: Node, store: ValueStore, settings: NodeSettings | None = None,
                 analysis: Analysis | None = None, replaying: bool = False, sweep: Any = None):
        self.node = node
        self.sweep = sweep  # the engine's sweep in progress (preset, paths, strictness); None in replays
        self.type = node_type(node)
        self.store = store
        self.settings = settings
        self.analysis = analysis
        self._replaying = replaying

    @property
    def edges(self):
        return self.store.graph.edges[self.node]

    @property
    def num_inputs(self) -> int:
        return len(self.edges)

    @property
    def output_shapes(self) -> list[torch.Size]:
        return output_shapes(self.node)

    def saved(self, name: str) -> Any:
        """The node's ``_saved_<name>`` attribute (e.g. ``ctx.saved("dim")``).

        Negative dims that autograd hands out as unsigned 64-bit integers are turned back into
        negative Python ints.
        """
        return signed(read_saved(self.node, "_saved_" + name))

    def input(self, slot: int) -> torch.Tensor:
        if self._replaying:
            return self.store.lookup_input(self.node, slot)
        return self.store.input_value(self.node, slot)

    def output(self, nr: int = 0) -> torch.Tensor:
        if self._replaying:
            raise MissingValueError(
                f"{self.type} needs its own forward output to recover an operand outside the graph (a"
                " frozen bias or constant), and no node kept that output; run the forward inside"
                " `with dynlrp.record():`", node=self.node, what=f"output {nr}")
        return self.store.output_value(self.node, nr)

    def held_output(self, nr: int = 0) -> torch.Tensor | None:
        """The node's output ``nr`` if it is at hand without recomputing it (saved by a node,
        recorded, or already resolved), else ``None``."""
        return self.store.held((self.node, nr))

    def neighbour(self, node: Node) -> NodeContext:
        """A context for another node of the same sweep (same values, settings and analysis)."""
        return NodeContext(node, self.store, self.settings, self.analysis, sweep=self.sweep)

    def output_on_support(self, relevance: torch.Tensor, nr: int = 0) -> torch.Tensor | None:
        """A tensor equal to the output ``nr`` wherever ``relevance`` is non-zero, else ``None``.

        The held output if there is one; otherwise a following ReLU's saved result ``max(z, 0)``
        when ``relevance`` is zero wherever that result is (checked), i.e. where it may differ from
        ``z``. For the modified-z rules that is enough: their terms carry the factor ``R / s(z)``,
        which is zero off the support whatever ``z`` is."""
        held = self.held_output(nr)
        if held is not None:
            return held
        for consumer, _, out_nr in self.store.graph.consumers.get(self.node, ()):
            if out_nr == nr and node_type(consumer) == "ReluBackward0":
                result = read_saved(consumer, "_saved_result")
                if (isinstance(result, torch.Tensor) and result.shape == relevance.shape
                        and _zero_where_zero(relevance, result.detach())):
                    return result.detach()
        return None

    def operand(self, slot: int) -> torch.Tensor | None:
        """The operand in ``slot`` if the graph or a ``record()`` holds it, else ``None`` (a rule may
        then derive it, e.g. a frozen bias as ``z - W x``)."""
        return self.store.operand(self.node, slot)

    def has_input(self, slot: int) -> bool:
        """Whether the slot's operand is in the graph (``False`` for ``(None, 0)`` edges)."""
        return self.edges[slot][0] is not None

    def input_shape(self, slot: int) -> torch.Size:
        """Shape of the operand in ``slot`` (from the graph's metadata, no value needed)."""
        child, nr = self.edges[slot]
        return torch.Size(child._input_metadata[nr].shape)

    def is_data(self, slot: int) -> bool:
        """Whether the operand in ``slot`` depends on an explained input (else parameter/constant)."""
        return self.analysis is not None and self.analysis.is_data(self.edges[slot])

    def constant_factor(self, slot: int, other: int) -> bool:
        """Whether the data operand in ``slot`` acts as a constant factor for the one in ``other``:
        a normaliser statistic, a gate computed from ``other``'s own tensor, or (with the preset's
        ``attention="cp"``) attention weights. See :mod:`dynlrp.analysis`."""
        a, mine, theirs = self.analysis, self.edges[slot], self.edges[other]
        if a.is_statistic(mine) and not a.is_statistic(theirs):
            return True
        if a.is_gate_of(mine, theirs):
            return True
        return self.settings.attention == "cp" and a.is_attention_weights(mine) and not a.is_attention_weights(theirs)

    def vjp(self, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """The node's own backward applied to ``grads`` (one per output), without building a graph."""
        if not callable(self.node):  # a custom autograd.Function's node: see _function_vjp
            return self._function_vjp(grads)
        return call_backward(self.node, grads)

    def _function_vjp(self, grads) -> tuple[torch.Tensor | None, ...]:
        """``Function.backward`` called directly: grads for outputs without one are materialised as
        zeros (as autograd does), and its results, one per ``forward`` argument, are mapped to the
        input slots: the arguments that required grad (``needs_input_grad``) are, in order, the slots
        whose edge is in the graph; the other slots get ``None``."""
        metas = self.node._input_metadata
        grads = tuple(torch.zeros(tuple(m.shape), dtype=m.dtype, device=m.device) if g is None else g
                      for g, m in zip(grads, metas))
        with torch.no_grad():
            result = self.node.apply(*grads)
        result = result if isinstance(result, tuple) else (result,)
        needs = tuple(self.node.needs_input_grad)
        if len(result) != len(needs):
            return result
        out: list[torch.Tensor | None] = [None] * self.num_inputs
        for slot, arg in zip((s for s, (child, _) in enumerate(self.edges) if child is not None),
                             (i for i, need in enumerate(needs) if need)):
            out[slot] = result[arg]
        return tuple(out)
