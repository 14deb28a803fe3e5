"""The blockwise kernels of ``dynlrp.rules.common`` (no temporary of a large tensor's size) against
the whole-tensor formulas, and a rule on a large layer, blockwise against whole-tensor."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dynlrp
from dynlrp.rules import common

LARGE = 2 * common.BLOCK + 12345  # several blocks and a short last one


@pytest.fixture
def pair():
    torch.manual_seed(0)
    return torch.randn(LARGE, dtype=torch.float64), torch.randn(LARGE, dtype=torch.float64)


def test_sums_are_the_whole_tensor_sums(pair):
    t, _ = pair
    torch.testing.assert_close(common.abs_total(t), t.abs().sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(common.wide_total(t.float()), t.float().double().sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("positive", [True, False])
def test_keep_sign_and_kept_total(pair, positive):
    t, y = pair
    y[:7] = 0.0  # exact zeros are left out by either sign
    mask = (y > 0) if positive else (y < 0)
    expected = torch.where(mask, t, 0.0)
    torch.testing.assert_close(common.kept_total(t, y, positive), expected.sum(), rtol=1e-12, atol=0)
    kept = common.keep_sign(t.clone(), y, positive)
    assert torch.equal(kept, expected)
    small = common.keep_sign(t[:10].clone(), y[:10], positive)  # the whole-tensor path
    assert torch.equal(small, expected[:10])


def _gamma_conv_relevance(x: torch.Tensor, conv: nn.Module) -> tuple[torch.Tensor, dict]:
    x = x.clone().requires_grad_(True)
    out = conv(x).sum((1, 2, 3))[:, None]  # relevance on every output; z of both signs: two groups
    exp = dynlrp.explain(out, target=0, rules=dynlrp.presets.get("epsilon_gamma_box"), inputs=[x])
    gamma = next(r for r in exp.nodes if r.node_type == "ConvolutionBackward0")  # the sweep's first
    return exp.relevance(x), gamma.absorbed


def test_gamma_on_a_large_layer_is_the_same_blockwise(monkeypatch):
    """A convolution whose output spans several blocks (gamma: the z > 0 and z < 0 selections run
    blockwise) gives the relevance and ledger of the whole-tensor path."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(4, 4, 1, dtype=torch.float64), nn.ReLU(),  # the first layer: ZBox
                         nn.Conv2d(4, 16, 3, padding=1, dtype=torch.float64))  # gamma
    x = torch.randn(1, 4, 200, 200, dtype=torch.float64)
    assert 16 * 200 * 200 > 2 * common.BLOCK
    blockwise, ledger = _gamma_conv_relevance(x, conv)
    monkeypatch.setattr(common, "BLOCK", 1 << 40)
    whole, whole_ledger = _gamma_conv_relevance(x, conv)
    torch.testing.assert_close(blockwise, whole, rtol=1e-12, atol=1e-15)
    assert ledger.keys() == whole_ledger.keys()
    scale = float(whole.abs().sum())  # shares that cancel to ~0 differ by rounding at this scale
    for key in ledger:
        assert ledger[key] == pytest.approx(whole_ledger[key], rel=1e-10, abs=1e-12 * scale)
