"""The ledger check the tests share: each node judged at the precision its relevance was computed in."""
from __future__ import annotations

from dynlrp.explanation import NodeRecord

#: float32 rounding on the scale of the relevance that flows through a node (sums are in float32)
LOW_PRECISION_FLOW = 1e-6


def conserved(row: NodeRecord, tolerance: float) -> bool:
    """A float64 node: ``|in - out - absorbed| / |in| <= tolerance``. A node whose relevance is in a
    lower precision (a float32 island in a float64 model, e.g. an upcast softmax or a dtype cast):
    the same residual relative to its flow ``sum |R|``, at float32 scale."""
    if row.dtype in ("float64", ""):
        return row.error <= tolerance
    return row.flow_error <= max(tolerance, LOW_PRECISION_FLOW)
