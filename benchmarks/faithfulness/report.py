"""The markdown results table, the acceptance checks and the plots (PNG)."""
from __future__ import annotations

import math
import platform
from typing import Any

import torch

VISION_COLUMNS = (("abpc", "ABPC (logit)"), ("lerf", "AUC LeRF"), ("morf", "AUC MoRF"), ("abpc_prob", "ABPC (prob)"),
                  ("comprehensiveness", "comprehensiveness"), ("sufficiency", "sufficiency"))
BASELINES = ("gradient", "input x gradient", "random")


def _mean(values: torch.Tensor) -> float:
    return values.float().mean().item()


def _stderr(values: torch.Tensor) -> float:
    return values.float().std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _scalar(row: dict[str, Any], key: str) -> float:
    """The per-sample mean of a metric; curves are reduced to their AUC."""
    from .metrics import auc

    value = row[key]
    return _mean(auc(value)) if value.dim() == 2 else _mean(value)


def _ranked(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: -_scalar(r, key))
    return ok + [r for r in rows if "error" in r]


def _best(rows: list[dict[str, Any]], family: str, key: str) -> dict[str, Any] | None:
    ranked = [r for r in _ranked(rows, key) if r["family"] == family and "error" not in r]
    return ranked[0] if ranked else None


def vision_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["family", "method", *(title for _, title in VISION_COLUMNS), "time (s)", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _ranked(rows, "abpc"):
        if "error" in row:
            cells = [row["family"], row["method"], *["—"] * len(VISION_COLUMNS), "—", f"failed: {row['error'][:160]}"]
        else:
            values = [f"{_scalar(row, key):.3f}" for key, _ in VISION_COLUMNS]
            values[0] = f"**{values[0]}** ± {_stderr(row['abpc']):.3f}"
            cells = [row["family"], row["method"], *values, f"{row['seconds']:.1f}", row["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def text_table(runs: list[Any]) -> list[str]:
    """Methods x text models, top-1 / top-2 accuracy in %."""
    models = [r.spec.name for r in runs]
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], str] = {}
    for run in runs:
        for row in run.rows:
            key = (row["family"], row["method"])
            if key not in keys:
                keys.append(key)
            if "error" in row:
                cells[(*key, run.spec.name)] = f"failed: {row['error'][:90]}"
            else:
                cells[(*key, run.spec.name)] = f"{100 * _mean(row['top1']):.1f} / {100 * _mean(row['top2']):.1f}"
    head = ["family", "method", *(f"{m} top-1 / top-2 (%)" for m in models)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([*key, *(cells.get((*key, m), "—") for m in models)]) + " |" for key in keys]
    return lines


def acceptance(runs: list[Any]) -> list[str]:
    """The issue's checks, each with its measured numbers."""
    lines = []
    for run in runs:
        rows = run.rows
        if not run.spec.is_text:
            ours = _best(rows, "dynlrp", "abpc")
            if ours is None:
                continue
            value = _scalar(ours, "abpc")
            for family in ("zennit", "LXT", "captum"):
                theirs = _best(rows, family, "abpc")
                if theirs is not None:
                    other = _scalar(theirs, "abpc")
                    lines.append(f"- {run.spec.name}: dynlrp best ({ours['method']}) ABPC {value:.3f} "
                                 f"{'>=' if value >= other else '<'} {family} best ({theirs['method']}) {other:.3f}")
            for name in BASELINES:
                base = next((r for r in rows if r["method"] == name and "error" not in r), None)
                if base is not None:
                    other = _scalar(base, "abpc")
                    lines.append(f"- {run.spec.name}: dynlrp best ABPC {value:.3f} vs {name} {other:.3f} "
                                 f"(difference {value - other:+.3f})")
        else:
            ours, theirs = _best(rows, "dynlrp", "top1"), _best(rows, "LXT", "top1")
            if ours is not None and theirs is not None:
                a, b = _scalar(ours, "top1"), _scalar(theirs, "top1")
                lines.append(f"- {run.spec.name}: dynlrp best ({ours['method']}) top-1 {100 * a:.1f}% "
                             f"{'>=' if a >= b else '<'} LXT ({theirs['method']}) {100 * b:.1f}%")
    return lines


def write_report(summary: dict[str, Any]) -> str:
    """Write ``results.md`` (and the plots) into the run's output folder; return the markdown."""
    import dynlrp

    config, runs = summary["config"], summary["runs"]
    vision = [r for r in runs if not r.spec.is_text]
    text = [r for r in runs if r.spec.is_text]
    versions = {"torch": torch.__version__, "dynlrp": dynlrp.__version__, **_versions()}
    if summary["lxt_versions"]:
        versions["transformers (LXT env)"] = summary["lxt_versions"]["transformers"]
    out = [
        "# Faithfulness benchmark",
        "",
        f"`python -m benchmarks.faithfulness` (seed {config.seed}); run time {summary['seconds']:.0f} s on "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}.",
        "Protocol: `benchmarks/faithfulness/__init__.py`. " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "## Models",
        "",
        "| model | architecture | parameters | test accuracy | training (s) | explained samples | "
        "explained = label |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        params = sum(p.numel() for p in r.model.parameters())
        out.append(f"| {r.spec.name} | {r.spec.arch} | {params} | {100 * r.info['test_accuracy']:.2f}% | "
                   f"{r.info['train_seconds']:.0f}{' (cached)' if r.info['cached'] else ''} | {r.info['explained']} | "
                   f"{100 * r.info['explained_correct']:.1f}% |")
    for r in vision:
        units = (r.x.shape[-1] // config.patch) ** 2
        out += ["", f"## {r.spec.name}: perturbation ({units} patches of {config.patch}x{config.patch} px, removed in "
                f"{config.steps} steps, blur sigma {config.sigma} px; mean over samples, ABPC ± standard error)", "",
                *vision_table(r.rows)]
    if text:
        out += ["", "## Text: planted-token attribution accuracy", "", *text_table(text)]
    lxt_notes = [f"- {r.spec.name} / LXT {row['method']}: {row['note']}" for r in runs for row in r.rows
                 if row["family"] == "LXT" and row.get("note")]
    if lxt_notes:
        out += ["", "## LXT environment: the same models there (transformers 4.x) as here", "", *lxt_notes]
    out += ["", "## Acceptance checks", "", *acceptance(runs), ""]
    markdown = "\n".join(out)
    (config.out / "results.md").write_text(markdown)
    if config.plots:
        from .plots import plot_all

        plot_all(runs, config)
    return markdown


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("torchvision", "zennit", "captum", "transformers", "scikit-learn", "matplotlib"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
