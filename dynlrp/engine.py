"""``explain``: one reverse-topological relevance sweep over the autograd graph.

Each node with relevance is visited exactly once, after all of its consumers; its rule maps the
relevance of its outputs to its input slots. Relevance sent to an operand outside the graph is
booked as absorbed ``constant``; to an operand that depends on no explained input (a parameter
subgraph), as absorbed ``parameter``. Forward values come from the Promise System
(:mod:`dynlrp.values`). By default the graph is only read: ``out.backward()`` still works afterwards;
with ``retain_graph=False`` each node's saved tensors are freed as soon as no rule can read them
any more, as autograd's own backward does (peak memory).
"""
from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .analysis import Analysis
from .context import NodeContext, RuleResult
from .errors import (
    DynLRPError,
    InputError,
    MissingRuleError,
    MissingRuleWarning,
    MissingValue,
    MissingValueError,
    NoGraphError,
    RuleError,
    TargetError,
    TrainModeWarning,
)
from .explanation import Conservation, Explanation, NodeRecord, TokenRelevance
from .graph import Edge, Graph, Node, node_type
from .plan import Plan, PlanCache, structure_key
from .presets import Preset, resolve
from .record import Recording, find_recording
from .rules import REGISTRY
from .rules.common import reduce_to_shape, total, totals, wide_total
from .saved import release_schedule
from .values import SCALES, SHAPE_REACH, ValueStore

LINEAR_TYPES = frozenset({"AddmmBackward0", "MmBackward0", "BmmBackward0", "ConvolutionBackward0"})
FALLBACK = "fallback:gradient"


class _Ledger:
    """The scalars of the conservation ledger: kept as 0-dim tensors (or floats) while the sweep
    runs and read in one batch at the end (one stack, one device sync), then summed per node in
    Python floats (float64). Each scalar is a sum in its tensor's precision (:func:`total`)."""

    def __init__(self) -> None:
        self._entries: list[Any] = []

    def add(self, value: Any) -> int:
        self._entries.append(value)
        return len(self._entries) - 1

    def sums(self, r: torch.Tensor) -> tuple[int, int]:
        """Entries for ``sum r`` and ``sum |r|`` (the flow: the scale of rounding errors)."""
        value, flow = totals(r)
        return self.add(value), self.add(flow)

    def values(self) -> list[float]:
        out = [0.0 if isinstance(v, torch.Tensor) else float(v) for v in self._entries]
        groups: dict[tuple, list[int]] = {}  # 0-dim tensors of one device and dtype are stacked as they are
        for i, v in enumerate(self._entries):
            if isinstance(v, torch.Tensor):
                groups.setdefault((v.device, v.dtype, v.dim() == 0), []).append(i)
        for (_, _, scalar), entries in groups.items():  # one read per group (a device sync each)
            values = [self._entries[i] for i in entries]
            if not scalar:
                values = [v.reshape(()) for v in values]
            read = torch.stack(values).to(torch.float64).tolist()
            for i, v in zip(entries, read):
                out[i] = v
        return out


def _narrowest(*groups) -> str:
    """The least precise floating dtype among the relevance tensors in ``groups`` (``""``: none)."""
    found = {t.dtype for group in groups if group is not None
             for t in ((group,) if isinstance(group, torch.Tensor) else group)
             if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return str(max(found, key=lambda d: torch.finfo(d).eps)).removeprefix("torch.") if found else ""


def _dense_layout(t: torch.Tensor) -> bool:
    """Whether ``t`` is a permutation of a contiguous block (each element once, no gaps)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same elements of one memory block (identity, reshape or
    permutation of it, as pass-through and routing rules return): their sums are the same."""
    if a is b:
        return True
    return (a.dtype == b.dtype and a.numel() == b.numel() and a.data_ptr() == b.data_ptr() and a.device == b.device
            and _dense_layout(a) and _dense_layout(b))


def _gradient(ctx: NodeContext, relevance) -> RuleResult:
    """The node's own VJP applied to the relevance (the named fallback), summed back over broadcast
    dims as autograd's engine does after calling a node."""
    metas = ctx.node._input_metadata
    grads = ctx.vjp(*(r if r is None or r.dtype == m.dtype else r.to(m.dtype) for r, m in zip(relevance, metas)))
    return RuleResult(tuple(reduce_to_shape(g, ctx.input_shape(slot)) if g is not None and ctx.has_input(slot)
                            else g for slot, g in enumerate(grads)))


def _finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite: a finite sum proves it without an elementwise mask."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_output(output: Any) -> None:
    if not isinstance(output, torch.Tensor):
        raise NoGraphError(f"explain() needs the output tensor, got {type(output).__name__}; pick the tensor"
                           " to explain (e.g. out.logits)")
    if not (output.is_floating_point() or output.is_complex()):
        raise NoGraphError(f"the output has dtype {output.dtype}, which carries no gradient graph; explain the"
                           " floating-point scores (logits) instead of argmax/ids")
    if output.grad_fn is None:
        raise NoGraphError(
            "the output has no grad_fn: nothing in the forward required grad, or it ran under torch.no_grad()"
            " / torch.inference_mode(); call x.requires_grad_() on the input (or keep trainable parameters)"
            " and run the forward with gradients enabled")


def seed_relevance(output: torch.Tensor, target: Any, seed: str = "value") -> torch.Tensor:
    """The starting relevance at ``output``.

    ``target``: ``None`` (argmax of the last dimension, per row), an int (that index of the last
    dimension, for every row), a sequence or 1-D integer tensor of one index per batch row, or a
    float tensor of the output's shape (used as the starting relevance itself). ``seed``:
    ``"value"`` starts from the selected output values (the logit), ``"one_hot"`` from ones (zennit).
    """
    out = output.detach()
    if seed not in ("value", "one_hot"):
        raise TargetError(f"seed must be 'value' or 'one_hot', not {seed!r}")
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != out.shape:
            raise TargetError(f"a relevance target must have the output's shape {tuple(out.shape)}, got"
                              f" {tuple(target.shape)}")
        return target.detach().to(out.dtype)
    if out.dim() == 0:
        if target is not None:
            raise TargetError("the output is a scalar: use target=None (its value is the relevance)")
        return out.clone() if seed == "value" else torch.ones_like(out)
    classes = out.shape[-1]
    if target is None:
        index = out.argmax(-1, keepdim=True)
    elif isinstance(target, (bool, str)) or not isinstance(target, (int, Sequence, torch.Tensor)):
        raise TargetError(f"target must be None, an int, one int per row, or a tensor; got {type(target).__name__}")
    elif isinstance(target, int):
        if not -classes <= target < classes:
            raise TargetError(f"target {target} is out of range for {classes} outputs (last dimension)")
        index = torch.full(out.shape[:-1] + (1,), target % classes, dtype=torch.long, device=out.device)
    else:
        try:
            rows = torch.as_tensor(target, device=out.device)
        except (TypeError, ValueError) as err:
            raise TargetError(f"cannot read target {target!r} as class indices: {err}") from err
        if rows.dim() != 1 or rows.dtype in (torch.bool,) or rows.is_floating_point():
            raise TargetError("a per-row target must be a flat list of integer class indices")
        if out.dim() < 2 or rows.numel() != out.shape[0]:
            raise TargetError(f"got {rows.numel()} targets for a batch of {out.shape[0] if out.dim() else 0}")
        if ((rows < -classes) | (rows >= classes)).any():
            raise TargetError(f"targets {rows.tolist()} are out of range for {classes} outputs")
        rows = rows % classes
        index = rows.view((-1,) + (1,) * (out.dim() - 1)).expand(out.shape[:-1] + (1,))
    # one output-sized tensor: the selected values (or ones) scattered into zeros
    return torch.zeros_like(out).scatter_(-1, index, out.gather(-1, index) if seed == "value" else 1.0)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the sweep, and switched on again after it unless it
    was off before. The sweep makes no reference cycles (``tests/test_engine.py`` checks that nothing is
    left for the collector), so a collection during it frees nothing and only scans: the sweep's
    thousands of short-lived objects (graph tables, tensors, tuples) trigger gen-2 collections that scan
    every object of the process, about 150 ms once ~340k are tracked (torchvision and transformers
    imported), once per ~5 ResNet-50 explanations at batch 1 (30 ms a call on average)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Sweep:
    """State of one explanation (kept out of the autograd nodes)."""

    def __init__(self, output: torch.Tensor, inputs: Sequence[torch.Tensor] | None, preset: Preset,
                 module_paths: Mapping[Node, str] | None, recording: Recording | bool | None, strict: bool = False,
                 plans: PlanCache | None = None):
        self.graph = Graph.build(output.grad_fn)
        self.preset = preset
        self.strict = strict  # read by rules that run an inner sweep (dynlrp.rules.decompose)
        self.fallbacks: dict[str, int] = {}
        self.missing: dict[tuple, MissingValue] = {}  # values no node holds (MissingValueError after the sweep)
        self.constant_nodes: set[Node] = set()  # booked as "constant", not "parameter" (dynlrp.rules.decompose)
        self.paths = module_paths or {}
        if recording is False:
            recording = None
        elif recording is None or recording is True:
            recording = find_recording(self.graph)
        self.recording = recording
        self.leaf_inputs: dict[Node, torch.Tensor] = {}
        self.cut_inputs: dict[Edge, torch.Tensor] = {}
        self._find_inputs(inputs)
        for i, tensor in enumerate(list(self.leaf_inputs.values()) + list(self.cut_inputs.values())):
            if tensor.is_floating_point() and not _finite(tensor):
                raise InputError(f"input {i} (shape {tuple(tensor.shape)}) is not finite (NaN or Inf): the forward"
                                 " values and any relevance would be meaningless; clean the input first")
        self.index = {node: i for i, node in enumerate(self.graph.order)}
        self.plan = self._plan(plans) if plans is not None else None
        if self.plan is None or not self.plan.uses:
            self.data = self._data_flags()
            self.first = self._first_layers()
            if self.plan is not None:
                order = self.graph.order
                self.plan.data = [self.data[n] for n in order]
                self.plan.near = [self.near[n] for n in order]
                self.plan.first = [n in self.first for n in order]
        else:  # a plan of this structure: read its answers by position
            order = self.graph.order
            self.data, self.near = dict(zip(order, self.plan.data)), dict(zip(order, self.plan.near))
            self.first = {n for n, f in zip(order, self.plan.first) if f}
        self.store = ValueStore(self.graph, REGISTRY, self.recording, self.plan, self.index)
        cut, data = self.cut_inputs, self.data  # a closure over these, not a bound method: no reference cycle
        self.analysis = Analysis(self.graph, lambda edge: edge[0] is not None and (edge in cut or data[edge[0]]))

    def _plan(self, plans: PlanCache) -> Plan:
        """This structure's plan from ``plans`` (a new, empty one the first time)."""
        index = self.index
        inputs = (tuple(sorted(index[n] for n in self.leaf_inputs)),
                  tuple(sorted((index[e[0]], e[1]) for e in self.cut_inputs)))
        key = structure_key(self.graph, index, inputs, self.preset, self.paths)
        plan = plans.get(key)
        if plan is None:
            plan = Plan([], [], [])
            plans.put(key, plan)
        return plan

    # -- setup -----------------------------------------------------------------------------
    def _find_inputs(self, inputs: Sequence[torch.Tensor] | None) -> None:
        leaves = {node.variable: node for node in self.graph.order if hasattr(node, "variable")}
        by_id = {id(t): node for t, node in leaves.items()}
        if inputs is None:
            for tensor, node in leaves.items():
                if not isinstance(tensor, torch.nn.Parameter):
                    self.leaf_inputs[node] = tensor
            return
        for i, tensor in enumerate(inputs):
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"inputs[{i}] is a {type(tensor).__name__}, not a tensor")
            if tensor.grad_fn is not None:
                edge = (tensor.grad_fn, tensor.output_nr)
                if tensor.grad_fn not in self.graph.edges:
                    raise InputError(f"inputs[{i}] is not part of the output's graph")
                self.cut_inputs[edge] = tensor
            elif not tensor.requires_grad:
                raise InputError(f"inputs[{i}] does not require grad, so the graph does not contain it; call"
                                 " x.requires_grad_() before the forward")
            elif id(tensor) in by_id:
                self.leaf_inputs[by_id[id(tensor)]] = tensor
            else:
                raise InputError(f"inputs[{i}] requires grad but the output does not depend on it")

    def _data_flags(self) -> dict[Node, bool]:
        data: dict[Node, bool] = {}
        for node in reversed(self.graph.order):
            if node in self.leaf_inputs or node_type(node) in REGISTRY.sources:
                data[node] = True
            elif hasattr(node, "variable"):
                data[node] = False
            else:
                data[node] = any(c is not None and (data[c] or (c, nr) in self.cut_inputs)
                                 for c, nr in self.graph.edges[node])
        if not data[self.graph.root] and (self.graph.root, 0) not in self.cut_inputs:
            raise InputError("the output depends on no explained input: pass inputs=[x] with x.requires_grad_()"
                             " set before the forward (or feed token ids through an embedding)")
        return data

    def edge_is_data(self, edge: Edge) -> bool:
        child = edge[0]
        return child is not None and (edge in self.cut_inputs or self.data[child])

    def _first_layers(self) -> set[Node]:
        near: dict[Node, bool] = {}
        for node in reversed(self.graph.order):
            info = REGISTRY.rules.get(node_type(node))
            data_edges = [e for e in self.graph.edges[node] if self.edge_is_data(e)]
            near[node] = node in self.leaf_inputs or (
                info is not None and (info.family == "shape" or getattr(info.fn, "routing", False)) and bool(data_edges)
                and all(e in self.cut_inputs or near[e[0]] for e in data_edges))
        self.near = near  # node -> reached from an explained input through shape ops only
        return {node for node in self.graph.order if node_type(node) in LINEAR_TYPES
                and any(self.edge_is_data(e) and (e in self.cut_inputs or near[e[0]]) for e in self.graph.edges[node])}

    def train_mode_nodes(self) -> list[str]:
        """Data nodes that only exist, or behave differently, in train mode."""
        found = []
        for node in self.graph.order:
            name = node_type(node)
            if not self.data[node]:
                continue
            if name == "NativeDropoutBackward0" or (name == "NativeBatchNormBackward0" and node._saved_training):
                found.append(name)
        return found

    def missing_rules(self) -> dict[str, tuple[int, list[str]]]:
        missing: dict[str, tuple[int, list[str]]] = {}
        for node in self.graph.order:
            name = node_type(node)
            if self.data[node] and name not in REGISTRY.rules:
                count, paths = missing.get(name, (0, []))
                path = self.paths.get(node)
                missing[name] = (count + 1, paths + ([path] if path and path not in paths else []))
        return missing

    # -- the sweep ----------------------------------------------------------------------------
    def run(self, start: torch.Tensor | list[torch.Tensor], output: torch.Tensor,
            retain_graph: bool = True) -> Explanation:
        """The sweep from ``start`` (or a one-element list holding it, emptied here, so that the
        sweep holds the only reference: an LM's output-sized seed is freed once the root is done).
        ``retain_graph=False``: saved tensors are freed behind the sweep (:meth:`ValueStore.free_graph`)."""
        start = start.pop() if isinstance(start, list) else start
        if not retain_graph:
            self.store.free_graph(self._release_schedule())
        graph = self.graph
        ledger = _Ledger()
        out_entry = ledger.add(wide_total(start))
        pending: dict[Node, list[torch.Tensor | None]] = {}
        sums: dict[Edge, tuple[int, int]] = {}  # ledger entries (sum R, sum |R|) of a slot with one contribution
        input_relevance: dict[int, torch.Tensor] = {}
        tokens: list[TokenRelevance] = []
        rows: list[tuple] = []
        fallbacks = self.fallbacks
        root_edge = (output.grad_fn, output.output_nr)
        self.store.know(root_edge, output)  # the explained output's value is at hand
        if root_edge in self.cut_inputs:
            input_relevance[id(self.cut_inputs[root_edge])] = start
        else:
            pending[graph.root] = [None] * len(graph.root._input_metadata)
            pending[graph.root][output.output_nr] = start
        del start
        release = self.store.release
        for node in graph.order:
            relevance = pending.pop(node, None)
            if relevance is None:
                release(node)
                continue
            name = node_type(node)
            info = REGISTRY.rules.get(name)
            path = self.paths.get(node, "")
            ctx = NodeContext(node, self.store, self._settings(node, name, path), self.analysis, sweep=self)
            try:
                result = self._apply(info, ctx, relevance, path, fallbacks)
            except MissingValueError as err:
                self._note_missing(err, name, path)
                try:  # only to find the rest: the sweep raises the listing below
                    result = _gradient(ctx, relevance)
                except Exception:  # cannot go on: list what was found so far
                    raise MissingValueError.listing(list(self.missing.values())) from err
            ins, flow, outs = [], [], []
            arrived = []  # (relevance, its ledger entries): an output with the same elements reuses them
            for nr, r in enumerate(relevance):
                if r is not None:
                    s, a = sums.pop((node, nr), None) or ledger.sums(r)  # one contribution: already summed
                    ins.append(s)
                    flow.append(a)
                    arrived.append((r, (s, a)))
            absorbed = {cause: [ledger.add(v)] for cause, v in result.absorbed.items()}
            for slot, r in enumerate(result.inputs):
                if r is None:
                    continue
                edge = graph.edges[node][slot]
                child, nr = edge
                if child is None or not self.edge_is_data(edge):
                    cause = "constant" if child is None or child in self.constant_nodes else "parameter"
                    absorbed.setdefault(cause, []).append(ledger.add(total(r)))
                    continue
                expected = tuple(child._input_metadata[nr].shape)
                if tuple(r.shape) != expected:
                    raise RuleError(f"rule {info.name if info else FALLBACK} returned relevance of shape"
                                    f" {tuple(r.shape)} for slot {slot} of {name}, expected {expected}")
                part = next((p for t, p in arrived if _same_elements(r, t)), None) or ledger.sums(r)
                outs.append(part[0])
                flow.append(part[1])
                if edge in self.cut_inputs:
                    key = id(self.cut_inputs[edge])
                    input_relevance[key] = input_relevance[key] + r if key in input_relevance else r
                    continue
                slots = pending.setdefault(child, [None] * len(child._input_metadata))
                if slots[nr] is None:
                    slots[nr], sums[edge] = r, part
                else:
                    slots[nr] = slots[nr] + r
                    sums.pop(edge, None)
            if result.sources is not None:
                part = ledger.sums(result.sources)
                outs.append(part[0])
                flow.append(part[1])
                if node in self.leaf_inputs:
                    input_relevance[id(self.leaf_inputs[node])] = result.sources
                else:
                    tokens.append(TokenRelevance(path, ctx.saved("indices"), result.sources))
            rows.append((name, info.name if info else FALLBACK, path, ins, flow, outs, absorbed, info is None,
                         _narrowest(relevance, result.inputs, result.sources)))
            release(node)
        if self.missing:
            raise MissingValueError.listing(list(self.missing.values()))
        return self._finish(ledger, out_entry, rows, input_relevance, tokens, fallbacks)

    def _release_schedule(self) -> dict[int, list[int]]:
        if self.plan is not None and self.plan.release is not None:
            return self.plan.release
        rules, data = REGISTRY.rules, self.data
        schedule = release_schedule(self.graph, lambda n: node_type(n) in SCALES
                                    or getattr(rules.get(node_type(n)), "family", "") == "shape",
                                    SHAPE_REACH, lambda n: data[n])
        if self.plan is not None:
            self.plan.release = schedule
        return schedule

    def _settings(self, node: Node, name: str, path: str):
        if self.plan is None:
            return self.preset.settings_for(name, path or None, node in self.first)
        i = self.index[node]
        found = self.plan.settings.get(i)
        if found is None:
            found = self.plan.settings[i] = self.preset.settings_for(name, path or None, node in self.first)
        return found

    def _note_missing(self, err: MissingValueError, needed_by: str, path: str) -> None:
        """Book a value the graph lacks; the sweep goes on (gradient pass-through) to list them all."""
        found = err.missing or [MissingValue(node_type(err.node) if err.node is not None else needed_by,
                                             err.what or "a forward value", self.paths.get(err.node, path),
                                             needed_by, str(err))]
        for item in found:
            self.missing.setdefault((id(err.node), item.node_type, item.what, item.module), item)

    def _apply(self, info, ctx: NodeContext, relevance, path: str, fallbacks: dict[str, int]) -> RuleResult:
        if info is None:
            fallbacks[ctx.type] = fallbacks.get(ctx.type, 0) + 1
            return _gradient(ctx, relevance)
        try:
            return info.fn(ctx, relevance)
        except DynLRPError:
            raise
        except Exception as err:
            raise RuleError(f"rule {info.name} failed on {ctx.type} at {path or '<unknown module>'}: "
                            f"{type(err).__name__}: {err}") from err

    def _finish(self, ledger: _Ledger, out_entry: int, rows, input_relevance, tokens, fallbacks) -> Explanation:
        input_entries = [ledger.add(total(r)) for r in input_relevance.values()]
        input_entries += [ledger.add(total(t.relevance)) for t in tokens]
        values = ledger.values()
        records = []
        absorbed_values: dict[str, float] = {}
        for name, rule_name, path, ins, flow, outs, absorbed, fallback, dtype in rows:
            rin, rabs, rout = (sum(values[i] for i in entries) for entries in (ins, flow, outs))
            ab = {cause: sum(values[i] for i in entries) for cause, entries in absorbed.items()}
            for cause, value in ab.items():
                absorbed_values[cause] = absorbed_values.get(cause, 0.0) + value
            err = abs(rin - rout - sum(ab.values())) / max(abs(rin), 1e-300) if (rin or rout or ab) else 0.0
            records.append(NodeRecord(name, rule_name, path, rin, rout, ab, err, fallback, rabs, dtype))
        out_value = values[out_entry]
        inputs_value = sum(values[i] for i in input_entries)
        absorbed_values = {c: absorbed_values[c] for c in sorted(absorbed_values)}
        unexplained = abs(out_value - inputs_value - sum(absorbed_values.values())) / max(abs(out_value), 1e-300)
        explained = [(t, input_relevance[id(t)] if id(t) in input_relevance else torch.zeros_like(t))
                     for t in list(self.leaf_inputs.values()) + list(self.cut_inputs.values())]
        if fallbacks:
            warnings.warn(f"no LRP rule for {fallbacks}; these nodes used the gradient ({FALLBACK}), see"
                          " Explanation.fallbacks", MissingRuleWarning, stacklevel=3)
        return Explanation(
            conservation=Conservation(out_value, inputs_value, absorbed_values, unexplained),
            nodes=records, promises=self.store.finish(), tokens=tokens, fallbacks=fallbacks,
            preset=self.preset.name, _inputs=explained)


def explain(output: torch.Tensor, target: Any = None, *, rules: str | Preset = "epsilon",
            inputs: Sequence[torch.Tensor] | None = None, seed: str = "value", strict: bool = False,
            module_paths: Mapping[Node, str] | None = None,
            recording: Recording | bool | None = None, plans: PlanCache | None = None,
            retain_graph: bool = True) -> Explanation:
    """Explain ``output`` with LRP over its autograd graph; the model is not touched.

    ``target``: see :func:`seed_relevance` (None = argmax, int, one int per row, or a relevance
    tensor). ``rules``: a preset name (:mod:`dynlrp.presets`) or a :class:`Preset`. ``inputs``: the
    tensors to explain (leaves that required grad, or intermediate tensors, which then cut the
    sweep); default: every leaf that is not an ``nn.Parameter``. ``strict``: raise
    :class:`MissingRuleError` for node types without a rule instead of the named gradient fallback.
    ``module_paths``: node -> module path (filled in by :func:`dynlrp.audit`). ``recording``: the
    values of a ``dynlrp.record()`` block (``None``: found automatically; ``False``: post hoc only).
    ``plans``: a :class:`dynlrp.PlanCache`; graphs of a structure seen before reuse its promise plan.
    ``retain_graph``: ``False`` frees each node's saved tensors once the sweep no longer needs them
    (lower peak memory, as ``backward()``); the graph can then not be explained or differentiated
    again (:class:`GraphFreedError`).
    """
    with collector_paused():
        _check_output(output)
        preset = resolve(rules)
        start = [seed_relevance(output, target, seed)]  # handed over to the sweep (run)
        sweep = _Sweep(output, inputs, preset, module_paths, recording, strict, plans)
        if not _finite(output.detach()):
            raise NoGraphError("the output contains NaN or Inf; LRP needs finite forward values (check the model's"
                               " inputs, dtype overflow, or -inf masks reaching the output)")
        if strict:
            missing = sweep.missing_rules()
            if missing:
                raise MissingRuleError(missing)
        train = sweep.train_mode_nodes()
        if train:
            warnings.warn(f"the forward ran in train mode ({len(train)} nodes: {sorted(set(train))}); call model.eval()"
                          " before the forward to explain the model as deployed", TrainModeWarning, stacklevel=2)
        with torch.no_grad():
            return sweep.run(start, output, retain_graph)
