"""Shared fixtures: deterministic seeds and float64 defaults for conformance tests."""
from __future__ import annotations

import os

import pytest
import torch

collect_ignore = [] if os.environ.get("DYNLRP_LXT_ENV") else ["lxt_env"]  # tox -e lxt (transformers<5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
