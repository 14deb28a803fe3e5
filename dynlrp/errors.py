"""Named errors: every failure of the engine says what went wrong, where, and what to do."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class DynLRPError(Exception):
    """Base class of every error raised by dynlrp."""


class NoGraphError(DynLRPError):
    """The tensor to explain has no autograd graph (no ``grad_fn``)."""


class TargetError(DynLRPError, ValueError):
    """The ``target`` does not fit the output (index out of range, wrong shape or type)."""


class InputError(DynLRPError, ValueError):
    """A tensor passed in ``inputs`` is not part of the graph, or no input could be found."""


class GraphFreedError(DynLRPError):
    """The graph's saved tensors were freed (``backward()`` ran without ``retain_graph=True``)."""


class InplaceModifiedError(DynLRPError):
    """A tensor saved for backward was modified in place after it was saved."""


@dataclass(frozen=True)
class MissingValue:
    """One forward value the graph does not hold: ``what`` (``"input 1"``, ``"output 0"``) of a node
    of type ``node_type`` at module ``module`` (``""`` if unknown), needed by the rule of ``needed_by``."""

    node_type: str
    what: str
    module: str
    needed_by: str
    reason: str

    def line(self) -> str:
        where = self.module or "<module unknown: dynlrp.audit(model, x) names it>"
        return f"  {self.node_type} {self.what} at {where} (needed by the rule of {self.needed_by})"


class MissingValueError(DynLRPError):
    """A forward value that a rule needs is not held by the graph (a constant operand, a frozen bias).

    ``missing`` lists every such value of the explanation (:class:`MissingValue`); ``node`` and
    ``what`` name the first one where it was found.
    """

    def __init__(self, message: str, *, node: Any = None, what: str = "", missing: Sequence[MissingValue] = ()):
        super().__init__(message)
        self.node = node
        self.what = what
        self.missing = list(missing)

    @classmethod
    def listing(cls, missing: Sequence[MissingValue]) -> MissingValueError:
        lines = "\n".join(m.line() for m in missing)
        first = missing[0].reason
        return cls(f"the autograd graph does not hold {len(missing)} forward value(s) that the rules need, so"
                   f" this explanation cannot be computed exactly post hoc:\n{lines}\nfirst: {first}\nfix: run the"
                   " forward inside `with dynlrp.record():` (it keeps exactly these values) and explain its output;"
                   " never substituted: no zero or other operand stands in for them", missing=missing)


class RuleError(DynLRPError):
    """A rule failed or returned relevance of the wrong shape for a node."""


class DecompositionMismatchError(RuleError):
    """A registered decomposition (:func:`dynlrp.rules.register_decomposition`) does not reproduce its
    node: the reference function's outputs (or their gradients) differ from the node's own beyond the
    tolerance, or it returns the wrong number or shapes of outputs."""


class MissingRuleError(DynLRPError):
    """Nodes without a rule were met while ``strict=True``.

    ``missing`` maps each node type to ``(count, [module paths])``.
    """

    def __init__(self, missing: dict[str, tuple[int, list[str]]]):
        self.missing = dict(missing)
        lines = [
            f"  {name} x{count} at {', '.join(paths[:5]) or '<unknown module>'}"
            + (f" (+{len(paths) - 5} more)" if len(paths) > 5 else "")
            for name, (count, paths) in sorted(self.missing.items())
        ]
        super().__init__(
            "no LRP rule for these autograd node types:\n"
            + "\n".join(lines)
            + "\nregister a rule with dynlrp.rules.rule(...) (or, for a custom Function or fused kernel, a pure-PyTorch"
            " reference with dynlrp.rules.register_decomposition(...)), or call explain(strict=False) to use the"
            " named gradient fallback"
        )


class MissingRuleWarning(UserWarning):
    """Nodes without a rule were propagated with the named gradient fallback."""


class TrainModeWarning(UserWarning):
    """The forward ran in train mode (batch statistics, active dropout): the explanation is of that
    random, batch-dependent forward; call ``model.eval()`` to explain the model as deployed."""
