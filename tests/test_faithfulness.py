"""The faithfulness benchmark (``benchmarks/faithfulness``): its metrics against hand-computed values, the
blur baseline, the planted-token generator, and one tiny end-to-end run (seconds, not the benchmark)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks.faithfulness import metrics
from benchmarks.faithfulness.data import TokenTask, planted_tokens
from benchmarks.faithfulness.methods import Method, baselines, dynlrp_attribution, methods_for
from benchmarks.faithfulness.run import SPECS, Config, quick, run


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- curves ----------------------------------------------------------------------------------------

def test_auc_and_abpc_by_hand():
    morf = torch.tensor([[1.0, 0.5, 0.0]])
    lerf = torch.tensor([[1.0, 1.0, 0.5]])
    # trapezoids over [0, 1/2, 1]: (1 + .5)/4 + (.5 + 0)/4 = .5 and (1 + 1)/4 + (1 + .5)/4 = .875
    assert metrics.auc(morf).item() == pytest.approx(0.5)
    assert metrics.auc(lerf).item() == pytest.approx(0.875)
    assert metrics.abpc(morf, lerf).item() == pytest.approx(0.375)
    assert metrics.abpc(lerf, lerf).item() == 0.0


def test_comprehensiveness_and_sufficiency_by_hand():
    p0 = torch.tensor([0.9])
    assert metrics.comprehensiveness(p0, torch.tensor([[0.5, 0.3]])).item() == pytest.approx(0.5)  # (.4 + .6) / 2
    assert metrics.sufficiency(p0, torch.tensor([[0.8, 0.9]])).item() == pytest.approx(0.05)  # (.1 + 0) / 2


def test_removal_counts():
    assert metrics.removal_counts(64, 16) == list(range(0, 65, 4))
    assert metrics.removal_counts(4, 4) == [0, 1, 2, 3, 4]
    assert metrics.eraser_counts(64) == [1, 3, 6, 13, 32]
    assert metrics.eraser_counts(4) == [1, 1, 1, 1, 2]


def test_ranking_and_masks():
    g = torch.Generator().manual_seed(0)
    assert metrics.most_relevant_first(torch.tensor([[0.1, 3.0, -2.0, 1.0]]), g).tolist() == [[1, 3, 0, 2]]
    # ties: only their order among themselves is random, and it varies
    orders = {tuple(metrics.most_relevant_first(torch.tensor([[5.0, 1.0, 1.0, 1.0]]), g)[0].tolist())
              for _ in range(30)}
    assert all(o[0] == 0 for o in orders) and len(orders) > 1
    masks = metrics.removal_masks(torch.tensor([[2, 0, 1]]), [0, 1, 3])
    assert masks.tolist() == [[[False, False, False], [False, False, True], [True, True, True]]]


def test_patch_relevance_sums_channels_and_pixels():
    relevance = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    patches = metrics.patch_relevance(relevance, 2)
    summed = relevance.sum(1)[0]
    expected = [summed[r:r + 2, c:c + 2].sum().item() for r in (0, 2) for c in (0, 2)]
    assert patches[0].tolist() == pytest.approx(expected)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_perturbation_scores_on_a_linear_model_by_hand():
    """logit_0 = sum of pixels, logit_1 = 0, relevance = the pixels, baseline 0, 4 patches of 1 px.
    MoRF removes 4, 3, 2, 1: [10, 6, 3, 1, 0]; LeRF removes 1, 2, 3, 4: [10, 9, 7, 4, 0]."""
    x = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])

    def model(images: torch.Tensor) -> torch.Tensor:
        s = images.sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], -1)

    out = metrics.perturbation_scores(model, x, torch.zeros_like(x), torch.tensor([0]), x, patch=1, steps=4,
                                      generator=torch.Generator().manual_seed(0))
    assert out["morf"][0].tolist() == [10, 6, 3, 1, 0]
    assert out["lerf"][0].tolist() == [10, 9, 7, 4, 0]
    # AUC(MoRF) = (8 + 4.5 + 2 + .5) / 4 = 3.75, AUC(LeRF) = (9.5 + 8 + 5.5 + 2) / 4 = 6.25
    assert out["abpc"].item() == pytest.approx(2.5)
    p = _sigmoid
    # ERASER counts for 4 patches: 1, 1, 1, 1, 2; removing the top 1 / 2 leaves 6 / 3, keeping them 4 / 7
    comp = (4 * (p(10) - p(6)) + (p(10) - p(3))) / 5
    suff = (4 * (p(10) - p(4)) + (p(10) - p(7))) / 5
    assert out["comprehensiveness"].item() == pytest.approx(comp, rel=1e-5)
    assert out["sufficiency"].item() == pytest.approx(suff, rel=1e-4)
    assert out["morf_prob"][0, 0].item() == pytest.approx(p(10))


# --- blur ------------------------------------------------------------------------------------------

def test_blur_keeps_constants_and_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur

    constant = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(metrics.blur(constant, 4.0), constant)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = metrics.blur(x, 4.0)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, gaussian_blur(x, kernel_size=25, sigma=4.0), rtol=0, atol=1e-5)
    assert ours.var() < 0.1 * x.var()


def test_blur_impulse_response_is_the_normalised_gaussian():
    impulse = torch.zeros(1, 1, 32, 32)
    impulse[0, 0, 16, 16] = 1.0
    out = metrics.blur(impulse, 2.0)
    kernel = metrics.gaussian_kernel(2.0).float()
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(out[0, 0, 10:23, 10:23], torch.outer(kernel, kernel))


# --- planted tokens --------------------------------------------------------------------------------

@pytest.mark.parametrize("n_planted", [1, 2])
def test_planted_tokens_decide_the_label(n_planted):
    task = TokenTask(n_planted=n_planted)
    data = planted_tokens(task, 2000, seed=3)
    content = data.ids[:, 1:-1]
    classes = task.token_class(data.ids)
    assert (data.ids[:, 0] == 1).all() and (data.ids[:, -1] == 2).all()
    assert (data.planted.sum(-1) == n_planted).all() and not data.planted[:, [0, -1]].any()
    # the planted tokens are value tokens of the label's class
    assert (classes[data.planted].view(-1, n_planted) == data.y.view(-1, 1)).all()
    # every other value token is a decoy of another class, one per class
    others = classes.masked_fill(data.planted, -1)
    decoys = task.n_decoys if n_planted == 2 else 0
    assert ((others >= 0).sum(-1) == decoys).all()
    assert not (others == data.y.view(-1, 1)).any()
    counts = torch.stack([(others == c).sum(-1) for c in range(task.n_classes)], -1)
    assert counts.max() <= 1
    # so the label is a function of the value tokens (the planted ones), whatever the distractors are
    assert (task.label(data.ids) == data.y).all()
    shuffled = data.ids.clone()
    is_distractor = shuffled >= task.first_distractor
    shuffled[is_distractor] = torch.randint(task.first_distractor, task.vocab_size, (int(is_distractor.sum()),))
    assert (task.label(shuffled) == data.y).all()
    # all classes, roughly balanced; deterministic
    assert data.y.bincount(minlength=task.n_classes).min() > 400
    assert torch.equal(planted_tokens(task, 2000, seed=3).ids, data.ids)
    assert content.max() < task.vocab_size


def test_topk_accuracy_by_hand():
    g = torch.Generator().manual_seed(0)
    relevance = torch.tensor([[9.0, 1.0, 3.0, 2.0, 0.0], [9.0, 3.0, 1.0, 2.0, 0.0]])
    planted = torch.tensor([[False, True, True, False, False], [False, True, False, False, False]])
    content = torch.tensor([[False, True, True, True, False]] * 2)  # position 0 ([CLS]) is not ranked
    assert metrics.topk_accuracy(relevance, planted, content, 1, g).tolist() == [1.0, 1.0]
    assert metrics.topk_accuracy(relevance, planted, content, 2, g).tolist() == [0.0, 1.0]


# --- end to end ------------------------------------------------------------------------------------

def _few_methods(arch: str, seed: int) -> list[Method]:
    """A few methods of every kind (all CNN methods are exercised by the benchmark itself)."""
    chosen = [m for m in methods_for(arch, seed) if m.name in ("epsilon_plus", "EpsilonPlus", "attnlrp")]
    return [*chosen, Method("broken", "dynlrp", dynlrp_attribution("no_such_preset")), *baselines(seed)]


def test_tiny_end_to_end_run(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("zennit")
    tiny = {"cnn": dict(epochs=1, width=8), "bert-1tok": dict(epochs=2, width=16, layers=1, heads=2, n_train=512)}
    specs = tuple(dataclasses.replace(s, **tiny[s.name]) for s in SPECS if s.name in tiny)
    config = dataclasses.replace(quick(Config(out=tmp_path, specs=specs, lxt=False, plots=False)), samples=4,
                                 text_samples=16, methods=_few_methods)
    summary = run(config, log=lambda message: None)
    rows = {(r.spec.name, row["family"], row["method"]): row for r in summary["runs"] for row in r.rows}
    text = (tmp_path / "results.md").read_text()
    for name in ("epsilon_plus", "EpsilonPlus", "gradient", "random", "attnlrp"):
        assert f"| {name} |" in text
    assert "failed: ValueError: unknown preset 'no_such_preset'" in text
    # zennit and dynlrp are the same rules: the same patch ranking, the same curves
    ours, theirs = rows[("cnn", "dynlrp", "epsilon_plus")], rows[("cnn", "zennit", "EpsilonPlus")]
    torch.testing.assert_close(ours["morf"], theirs["morf"])
    assert ours["abpc"].shape == (4,) and ours["morf"].shape == (4, 17)
    assert rows[("bert-1tok", "baseline", "random")]["top1"].shape == (16,)
    assert (tmp_path / "weights" / "cnn.pt").exists()


@pytest.mark.extended
def test_quick_benchmark_with_plots(tmp_path):
    """The real models (trained once, minutes) in quick mode, with the plots."""
    pytest.importorskip("matplotlib")
    summary = run(quick(Config(out=tmp_path, lxt=False)), log=lambda message: None)
    assert len(summary["runs"]) == len(SPECS)
    assert (tmp_path / "curves.png").exists() and (tmp_path / "heatmaps_vit.png").exists()
