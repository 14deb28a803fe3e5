"""``dynlrp.record()``: keep the forward outputs of every op, for values the graph does not hold.

Used around a forward (no model changes) it records, through a ``TorchFunctionMode``, the output of
every torch function call whose result is part of the autograd graph, keyed by ``(grad_fn,
output_nr)``. The Promise System reads these before it tries to recompute anything, and rules
recover operands that are outside the graph (frozen biases, buffers, masks) from a recorded output
(``b = z - W x``). Recorded values are copies, so later in-place updates cannot change them; the
cost is one copy per recorded output (``Recording.nbytes``).

``explain`` finds the recording of a graph by itself: the most recent ``record()`` block of the
calling thread is kept until the next one starts (or ``Recording.clear()``), and any recording still
referenced elsewhere is found too. Pass ``explain(..., recording=rec)`` to be explicit.
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

if TYPE_CHECKING:
    from .graph import Edge, Graph, Node

_LIVE: weakref.WeakSet = weakref.WeakSet()
_LAST = threading.local()


class Recording:
    """Forward outputs of the ops run inside one ``record()`` block."""

    def __init__(self) -> None:
        self._outputs: dict[Edge, torch.Tensor] = {}

    def output(self, node: Node, nr: int = 0) -> torch.Tensor | None:
        return self._outputs.get((node, nr))

    def keep(self, tensor: torch.Tensor) -> None:
        self._outputs[(tensor.grad_fn, tensor.output_nr)] = tensor.detach().clone()

    def __contains__(self, node: Node) -> bool:
        return (node, 0) in self._outputs

    def __len__(self) -> int:
        return len(self._outputs)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._outputs.values())

    def clear(self) -> None:
        """Drop the recorded values (and the graph nodes they keep alive)."""
        self._outputs.clear()
        if getattr(_LAST, "recording", None) is self:
            _LAST.recording = None


class _Recorder(TorchFunctionMode):
    def __init__(self, recording: Recording):
        super().__init__()
        self.recording = recording

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor) and leaf.grad_fn is not None:
                self.recording.keep(leaf)
        if result is None and getattr(func, "__name__", "") == "__setitem__" and getattr(args[0], "grad_fn", None):
            self.recording.keep(args[0])  # y[i] = v: the CopySlices / IndexPut output returns nothing
        return result


class record:  # noqa: N801 - used as a context manager like torch.no_grad
    """Context manager: ``with dynlrp.record() as rec: out = model(x)``."""

    def __init__(self) -> None:
        self.recording = Recording()
        self._mode: _Recorder | None = None

    def __enter__(self) -> Recording:
        _LIVE.add(self.recording)
        _LAST.recording = self.recording
        self._mode = _Recorder(self.recording)
        self._mode.__enter__()
        return self.recording

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None


def find_recording(graph: Graph) -> Recording | None:
    """The recording (this thread's latest, or any live one) that holds outputs of ``graph``."""
    candidates = [getattr(_LAST, "recording", None), *list(_LIVE)]
    for recording in candidates:
        if recording is not None and len(recording) and any(node in recording for node in graph.order):
            return recording
    return None
