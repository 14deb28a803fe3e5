"""LRP rules, one module per op family, registered by autograd node type name."""
from . import (  # noqa: F401
    activation,
    attention,
    elementwise,
    gelu_function,
    indexing,
    linear,
    mamba_inner,
    normalization,
    pooling,
    reduction,
    selective_scan,
    shape,
    sources,
)
from .decompose import register_decomposition
from .linear import LinearRule
from .registry import REGISTRY, RuleInfo, replay, rule, saved_values
from .rnn import rnn_layer


def list_rules() -> list[RuleInfo]:
    """Every registered rule with its family, node types and docstring (formula + absorption)."""
    return REGISTRY.list_rules()


def covered_node_types() -> set[str]:
    """Node type names that have a rule."""
    return set(REGISTRY.rules)


__all__ = ["REGISTRY", "LinearRule", "RuleInfo", "covered_node_types", "list_rules", "register_decomposition", "replay",
           "rnn_layer", "rule", "saved_values"]
