"""The Promise System: forward values on graph edges, recovered from what the graph saved.

A rule asks for the value on one of its node's input slots. If the node saved it, that is read.
Otherwise the request is a *promise*: it is resolved from, in order, a leaf's variable, a recorded
value (``dynlrp.record()``), a ``_saved_*`` tensor of the producer (its result) or of any other consumer
of the same edge (its input), or by *replaying* the producer's forward from its own inputs, which
may in turn raise nested promises further down the branch until an *arg node* whose value can be
read. Resolution is iterative and memoised: each edge is resolved at most once per explanation, so
the total extra work is O(nodes + edges) and deep pass-through chains cannot hit the recursion limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import MissingValueError
from .graph import Edge, Graph, Node, call_backward, node_type
from .saved import read_saved, release_saved, signed

if TYPE_CHECKING:
    from .plan import Plan
    from .record import Recording
    from .rules.registry import Registry


#: nodes whose output holds the input's elements in the same order, only in another shape
RESHAPES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})
#: nodes whose output holds exactly the input's elements, rearranged: the backward (``J^T``) inverts them
REARRANGES = RESHAPES | {"TransposeBackward0", "TransposeBackward1", "PermuteBackward0", "TBackward0"}
#: how many levels of routing consumers :meth:`ValueStore._routed` gathers a value back through
ROUTE_DEPTH = 8
#: the longest run of shape nodes between a node whose saved tensor the store reads and the edge it
#: reads it for: the routing levels, then a consumer's saved input read across a reshape
SHAPE_REACH = ROUTE_DEPTH + 2


#: one-output shape nodes whose output holds each input element exactly once (a bijection)
BIJECTIONS = REARRANGES | {"UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
                           "CloneBackward0", "AliasBackward0"}


#: scalar maps ``y = c * x`` that :meth:`ValueStore._routed` reads a value back through where ``c``
#: allows it (:func:`_exact_scale`)
SCALES = frozenset({"NegBackward0", "MulBackward1", "DivBackward1"})


def _exact_scale(node: Node) -> float | None:
    """``c`` if ``node`` is ``y = c * x`` with a constant scalar from which ``x = y / c`` is exact:
    ``neg`` (``c = -1``), ``mul`` by ``+-2^k`` or ``div`` by ``+-2^-k`` for ``k >= 0`` (a product with
    ``|c| >= 1`` a power of two loses no bits unless it overflows, which a finite ``y`` rules out; e.g.
    SDPA's reference path scales q and k by ``sqrt(scale)``, 1.0 for T5). Else ``None``."""
    name = node_type(node)
    if name == "NegBackward0":
        return -1.0
    if name not in SCALES:
        return None
    other = read_saved(node, "_saved_other")
    if isinstance(other, bool) or not isinstance(other, (int, float)) or other == 0 or not math.isfinite(other):
        return None
    scale = float(other) if name == "MulBackward1" else 1.0 / float(other)
    return scale if abs(scale) >= 1.0 and math.frexp(scale)[0] in (0.5, -0.5) else None


def _selects(consumers: list, shape: torch.Size) -> tuple[int, list[int]] | None:
    """``(dim, order)`` if the consumers are ``select(dim, i)`` for every ``i`` of that dim once
    (``order``: consumer positions by index, e.g. a packed q/k/v projection), else ``None``."""
    if not all(node_type(c) == "SelectBackward0" for c, _ in consumers):
        return None
    dims = {signed(c._saved_dim) % len(shape) for c, _ in consumers}
    if len(dims) != 1:
        return None
    dim = dims.pop()
    size = shape[dim]
    index = {signed(c._saved_index) % size: k
             for k, (c, _) in enumerate(consumers)}
    if len(index) != len(consumers) or len(index) != size:
        return None
    return dim, [index[i] for i in range(size)]


class NeedValue(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a replay when an input value is not resolved yet (internal control flow)."""

    def __init__(self, edge: Edge):
        super().__init__(edge)
        self.edge = edge


@dataclass
class PromiseStats:
    """The paper's Table 4 quantities for one explanation.

    ``promises``: input values that rules needed and their node had not saved. ``generating_nodes``:
    nodes that issued at least one promise. ``internal_nodes``: nodes whose output was recomputed by
    a forward replay to keep a promise. ``delta``: sum over promises of the number of replayed forward
    steps between the requesting node and the arg node(s) that held the value. ``rho``:
    generating nodes / all nodes of the graph.
    """

    promises: int = 0
    generating_nodes: int = 0
    internal_nodes: int = 0
    delta: int = 0
    total_nodes: int = 0
    derived: int = 0  # values derived from held ones instead of replayed (ValueStore.derive)

    @property
    def rho(self) -> float:
        return self.generating_nodes / self.total_nodes if self.total_nodes else 0.0


class ValueStore:
    """Forward values of a graph's edges, resolved on demand."""

    def __init__(self, graph: Graph, registry: Registry, recording: Recording | None = None,
                 plan: Plan | None = None, index: dict[Node, int] | None = None):
        self.graph = graph
        self.registry = registry
        self.recording = recording
        self.plan = plan  # where each value was found last time (dynlrp.plan), by node position
        self.index = index
        self.memo: dict[Edge, torch.Tensor] = {}
        self.depth: dict[Edge, int] = {}
        self.stats = PromiseStats(total_nodes=len(graph))
        self._generating: set[Node] = set()
        self._replayed: set[Node] = set()
        self._passed: set[Node] = set()  # nodes the sweep has passed (release): their values are not kept
        self._derived: set[Edge] = set()  # memo entries entered by derive (passed back through reshapes)
        self._frees: dict[int, list[int]] = {}  # free_graph: position -> nodes whose saved tensors go then
        self._kept: dict[Node, list[Edge]] = {}  # keep_until: node -> memoised values dropped when it is passed
        self._keeping: set[Edge] = set()  # the edges in _kept

    # -- public -------------------------------------------------------------------------------
    def input_value(self, node: Node, slot: int) -> torch.Tensor:
        """The forward value on ``node``'s input ``slot`` (a promise if ``node`` did not save it)."""
        own = self._own_saved_input(node, slot)
        if own is not None:
            return own
        child, nr = self.graph.edges[node][slot]
        if child is None:
            return self._constant(node, slot)
        self.stats.promises += 1
        if node not in self._generating:
            self._generating.add(node)
            self.stats.generating_nodes += 1
        value = self.resolve((child, nr))
        self.stats.delta += self.depth[(child, nr)]
        return value

    def know(self, edge: Edge, value: torch.Tensor) -> None:
        """Enter a value that is at hand without the graph (the explained output itself)."""
        self.memo[edge], self.depth[edge] = value.detach(), 0

    def held(self, edge: Edge, depth: int = 0) -> torch.Tensor | None:
        """The value of ``edge`` if it can be read without replaying anything (also gathered back
        from routing consumers, :meth:`_routed`), else ``None``."""
        if edge not in self.memo:
            direct = self._direct(edge)
            if direct is None:
                direct = self._routed(edge, depth)
            if direct is None or edge[0] in self._passed:  # read again if asked again: not kept
                return direct
            self.memo[edge], self.depth[edge] = direct, 0
        return self.memo[edge]

    def _routed(self, edge: Edge, depth: int) -> torch.Tensor | None:
        """``x`` gathered from its consumers when all of them only move elements (shape ops: split,
        view, transpose, select, ...) and their outputs are held: ``x = sum_i J_i^T y_i``, exact
        when every element is taken once (``sum_i J_i^T 1 = 1``, checked), e.g. a fused q/k/v
        projection split into the three tensors attention saved. Known layouts need no check: one
        rearranging consumer (:data:`BIJECTIONS`, ``x = J^-1 y``), or ``select(dim, i)`` for every
        ``i`` once (``x`` is the stack of the selections). One consumer that scales by a constant it
        inverts exactly (:func:`_exact_scale`) gives ``x = y / c``."""
        node, nr = edge
        consumers = [(c, slot) for c, slot, out_nr in self.graph.consumers.get(node, ()) if out_nr == nr]
        if depth <= ROUTE_DEPTH and len(consumers) == 1:
            scale = _exact_scale(consumers[0][0])
            if scale is not None:
                return self._unscaled(edge, consumers[0][0], scale, depth)
        if depth > ROUTE_DEPTH or not consumers or any(
                self.registry.rules.get(node_type(c)) is None or self.registry.rules[node_type(c)].family != "shape"
                or not callable(c) for c, _ in consumers):
            return None
        meta = node._input_metadata[nr]
        outputs_meta = [m for c, _ in consumers for m in c._input_metadata]
        if (sum(math.prod(m.shape) for m in outputs_meta) != math.prod(meta.shape)  # copies, or only a part
                or any(m.dtype != meta.dtype for m in outputs_meta)):  # a cast rounds: not exact
            return None
        outputs = []
        for consumer, _ in consumers:
            values = [self.held((consumer, j), depth + 1) for j in range(len(consumer._input_metadata))]
            if any(v is None for v in values):
                return None
            outputs.append(values)
        layout = _selects(consumers, meta.shape)
        if layout is not None:  # x[i] along one dim, every i once: x is their stack
            dim, order = layout
            return torch.stack([outputs[k][0] for k in order], dim)
        if len(consumers) == 1 and len(outputs[0]) == 1 and node_type(consumers[0][0]) in BIJECTIONS:
            part = call_backward(consumers[0][0], outputs[0])[consumers[0][1]]  # a rearrangement: J^T = J^-1
            return None if part is None else part.reshape(meta.shape)
        gathered = cover = None
        for (consumer, slot), values in zip(consumers, outputs):
            part = call_backward(consumer, values)[slot]
            ones = call_backward(consumer, [torch.ones_like(v) for v in values])[slot]
            if part is None or ones is None:
                return None
            gathered = part if gathered is None else gathered + part
            cover = ones if cover is None else cover + ones
        if float(cover.sub(1).abs_().sum()) != 0.0:
            return None
        return gathered.reshape(node._input_metadata[nr].shape)

    def _unscaled(self, edge: Edge, consumer: Node, scale: float, depth: int) -> torch.Tensor | None:
        """``x = y / c`` from the held output ``y`` of its one consumer ``y = c * x`` (:func:`_exact_scale`)."""
        meta = edge[0]._input_metadata[edge[1]]
        if consumer._input_metadata[0].dtype != meta.dtype:  # a cast rounds: not exact
            return None
        y = self.held((consumer, 0), depth + 1)
        if y is None or tuple(y.shape) != tuple(meta.shape):
            return None
        if abs(scale) > 1.0 and not bool(torch.isfinite(y).all()):  # the forward product overflowed
            return None
        return y if scale == 1.0 else -y if scale == -1.0 else y / scale

    def held_input(self, node: Node, slot: int) -> torch.Tensor | None:
        """The value on ``node``'s input ``slot`` if it can be read without replaying anything."""
        own = self._own_saved_input(node, slot)
        if own is not None:
            return own
        child, nr = self.graph.edges[node][slot]
        if child is None:
            return self.recording.operand(node, slot) if self.recording is not None else None
        return self.held((child, nr))

    def derive(self, edge: Edge, value: torch.Tensor) -> None:
        """Enter a value a rule derived from held ones (e.g. an addend as ``z - other``), exact up
        to the rounding of that derivation, so that its producer does not recompute it."""
        self.memo[edge], self.depth[edge] = value.detach(), 0
        self._derived.add(edge)
        self.stats.derived += 1

    def forget(self, edge: Edge) -> None:
        """Drop a derived value again (its producer then recomputes it exactly)."""
        if self.memo.pop(edge, None) is not None:
            self.depth.pop(edge, None)
            self._derived.discard(edge)
            self.stats.derived -= 1

    def keep_until(self, edge: Edge, node: Node) -> None:
        """Keep the memoised value of ``edge`` (if there is one) past its node, until the sweep has
        passed ``node``: a producer whose rule reads it (a convolution with the batch norm after it
        merged reads that batch norm's output, which a residual sum's rule may have replayed)."""
        if edge in self.memo:
            self._kept.setdefault(node, []).append(edge)
            self._keeping.add(edge)

    def release(self, node: Node) -> None:
        """Drop the memoised outputs of ``node`` once the sweep has passed it, and keep none of them
        from now on. Rules at later nodes (its producers) never ask for them, except where a rule
        said so (:meth:`keep_until`: dropped once that producer is passed); a gathered read
        (:meth:`_routed`) that still does reads them from the graph again. Only values ahead of the
        sweep stay alive (peak memory)."""
        self._passed.add(node)
        for edge in self._kept.pop(node, ()):
            self._keeping.discard(edge)
            self._derived.discard(edge)
            self.memo.pop(edge, None)
            self.depth.pop(edge, None)
        if self.memo:
            for nr in range(len(node._input_metadata)):
                if (node, nr) in self._keeping:
                    continue
                value = self.memo.pop((node, nr), None)
                if value is not None:
                    self.depth.pop((node, nr), None)
                    if (node, nr) in self._derived:
                        self._derived.discard((node, nr))
                        self._pass_back(node, value)
        if self._frees:
            order = self.graph.order
            for pos in self._frees.pop(self.index[node], ()):
                release_saved(order[pos])

    def _pass_back(self, node: Node, value: torch.Tensor) -> None:
        """A derived output of a reshape or transpose the sweep passes gives its input's value (its
        backward applied to it, exact for a rearrangement): kept for the producer (e.g. a linear
        layer's ``x W^T + b`` before the view to ``B x T x D``, derived from a residual sum), which
        would otherwise recompute it."""
        if node_type(node) not in REARRANGES or len(node._input_metadata) != 1:
            return
        edge = self.graph.edges[node][0]
        child = edge[0]
        if child is None or edge in self.memo or child in self._passed:
            return
        meta = child._input_metadata[edge[1]]
        if meta.dtype == value.dtype and math.prod(meta.shape) == value.numel():
            back = call_backward(node, [value])[0]
            if back is not None and tuple(back.shape) == tuple(meta.shape):
                self.memo[edge], self.depth[edge] = back, 0
                self._derived.add(edge)

    def free_graph(self, schedule: dict[int, list[int]]) -> None:
        """From now on :meth:`release` also frees the graph's saved tensors: at each sweep position,
        those of the nodes ``schedule`` lists for it (:func:`dynlrp.saved.release_schedule`)."""
        self._frees = dict(schedule)

    def output_value(self, node: Node, nr: int = 0) -> torch.Tensor:
        """The forward value of ``node``'s output ``nr``."""
        return self.resolve((node, nr))

    def lookup_input(self, node: Node, slot: int) -> torch.Tensor:
        """Inside a replay: the input value if known now, else raise :class:`NeedValue`."""
        own = self._own_saved_input(node, slot)
        if own is not None:
            return own
        edge = self.graph.edges[node][slot]
        if edge[0] is None:
            return self._constant(node, slot)
        if edge in self.memo:
            return self.memo[edge]
        raise NeedValue(edge)

    # -- resolution -----------------------------------------------------------------------------
    def resolve(self, edge: Edge) -> torch.Tensor:
        if edge in self.memo:
            return self.memo[edge]
        key = None if self.plan is None else (self.index[edge[0]], edge[1])
        chain = None if key is None else self.plan.chains.get(key)
        if chain is not None:  # the steps that resolved this value last time, bottom-up: no search
            order = self.graph.order
            for pos, nr in chain:
                step = (order[pos], nr)
                if step not in self.memo and self._step(step) is not None:
                    break  # this graph differs after all: resolve the usual way below
            if edge in self.memo:
                return self.memo[edge]
        done: list[Edge] = []
        stack = [edge]
        while stack:
            top = stack[-1]
            if top in self.memo:
                stack.pop()
                continue
            need = self._step(top)
            if need is not None:
                stack.append(need)
                continue
            stack.pop()
            done.append(top)
        if key is not None:
            self.plan.chains[key] = [(self.index[node], nr) for node, nr in done]
        return self.memo[edge]

    def _step(self, top: Edge) -> Edge | None:
        """Resolve ``top`` from what is known now: a direct read or one replay; returns the edge it
        still needs (a :class:`NeedValue`) instead, or ``None`` when ``top`` is resolved."""
        from .context import NodeContext

        direct = self._direct(top)
        if direct is not None:
            self.memo[top], self.depth[top] = direct, 0
            return None
        node = top[0]
        replay = self.registry.replays.get(node_type(node))
        call = self.recording.call(node) if self.recording is not None else None
        if replay is None and call is None:
            raise MissingValueError(
                f"the forward output of {node_type(node)} is needed by a rule, but no node saved it"
                f" and {node_type(node)} has no forward replay; run the forward inside"
                " dynlrp.record(), or register a replay for it with dynlrp.rules.replay(...)",
                node=node, what=f"output {top[1]}")
        try:
            try:
                if replay is None:
                    raise MissingValueError("no replay")
                outputs = replay(NodeContext(node, self, replaying=True))
            except MissingValueError:
                if call is None:
                    raise
                outputs = call.replay(lambda slot, node=node: self.lookup_input(node, slot))
        except NeedValue as need:
            return need.edge
        inner = [self.depth.get(e, 0) for e in self.graph.edges[node] if e[0] is not None and e in self.depth]
        depth = 1 + max(inner, default=0)
        for nr, value in enumerate(outputs):
            if value is not None:
                self.memo[(node, nr)], self.depth[(node, nr)] = value.detach(), depth
        if node not in self._replayed:
            self._replayed.add(node)
            self.stats.internal_nodes += 1
        if top not in self.memo:
            raise MissingValueError(f"the replay of {node_type(node)} did not produce output {top[1]}")
        return None

    def _direct(self, edge: Edge) -> torch.Tensor | None:
        """A value readable without computation: leaf variable, recording, saved result or input."""
        node, nr = edge
        if hasattr(node, "variable"):
            return node.variable.detach()
        if self.recording is not None:
            recorded = self.recording.output(node, nr)
            if recorded is not None:
                return recorded
        if self.plan is None:
            return self._search(node, nr)[0]
        key = (self.index[node], nr)
        source = self.plan.sources.get(key)
        if source is not None:
            if source[0] == "none":
                return None
            value = self._read(source, node, nr)
            if value is not None:
                return value
        value, self.plan.sources[key] = self._search(node, nr)
        return value

    def _search(self, node: Node, nr: int) -> tuple[torch.Tensor | None, tuple]:
        """The saved result of the producer, else a consumer's saved input; with its source."""
        saved = self.registry.saved.get(node_type(node))
        if saved is not None and nr in saved.outputs:
            value = read_saved(node, saved.outputs[nr])
            if isinstance(value, torch.Tensor):
                return value.detach(), ("saved", saved.outputs[nr])
        consumers = [(c, slot) for c, slot, out_nr in self.graph.consumers.get(node, ()) if out_nr == nr]
        for consumer, slot in consumers:
            value = self._own_saved_input(consumer, slot)
            if value is not None:
                return value, ("consumer", self._position(consumer), slot)
        for consumer, _ in consumers:  # through a reshape: the same elements in the same order
            if node_type(consumer) in RESHAPES:
                for after, slot, _ in self.graph.consumers.get(consumer, ()):
                    value = self._own_saved_input(after, slot)
                    if value is not None:
                        return value.reshape(node._input_metadata[nr].shape), ("reshaped", self._position(after), slot)
        return None, ("none",)

    def _position(self, node: Node) -> int | None:
        return None if self.index is None else self.index[node]

    def _read(self, source: tuple, node: Node, nr: int) -> torch.Tensor | None:
        if source[0] == "saved":
            value = read_saved(node, source[1])
            return value.detach() if isinstance(value, torch.Tensor) else None
        value = self._own_saved_input(self.graph.order[source[1]], source[2])
        if value is not None and source[0] == "reshaped":
            value = value.reshape(node._input_metadata[nr].shape)
        return value

    def _own_saved_input(self, node: Node, slot: int) -> torch.Tensor | None:
        saved = self.registry.saved.get(node_type(node))
        if saved is None or slot not in saved.inputs:
            return None
        value = read_saved(node, saved.inputs[slot])
        return value.detach() if isinstance(value, torch.Tensor) else None

    def _constant(self, node: Node, slot: int) -> torch.Tensor:
        if self.recording is not None:
            value = self.recording.operand(node, slot)
            if value is not None:
                return value
            why = self.recording.unmapped(node)
            if why is not None:
                raise MissingValueError(
                    f"{node_type(node)} input slot {slot} is an operand outside the autograd graph; record() saw"
                    f" the call but could not map its arguments to the node's inputs ({why})",
                    node=node, what=f"input {slot}")
        raise MissingValueError(
            f"{node_type(node)} input slot {slot} is an operand outside the autograd graph (a frozen"
            " parameter, buffer, mask or constant tensor) and the node did not save it; rules that can derive"
            " it from the node's output do so, which needs the output kept somewhere: run the forward inside"
            " `with dynlrp.record():`", node=node, what=f"input {slot}")

    def operand(self, node: Node, slot: int) -> torch.Tensor | None:
        """The value on ``slot`` if the graph or the recording holds it (no replay), else ``None``."""
        if self.graph.edges[node][slot][0] is not None:
            return self.input_value(node, slot)
        own = self._own_saved_input(node, slot)
        if own is not None:
            return own
        return self.recording.operand(node, slot) if self.recording is not None else None

    def finish(self) -> PromiseStats:
        return self.stats


def as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)
