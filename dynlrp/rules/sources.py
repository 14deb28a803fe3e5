"""Where relevance ends: input leaves and embedding lookups (token relevance)."""
from __future__ import annotations

from ..context import NodeContext, RuleResult
from .registry import replay, rule


@rule("AccumulateGrad")
def input_leaf(ctx: NodeContext, relevance):
    """A leaf tensor: the relevance reaching an explained input is its relevance (``R_x``), kept
    whole; nothing is absorbed. (Parameter leaves receive none: their shares are booked as
    absorbed where they are used.)"""
    return RuleResult((), sources=relevance[0])


@rule("EmbeddingBackward0", source=True)
def embedding(ctx: NodeContext, relevance):
    """Embedding lookup ``y[t] = W[ids[t]]``: the ids are the input, so the relevance of a token is
    the relevance of its embedding vector, ``R_t = sum_d R[t, d]``; the table W gets none. Exact."""
    return RuleResult((None,), sources=relevance[0].sum(-1))


@replay("EmbeddingBackward0")
def _embedding_forward(ctx: NodeContext):
    return (ctx.input(0)[ctx.saved("indices")],)
