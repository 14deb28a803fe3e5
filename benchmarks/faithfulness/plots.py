"""PNG plots: mean perturbation curves, example heatmaps, example token relevance (matplotlib, Agg)."""
from __future__ import annotations

from typing import Any

import torch

from .metrics import auc, removal_counts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shown(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per family its best method by ``key``, plus the baselines (at most 8 rows)."""
    ok = [r for r in rows if "error" not in r]
    best: dict[str, dict[str, Any]] = {}
    for row in ok:
        if row["family"] == "baseline":
            continue
        if row["family"] not in best or row[key].float().mean() > best[row["family"]][key].float().mean():
            best[row["family"]] = row
    return (list(best.values()) + [r for r in ok if r["family"] == "baseline"])[:8]


def _label(row: dict[str, Any]) -> str:
    return f"{row['family']}: {row['method']}"


def curves(runs: list[Any], config: Any) -> None:
    """Mean MoRF (solid) and LeRF (dashed) target-logit curves, one panel per vision model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = _shown(run.rows, "abpc")
        n_units = (run.x.shape[-1] // config.patch) ** 2
        fraction = torch.tensor(removal_counts(n_units, config.steps)) / n_units
        for i, row in enumerate(rows):
            color = f"C{i}"
            ax.plot(fraction, row["morf"].mean(0), color=color, label=f"{_label(row)} "
                    f"(ABPC {(auc(row['lerf']) - auc(row['morf'])).mean():.2f})")
            ax.plot(fraction, row["lerf"].mean(0), color=color, linestyle="--")
        ax.set_title(f"{run.spec.name}: MoRF (solid) / LeRF (dashed)")
        ax.set_xlabel("fraction of patches replaced by the blurred image")
        ax.set_ylabel("target logit")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(config.out / "curves.png", dpi=110)
    plt.close(fig)


def heatmaps(run: Any, config: Any) -> None:
    """The first four explained images and each shown method's relevance (summed over channels, red +,
    blue -, each map scaled to its own max |R|)."""
    plt = _pyplot()
    rows = _shown(run.rows, "abpc")
    n = min(4, len(run.target))
    fig, axes = plt.subplots(n, len(rows) + 1, figsize=(1.6 * (len(rows) + 1), 1.7 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(run.x[i, 0], cmap="gray")
        axes[i, 0].set_title(f"class {run.target[i].item()}", fontsize=7)
        for j, row in enumerate(rows, 1):
            heat = run.examples[_label(row)][i].sum(0)
            scale = heat.abs().max().clamp_min(1e-30).item()
            axes[i, j].imshow(heat, cmap="bwr", vmin=-scale, vmax=scale)
            if i == 0:
                axes[i, j].set_title(_label(row), fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(config.out / f"heatmaps_{run.spec.name}.png", dpi=110)
    plt.close(fig)


def tokens(run: Any, config: Any) -> None:
    """Token relevance of the first explained sequence (rows: methods; scaled per row; planted tokens
    marked with a frame)."""
    plt = _pyplot()
    rows = _shown(run.rows, "top1")
    ids = run.data.x_test[0]
    planted = run.data.planted[0]
    heat = torch.stack([run.examples[_label(r)][0].sum(-1) for r in rows])
    heat = heat / heat.abs().amax(1, keepdim=True).clamp_min(1e-30)
    fig, ax = plt.subplots(figsize=(0.45 * len(ids) + 3, 0.4 * len(rows) + 1.2))
    ax.imshow(heat, cmap="bwr", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
    ax.set_xticks(range(len(ids)), [str(t) for t in ids.tolist()], fontsize=7)
    for position in planted.nonzero().flatten().tolist():
        ax.add_patch(plt.Rectangle((position - 0.5, -0.5), 1, len(rows), fill=False, linewidth=2))
    ax.set_title(f"{run.spec.name}: token ids, label {run.data.y_test[0].item()}, planted tokens framed", fontsize=8)
    fig.tight_layout()
    fig.savefig(config.out / f"tokens_{run.spec.name}.png", dpi=110)
    plt.close(fig)


def plot_all(runs: list[Any], config: Any) -> None:
    vision = [r for r in runs if not r.spec.is_text]
    if vision:
        curves(vision, config)
    for run in runs:
        (tokens if run.spec.is_text else heatmaps)(run, config)
