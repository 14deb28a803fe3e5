"""The rule registry: node type name -> rule, forward replay and saved-tensor map.

A *rule* maps a node's output relevance to input relevance (one per input slot) plus the relevance
it absorbed, by cause. A *replay* recomputes a node's forward outputs from its inputs and saved
tensors (the forward steps of the Promise System). The *saved map* says which ``_saved_*``
attribute holds which input or output value, so that values are read instead of recomputed.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuleInfo:
    """One registered rule: its name, family (module), node types and docstring."""

    name: str
    family: str
    node_types: tuple[str, ...]
    doc: str
    fn: Callable = field(repr=False, compare=False)


@dataclass
class SavedMap:
    """``inputs[slot]`` / ``outputs[k]``: the ``_saved_*`` attribute names holding those values."""

    inputs: dict[int, str] = field(default_factory=dict)
    outputs: dict[int, str] = field(default_factory=dict)


class Registry:
    """Rules, replays and saved maps keyed by autograd node type name."""

    def __init__(self) -> None:
        self.rules: dict[str, RuleInfo] = {}
        self.replays: dict[str, Callable] = {}
        self.saved: dict[str, SavedMap] = {}
        self.sources: set[str] = set()
        self.partial_replays: set[str] = set()

    def rule(self, *node_types: str, source: bool = False) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn(ctx, relevance) -> RuleResult`` for ``node_types``.

        ``source=True`` marks node types whose output depends on the input even though no explained
        tensor is below them in the graph (embedding lookups of token ids).
        """

        def decorate(fn: Callable) -> Callable:
            doc = inspect.cleandoc(fn.__doc__ or "")
            if not doc:
                raise ValueError(f"rule {fn.__name__} needs a docstring with its formula")
            family = fn.__module__.rsplit(".", 1)[-1]
            info = RuleInfo(fn.__name__, family, tuple(node_types), doc, fn)
            for name in node_types:
                self.rules[name] = info
                if source:
                    self.sources.add(name)
            return fn

        return decorate

    def replay(self, *node_types: str, partial: bool = False) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn(ctx) -> tuple[Tensor, ...]`` recomputing a node's outputs.

        ``partial=True``: the replay covers only some forms of the node and raises
        ``MissingValueError`` for the others; ``dynlrp.record()`` then keeps the node's call.
        """

        def decorate(fn: Callable) -> Callable:
            for name in node_types:
                self.replays[name] = fn
                if partial:
                    self.partial_replays.add(name)
            return fn

        return decorate

    def saved_values(self, *node_types: str, inputs: dict[int, str] | None = None,
                     outputs: dict[int, str] | None = None) -> None:
        """Declare which ``_saved_*`` attributes of ``node_types`` hold input / output values."""
        for name in node_types:
            self.saved[name] = SavedMap(dict(inputs or {}), dict(outputs or {}))

    def list_rules(self) -> list[RuleInfo]:
        """Every distinct rule, sorted by family and name."""
        unique = {info.name + info.family: info for info in self.rules.values()}
        return sorted(unique.values(), key=lambda info: (info.family, info.name))


REGISTRY = Registry()
rule = REGISTRY.rule
replay = REGISTRY.replay
saved_values = REGISTRY.saved_values
