"""Promise plans: what one graph *structure* needs, worked out once and reused for the next input.

Explaining a model again on a new input builds a graph of the same structure: the same node types
wired the same way. A :class:`Plan` keeps, by node position in the sweep order, the answers that
depend on that structure only: which nodes carry data, which are first layers, each node's rule
settings, for every forward value a rule asked for *where it was found* (a leaf, the producer's
saved result, consumer ``j``'s saved input, or nowhere: replay), and for every promise the chain of
steps that resolved it, bottom-up. The next explanation reads values from those places and runs
those replays in that order directly, with no search and no back-tracking (the paper's "caching
promise structures", section 4.4.1).

A :class:`PlanCache` maps structure keys (node types, wiring, explained inputs, preset, module
paths) to plans; pass one to ``explain(..., plans=cache)`` (``dynlrp.audit`` and repeated calls in
a loop benefit). It holds no tensors and no graph nodes, only positions, so it never keeps a graph
alive; ``maxsize`` plans are kept, least recently used dropped first.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .graph import Graph, node_type

#: a value source: ("leaf",), ("saved", attribute), ("consumer", consumer position, slot) or ("none",)
Source = tuple


@dataclass
class Plan:
    """Structure-only answers for one graph shape, by node position in the sweep order."""

    data: list[bool]
    near: list[bool]
    first: list[bool]
    settings: dict[int, Any] = field(default_factory=dict)
    sources: dict[tuple[int, int], Source] = field(default_factory=dict)
    chains: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)  # value -> steps, bottom-up
    release: dict[int, list[int]] | None = None  # explain(retain_graph=False): when saved tensors are freed
    uses: int = 0


class PlanCache:
    """Plans by structure key (least recently used dropped beyond ``maxsize``)."""

    def __init__(self, maxsize: int = 16) -> None:
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Plan | None:
        plan = self._plans.get(key)
        if plan is None:
            self.misses += 1
            return None
        self._plans.move_to_end(key)
        self.hits += 1
        plan.uses += 1
        return plan

    def put(self, key: tuple, plan: Plan) -> None:
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > self.maxsize:
            self._plans.popitem(last=False)

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()


def structure_key(graph: Graph, index: dict, inputs: tuple, preset: Any, paths: dict) -> tuple:
    """The structure of ``graph`` as a hashable key: node types and wiring by position, plus what
    else the plan depends on (explained inputs by position, the preset, the module paths)."""
    wiring = tuple((node_type(node), tuple((index[c] if c is not None else -1, nr) for c, nr in graph.edges[node]))
                   for node in graph.order)
    path_key = tuple(paths.get(node, "") for node in graph.order) if paths else ()
    return wiring, inputs, repr(preset), path_key
