"""Golden LRP values worked out by hand on two-layer networks.

The first case is Captum's hand-computed LRP example (the ``SimpleLRPModel`` of Captum's own LRP
tests): ``Linear(3, 3)`` with every weight 2 -> ReLU -> ``Linear(3, 1)`` with every weight 3, biases
0, input ``[1, 2, 3]``. Its input relevance ``[18, 36, 54]`` is the reference value every LRP
implementation should reproduce. All weights are positive there, so epsilon, gamma and z+ coincide
on it (alpha2-beta1 passes on twice the relevance: its beta group is empty); the second network has
mixed-sign weights so that epsilon, gamma, alpha2-beta1 and z+ give four different, still
hand-checkable answers. Captum's batch variant and its Gamma / Alpha1-Beta0 variants (one weight
set to -2; expected values copied from Captum's ``tests/attr/test_lrp.py``) are reproduced too. Each
expected value is derived in the comments next to it.

Conventions (dynlrp's defaults): the starting relevance is the output value (``seed="value"``);
``s(z) = z + eps * sign(z)``. A tiny ``eps`` (1e-9, float64) makes the epsilon rule LRP-0 up to
~1e-9 relative, which the tolerances below allow for.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dynlrp

EPS = 1e-9
TOL = dict(rtol=1e-7, atol=1e-7)  # eps = 1e-9 moves relevances of size ~10 by ~1e-8 at most


def _linear(weight: list[list[float]]) -> nn.Linear:
    """An ``nn.Linear`` with the given weight (out x in) and a zero bias."""
    w = torch.tensor(weight, dtype=torch.float64)
    layer = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.zero_()
    return layer


def _forward(first: nn.Linear, second: nn.Linear):
    """``x -> h = relu(first(x)) -> out = second(h)`` on ``x = [1, 2, 3]``; returns ``(x, h, out)``."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    h = torch.relu(first(x))
    return x, h, second(h)


def _explain(out: torch.Tensor, preset: str, tensor: torch.Tensor) -> dynlrp.Explanation:
    return dynlrp.explain(out, target=0, rules=dynlrp.presets.get(preset, epsilon=EPS), inputs=[tensor])


def _check(out, preset, x, h, expected_h, expected_x, conserved=True):
    """Relevance at the hidden layer (the sweep cut at ``h``) and at the input, plus the ledger."""
    at_h = _explain(out, preset, h)
    at_x = _explain(out, preset, x)
    torch.testing.assert_close(at_h.relevance(h), torch.tensor([expected_h], dtype=torch.float64), **TOL)
    torch.testing.assert_close(at_x.relevance(x), torch.tensor([expected_x], dtype=torch.float64), **TOL)
    for exp, expected in ((at_h, expected_h), (at_x, expected_x)):
        cons = exp.conservation
        assert cons.output == pytest.approx(out.item(), rel=1e-12)  # seed="value": R_out = out
        assert cons.inputs == pytest.approx(sum(expected), rel=1e-8, abs=1e-8)
        assert cons.unexplained < 1e-12  # output = inputs + absorbed, every term booked
        if conserved:  # zero biases, no empty denominators: only the tiny stabiliser share is absorbed
            assert abs(sum(cons.absorbed.values())) < 1e-8 * abs(out.item())


# ------------------------------------------------------------------------------------------------
# Captum's example: all weights positive.
#
#   h_j = relu(2*1 + 2*2 + 2*3) = 12          for j = 1, 2, 3
#   out = 3*12 + 3*12 + 3*12   = 108          (start relevance R_out = 108)
#
# Layer 2 (epsilon, eps -> 0): R_h_j = h_j * w_j / out * R_out = 12 * 3 / 108 * 108 = 36
# Layer 1: every h_j has R_h_j / h_j = 36 / 12 = 3, so
#   R_x_i = x_i * sum_j 2 * 3 = x_i * 18  ->  [18, 36, 54]      (sum 108 = R_out: conserved)
#
# With only positive weights and inputs, z+ = z and z- = 0, so gamma (w + gamma*w+ = (1+gamma) w
# cancels in the ratio) and z+ give the same numbers. Alpha2-beta1 does not: see below.


def _captum_model_forward():
    return _forward(_linear([[2.0] * 3] * 3), _linear([[3.0] * 3]))


@pytest.mark.parametrize("preset", ["epsilon", "gamma", "zplus"])
def test_captum_example(preset):
    x, h, out = _captum_model_forward()
    assert out.item() == 108.0
    _check(out, preset, x, h, [36.0, 36.0, 36.0], [18.0, 36.0, 54.0])


def test_captum_example_alpha2_beta1_is_not_conservative():
    # Every contribution is positive, so the beta group of each neuron is empty: z- = 0, its
    # denominator is s(0) = +eps and all its numerators are 0, so it distributes nothing and the
    # neuron passes on alpha * R = 2R instead of (alpha - beta) R = R (zennit's AlphaBeta does the same).
    # Layer 2: c = h * w = [36, 36, 36], z+ = 108:  R_h_j = 2 * 36/108 * 108 = 72
    # Layer 1: each neuron c = x * 2 = [2, 4, 6], z+ = 12, R = 72:  2 * [2, 4, 6]/12 * 72 = [24, 48, 72]
    #   three neurons: R_x = [72, 144, 216]  (sum 432 = 4 * 108)
    # The ledger books the missing beta share (-beta * R per layer: -108, then -216) as absorbed, so
    # output = inputs + absorbed still holds: 108 = 432 - 324.
    x, h, out = _captum_model_forward()
    _check(out, "alpha_beta", x, h, [72.0, 72.0, 72.0], [72.0, 144.0, 216.0], conserved=False)
    absorbed = _explain(out, "alpha_beta", x).conservation.absorbed
    assert sum(absorbed.values()) == pytest.approx(-324.0, rel=1e-8)


def test_captum_example_batch():
    # Captum's batch variant: rows x and 3x, target 0 for each row. Row 2, x = [3, 6, 9]:
    #   h_j = 2 * 18 = 36, out = 3 * 108 = 324;  R_h_j = 36 * 3 / 324 * 324 = 108;  R_h_j / h_j = 3
    #   R_x_i = x_i * sum_j 2 * 3 = 18 x_i = [54, 108, 162]  (sum 324; row 1 is unchanged)
    first, second = _linear([[2.0] * 3] * 3), _linear([[3.0] * 3])
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]], dtype=torch.float64, requires_grad=True)
    out = second(torch.relu(first(x)))
    exp = _explain(out, "epsilon", x)
    expected = torch.tensor([[18.0, 36.0, 54.0], [54.0, 108.0, 162.0]], dtype=torch.float64)
    torch.testing.assert_close(exp.relevance(x), expected, **TOL)
    assert exp.conservation.output == pytest.approx(108.0 + 324.0, rel=1e-12)
    assert exp.conservation.unexplained < 1e-12


# Captum's rule variants change one weight: W1[0][0] = -2, so W1 = [[-2, 2, 2], [2, 2, 2], [2, 2, 2]]:
#   h = [-2 + 4 + 6, 12, 12] = [8, 12, 12],  out = 3 * (8 + 12 + 12) = 96
# Layer 2 has only positive weights and inputs, so gamma and z+ both give R_h = 96 * h / 32 = [24, 36, 36].


def _captum_variant_forward():
    w1 = [[2.0] * 3 for _ in range(3)]
    w1[0][0] = -2.0
    return _forward(_linear(w1), _linear([[3.0] * 3]))


def test_captum_gamma_variant():
    # Captum's GammaRule(gamma=1) on layer 1 and GammaRule() (0.25) on layer 2; in dynlrp the
    # first layer (the one reading the input) has its own role in a preset.
    # Layer 1, w' = w + 1 * max(w, 0):
    #   neuron 1: w' = [-2, 4, 4], c = x * w' = [-2, 8, 12], sum 18, R = 24:  [-8/3, 32/3, 16]
    #   neurons 2, 3: w' = [4, 4, 4], c = [4, 8, 12], sum 24, R = 36:   2 * [6, 12, 18] = [12, 24, 36]
    #   R_x = [12 - 8/3, 24 + 32/3, 52] = [28/3, 104/3, 52]                 (Captum's expected value)
    preset = dynlrp.Preset("captum_gamma", dense=dynlrp.LinearRule("gamma", epsilon=EPS, gamma=0.25),
                           first=dynlrp.LinearRule("gamma", epsilon=EPS, gamma=1.0), epsilon=EPS)
    x, _, out = _captum_variant_forward()
    assert out.item() == 96.0
    exp = dynlrp.explain(out, target=0, rules=preset, inputs=[x])
    torch.testing.assert_close(exp.relevance(x), torch.tensor([[28 / 3, 104 / 3, 52.0]], dtype=torch.float64),
                               **TOL)
    assert exp.conservation.unexplained < 1e-12
    assert exp.conservation.inputs == pytest.approx(96.0, rel=1e-8)


@pytest.mark.parametrize("preset", ["zplus", "alpha1_beta0"])
def test_captum_alpha1_beta0_variant(preset):
    # Captum's Alpha1_Beta0_Rule on both layers (= z+): only positive contributions count.
    # Layer 1, neuron 1: c = [-2, 4, 6], z+ = 10, R = 24:  [0, 9.6, 14.4]
    #   neurons 2, 3: c = [2, 4, 6], z+ = 12, R = 36:  2 * [6, 12, 18] = [12, 24, 36]
    #   R_x = [12, 33.6, 50.4]                                              (Captum's expected value)
    rules = (dynlrp.presets.get("alpha_beta", epsilon=EPS, alpha=1.0, beta=0.0) if preset == "alpha1_beta0"
             else dynlrp.presets.get("zplus", epsilon=EPS))
    x, _, out = _captum_variant_forward()
    exp = dynlrp.explain(out, target=0, rules=rules, inputs=[x])
    torch.testing.assert_close(exp.relevance(x), torch.tensor([[12.0, 33.6, 50.4]], dtype=torch.float64), **TOL)
    assert exp.conservation.unexplained < 1e-12
    assert exp.conservation.inputs == pytest.approx(96.0, rel=1e-8)


# ------------------------------------------------------------------------------------------------
# Mixed signs: W1 = [[-3, -1, 3], [-1, -2, 2]], W2 = [[2, -2]], x = [1, 2, 3], biases 0.
#
#   h1 = -3*1 - 1*2 + 3*3 = 4,  h2 = -1*1 - 2*2 + 2*3 = 1   (both > 0: the ReLU passes them)
#   out = 2*4 - 2*1 = 6                                      (start relevance R_out = 6)
#
# Every neuron has positive and negative contributions x_i * w_ji, and every input is positive,
# so the x- terms of gamma / alpha-beta vanish.

W1 = [[-3.0, -1.0, 3.0], [-1.0, -2.0, 2.0]]
W2 = [[2.0, -2.0]]


def _mixed():
    return _forward(_linear(W1), _linear(W2))


def test_mixed_epsilon():
    # Layer 2: contributions h * w = [8, -2], z = 6:  R_h = [8, -2] / 6 * 6 = [8, -2]
    # Layer 1: R_h / h = [8/4, -2/1] = [2, -2]
    #   R_x1 = 1 * (-3*2 + -1*-2) = -4;  R_x2 = 2 * (-1*2 + -2*-2) = 4;  R_x3 = 3 * (3*2 + 2*-2) = 6
    #   sum = 6 = R_out
    x, h, out = _mixed()
    assert out.item() == 6.0
    _check(out, "epsilon", x, h, [8.0, -2.0], [-4.0, 4.0, 6.0])


def test_mixed_alpha2_beta1():
    # R_i = sum_j R_j * (2 * c+_ij / z+_j - 1 * c-_ij / z-_j), c_ij = x_i w_ji, z+- = sum of c+-.
    # Layer 2: c = [8, -2], z+ = 8, z- = -2 (R_out = 6):
    #   R_h1 = 2 * 8/8 * 6 = 12;  R_h2 = -1 * (-2)/(-2) * 6 = -6             (sum 6)
    # Layer 1, neuron 1: c = [-3, -2, 9], z+ = 9, z- = -5, R = 12:
    #   2*12*[0, 0, 9/9] - 12*[3/5, 2/5, 0] = [-36/5, -24/5, 24]
    # neuron 2: c = [-1, -4, 6], z+ = 6, z- = -5, R = -6:
    #   2*(-6)*[0, 0, 6/6] + 6*[1/5, 4/5, 0] = [6/5, 24/5, -12]
    # R_x = [-36/5 + 6/5, -24/5 + 24/5, 24 - 12] = [-6, 0, 12]               (sum 6)
    x, h, out = _mixed()
    _check(out, "alpha_beta", x, h, [12.0, -6.0], [-6.0, 0.0, 12.0])


def test_mixed_gamma():
    # Gamma (0.25), zennit's generalised form: every z here is > 0 and every input positive, so
    # R_i = sum_j R_j * x_i w'_ji / sum_k x_k w'_jk with w' = w + 0.25 * max(w, 0).
    # Layer 2: w' = [2.5, -2], c = [10, -2], sum 8 (R_out = 6):
    #   R_h = [10, -2] / 8 * 6 = [15/2, -3/2]                               (sum 6)
    # Layer 1, neuron 1: w' = [-3, -1, 3.75], c = [-3, -2, 11.25], sum 6.25, R = 7.5:
    #   7.5 / 6.25 = 1.2  ->  [-3.6, -2.4, 13.5]
    # neuron 2: w' = [-1, -2, 2.5], c = [-1, -4, 7.5], sum 2.5, R = -1.5:
    #   -1.5 / 2.5 = -0.6  ->  [0.6, 2.4, -4.5]
    # R_x = [-3, 0, 9]                                                       (sum 6)
    x, h, out = _mixed()
    _check(out, "gamma", x, h, [7.5, -1.5], [-3.0, 0.0, 9.0])


def test_mixed_zplus():
    # z+ (alpha 1, beta 0): only positive contributions, R_i = sum_j R_j * c+_ij / z+_j.
    # Layer 2: c = [8, -2]: R_h = [8/8 * 6, 0] = [6, 0]
    # Layer 1: neuron 1 c = [-3, -2, 9] -> 6 * [0, 0, 1]; neuron 2 carries no relevance
    # R_x = [0, 0, 6]                                                        (sum 6)
    x, h, out = _mixed()
    _check(out, "zplus", x, h, [6.0, 0.0], [0.0, 0.0, 6.0])


def test_mixed_rules_differ():
    """The mixed example separates the rules (on Captum's, epsilon, gamma and z+ coincide)."""
    x, _, out = _mixed()
    results = {name: _explain(out, name, x).relevance(x) for name in ("epsilon", "gamma", "alpha_beta", "zplus")}
    names = sorted(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(results[a], results[b]), (a, b)
