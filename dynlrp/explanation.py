"""Results of an explanation: relevance per input, tokens, the per-node ledger, totals, promises."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InputError
from .values import PromiseStats


@dataclass
class Conservation:
    """Whole-model totals: ``output`` = ``inputs`` + sum(``absorbed``) up to ``unexplained``.

    ``unexplained = |output - inputs - sum(absorbed)| / |output|`` (relative).
    """

    output: float
    inputs: float
    absorbed: dict[str, float]
    unexplained: float


@dataclass
class NodeRecord:
    """One ledger row: relevance in (from consumers) and out (to producers), absorbed by cause,
    and the relative unexplained error ``|in - out - absorbed| / |in|``."""

    node_type: str
    rule: str
    module: str
    relevance_in: float
    relevance_out: float
    absorbed: dict[str, float]
    error: float
    fallback: bool = False
    flow: float = 0.0  # sum |R| in + sum |R| passed on: the scale of rounding error in low precision
    dtype: str = ""  # the least precise dtype of the node's relevance ("float32", ...): its ledger precision

    @property
    def flow_error(self) -> float:
        """``|in - out - absorbed| / flow``: the unexplained part on the scale of rounding errors
        (sums are taken in each tensor's precision, so a float32 node errs at ~1e-7 of its flow
        even in a float64 model; :attr:`dtype` says which)."""
        residual = abs(self.relevance_in - self.relevance_out - sum(self.absorbed.values()))
        return residual / max(self.flow, 1e-300) if residual else 0.0


@dataclass
class TokenRelevance:
    """Relevance per token position of one embedding lookup: ``ids`` and ``relevance`` share a shape."""

    module: str
    ids: torch.Tensor
    relevance: torch.Tensor


@dataclass
class Explanation:
    """What :func:`dynlrp.explain` returns."""

    conservation: Conservation
    nodes: list[NodeRecord]
    promises: PromiseStats
    tokens: list[TokenRelevance]
    fallbacks: dict[str, int]
    preset: str
    _inputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    def relevance(self, tensor: torch.Tensor) -> torch.Tensor:
        """Relevance of an explained input, with that input's shape."""
        for known, relevance in self._inputs:
            if known is tensor:
                return relevance
        raise InputError("this tensor was not explained: pass it in explain(..., inputs=[...])")

    @property
    def inputs(self) -> list[torch.Tensor]:
        return [t for t, _ in self._inputs]

    def node_errors(self) -> dict[str, float]:
        """Largest unexplained relative error per node type."""
        worst: dict[str, float] = {}
        for row in self.nodes:
            worst[row.node_type] = max(worst.get(row.node_type, 0.0), row.error)
        return worst
