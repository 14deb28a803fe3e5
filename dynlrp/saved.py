"""A node's ``_saved_*`` attributes: read with named errors instead of autograd's RuntimeErrors, and
released once a sweep no longer needs them (``explain(..., retain_graph=False)``)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .errors import GraphFreedError, InplaceModifiedError
from .graph import Graph, Node, node_type

RELEASED = "freed by dynlrp.explain(..., retain_graph=False)"


def read_saved(node: Node, attr: str) -> Any:
    """``getattr(node, attr)``; freed or in-place-modified saved tensors raise named errors."""
    try:
        return getattr(node, attr)
    except RuntimeError as err:
        text = str(err)
        if RELEASED in text:
            raise GraphFreedError(f"{node_type(node)}.{attr} was {RELEASED}; explain with retain_graph=True"
                                  " (the default) to explain or differentiate the same graph again") from err
        if "freed" in text or "second time" in text:
            raise GraphFreedError(
                f"{node_type(node)}.{attr} was freed by an earlier backward(); explain before calling"
                " backward(), or call backward(retain_graph=True)"
            ) from err
        if "inplace operation" in text:
            raise InplaceModifiedError(
                f"{node_type(node)}.{attr} was modified in place after the forward saved it, so its"
                " forward value is gone; run the model without that in-place update (e.g. disable"
                " caches such as use_cache=True) or use an out-of-place op"
            ) from err
        raise


def signed(value: Any) -> Any:
    """A saved integer as autograd means it: values stored as uint64 (``2**64 - 1`` for -1) wrapped
    back to negative; tuples item by item."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**63:
        return value - 2**64
    if isinstance(value, tuple):
        return tuple(signed(v) for v in value)
    return value


@functools.cache
def _raw_saved_names(kind: type) -> tuple[str, ...]:
    return tuple(name for name in dir(kind) if name.startswith("_raw_saved_"))


def _drop(tensor: Any) -> None:
    """Pack hook: keep nothing (the node's reference to the tensor is dropped by autograd)."""
    return None


def _released(packed: Any) -> Any:
    raise RuntimeError(f"this saved tensor was {RELEASED}; a later backward() or explain() on this graph"
                       " needs retain_graph=True there")


def release_saved(node: Node) -> None:
    """Drop ``node``'s references to the tensors it saved for backward, as autograd's own backward
    does with ``retain_graph=False``: a saved-tensor hook pair is registered that packs nothing
    (autograd then forgets the tensor) and raises a named error on a later read. Saved tensors that
    already carry hooks (``torch.autograd.graph.saved_tensors_hooks`` in the forward) or hold
    ``None`` are left as they are."""
    for name in _raw_saved_names(type(node)):
        try:
            raw = getattr(node, name)
        except RuntimeError:  # already freed
            continue
        for saved in raw if isinstance(raw, (list, tuple)) else (raw,):
            if saved is None or not hasattr(saved, "register_hooks"):
                continue
            try:
                saved.register_hooks(_drop, _released)
            except RuntimeError:  # hooks already set, freed, or an undefined (None) tensor
                continue


def release_schedule(graph: Graph, through: Callable[[Node], bool], depth: int,
                     runs: Callable[[Node], bool] = lambda node: True) -> dict[int, list[int]]:
    """Sweep position -> positions of the nodes whose saved tensors can be released once the sweep
    has passed it. The Promise System reads a node ``R``'s saved tensors for the value of an edge of
    ``Y``, where ``Y`` is ``R`` or reached from it through at most ``depth`` shape or scale nodes
    (``through``: a consumer's saved input, a read across a reshape, values gathered back from routing
    consumers or divided back out of an exact scale).
    Such a value is asked for by a rule at ``Y``, at a consumer of ``Y`` (its input) or at a producer
    of ``Y`` (a batch norm merged into the convolution before it), and rules run only at nodes that
    get relevance (``runs``: the nodes that depend on an explained input). So ``R``'s tensors are
    released after the last of those nodes in the sweep order (consumers come first)."""
    index = {node: i for i, node in enumerate(graph.order)}
    edges, consumers = graph.edges, graph.consumers
    asked: dict[Node, int] = {}  # Y -> the last position at which a rule may ask for one of its values
    for node, pos in index.items():
        last = pos if runs(node) else max((index[c] for c, _, _ in consumers[node] if runs(c)), default=-1)
        asked[node] = max([last, *(index[x] for x, _ in edges[node] if x is not None and runs(x))])
    schedule: dict[int, list[int]] = {}
    for pos, node in enumerate(graph.order):
        last, seen, stack = max(pos, asked[node]), {node}, [(node, 0)]
        while stack:
            current, steps = stack.pop()
            for y, _ in edges[current]:
                if y is None or y in seen:
                    continue
                seen.add(y)
                last = max(last, asked[y])
                if steps < depth and through(y):
                    stack.append((y, steps + 1))
        schedule.setdefault(last, []).append(pos)
    return schedule
