"""Decompositions: LRP through opaque nodes by re-running a pure-PyTorch reference of their forward.

Some autograd nodes hide a whole computation: a custom ``torch.autograd.Function`` (node type
``<ClassName>Backward``) or a fused kernel such as ``MkldnnRnnLayerBackward0`` (one layer and one
direction of ``nn.LSTM`` in float32 on CPU). No single rule fits such a node, but the computation it
stands for is known. :func:`register_decomposition` registers a *reference function* for the node
type; the node's rule then

1. gathers the node's forward input values, one per input slot (``ctx.input(slot)``, i.e. saved
   tensors or the Promise System; or a custom ``inputs(ctx)``);
2. re-runs the reference on detached copies under ``torch.enable_grad()`` (recording its values,
   as ``dynlrp.record()`` would), which builds a small autograd subgraph. Every floating copy
   requires grad (a leaf whose value the subgraph's rules can always read); the copies of data
   operands are the subgraph's explained inputs, the others are not explained: relevance reaching
   them is booked as ``parameter``, or as ``constant`` for operands outside the node's graph
   (``(None, 0)`` edges: frozen weights, zero initial states);
3. checks that the reference reproduces the node (see ``check``) and raises
   :class:`~dynlrp.errors.DecompositionMismatchError` if it does not;
4. explains the subgraph with dynlrp's own engine: the same preset, the node's module path (so
   module overrides apply inside), the preset's ``first`` rule only where the node's own operand is
   a first-layer input, and the node's output relevance as the starting relevance;
5. returns the copies' relevance as the node's input relevance and books the inner ledger's
   absorbed relevance (``bias``, ``stabiliser``, ``parameter``, ``constant``, ...) on the node, so the
   node's ledger row conserves up to the inner explanation's own residual.

**Argument mapping.** The reference is called as ``fn(*values, **params(ctx))``: ``values[i]`` is the
value on input slot ``i``, in the order of ``node.next_functions``, and the relevance of argument
``i`` goes back to slot ``i``. For a custom Function the slots are its ``forward``'s *tensor*
arguments in order (non-tensor arguments get no slot; read them in ``params`` from the node, which
is the Function's ``ctx``: ``ctx.node.scale``). A tensor argument that does not require grad has a
``(None, 0)`` slot whose value the graph does not hold: supply it with ``inputs=`` (e.g. from
``ctx.node.saved_tensors``). ``inputs(ctx)`` must return one value per slot (``None`` allowed);
``params(ctx)`` returns the non-differentiable keyword arguments (flags, sizes, saved constants).

**Output mapping.** The reference returns one tensor (a single-output node) or a tuple whose item
``k`` is the node's output number ``k`` (the ``output_nr`` of the forward results, the order of
``node._input_metadata``). It may return fewer items, or ``None`` items, for outputs that never
carry relevance (a workspace). Relevance arrives per output number, ``None`` where an output gets
none; the outputs that carry relevance are flattened and concatenated into one root of the
subgraph (shape ops: exact), seeded with the concatenated relevance.

**Check.** ``"auto"`` (default): each reference output is compared with the node's own output where
the graph holds it without computation (a saved result, a recorded value, a consumer's saved
input); if an output that carries relevance is not held, the reference's vector-Jacobian product
with the output relevance is compared with the node's own backward instead. ``"output"``: outputs
only (raises :class:`~dynlrp.errors.MissingValueError` where one is not held). ``"vjp"``: the
backward only. ``"none"``: no check (e.g. straight-through estimators, whose backward is not the
derivative of their forward). A comparison passes if ``max |ref - node| <= atol + rtol * max |node|``
(defaults by dtype: :data:`TOLERANCES`).

A decomposition also registers a forward *replay* for its node type (unless the type has one of its
own), so the Promise System can recover values behind an opaque node. Strictness follows the outer
explanation: node types of the subgraph without a rule raise :class:`~dynlrp.errors.MissingRuleError`
under ``strict=True``, else they use the named gradient fallback and are listed in
``Explanation.fallbacks`` as ``"<node type>/<inner type>"``. Node type names are global: two custom
Functions with the same class name share one decomposition.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..context import NodeContext, RuleResult
from ..errors import (
    DecompositionMismatchError,
    InputError,
    MissingRuleError,
    MissingRuleWarning,
    MissingValueError,
    RuleError,
)
from ..graph import Graph
from ..record import Recording, _Recorder
from .common import total
from .registry import REGISTRY, RuleInfo

CHECKS = ("auto", "output", "vjp", "none")

#: default ``(rtol, atol)`` of the reproduction check, by the dtype of the node's output
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-10),
    torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (3e-2, 1e-2),
}


@dataclass(frozen=True)
class Decomposition:
    """One registered decomposition (see the module docstring for the meaning of each field)."""

    node_type: str
    fn: Callable[..., Any]
    inputs: Callable[[NodeContext], Sequence[Any]] | None = None
    params: Callable[[NodeContext], Mapping[str, Any]] | None = None
    check: str = "auto"
    rtol: float | None = None
    atol: float | None = None
    dtype: torch.dtype | None = None


DECOMPOSITIONS: dict[str, Decomposition] = {}
_BEFORE: dict[str, tuple[Any, Any]] = {}  # node type -> (rule, replay) it had before its first decomposition


def _type_name(node_type: str | type) -> str:
    if isinstance(node_type, str):
        return node_type
    if isinstance(node_type, type) and issubclass(node_type, torch.autograd.Function):
        return node_type.__name__ + "Backward"
    raise TypeError(f"node_type must be a node type name or a torch.autograd.Function subclass, not {node_type!r}")


def register_decomposition(node_type: str | type, fn: Callable[..., Any], *,
                           inputs: Callable[[NodeContext], Sequence[Any]] | None = None,
                           params: Callable[[NodeContext], Mapping[str, Any]] | None = None,
                           check: str = "auto", rtol: float | None = None, atol: float | None = None,
                           dtype: torch.dtype | None = None, replay: bool = True) -> RuleInfo:
    """Explain nodes of ``node_type`` by re-running ``fn``, a pure-PyTorch reference of their forward.

    ``node_type``: the node type name (``"MkldnnRnnLayerBackward0"``, ``"MyFnBackward"``) or the
    ``torch.autograd.Function`` subclass itself. ``fn(*values, **params(ctx))`` with ``values[i]`` the
    forward value on input slot ``i`` (order of ``next_functions``); returns a tensor or a tuple whose
    item ``k`` is output number ``k``. ``inputs(ctx)``: the values per slot, if not
    ``ctx.input(slot)``. ``params(ctx)``: keyword arguments read from the node (``ctx.saved(name)``,
    ``ctx.node.<attr>``). ``check``: ``"auto"``, ``"output"``, ``"vjp"`` or ``"none"`` (module
    docstring), with ``rtol``/``atol`` (default by dtype, :data:`TOLERANCES`). ``dtype``: run the
    reference in this floating dtype (e.g. ``torch.float64`` for a float32 kernel); default: the
    values' own. ``replay``: also register ``fn`` as the node type's forward replay (if it has none
    of its own). Registering again replaces the earlier decomposition. Returns the rule's
    :class:`RuleInfo` (family ``decompose``). Full description: :mod:`dynlrp.rules.decompose`.
    """
    name = _type_name(node_type)
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, not {check!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    spec = Decomposition(name, fn, inputs, params, check, rtol, atol, dtype)
    label = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__

    def decomposed(ctx: NodeContext, relevance):
        return _explain_node(spec, ctx, relevance)

    decomposed.__name__ = decomposed.__qualname__ = f"decompose[{label}]"
    summary = (getattr(fn, "__doc__", None) or "").strip().split("\n\n")[0]
    decomposed.__doc__ = (
        f"Decomposition of ``{name}``: re-run the reference ``{label}`` on the node's inputs and explain"
        " that subgraph with the same preset (R_in = the subgraph's input relevance). Absorbs what the"
        " subgraph's rules absorb (bias, stabiliser, parameter, constant, ...)."
        + (f"\n\nReference: {summary}" if summary else ""))
    if name not in _BEFORE:
        _BEFORE[name] = (REGISTRY.rules.get(name), REGISTRY.replays.get(name))
    REGISTRY.rule(name)(decomposed)
    existing = REGISTRY.replays.get(name)
    ours = getattr(existing, "_decomposition", False)
    if replay and (existing is None or ours):
        def forward(ctx: NodeContext):
            return _replay(spec, ctx)

        forward._decomposition = True  # type: ignore[attr-defined]
        REGISTRY.replay(name)(forward)
    elif not replay and ours:  # drop the replay an earlier registration added
        if _BEFORE[name][1] is None:
            del REGISTRY.replays[name]
        else:
            REGISTRY.replays[name] = _BEFORE[name][1]
    DECOMPOSITIONS[name] = spec
    return REGISTRY.rules[name]


def get_decomposition(node_type: str | type) -> Decomposition | None:
    """The decomposition registered for ``node_type``, if any."""
    return DECOMPOSITIONS.get(_type_name(node_type))


def remove_decomposition(node_type: str | type) -> None:
    """Undo :func:`register_decomposition`: the node type gets back the rule and replay it had before
    (none, for a custom Function: it is opaque again). No-op if it has no decomposition."""
    name = _type_name(node_type)
    if DECOMPOSITIONS.pop(name, None) is None:
        return
    for table, previous in zip((REGISTRY.rules, REGISTRY.replays), _BEFORE.pop(name)):
        if previous is None:
            table.pop(name, None)
        else:
            table[name] = previous


# ----------------------------------------------------------------------------------------------
# running the reference


def _values(spec: Decomposition, ctx: NodeContext) -> list[Any]:
    values = list(spec.inputs(ctx)) if spec.inputs is not None else [ctx.input(s) for s in range(ctx.num_inputs)]
    if len(values) != ctx.num_inputs:
        raise RuleError(f"the decomposition of {ctx.type}: inputs(ctx) returned {len(values)} values for"
                        f" {ctx.num_inputs} input slots (one per next_functions entry, None allowed)")
    return values


def _call(spec: Decomposition, ctx: NodeContext, args: Sequence[Any]) -> tuple[Any, ...]:
    kwargs = dict(spec.params(ctx)) if spec.params is not None else {}
    result = spec.fn(*args, **kwargs)
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _replay(spec: Decomposition, ctx: NodeContext) -> tuple[torch.Tensor | None, ...]:
    values = _values(spec, ctx)
    if spec.dtype is not None:
        values = [_cast(v, spec.dtype) for v in values]
    with torch.no_grad():
        outs = _call(spec, ctx, values)
    metas = ctx.node._input_metadata
    result = []
    for k, meta in enumerate(metas):
        out = outs[k] if k < len(outs) else None
        result.append(out.detach().to(meta.dtype) if isinstance(out, torch.Tensor) else None)
    return tuple(result)


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    if dtype is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _copies(spec: Decomposition, values: Sequence[Any]) -> list[Any]:
    """Detached copies. Floating ones require grad, so that every operand is a leaf whose value the
    subgraph's rules can read (a frozen bias inside a C++ composite is not recorded) and autograd
    protects it from in-place updates; the others are cloned."""
    copies = []
    for value in values:
        if not isinstance(value, torch.Tensor):
            copies.append(value)
            continue
        copy = _cast(value.detach(), spec.dtype)
        if copy.is_floating_point() or copy.is_complex():
            copy = copy.detach().requires_grad_(True)
        elif copy.data_ptr() == value.data_ptr():
            copy = copy.clone()
        copies.append(copy)
    return copies


# ----------------------------------------------------------------------------------------------
# the reproduction check


def _tolerance(spec: Decomposition, dtype: torch.dtype) -> tuple[float, float]:
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    return (spec.rtol if spec.rtol is not None else rtol), (spec.atol if spec.atol is not None else atol)


def _compare(spec: Decomposition, ctx: NodeContext, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if tuple(got.shape) != tuple(want.shape):
        raise DecompositionMismatchError(
            f"the decomposition of {ctx.type} gives {what} of shape {tuple(got.shape)}, the node"
            f" {tuple(want.shape)}")
    rtol, atol = _tolerance(spec, want.dtype)
    diff = (got.detach().to(torch.float64) - want.detach().to(torch.float64)).abs().max().item() if got.numel() else 0.0
    scale = want.detach().abs().max().item() if want.numel() else 0.0
    if not diff <= atol + rtol * scale:
        raise DecompositionMismatchError(
            f"the decomposition of {ctx.type} ({spec.fn!r}) does not reproduce"
            f" the node's {what}: max |reference - node| = {diff:.3g} against max |node| = {scale:.3g}"
            f" (rtol {rtol:g}, atol {atol:g}). Check that the reference takes its arguments in the order of"
            " the node's input slots (next_functions) and returns output number k as item k; loosen"
            " rtol/atol, or pass check='none' for a node whose backward is not its forward's derivative")


def _check(spec: Decomposition, ctx: NodeContext, copies: Sequence[Any], outs: Sequence[Any],
           relevance: Sequence[torch.Tensor | None], wanted: Sequence[int]) -> None:
    if spec.check == "none":
        return
    unchecked = []
    if spec.check in ("auto", "output"):
        for k, out in enumerate(outs[:len(ctx.output_shapes)]):
            if not isinstance(out, torch.Tensor):
                continue
            real = ctx.store._direct((ctx.node, k))
            if real is None:
                if k in wanted:
                    unchecked.append(k)
                continue
            _compare(spec, ctx, out, real, f"output {k}")
        if unchecked and spec.check == "output":
            raise MissingValueError(
                f"the decomposition of {ctx.type} cannot be checked: the graph does not hold the node's"
                f" output(s) {unchecked}; run the forward inside `with dynlrp.record():` if the node's"
                " outputs pass through torch functions, or register it with check='vjp'")
    if spec.check == "vjp" or unchecked:
        _check_vjp(spec, ctx, copies, outs, relevance, wanted)


def _check_vjp(spec: Decomposition, ctx: NodeContext, copies: Sequence[Any], outs: Sequence[Any],
               relevance: Sequence[torch.Tensor | None], wanted: Sequence[int]) -> None:
    """The reference's VJP with the output relevance against the node's own backward."""
    slots = [s for s, c in enumerate(copies) if isinstance(c, torch.Tensor) and c.requires_grad and ctx.is_data(s)]
    used = [k for k in wanted if outs[k].requires_grad]
    if not slots or not used:
        return
    with torch.enable_grad():
        ref = torch.autograd.grad([outs[k] for k in used], [copies[s] for s in slots],
                                  [relevance[k].to(outs[k].dtype) for k in used], retain_graph=True, allow_unused=True)
    metas = ctx.node._input_metadata
    grads = [relevance[k].to(meta.dtype) if k < len(relevance) and relevance[k] is not None
             else torch.zeros(tuple(meta.shape), dtype=meta.dtype, device=meta.device) for k, meta in enumerate(metas)]
    own = ctx.vjp(*grads)
    for slot, got in zip(slots, ref):
        want = own[slot] if slot < len(own) else None
        got = torch.zeros_like(copies[slot]) if got is None else got
        want = torch.zeros_like(got) if want is None else want
        _compare(spec, ctx, got, want, f"gradient for input slot {slot}")


# ----------------------------------------------------------------------------------------------
# the rule


def _first_layer_operand(sweep: Any, edge) -> bool:
    """Whether the outer operand on ``edge`` is reached from an explained input through shape ops."""
    return edge in sweep.cut_inputs or (edge[0] is not None and getattr(sweep, "near", {}).get(edge[0], False))


def _constant_nodes(graph: Graph, constants: set[int]) -> set:
    """Nodes of the subgraph that depend on copies of operands outside the node's graph only."""
    found: set = set()
    for node in reversed(graph.order):
        if hasattr(node, "variable"):
            if id(node.variable) in constants:
                found.add(node)
        elif all(child is None or child in found for child, _ in graph.edges[node]):
            found.add(node)
    return found


def _explain_node(spec: Decomposition, ctx: NodeContext, relevance) -> RuleResult:
    from ..engine import _Sweep  # here: the engine imports the rule registry

    sweep = ctx.sweep
    if sweep is None:
        raise RuleError(f"the decomposition of {ctx.type} runs inside dynlrp.explain only (it needs the preset)")
    wanted = [k for k, r in enumerate(relevance) if r is not None]
    none: tuple[None, ...] = (None,) * ctx.num_inputs
    values = _values(spec, ctx)
    copies = _copies(spec, values)
    recording = Recording()
    with torch.enable_grad(), _Recorder(recording, outputs=True):
        outs = _call(spec, ctx, copies)
    shapes = ctx.output_shapes
    for k in wanted:
        if k >= len(outs) or not isinstance(outs[k], torch.Tensor):
            raise DecompositionMismatchError(
                f"the decomposition of {ctx.type} returned {len(outs)} item(s) with no tensor for output {k},"
                f" which carries relevance; return item k = the node's output number k ({len(shapes)} outputs)")
        if tuple(outs[k].shape) != tuple(shapes[k]):
            raise DecompositionMismatchError(
                f"the decomposition of {ctx.type} returned output {k} of shape {tuple(outs[k].shape)}, the node's"
                f" output {k} has shape {tuple(shapes[k])}")
    _check(spec, ctx, copies, outs, relevance, wanted)

    with torch.enable_grad():
        parts = [outs[k].reshape(-1) for k in wanted]
        root = parts[0] if len(parts) == 1 else torch.cat(parts)
    start = torch.cat([relevance[k].reshape(-1) for k in wanted]).to(root.dtype)
    if root.grad_fn is None:  # the reference's outputs do not depend on any operand in the graph
        return RuleResult(none, {"constant": total(start)})
    graph = Graph.build(root.grad_fn)
    leaves = {id(node.variable) for node in graph.order if hasattr(node, "variable")}
    data = [s for s, c in enumerate(copies)
            if isinstance(c, torch.Tensor) and c.requires_grad and ctx.is_data(s) and id(c) in leaves]
    path = sweep.paths.get(ctx.node)
    paths = {node: path for node in graph.order} if path else None
    try:
        inner = _Sweep(root, [copies[s] for s in data], sweep.preset, paths, recording, sweep.strict)
    except InputError:  # the outputs with relevance depend on parameters and constants only
        return RuleResult(none, {"parameter": total(start)})
    inner.constant_nodes = _constant_nodes(inner.graph, {id(c) for s, c in enumerate(copies)
                                                         if isinstance(c, torch.Tensor) and not ctx.has_input(s)})
    far = {id(copies[s]) for s in data if not _first_layer_operand(sweep, ctx.edges[s])}
    if far and sweep.preset.first is not None:  # the first-layer rule only where the node's operand is one
        hidden = {node: t for node, t in inner.leaf_inputs.items() if id(t) in far}
        for node in hidden:
            del inner.leaf_inputs[node]
        inner.first = inner._first_layers()
        inner.leaf_inputs.update(hidden)
    missing = inner.missing_rules()
    if missing and sweep.strict:
        raise MissingRuleError({f"{ctx.type}/{name}": (count, found or [path or "<unknown module>"])
                                for name, (count, found) in missing.items()})
    with warnings.catch_warnings():  # listed in the outer explanation's fallbacks instead
        warnings.simplefilter("ignore", MissingRuleWarning)
        with torch.no_grad():
            exp = inner.run(start, root)
    for name, count in inner.fallbacks.items():
        key = f"{ctx.type}/{name}"
        sweep.fallbacks[key] = sweep.fallbacks.get(key, 0) + count
    out = list(none)
    for slot in data:
        out[slot] = exp.relevance(copies[slot])
    return RuleResult(tuple(out), dict(exp.conservation.absorbed))


__all__ = ["CHECKS", "DECOMPOSITIONS", "TOLERANCES", "Decomposition", "get_decomposition", "register_decomposition",
           "remove_decomposition"]
