"""``dynlrp.record()``: keep, during a forward, exactly the values its autograd graph will not hold.

The autograd graph holds the operands that require grad (as edges) and whatever each node saved for
its backward. It loses the rest: a frozen bias (``addmm`` saves only the weight), a buffer or mask
added in (``scores + mask``), ALiBi's bias in ``baddbmm``, a Python scalar (``x + 1.0``,
``masked_fill(m, -inf)``). Inside ``record()`` a ``TorchDispatchMode`` sees every aten call with
its real arguments; for each call whose output joins the graph it keeps a :class:`RecordedCall`
holding only

- the floating-point operands outside the graph that the node did not save (by input slot), and
- for node types without a registered forward replay whose output the node does not save, the
  call itself (op, scalars, index tensors), so that the Promise System can re-run it;

nothing else. Kept tensors are references, not copies: a parameter or a buffer costs no memory; a
tensor made during the forward (a mask) stays alive, which is the value the graph lacks. If the
forward later writes into a kept tensor in place, the recorder copies it first (copy-on-write);
a change after the block is detected from the tensor's version counter and reported by name.

``record(outputs=True)`` also keeps a copy of every node output (the audit compares recovered
activations with them; memory: all activations). ``Recording.keep(t)`` keeps one output by hand
(e.g. of a custom ``autograd.Function``, whose ``apply`` the dispatch mode does not see).

``explain`` finds the recording of a graph by itself: the most recent ``record()`` block of the
calling thread is kept until the next one starts (or ``Recording.clear()``), and any recording still
referenced elsewhere is found too. Pass ``explain(..., recording=rec)`` to be explicit.
"""
from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import MissingValueError
from .graph import node_type
from .saved import read_saved

if TYPE_CHECKING:
    from .graph import Edge, Graph, Node

_LIVE: weakref.WeakSet = weakref.WeakSet()
_LAST = threading.local()


@dataclass(frozen=True)
class _Slot:
    """Marker in a recorded call: the argument is the graph value on this input slot."""

    slot: int


@dataclass(frozen=True)
class _ViewOf:
    """Marker in a recorded call: the in-place op's target, a view into the graph value on slot 0
    (the base that a ``CopySlices`` node outputs), with the layouts of base and view."""

    base: tuple[tuple[int, ...], tuple[int, ...]]
    view: tuple[tuple[int, ...], tuple[int, ...], int]


@dataclass
class _Kept:
    """A tensor kept by reference, with the version it had; ``copied`` once copied before a write."""

    tensor: torch.Tensor
    version: int
    copied: bool = False

    def value(self, what: str) -> torch.Tensor:
        if not self.copied and self.tensor._version != self.version:
            raise MissingValueError(
                f"{what} was recorded by reference and modified in place after the record() block (version"
                f" {self.version} -> {self.tensor._version}, e.g. an optimizer step or a buffer update); explain"
                " before changing the model, or run the forward inside record() again")
        return self.tensor.detach()


@dataclass
class RecordedCall:
    """What the graph lacks of one node: its constant operands and, if needed, the call to re-run.

    ``operands``: input slot -> kept tensor (operands outside the graph the node did not save).
    ``op``/``arguments``: the aten op and its arguments (``_Slot`` for graph values, kept tensors
    for tensors); ``None`` when a registered replay or a saved output already covers the node.
    """

    node_type: str
    operands: dict[int, _Kept] = field(default_factory=dict)
    op: Callable | None = None
    arguments: list[tuple[str, Any, bool]] | None = None  # (name, value, keyword-only)

    def operand(self, slot: int) -> torch.Tensor | None:
        kept = self.operands.get(slot)
        return None if kept is None else kept.value(f"the constant operand in slot {slot} of {self.node_type}")

    def replay(self, value_of: Callable[[int], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Re-run the recorded op with ``value_of(slot)`` for the graph values."""
        if self.op is None or self.arguments is None:
            raise MissingValueError(f"record() kept no call to re-run for {self.node_type}")
        write = _written_arguments(self.op)
        target: list[torch.Tensor] = []

        def resolve(name: str, value: Any) -> Any:
            if isinstance(value, _ViewOf):  # rebuild the base with its layout, write through the view
                base = value_of(0)
                buffer = torch.empty_strided(value.base[0], value.base[1], dtype=base.dtype, device=base.device)
                target.append(buffer.copy_(base))
                return buffer.as_strided(*value.view)
            if isinstance(value, _Slot):
                value = value_of(value.slot)
                return value.clone() if name in write else value
            if isinstance(value, _Kept):
                value = value.value(f"an argument of {self.node_type}")
                return value.clone() if name in write else value
            if isinstance(value, list):
                return [resolve(name, v) for v in value]
            return value

        args, kwargs = [], {}
        for name, value, keyword in self.arguments:
            value = resolve(name, value)
            if keyword:
                kwargs[name] = value
            else:
                args.append(value)
        with torch.no_grad():
            out = self.op(*args, **kwargs)
        if target:
            return (target[0],)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o for o in outs if isinstance(o, torch.Tensor))


class Recording:
    """The values one ``record()`` block kept: per node, a :class:`RecordedCall`; optionally outputs."""

    def __init__(self) -> None:
        self._calls: dict[Node, RecordedCall] = {}
        self._outputs: dict[Edge, torch.Tensor] = {}
        self._unmapped: dict[Node, str] = {}

    # -- queries (the Promise System) ----------------------------------------------------------
    def output(self, node: Node, nr: int = 0) -> torch.Tensor | None:
        """A node output kept by ``record(outputs=True)`` or :meth:`keep`."""
        return self._outputs.get((node, nr))

    def operand(self, node: Node, slot: int) -> torch.Tensor | None:
        """The operand outside the graph in ``node``'s input ``slot``, if the forward ran in the block."""
        call = self._calls.get(node)
        return None if call is None else call.operand(slot)

    def call(self, node: Node) -> RecordedCall | None:
        """The recorded call of ``node`` if it can be re-run (no registered replay covers it)."""
        call = self._calls.get(node)
        return call if call is not None and call.op is not None else None

    def unmapped(self, node: Node) -> str | None:
        """Why the recorder could not tell which argument went to which input slot of ``node``."""
        return self._unmapped.get(node)

    # -- bookkeeping ----------------------------------------------------------------------------
    def keep(self, tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor`` as the value of its graph edge (an output ``record`` cannot see)."""
        self._outputs[(tensor.grad_fn, tensor.output_nr)] = tensor.detach().clone()

    def without_outputs(self) -> Recording:
        """The same recording without the kept outputs: what a plain ``record()`` would hold."""
        view = Recording()
        view._calls, view._unmapped = self._calls, self._unmapped
        return view

    def __contains__(self, node: Node) -> bool:
        return node in self._calls or (node, 0) in self._outputs or node in self._unmapped

    def __len__(self) -> int:
        return len(self._calls) + len(self._outputs) + len(self._unmapped)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the recording keeps alive (operands, call arguments, outputs)."""
        found: list[torch.Tensor] = list(self._outputs.values())

        def visit(value: Any) -> None:
            if isinstance(value, _Kept):
                found.append(value.tensor)
            elif isinstance(value, list):
                for v in value:
                    visit(v)

        for call in self._calls.values():
            for kept in call.operands.values():
                visit(kept)
            for _, value, _ in call.arguments or ():
                visit(value)
        return found

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct storages the recording keeps alive (shared ones, e.g. parameters,
        included; see ``benchmarks/record_memory.py`` for the bytes kept alive only by it)."""
        storages = {}
        for t in self.tensors():
            storage = t.untyped_storage()
            storages[(storage.data_ptr(), t.device)] = storage.nbytes()
        return sum(storages.values())

    def clear(self) -> None:
        """Drop the recorded values (and the graph nodes they keep alive)."""
        self._calls.clear()
        self._outputs.clear()
        self._unmapped.clear()
        if getattr(_LAST, "recording", None) is self:
            _LAST.recording = None


# -- the recorder ---------------------------------------------------------------------------------
def _normalise(name: str) -> str:
    return name.replace("_", "").lower()


@functools.cache
def _node_base(node_name: str) -> str:
    return _normalise(re.sub(r"Backwards?\d*$", "", node_name))


@dataclass(frozen=True)
class _Schema:
    """What the recorder reads of an aten op's schema, parsed once per op (every call of the op in a
    forward reads it: parsing per call was most of the recorder's own time)."""

    names: tuple[str, ...]
    keyword_only: tuple[bool, ...]
    types: dict[str, str]  # argument name -> its type as the schema writes it ("Tensor", "Optional[Tensor]")
    written: frozenset[str]  # the arguments the op writes into (in-place and ``out=`` variants)
    base: str  # the op's name, normalised as node names are (no namespace, overload or trailing ``_``)


_SCHEMAS: dict[Any, _Schema] = {}


def _schema(op: Any) -> _Schema:
    found = _SCHEMAS.get(op)
    if found is None:
        arguments = op._schema.arguments
        found = _Schema(tuple(a.name for a in arguments), tuple(a.kwarg_only for a in arguments),
                        {a.name: str(a.type) for a in arguments},
                        frozenset(a.name for a in arguments if a.alias_info is not None and a.alias_info.is_write),
                        _normalise(op._schema.name.split("::")[-1]).rstrip("_"))
        _SCHEMAS[op] = found
    return found


def _written_arguments(op: Any) -> frozenset[str]:
    """Names of the arguments an aten op writes into (in-place and ``out=`` variants)."""
    return _schema(op).written


def _arguments(op: Any, args: tuple, kwargs: dict) -> list[tuple[str, Any, bool]]:
    """The op's arguments in schema order: ``(name, value, keyword-only)``."""
    schema = _schema(op)
    count = len(args)
    return [(name, args[i] if i < count else kwargs[name], keyword)
            for i, (name, keyword) in enumerate(zip(schema.names, schema.keyword_only))
            if i < count or name in kwargs]


def _slot_candidates(op: Any, arguments: list[tuple[str, Any, bool]]) -> list[tuple[str, torch.Tensor | None]]:
    """Arguments that can be input slots, in schema order: floating-point tensors (also inside tensor
    lists) and absent optional tensors (``None``: autograd gives them a ``(None, 0)`` edge too)."""
    types = _schema(op).types
    found: list[tuple[str, torch.Tensor | None]] = []
    for name, value, _ in arguments:
        if value is None and types[name] == "Optional[Tensor]":
            found.append((name, None))
        elif isinstance(value, (bool, int, float, complex)) and types[name] == "Tensor":
            found.append((name, _wrapped(value)))  # a Python scalar given for a tensor (``x + 1.0``)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, torch.Tensor) and (item.is_floating_point() or item.is_complex()):
                found.append((name, item))
    return found


def _wrapped(value: bool | int | float | complex) -> torch.Tensor:
    """A Python scalar as the 0-dim tensor autograd saw (double precision, no graph)."""
    dtype = {bool: torch.bool, int: torch.int64, float: torch.float64, complex: torch.complex128}[type(value)]
    return torch.tensor(value, dtype=dtype)


@dataclass
class _Pending:
    op: Any
    arguments: list[tuple[str, Any, bool]]
    floats: list[tuple[str, torch.Tensor | None]]  # the arguments that can be input slots (_slot_candidates)
    grad_fns: dict[int, Any]  # id(tensor argument) -> its grad_fn (or the tensor itself for leaves) before the call
    outputs: list[torch.Tensor]
    view: tuple[str, torch.Tensor, Any] | None = None  # (argument, view written in place, its base's grad_fn before)


class _Recorder(TorchDispatchMode):
    """The dispatch mode behind :class:`record`. A call's node exists only once autograd has wrapped
    the call's outputs, i.e. after ``__torch_dispatch__`` returns: each call is completed at the start
    of the next one (or when the block ends)."""

    def __init__(self, recording: Recording, outputs: bool = False):
        super().__init__()
        self.recording = recording
        self.outputs = outputs
        self._pending: _Pending | None = None
        self._by_storage: dict[int, list[_Kept]] = {}
        from .rules import REGISTRY  # here, not per call: the rules import this module

        self._registry = REGISTRY

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._complete()
        arguments = _arguments(func, args, kwargs)
        written = _written_arguments(func)
        if written and self._by_storage:
            self._copy_before_write([v for name, v, _ in arguments if name in written])
        floats = _slot_candidates(func, arguments)
        grad_fns = {}
        for _, t in floats:
            if t is not None and t.requires_grad:
                grad_fns[id(t)] = t.grad_fn if t.grad_fn is not None else t
        view = next(((name, v, v._base.grad_fn) for name, v, _ in arguments if name in written
                     and isinstance(v, torch.Tensor) and v._base is not None), None) if written else None
        result = func(*args, **kwargs)
        if grad_fns:
            outs = result if isinstance(result, (tuple, list)) else (result,)
            self._pending = _Pending(func, arguments, floats, grad_fns,
                                     [o for o in outs if isinstance(o, torch.Tensor)], view)
        return result

    def __exit__(self, *exc):
        self._complete()
        return super().__exit__(*exc)

    def _copy_before_write(self, targets: list[Any]) -> None:
        for target in targets:
            for t in target if isinstance(target, (list, tuple)) else [target]:
                if isinstance(t, torch.Tensor):
                    for kept in self._by_storage.pop(t.untyped_storage().data_ptr(), ()):
                        kept.tensor, kept.copied = kept.tensor.detach().clone(), True

    def _keep(self, tensor: torch.Tensor) -> _Kept:
        kept = _Kept(tensor, tensor._version)  # the object itself: a detach() made in here has its own version
        if tensor.untyped_storage().data_ptr():
            self._by_storage.setdefault(tensor.untyped_storage().data_ptr(), []).append(kept)
        return kept

    def _complete(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.view is not None and self._complete_view(pending):
            return
        node = next((o.grad_fn for o in pending.outputs if o.grad_fn is not None), None)
        if node is None or any(node is g for g in pending.grad_fns.values()):
            return
        if self.outputs:
            for o in pending.outputs:
                if o.grad_fn is node:
                    self.recording._outputs[(node, o.output_nr)] = o.detach().clone()
        registry = self._registry
        name = node_type(node)
        slots = self._map_slots(node, name, pending)
        if isinstance(slots, str):
            if any(child is None for child, _ in node.next_functions):
                self.recording._unmapped[node] = slots
            return
        saved = registry.saved.get(name)
        call = RecordedCall(name)
        for slot, (child, _) in enumerate(node.next_functions):
            value = slots[slot][1]
            if child is None and value is not None and not (
                    saved and slot in saved.inputs and isinstance(read_saved(node, saved.inputs[slot]), torch.Tensor)):
                call.operands[slot] = self._keep(value)
        if (name not in registry.replays or name in registry.partial_replays) and not (saved and 0 in saved.outputs):
            call.op, call.arguments = pending.op, self._template(pending.arguments, slots)
        if call.operands or call.op is not None:
            self.recording._calls[node] = call

    def _complete_view(self, pending: _Pending) -> bool:
        """An in-place op on a view made its base's new ``CopySlices`` node: slot 0 is the base, the
        op's other inputs follow. Keeps the call (the view's place in the base, scalars, constants)."""
        name, view, before = pending.view
        base = view._base
        node = base.grad_fn
        if node is None or node is before or type(node).__name__ != "CopySlices":
            return False
        if "CopySlices" in self._registry.replays and "CopySlices" not in self._registry.partial_replays:
            return True
        floats = pending.floats
        edges = node.next_functions
        if len(floats) < len(edges) or floats[0][1] is not view:
            self.recording._unmapped[node] = "the in-place op's arguments do not fit the CopySlices node"
            return True
        slots = [(name, view)] + floats[1:len(edges)]
        for (child, _), (_, tensor) in zip(edges[1:], slots[1:]):
            if (child is None) != (tensor is None or pending.grad_fns.get(id(tensor)) is None):
                self.recording._unmapped[node] = "the in-place op's arguments do not fit the CopySlices node"
                return True
        marker = _ViewOf((tuple(base.shape), base.stride()),
                         (tuple(view.shape), view.stride(), view.storage_offset() - base.storage_offset()))
        arguments = [(n, marker if v is view else v, k) for n, v, k in pending.arguments]
        call = RecordedCall("CopySlices", op=pending.op, arguments=self._template(arguments, slots))
        for slot, (child, _) in enumerate(edges):
            if slot and child is None and slots[slot][1] is not None:
                call.operands[slot] = self._keep(slots[slot][1])
        self.recording._calls[node] = call
        return True

    @staticmethod
    def _map_slots(node: Node, name: str, pending: _Pending) -> list | str:
        """Floating-point tensor arguments in schema order -> the node's input slots (the
        differentiable ones come first), checked against the graph edges; a reason when they do not fit."""
        if _node_base(name) != _schema(pending.op).base:
            return f"the node {name} was made by aten {pending.op._schema.name}"
        floats = pending.floats
        edges = node.next_functions
        if len(floats) < len(edges):
            return f"{len(floats)} tensor arguments for {len(edges)} input slots"
        for (child, _), (_, tensor) in zip(edges, floats):
            before = None if tensor is None else pending.grad_fns.get(id(tensor))
            if (child is None) != (before is None):
                return "the arguments that require grad do not match the node's edges"
            if child is not None and child is not before and getattr(child, "variable", None) is not before:
                return "an argument does not come from the node's edge"
        return floats[:len(edges)]

    def _template(self, arguments, slots) -> list[tuple[str, Any, bool]]:
        graph_ids = {id(t): slot for slot, (_, t) in enumerate(slots) if t is not None and t.requires_grad}
        kept: dict[int, _Kept] = {}

        def convert(value: Any) -> Any:
            if isinstance(value, _ViewOf):
                return value
            if isinstance(value, torch.Tensor):
                if id(value) in graph_ids:
                    return _Slot(graph_ids[id(value)])
                if id(value) not in kept:
                    kept[id(value)] = self._keep(value)
                return kept[id(value)]
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            return value

        return [(name, convert(value), keyword) for name, value, keyword in arguments]


class record:  # noqa: N801 - used as a context manager like torch.no_grad
    """Context manager: ``with dynlrp.record() as rec: out = model(x)``.

    ``outputs=True`` also keeps a copy of every node output (for checks; costs all activations).
    """

    def __init__(self, outputs: bool = False) -> None:
        self.recording = Recording()
        self.outputs = outputs
        self._mode: _Recorder | None = None

    def __enter__(self) -> Recording:
        _LIVE.add(self.recording)
        _LAST.recording = self.recording
        self._mode = _Recorder(self.recording, self.outputs)
        self._mode.__enter__()
        return self.recording

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None


def find_recording(graph: Graph) -> Recording | None:
    """The recording (this thread's latest, or any live one) that holds values of ``graph``."""
    candidates = [getattr(_LAST, "recording", None), *list(_LIVE)]
    for recording in candidates:
        if recording is not None and len(recording) and any(node in recording for node in graph.order):
            return recording
    return None
