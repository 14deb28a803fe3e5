"""dynlrp presets against zennit 0.5.1 composites on real CNNs.

Both libraries are run on the same float64 network in eval mode, with the same one-hot start at
the same target (zennit: autograd inside the composite's context with a one-hot ``grad_output``;
dynlrp: ``seed="one_hot"``), and must agree at the input to ``max|diff| / max|R| <= 1e-6``
(observed: 1e-16 .. 1e-12, rounding only). The networks have random weights and random non-zero
biases (torchvision initialises biases to zero, which would hide bias-handling bugs) and, for the
ResNets, random batch-norm statistics and affine parameters.

Pairings (zennit side; every LayerMapComposite also carries zennit's ``layer_map_base``: Pass for
activations and batch norm, Norm for Sum and average pooling; max pooling and flatten get the
gradient, which is what dynlrp does for them too):

    epsilon              Epsilon on Convolution and Linear
    zplus                ZPlus on Convolution and Linear
    alpha_beta           AlphaBeta(2, 1) on Convolution and Linear
    gamma                Gamma(0.25) on Convolution and Linear
    epsilon_plus         EpsilonPlus
    epsilon_alpha2_beta1 EpsilonAlpha2Beta1
    epsilon_gamma_box    EpsilonGammaBox(low, high) (ZBox on the first convolution)

ResNets: zennit needs ``ResNetCanonizer`` (merges each batch norm into the convolution before it and
routes the residual add through a ``Sum`` module with the Norm rule). dynlrp treats batch norm as its
own affine layer instead, so it is run on a copy whose batch norms were folded by hand with zennit's
MergeBatchNorm formula. The relation between dynlrp on the unfolded model and on a folded copy is
tested separately (:func:`test_unfolded_batch_norm_matches_folded`).

Default run: inputs of 1x3x64x64 (a batch of two 32x32 images with two targets for the small net).
``-m extended``: the rules that modify VGG-16's 100M-parameter dense layers, and every model at
224x224.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torchvision
from torch import nn
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, LayerMapComposite, layer_map_base
from zennit.rules import AlphaBeta, Epsilon, Gamma, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

import dynlrp

TOL = 1e-6
DTYPE = torch.float64
PRESETS = ("epsilon", "zplus", "alpha_beta", "gamma", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box")
# presets that modify dense layers too; on VGG-16 (a 25088x4096 classifier layer) they cost ~20 s each
DENSE_MODIFYING = ("zplus", "alpha_beta", "gamma")

# ImageNet normalisation: the box [LOW, HIGH] is the image of pixel values in [0, 1] (ZBox bounds)
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=DTYPE).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=DTYPE).view(1, 3, 1, 1)
LOW, HIGH = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD


# ------------------------------------------------------------------------------------------------
# networks


def small_vgg() -> nn.Sequential:
    """Conv-ReLU-MaxPool twice, then Flatten-Linear-ReLU-Linear, for 32x32 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10),
    )


BUILDERS = {
    "small_vgg": small_vgg,
    "vgg16": torchvision.models.vgg16,
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}
SEEDS = {"small_vgg": 1, "vgg16": 2, "resnet18": 3, "resnet50": 4}
DEFAULT_SIZE = {"small_vgg": 32, "vgg16": 64, "resnet18": 64, "resnet50": 64}
RESNETS = ("resnet18", "resnet50")


def build(name: str) -> nn.Module:
    """A float64 eval-mode network with seeded random weights, biases and batch-norm parameters."""
    with torch.random.fork_rng():
        torch.manual_seed(SEEDS[name])
        model = BUILDERS[name]()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
                if isinstance(module, nn.BatchNorm2d):
                    nn.init.uniform_(module.weight, 0.5, 1.5)
                    nn.init.normal_(module.bias, std=0.1)
                    module.running_mean.normal_(std=0.1)
                    module.running_var.uniform_(0.5, 1.5)
    return model.to(DTYPE).eval()


class Rescale(nn.Module):
    """``x * factor``: what zennit's merged batch norm still computes (see :func:`fold_batch_norms`)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def fold_batch_norms(model: nn.Module, *, like_zennit: bool) -> nn.Module:
    """A copy of ``model`` with every batch norm that directly follows a convolution (in module
    order, as zennit's SequentialMergeBatchNorm finds them) folded into that convolution:

        scale = gamma / sqrt(running_var + eps),  W' = W * scale,  b' = (b - running_mean) * scale + beta

    ``like_zennit=False``: the batch norm becomes ``nn.Identity``, so the copy computes exactly the
    original function. ``like_zennit=True``: zennit's canonizer sets the batch norm to mean 0, var 1,
    weight 1, bias 0 but keeps its ``eps``, so the merged network still scales by
    ``1 / sqrt(1 + eps)`` there (a relative change of 5e-6 in every activation, enough to move the
    relevance by up to 6e-5 relative); the batch norm becomes that rescaling, which dynlrp passes
    relevance through exactly, as zennit's Pass rule does for the batch norm.
    """
    model = copy.deepcopy(model)
    previous = None
    for name, module in list(model.named_modules()):
        if any(True for _ in module.children()):
            continue
        if isinstance(module, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d):
            conv = previous
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            with torch.no_grad():
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
                conv.bias.copy_((conv.bias - module.running_mean) * scale + module.bias)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
            parent_name, _, attribute = name.rpartition(".")
            replacement = Rescale((1.0 + module.eps) ** -0.5) if like_zennit else nn.Identity()
            setattr(model.get_submodule(parent_name), attribute, replacement)
        previous = module
    return model


class Networks:
    """Builds each network (and its folded copies) once per test module."""

    def __init__(self):
        self._cache: dict[tuple[str, str], nn.Module] = {}

    def get(self, name: str, variant: str = "original") -> nn.Module:
        key = (name, variant)
        if key not in self._cache:
            if variant == "original":
                self._cache[key] = build(name)
            else:
                self._cache[key] = fold_batch_norms(self.get(name), like_zennit=variant == "folded_like_zennit")
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()


@pytest.fixture(scope="module")
def networks():
    nets = Networks()
    yield nets
    nets.clear()  # VGG-16 alone holds 1.1 GB of float64 weights


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module (restored afterwards). On the 2-core CI machine a second
    process (pytest -n 2, or any other job) makes OpenMP's 2-thread barriers spin. Measured for this
    module: 2 threads 30 s on an idle machine but 200-250 s next to another test job (155 s with
    -n 2); 1 thread 36-38 s next to another test job (25 s with -n 2)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def example(name: str, size: int) -> tuple[torch.Tensor, list[int]]:
    """A seeded input inside the ZBox bounds, and one target per row."""
    generator = torch.Generator().manual_seed(100 + SEEDS[name] * 1000 + size)
    batch, targets = (2, [1, 2]) if name == "small_vgg" else (1, [3])
    x = LOW + (HIGH - LOW) * torch.rand(batch, 3, size, size, generator=generator, dtype=DTYPE)
    return x, targets


# ------------------------------------------------------------------------------------------------
# the two sides


def zennit_composite(preset: str, canonizers):
    layers = (Convolution, nn.Linear)
    if preset == "epsilon":
        return LayerMapComposite(layer_map_base() + [(layers, Epsilon())], canonizers=canonizers)
    if preset == "zplus":
        return LayerMapComposite(layer_map_base() + [(layers, ZPlus())], canonizers=canonizers)
    if preset == "alpha_beta":
        return LayerMapComposite(layer_map_base() + [(layers, AlphaBeta(alpha=2.0, beta=1.0))], canonizers=canonizers)
    if preset == "gamma":
        return LayerMapComposite(layer_map_base() + [(layers, Gamma(gamma=0.25))], canonizers=canonizers)
    if preset == "epsilon_plus":
        return EpsilonPlus(canonizers=canonizers)
    if preset == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    if preset == "epsilon_gamma_box":
        return EpsilonGammaBox(low=LOW, high=HIGH, canonizers=canonizers)
    raise ValueError(preset)


def one_hot(out: torch.Tensor, targets: list[int]) -> torch.Tensor:
    seed = torch.zeros_like(out)
    seed[torch.arange(len(targets)), targets] = 1.0
    return seed


def zennit_relevance(model: nn.Module, x: torch.Tensor, targets: list[int], preset: str, canonizers) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with zennit_composite(preset, canonizers).context(model) as modified:
        out = modified(x)
        (relevance,) = torch.autograd.grad(out, x, one_hot(out, targets))
    return relevance


def dynlrp_explain(model: nn.Module, x: torch.Tensor, targets: list[int], preset: str | dynlrp.Preset):
    x = x.clone().requires_grad_(True)
    rules = preset if isinstance(preset, dynlrp.Preset) else dynlrp.presets.get(preset, low=LOW, high=HIGH)
    exp = dynlrp.explain(model(x), target=targets, rules=rules, inputs=[x], seed="one_hot", strict=True)
    return exp.relevance(x), exp


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``."""
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------------
# dynlrp vs zennit


def _cases():
    extended = pytest.mark.extended
    for model in BUILDERS:
        for preset in PRESETS:
            slow = model == "vgg16" and preset in DENSE_MODIFYING
            marks = [extended] if slow else []
            yield pytest.param(model, preset, DEFAULT_SIZE[model], marks=marks, id=f"{model}-{preset}")
            if model != "small_vgg":
                yield pytest.param(model, preset, 224, marks=[extended], id=f"{model}-{preset}-224")


@pytest.mark.parametrize(("model_name", "preset", "size"), list(_cases()))
def test_matches_zennit(networks, request, model_name, preset, size):
    model = networks.get(model_name)
    x, targets = example(model_name, size)
    resnet = model_name in RESNETS
    expected = zennit_relevance(model, x, targets, preset, [ResNetCanonizer()] if resnet else None)
    ours, exp = dynlrp_explain(networks.get(model_name, "folded_like_zennit") if resnet else model, x, targets, preset)

    assert ours.shape == x.shape
    assert torch.isfinite(ours).all()
    assert expected.abs().max() > 0
    rel = max_rel_diff(ours, expected)
    request.node.user_properties.append(("max_rel_diff", rel))
    assert rel <= TOL, f"{model_name}/{preset}: max|diff|/max|R| = {rel:.3e}"
    assert exp.conservation.unexplained < 1e-9  # the ledger closes on the same run


def test_folded_copies_compute_the_same_network(networks):
    """The hand-folded copies are what the comparisons assume: the exact fold reproduces the
    original network, the zennit-like fold reproduces zennit's canonized network."""
    for name in RESNETS:
        model = networks.get(name)
        x, _ = example(name, DEFAULT_SIZE[name])
        with torch.no_grad():
            original = model(x)
            exact = networks.get(name, "folded")(x)
            like_zennit = networks.get(name, "folded_like_zennit")(x)
        with canonized_in_place(model), torch.no_grad():
            canonized = model(x)
        torch.testing.assert_close(exact, original, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(like_zennit, canonized, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(canonized, original, rtol=1e-9, atol=0)  # zennit's leftover 1/sqrt(1+eps)


@contextlib.contextmanager
def canonized_in_place(model: nn.Module):
    """Apply zennit's ResNetCanonizer to ``model`` for the duration of a ``with`` block."""
    instances = ResNetCanonizer().apply(model)
    try:
        yield model
    finally:
        for instance in reversed(instances):
            instance.remove()


# ------------------------------------------------------------------------------------------------
# batch norm as its own layer vs folded into the convolution (dynlrp on both)
#
# dynlrp gives batch norm y = a*z + c (z the convolution output) the epsilon rule
# R_z = a z R_y / s(y); the convolution then divides by its own s(z). On the folded copy the
# convolution computes y directly and divides once by s(y). Both distribute the same bias shares
# (b' = a b + c), so the unfolded run is the folded one with R_y scaled by z / s(z) =
# 1 / (1 + eps / |z|) at every batch-norm element: the batch-norm rule has its own stabiliser, a
# term of order eps / |z|. It vanishes as eps -> 0, but not uniformly: a few of the millions of
# convolution outputs lie within ~1e-8 of zero, and the epsilon rule amplifies what happens there.
#
# Measured max|diff| / max|R| at eps = 1e-6 (the default), 30 seeded inputs to the two ResNets:
# 4e-4 .. 2.0e-2 at 64x64 (the inputs used here: resnet18 5.8e-3, resnet50 7.6e-3) and 2e-3 .. 2.2e-2
# at 224x224. Bound: 5e-2 (2.5x the worst). Once eps is below the smallest |z| the difference is
# linear in eps: 1e-10 -> 1e-12 shrinks it by 100x (resnet18 2.4e-5 -> 2.4e-7, resnet50 1.1e-6 ->
# 1.1e-8 here); asserting a shrink of at least 50x and rel <= 1e-6 at eps = 1e-12 shows that nothing
# but the stabiliser separates the two (a wrong bias or scale in the batch-norm rule would not vanish).

UNFOLDED_BOUND = 5e-2


def _unfolded_cases():
    for name in RESNETS:
        yield pytest.param(name, DEFAULT_SIZE[name], id=f"{name}")
        yield pytest.param(name, 224, marks=[pytest.mark.extended], id=f"{name}-224")


@pytest.mark.parametrize(("model_name", "size"), list(_unfolded_cases()))
def test_unfolded_batch_norm_matches_folded(networks, request, model_name, size):
    model, folded = networks.get(model_name), networks.get(model_name, "folded")
    x, targets = example(model_name, size)
    rel = {}
    for eps in (1e-6, 1e-10, 1e-12):
        preset = dynlrp.presets.get("epsilon", epsilon=eps)
        unfolded_r, unfolded_exp = dynlrp_explain(model, x, targets, preset)
        folded_r, folded_exp = dynlrp_explain(folded, x, targets, preset)
        rel[eps] = max_rel_diff(unfolded_r, folded_r)
        assert unfolded_exp.conservation.unexplained < 1e-9
        assert folded_exp.conservation.unexplained < 1e-9
        request.node.user_properties.append((f"max_rel_diff_eps_{eps:g}", rel[eps]))
    assert rel[1e-6] <= UNFOLDED_BOUND, rel
    assert rel[1e-12] <= rel[1e-10] / 50, rel  # linear in eps: the O(eps / |z|) stabiliser term
    assert rel[1e-12] <= 1e-6, rel


@pytest.mark.parametrize("preset", ["epsilon", "zplus", "alpha_beta", "epsilon_gamma_box"])
@pytest.mark.parametrize("model_name", RESNETS)
def test_merged_batch_norm_equals_the_folded_network(networks, model_name, preset):
    """``merge_batch_norm=True`` on the unfolded network gives what the same preset gives on the
    exactly folded copy (batch norm merged into each convolution's weights and bias, as zennit's
    canonizers do), for the modified rules too: the rule runs on ``W' = a W``, ``b' = a b + c``."""
    x, targets = example(model_name, DEFAULT_SIZE[model_name])
    merged = dynlrp.presets.get(preset, low=LOW, high=HIGH, merge_batch_norm=True)
    ours, exp = dynlrp_explain(networks.get(model_name), x, targets, merged)
    folded, _ = dynlrp_explain(networks.get(model_name, "folded"), x, targets, preset)
    assert max_rel_diff(ours, folded) <= 1e-10
    assert exp.conservation.unexplained < 1e-9
    merged_rows = [row for row in exp.nodes if row.node_type == "NativeBatchNormBackward0"]
    assert merged_rows and all(row.absorbed == {} and row.error == 0.0 for row in merged_rows)
