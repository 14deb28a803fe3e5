"""Attribution methods, all with one signature: ``attribute(model, f, x, target) -> relevance``.

``f`` maps the explained input ``x`` (images ``(n, 3, 32, 32)``, or token embeddings ``(n, length, d)``)
to logits ``(n, classes)``; ``model`` is the ``nn.Module`` inside ``f`` (for the libraries that hook
modules); ``target`` ``(n,)`` the explained classes. The relevance has the shape of ``x``.

* dynlrp ``<preset>``: ``dynlrp.explain(f(x), target, rules=preset, inputs=[x])`` with the forward run
  inside ``dynlrp.record()``; relevance starts at the target logit.
* zennit ``<composite>``: the composite's context, gradient of the logits with a one-hot ``grad_output``
  (zennit's relevance starts at 1; the scale does not change any ranking).
* Captum ``LRP``: ``captum.attr.LRP(model).attribute(x, target)`` with Captum's default rules (epsilon
  1e-9 on convolutions, dense layers and max pooling).
* gradient ``|df_t/dx|``; input x gradient ``x * df_t/dx``; integrated gradients ``(x - x0) * 1/m
  sum_{i<m} df_t/dx (x0 + (i + 1/2)/m (x - x0))`` with ``x0 = 0`` (black image / zero embedding) and
  ``m = 32`` (midpoint rule); random: i.i.d. uniform values.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import dynlrp

Forward = Callable[[torch.Tensor], torch.Tensor]
Attribute = Callable[[nn.Module, Forward, torch.Tensor, torch.Tensor], torch.Tensor]

IG_STEPS = 32


@dataclass(frozen=True)
class Method:
    """``name`` as shown in the table, ``family`` (dynlrp, zennit, captum, LXT, baseline), ``attribute``."""

    name: str
    family: str
    attribute: Attribute


def target_gradient(f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d f(x)[i, target_i] / dx`` for every row ``i``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = f(x)
        (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return grad


def gradient(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return target_gradient(f, x, target).abs()


def input_x_gradient(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return x * target_gradient(f, x, target)


def integrated_gradients(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor,
                         steps: int = IG_STEPS) -> torch.Tensor:
    baseline = torch.zeros_like(x)
    total = sum(target_gradient(f, baseline + (i + 0.5) / steps * (x - baseline), target) for i in range(steps))
    return (x - baseline) * total / steps


def random_attribution(seed: int) -> Attribute:
    def attribute(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return attribute


def dynlrp_attribution(preset: str | dynlrp.Preset) -> Attribute:
    def attribute(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), dynlrp.record() as recording:
            out = f(x)
        exp = dynlrp.explain(out, target=target.tolist(), rules=preset, inputs=[x], recording=recording)
        return exp.relevance(x).detach()
    return attribute


def zennit_attribution(composite: Callable[[torch.Tensor], object]) -> Attribute:
    """``composite(x)`` builds the zennit composite for a batch (ZBox needs the batch's bounds)."""
    def attribute(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), composite(x).context(model):
            out = f(x)
            one_hot = torch.zeros_like(out).scatter_(1, target.view(-1, 1), 1.0)
            (relevance,) = torch.autograd.grad(out, x, one_hot)
        return relevance
    return attribute


def captum_lrp(model: nn.Module, f: Forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import LRP

    with torch.enable_grad():
        return LRP(model).attribute(x.detach().clone().requires_grad_(True), target=target).detach()


# --- method lists per model ------------------------------------------------------------------------

CNN_PRESETS = ("epsilon", "gamma", "zplus", "alpha_beta", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box",
               "flat", "wsquare")
VIT_PRESETS = ("attnlrp", "cp_lrp", "dynamiclrp_vit")
TEXT_PRESETS = ("attnlrp", "cp_lrp", "epsilon")
BOX = dict(low=0.0, high=1.0)  # pixel values lie in [0, 1]


def cnn_presets() -> list[dynlrp.Preset]:
    """The named presets (ZBox bounds [0, 1]) and ``epsilon_plus_flat`` (flat first layer, z+ on the other
    convolutions, epsilon on dense layers: zennit's EpsilonPlusFlat), built from the public Preset API."""
    named = [dynlrp.presets.get(name, **BOX) for name in CNN_PRESETS]
    flat = dynlrp.Preset(name="epsilon_plus_flat", dense=dynlrp.LinearRule("epsilon"), conv=dynlrp.LinearRule("zplus"),
                         first=dynlrp.LinearRule("flat"))
    return [*named, flat]


def _zennit_composites() -> dict[str, Callable[[torch.Tensor], object]]:
    """zennit composites with the settings of the dynlrp presets they are paired with (epsilon 1e-6,
    gamma 0.25, alpha 2 / beta 1, ZBox on [0, 1])."""
    from zennit.composites import (
        EpsilonAlpha2Beta1,
        EpsilonGammaBox,
        EpsilonPlus,
        EpsilonPlusFlat,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.rules import AlphaBeta, Epsilon, Gamma, ZPlus
    from zennit.types import Linear  # convolutions and dense layers

    def everywhere(rule: Callable[[], object]) -> Callable[[torch.Tensor], object]:
        return lambda x: LayerMapComposite(layer_map=[*layer_map_base(), (Linear, rule())])

    return {
        "Epsilon": everywhere(lambda: Epsilon(1e-6)),
        "Gamma": everywhere(lambda: Gamma(0.25)),
        "ZPlus": everywhere(ZPlus),
        "AlphaBeta(2,1)": everywhere(lambda: AlphaBeta(2.0, 1.0)),
        "EpsilonPlus": lambda x: EpsilonPlus(),
        "EpsilonAlpha2Beta1": lambda x: EpsilonAlpha2Beta1(),
        "EpsilonGammaBox": lambda x: EpsilonGammaBox(**BOX),
        "EpsilonPlusFlat": lambda x: EpsilonPlusFlat(),
    }


def baselines(seed: int) -> list[Method]:
    return [Method("gradient", "baseline", gradient), Method("input x gradient", "baseline", input_x_gradient),
            Method("integrated gradients", "baseline", integrated_gradients),
            Method("random", "baseline", random_attribution(seed))]


def methods_for(arch: str, seed: int = 0) -> list[Method]:
    """The methods run in the main process for one architecture (LXT runs in its own process)."""
    if arch == "vgg_cnn":
        found = [Method(p.name, "dynlrp", dynlrp_attribution(p)) for p in cnn_presets()]
        found += [Method(name, "zennit", zennit_attribution(c)) for name, c in _zennit_composites().items()]
    else:
        presets = VIT_PRESETS if arch == "vit" else TEXT_PRESETS
        found = [Method(name, "dynlrp", dynlrp_attribution(name)) for name in presets]
    return [*found, Method("LRP (default rules)", "captum", captum_lrp), *baselines(seed)]
