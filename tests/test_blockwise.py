"""The blockwise kernels of ``dynlrp.rules.common`` (no temporary of a large tensor's size) against
the whole-tensor formulas, and a rule on a large layer, blockwise against whole-tensor."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dynlrp
from dynlrp.rules import common

LARGE = common.BLOCKWISE_ABOVE + 12345  # several blocks and a short last one


@pytest.fixture
def pair():
    torch.manual_seed(0)
    return torch.randn(LARGE, dtype=torch.float64), torch.randn(LARGE, dtype=torch.float64)


def test_sums_are_the_whole_tensor_sums(pair):
    t, _ = pair
    torch.testing.assert_close(common.abs_total(t), t.abs().sum(), rtol=1e-12, atol=0)
    value, flow = common.totals(t)
    torch.testing.assert_close(value, t.sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(flow, t.abs().sum(), rtol=1e-12, atol=0)
    assert [float(v) for v in common.totals(t[:10])] == pytest.approx([float(t[:10].sum()), float(t[:10].abs().sum())])
    torch.testing.assert_close(common.wide_total(t.float()), t.float().double().sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("size", [LARGE, 10])  # blockwise, whole tensor
def test_divide_selected_keeps_one_sign(pair, positive, size):
    """``c`` is ``R / s(z)`` where ``y`` has the selected sign and exactly 0 elsewhere (exact zeros of
    ``y`` are left out by either sign); ``kept`` is the relevance there."""
    r, z = (t[:size] for t in pair)
    y = torch.roll(z, 3)
    y[:7] = 0.0
    mask = (y > 0) if positive else (y < 0)
    c, _, kept = common.divide_selected(r, z, 1e-3, y, positive)
    assert torch.equal(c, torch.where(mask, r / common.stabilize(z, 1e-3), 0.0))
    torch.testing.assert_close(kept, torch.where(mask, r, 0.0).sum(), rtol=1e-12, atol=0)


def _whole_divide(r, z, eps, select=None):
    s = z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)  # sign(+-0) = +1
    c = r / s
    if select is not None:
        y, positive = select
        c = torch.where((y > 0) if positive else (y < 0), c, 0.0)
    return c, ((s - z) * c).sum(), ((s - z) * c).abs().sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("select", [None, "other", "z"])
@pytest.mark.parametrize("size", [LARGE, 10])  # blockwise, whole tensor
def test_divide_blockwise_is_the_whole_tensor_division(pair, dtype, overwrite, select, size):
    """``divide`` on large operands runs blockwise: the same ``c`` bit for bit, the stabiliser share
    to rounding, with ``z``'s buffer reused (``overwrite``) and a selection by another tensor or by
    ``z`` itself (its mask is taken before ``c`` overwrites ``z``), as on small ones."""
    r, z = (t[:size].to(dtype) for t in pair)
    z[:5] = torch.tensor([0.0, -0.0, 1e-9, -1e-9, 0.0], dtype=dtype)  # |s| near epsilon
    y = {None: None, "other": torch.roll(z, 1), "z": z}[select]
    positive = True
    expected_c, expected_lost, flow = _whole_divide(r, z, 1e-3, None if y is None else (y.clone(), positive))
    z_in, before = (z.clone() if overwrite else z), z.clone()
    if y is None:
        c, lost = common.divide(r, z_in, 1e-3, overwrite=overwrite)
    else:
        c, lost, _ = common.divide_selected(r, z_in, 1e-3, z_in if select == "z" else y, positive, overwrite=overwrite)
    assert torch.equal(c, expected_c)
    if size == LARGE:  # blockwise, overwrite: c takes z's buffer (whole: c takes s's, z holds s - z)
        assert (c.data_ptr() == z_in.data_ptr()) == overwrite
        assert not overwrite or c is z_in
    rounding = 1e-6 if dtype == torch.float32 else 1e-14  # of the sum, on the scale of its terms
    torch.testing.assert_close(lost, expected_lost, rtol=0, atol=float(rounding * flow))
    if not overwrite:
        assert torch.equal(z, before)  # z left as it was


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
    x = torch.randn(1, 4, 280, 280, dtype=torch.float64)
    assert 16 * 280 * 280 > common.BLOCKWISE_ABOVE
    blockwise, ledger = _gamma_conv_relevance(x, conv)
    monkeypatch.setattr(common, "BLOCKWISE_ABOVE", 1 << 40)
    whole, whole_ledger = _gamma_conv_relevance(x, conv)
    torch.testing.assert_close(blockwise, whole, rtol=1e-12, atol=1e-15)
    assert ledger.keys() == whole_ledger.keys()
    scale = float(whole.abs().sum())  # shares that cancel to ~0 differ by rounding at this scale
    for key in ledger:
        assert ledger[key] == pytest.approx(whole_ledger[key], rel=1e-10, abs=1e-12 * scale)


def test_zero_where_zero_blockwise(pair):
    """The support check (relevance zero wherever a ReLU's result is) on a tensor of several blocks:
    one non-zero element off the support, in the last block, is found."""
    t, y = pair
    y = y.clamp(min=0)
    on_support = t * y.sign()
    assert common.zero_where_zero(on_support, y)
    off = torch.nonzero(y == 0)[-1]
    assert off >= LARGE - common.BLOCK
    on_support[off] = 1e-300
    assert not common.zero_where_zero(on_support, y)
