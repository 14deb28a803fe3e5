"""Transformer, audio, state-space and vision-language models: coverage 1.0 and per-node
conservation in float64 on tiny configs built straight from transformers configs."""
from __future__ import annotations

import warnings

import pytest
import torch
from hf_tiny import FLOAT32_ONLY, MODELS, NO_SDPA, build
from ledger import conserved

import dynlrp

CASES = [(name, attn) for name in MODELS for attn in ("eager", "sdpa") if not (attn == "sdpa" and name in NO_SDPA)]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="transformers")
        yield


@pytest.mark.parametrize("name,attn", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_tiny_model_is_covered_and_conserves(name, attn):
    dtype = torch.float32 if name in FLOAT32_ONLY else torch.float64
    model, args, kwargs = build(name, attn, dtype)
    report = dynlrp.audit(model, *args, rules="attnlrp", **kwargs)
    assert report.error is None
    assert report.missing == {}, report.missing
    assert report.coverage == 1.0
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    worst = {row.node_type: row.error for row in report.explanation.nodes if not conserved(row, tolerance)}
    assert worst == {}
    assert report.conservation["unexplained"] < tolerance
    assert report.activations.max_error < (1e-5 if dtype == torch.float32 else 1e-12)
    assert report.backward_ok
