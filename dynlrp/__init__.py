"""dynlrp: Layer-wise Relevance Propagation on the autograd graph of any PyTorch model.

    exp = dynlrp.explain(model(x), target=3, rules="epsilon", inputs=[x])
    exp.relevance(x); exp.conservation; exp.nodes; exp.promises; exp.tokens
    report = dynlrp.audit(model, x); report.coverage; report.missing; report.ops
"""
from . import presets, rules
from .audit import AuditReport, OpStats, audit
from .engine import explain, seed_relevance
from .errors import (
                     DecompositionMismatchError,
                     DynLRPError,
                     GraphFreedError,
                     InplaceModifiedError,
                     InputError,
                     MissingRuleError,
                     MissingRuleWarning,
                     MissingValueError,
                     NoGraphError,
                     RuleError,
                     TargetError,
                     TrainModeWarning,
)
from .explanation import Conservation, Explanation, NodeRecord, TokenRelevance
from .graph import Graph
from .plan import PlanCache
from .presets import Preset
from .record import Recording, record
from .rules import LinearRule, list_rules

__version__ = "0.1.0"

__all__ = [
    "AuditReport", "Conservation", "DecompositionMismatchError", "DynLRPError", "Explanation", "Graph",
    "GraphFreedError", "InplaceModifiedError", "InputError", "LinearRule", "MissingRuleError", "MissingRuleWarning",
    "MissingValueError", "NoGraphError", "NodeRecord", "OpStats", "PlanCache", "Preset", "Recording", "RuleError",
    "TargetError",
    "TokenRelevance", "TrainModeWarning", "audit", "explain", "list_rules", "presets", "record", "rules",
    "seed_relevance",
]
