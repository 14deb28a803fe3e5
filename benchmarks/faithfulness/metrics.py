"""Perturbation metrics (ABPC, comprehensiveness, sufficiency) and top-k token accuracy.

Notation: an image is split into ``N`` square patches of ``p x p`` pixels; the relevance of a patch is
the sum of the (signed) pixel relevance over its pixels and channels. ``order`` ranks the patches most
relevant first (ties broken by a seeded random permutation, so constant maps give a random order).
``x_(k)^MoRF`` is ``x`` with its ``k`` most relevant patches replaced by the baseline ``b`` (the blurred
image), ``x_(k)^LeRF`` the same with the ``k`` least relevant. ``f`` is the target logit (or softmax
probability).

* perturbation curve at ``K`` steps: ``c_j = f(x_(k_j))``, ``k_j = round(j N / K)``, ``j = 0..K``;
* ``AUC(c) = 1/K sum_j (c_j + c_{j+1}) / 2`` (trapezoid over the removed fraction ``k_j / N in [0, 1]``);
* ``ABPC = AUC(LeRF) - AUC(MoRF)`` (higher is better: removing the most relevant patches first must hurt
  more than removing the least relevant first);
* ``comprehensiveness = 1/|Q| sum_q [p(x) - p(x_(k_q)^MoRF)]`` and ``sufficiency = 1/|Q| sum_q [p(x) -
  p(keep top k_q)]`` with ``p`` the target probability, ``k_q = max(1, round(q N))`` and ``Q = {1, 5, 10,
  20, 50}%`` (DeYoung et al., ERASER); "keep top k" is ``x_(N - k)^LeRF``. Higher comprehensiveness and
  lower sufficiency are better.
* top-k accuracy (text): the ``k`` most relevant content tokens contain ``min(k, n_planted)`` of the
  planted tokens.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-d Gaussian ``g_i = exp(-i^2 / (2 sigma^2)) / sum_j g_j``, ``i = -r..r``, ``r = ceil(3 sigma)``."""
    radius = math.ceil(3 * sigma) if radius is None else radius
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    return kernel / kernel.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(n, c, h, w)`` images, per channel, with reflect padding (a constant
    image stays constant, the mean of the image is preserved up to boundary effects)."""
    kernel = gaussian_kernel(sigma).to(x)
    radius = (len(kernel) - 1) // 2
    channels = x.shape[1]
    out = F.pad(x, [radius, radius, 0, 0], mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, [0, 0, radius, radius], mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def patch_relevance(relevance: torch.Tensor, patch: int) -> torch.Tensor:
    """``(n, c, h, w)`` pixel relevance -> ``(n, N)`` patch relevance (sum over channels and pixels),
    patches in row-major order."""
    summed = relevance.sum(1, keepdim=True)
    return (F.avg_pool2d(summed, patch, stride=patch) * patch * patch).flatten(1)


def most_relevant_first(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(n, N)`` indices sorting each row's scores in descending order; ties in random order."""
    perm = torch.rand(scores.shape, generator=generator).argsort(-1)
    ranked = scores.gather(1, perm).argsort(dim=-1, descending=True, stable=True)
    return perm.gather(1, ranked)


def removal_counts(n_units: int, steps: int) -> list[int]:
    """``k_j = round(j N / K)`` for ``j = 0..K``."""
    return [round(j * n_units / steps) for j in range(steps + 1)]


def eraser_counts(n_units: int, fractions: Sequence[float] = ERASER_FRACTIONS) -> list[int]:
    return [max(1, round(q * n_units)) for q in fractions]


def removal_masks(order: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``(n, len(counts), N)`` bool: mask ``[i, j]`` marks the first ``counts[j]`` units of ``order[i]``."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    return rank.unsqueeze(1) < torch.tensor(counts).view(1, -1, 1)


def perturbed(x: torch.Tensor, baseline: torch.Tensor, masks: torch.Tensor, patch: int) -> torch.Tensor:
    """``(n * m, c, h, w)``: for each image and each of its ``m`` patch masks, masked patches from the
    baseline, the rest from the image."""
    n, m, _ = masks.shape
    side = x.shape[-1] // patch
    pixel = masks.view(n, m, 1, side, side).repeat_interleave(patch, -2).repeat_interleave(patch, -1)
    pixel = pixel.to(x.dtype)
    return (x.unsqueeze(1) * (1 - pixel) + baseline.unsqueeze(1) * pixel).flatten(0, 1)


@torch.no_grad()
def scores_of(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: torch.Tensor,
              repeat: int, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logit and target probability of ``images`` (``n * repeat`` rows, ``repeat`` per target)."""
    logits = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    t = target.repeat_interleave(repeat).view(-1, 1)
    logit = logits.gather(1, t).view(-1, repeat)
    prob = logits.softmax(-1).gather(1, t).view(-1, repeat)
    return logit, prob


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area of ``(n, K + 1)`` curves over ``[0, 1]``."""
    steps = curve.shape[-1] - 1
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * steps)


def abpc(morf: torch.Tensor, lerf: torch.Tensor) -> torch.Tensor:
    """``AUC(LeRF) - AUC(MoRF)`` per row."""
    return auc(lerf) - auc(morf)


def comprehensiveness(p0: torch.Tensor, p_removed: torch.Tensor) -> torch.Tensor:
    """``mean_q [p(x) - p(x without its top k_q)]`` per row; ``p_removed``: ``(n, |Q|)``."""
    return (p0.unsqueeze(-1) - p_removed).mean(-1)


def sufficiency(p0: torch.Tensor, p_kept: torch.Tensor) -> torch.Tensor:
    """``mean_q [p(x) - p(only the top k_q kept)]`` per row; ``p_kept``: ``(n, |Q|)``."""
    return (p0.unsqueeze(-1) - p_kept).mean(-1)


def perturbation_scores(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
                        target: torch.Tensor, relevance: torch.Tensor, patch: int, steps: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample metrics of one attribution map: ``morf``, ``lerf`` (logit curves ``(n, K + 1)``),
    ``morf_prob``, ``lerf_prob``, ``abpc``, ``abpc_prob``, ``comprehensiveness``, ``sufficiency``."""
    order = most_relevant_first(patch_relevance(relevance, patch), generator)
    n_units = order.shape[1]
    counts = removal_counts(n_units, steps)
    eraser = eraser_counts(n_units)
    # most relevant first: the curve, then the ERASER removals; least relevant first: the curve, then
    # "keep only the top k" = remove the N - k least relevant
    morf_counts = counts + eraser
    lerf_counts = counts + [n_units - k for k in eraser]
    morf_logit, morf_prob = scores_of(model, perturbed(x, baseline, removal_masks(order, morf_counts), patch),
                                      target, len(morf_counts))
    lerf_logit, lerf_prob = scores_of(model, perturbed(x, baseline, removal_masks(order.flip(1), lerf_counts),
                                                       patch), target, len(lerf_counts))
    k = len(counts)
    p0 = morf_prob[:, 0]
    return {
        "morf": morf_logit[:, :k], "lerf": lerf_logit[:, :k], "morf_prob": morf_prob[:, :k],
        "lerf_prob": lerf_prob[:, :k], "abpc": abpc(morf_logit[:, :k], lerf_logit[:, :k]),
        "abpc_prob": abpc(morf_prob[:, :k], lerf_prob[:, :k]),
        "comprehensiveness": comprehensiveness(p0, morf_prob[:, k:]),
        "sufficiency": sufficiency(p0, lerf_prob[:, k:]),
    }


def topk_accuracy(token_relevance: torch.Tensor, planted: torch.Tensor, content: torch.Tensor, k: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Per row: 1.0 if the ``k`` most relevant content tokens contain ``min(k, n_planted)`` planted ones
    (ties in random order), else 0.0. ``planted``, ``content``: ``(n, length)`` bool."""
    scores = token_relevance.masked_fill(~content, float("-inf"))
    top = most_relevant_first(scores, generator)[:, :k]
    hits = planted.gather(1, top).sum(-1)
    need = planted.sum(-1).clamp(max=k)
    return (hits >= need).float()
