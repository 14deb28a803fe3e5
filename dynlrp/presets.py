"""Named rule configurations with explicit numeric conventions.

A preset assigns a :class:`~dynlrp.rules.LinearRule` to the three roles a linear-family node can
have: ``first`` (a convolution or dense layer whose data operand is an explained input, reached
through shape ops only), ``conv`` (other convolutions) and ``dense`` (addmm / mm / bmm with a
parameter operand). ``epsilon`` is the stabiliser of every z-rule (add, pooling, sums, batch norm,
products of activations). ``attention`` is how products of two activations treat softmax outputs:
``"uniform"`` (AttnLRP: both factors get half) or ``"cp"`` (CP-LRP: attention weights are constant,
relevance flows through the values only). Conventions shared by all presets: ``s(z) = z + eps * sign(z)`` with
``sign(0) = +1``; biases take their share of relevance (booked as absorbed ``bias``); parameters
never receive relevance. Overrides: ``ops`` maps node type names, ``modules`` maps fnmatch
patterns of module paths (e.g. ``"features.0"``, ``"*.attn.*"``) to a LinearRule; a module
override wins over an op override, which wins over the role.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

import torch

from .rules.linear import LinearRule

CONV_TYPES = ("ConvolutionBackward0",)


@dataclass(frozen=True)
class NodeSettings:
    """What a rule reads from the preset for one node."""

    linear: LinearRule
    epsilon: float
    first: bool = False
    attention: str = "uniform"
    merge_batch_norm: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    dense: LinearRule = LinearRule("epsilon")
    conv: LinearRule = LinearRule("epsilon")
    first: LinearRule | None = None
    epsilon: float = 1e-6
    attention: str = "uniform"
    merge_batch_norm: bool = False
    ops: dict[str, LinearRule] = field(default_factory=dict)
    modules: dict[str, LinearRule] = field(default_factory=dict)

    def settings_for(self, node_type: str, module_path: str | None, first: bool) -> NodeSettings:
        linear = self.conv if node_type in CONV_TYPES else self.dense
        if first and self.first is not None:
            linear = self.first
        linear = self.ops.get(node_type, linear)
        if module_path is not None:
            for pattern, spec in self.modules.items():
                if fnmatch.fnmatchcase(module_path, pattern):
                    linear = spec
        return NodeSettings(linear=linear, epsilon=self.epsilon, first=first, attention=self.attention,
                            merge_batch_norm=self.merge_batch_norm)

    def override(self, ops: dict[str, LinearRule] | None = None,
                 modules: dict[str, LinearRule] | None = None) -> Preset:
        """A copy with more per-op / per-module overrides."""
        return replace(self, ops={**self.ops, **(ops or {})}, modules={**self.modules, **(modules or {})})


def get(name: str, *, epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
        low: float | torch.Tensor = 0.0, high: float | torch.Tensor = 1.0, merge_batch_norm: bool = False) -> Preset:
    """Build a named preset.

    ``epsilon``: epsilon rule everywhere. ``zplus``: z+ everywhere. ``alpha_beta``: alpha-beta
    (default 2, 1) everywhere. ``gamma``: gamma (default 0.25, zennit's generalised form)
    everywhere. ``epsilon_plus``: z+ on convolutions, epsilon on dense layers.
    ``epsilon_alpha2_beta1``: alpha2-beta1 on convolutions, epsilon on dense layers.
    ``epsilon_gamma_box``: ZBox(low, high) on the first layer, gamma on convolutions, epsilon on
    dense layers (zennit's EpsilonGammaBox). ``flat`` / ``wsquare``: that rule on the first layer,
    epsilon elsewhere. ``attnlrp``: AttnLRP (epsilon on linear layers, uniform rule on products of
    two activations incl. attention, softmax rule, LN-rule, identity activations). ``cp_lrp``: the same
    with attention weights held constant (relevance through the values only). ``dynamiclrp_vit``: the
    DynamicLRP paper's ViT setting (gamma 130 on convolutions, gamma 0.001 on linear layers, CP
    attention). ``epsilon`` is also the stabiliser of every rule (zennit's default 1e-6).

    ``merge_batch_norm``: an eval-mode batch norm that directly follows a convolution (its only
    consumer) is merged into it, as zennit's canonizers do: the convolution's rule runs on
    ``W' = a W``, ``b' = a b + c`` (``y = a z + c`` the batch norm) and the batch norm passes
    relevance through. Off: the batch norm is its own affine layer with the epsilon rule.
    """
    eps = LinearRule("epsilon", epsilon=epsilon)
    zplus = LinearRule("zplus", epsilon=epsilon)
    ab = LinearRule("alpha_beta", epsilon=epsilon, alpha=alpha, beta=beta)
    gam = LinearRule("gamma", epsilon=epsilon, gamma=gamma)
    table = {
        "epsilon": dict(dense=eps, conv=eps),
        "zplus": dict(dense=zplus, conv=zplus),
        "alpha_beta": dict(dense=ab, conv=ab),
        "gamma": dict(dense=gam, conv=gam),
        "epsilon_plus": dict(dense=eps, conv=zplus),
        "epsilon_alpha2_beta1": dict(dense=eps, conv=LinearRule("alpha_beta", epsilon=epsilon)),
        "epsilon_gamma_box": dict(dense=eps, conv=gam,
                                  first=LinearRule("zbox", epsilon=epsilon, low=low, high=high)),
        "flat": dict(dense=eps, conv=eps, first=LinearRule("flat", epsilon=epsilon)),
        "wsquare": dict(dense=eps, conv=eps, first=LinearRule("wsquare", epsilon=epsilon)),
        "attnlrp": dict(dense=eps, conv=eps, attention="uniform"),
        "cp_lrp": dict(dense=eps, conv=eps, attention="cp"),
        "dynamiclrp_vit": dict(dense=LinearRule("gamma", epsilon=epsilon, gamma=0.001),
                               conv=LinearRule("gamma", epsilon=epsilon, gamma=130.0), attention="cp"),
    }
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(table)}")
    return Preset(name=name, epsilon=epsilon, merge_batch_norm=merge_batch_norm, **table[name])


NAMES = ("epsilon", "zplus", "alpha_beta", "gamma", "epsilon_plus", "epsilon_alpha2_beta1",
         "epsilon_gamma_box", "flat", "wsquare", "attnlrp", "cp_lrp", "dynamiclrp_vit")


def resolve(rules: str | Preset) -> Preset:
    """A preset from a name or a :class:`Preset`."""
    if isinstance(rules, Preset):
        return rules
    if isinstance(rules, str):
        return get(rules)
    raise TypeError(f"rules must be a preset name or a dynlrp.presets.Preset, not {type(rules).__name__}")
