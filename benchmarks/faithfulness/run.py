"""Orchestration: train or load the models, attribute, score, merge LXT's results, write the report."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .data import TokenTask
from .methods import Method, methods_for
from .models import Dataset, Spec, embed, load_or_train

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "benchmarks" / "output" / "faithfulness"
LXT_PYTHON = REPO / ".tox" / "lxt" / "bin" / "python"
BATCH = 64

SPECS: tuple[Spec, ...] = (
    Spec("cnn", "vgg_cnn", epochs=20, lr=2e-3, weight_decay=1e-4, width=64),
    Spec("vit", "vit", epochs=60, lr=2e-3, weight_decay=0.05, width=64, layers=4, heads=4),
    *(Spec(f"{arch}-{n}tok", arch, epochs=10 * n, lr=1e-3, weight_decay=0.01, width=32, layers=2, heads=4,
           task=TokenTask(n_planted=n)) for arch in ("bert", "llama") for n in (1, 2)),
)


@dataclass(frozen=True)
class Config:
    """One benchmark run. ``samples``: test images per vision model; ``text_samples``: test sequences per
    text model; ``steps`` / ``patch`` / ``sigma``: the perturbation protocol (see :mod:`.metrics`)."""

    out: Path = OUTPUT
    specs: tuple[Spec, ...] = SPECS
    samples: int = 256
    text_samples: int = 500
    steps: int = 16
    patch: int = 4
    sigma: float = 4.0
    seed: int = 0
    lxt: bool = True
    lxt_python: Path = LXT_PYTHON
    plots: bool = True
    retrain: bool = False
    methods: Callable[[str, int], list[Method]] = field(default=methods_for, compare=False)

    @property
    def cache(self) -> Path:
        return self.out / "weights"


def quick(config: Config) -> Config:
    """Few test samples (16 images, 64 sequences), same models."""
    return dataclasses.replace(config, samples=16, text_samples=64)


def _generator(config: Config, *names: str) -> torch.Generator:
    """A generator seeded from the run seed and the names (independent of the order methods run in)."""
    return torch.Generator().manual_seed(config.seed * 1_000_003 + zlib.crc32("/".join(names).encode()))


@dataclass
class ModelRun:
    """Everything about one model in one run."""

    spec: Spec
    model: torch.nn.Module
    data: Dataset
    info: dict[str, Any]
    x: torch.Tensor  # explained inputs: images or token embeddings
    target: torch.Tensor
    f: Callable[[torch.Tensor], torch.Tensor]
    rows: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> relevance of the first samples


def prepare(spec: Spec, config: Config, log: Callable[[str], None]) -> ModelRun:
    model, data, info = load_or_train(spec, config.cache, config.retrain, log)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec.is_text:
        n = min(config.text_samples, len(data.y_test))
        x = embed(model, data.x_test[:n])

        def f(e: torch.Tensor) -> torch.Tensor:
            return model(inputs_embeds=e).logits
    else:
        n = min(config.samples, len(data.y_test))
        x = data.x_test[:n]
        f = model
    with torch.no_grad():
        target = torch.cat([f(x[i:i + 256]) for i in range(0, n, 256)]).argmax(-1)
    info = {**info, "explained": n, "explained_correct": (target == data.y_test[:n]).float().mean().item()}
    return ModelRun(spec, model, data, info, x, target, f)


def attribute(run: ModelRun, method: Method) -> torch.Tensor:
    """The method's relevance for every explained input, in batches."""
    return torch.cat([method.attribute(run.model, run.f, run.x[i:i + BATCH], run.target[i:i + BATCH])
                      for i in range(0, len(run.target), BATCH)])


def score(run: ModelRun, family: str, name: str, relevance: torch.Tensor, seconds: float, config: Config,
          note: str = "") -> dict[str, Any]:
    """One table row: the method's mean metrics (and per-sample values for the standard errors)."""
    row: dict[str, Any] = {"model": run.spec.name, "family": family, "method": name, "seconds": seconds, "note": note}
    g = _generator(config, run.spec.name)  # the same tie-breaking for every method (common random numbers)
    if run.spec.is_text:
        tokens = relevance.sum(-1)
        planted = run.data.planted[:len(run.target)]
        content = torch.zeros_like(planted)
        content[:, 1:-1] = True
        for k in (1, 2):
            row[f"top{k}"] = metrics.topk_accuracy(tokens, planted, content, k, g)
    else:
        baseline = metrics.blur(run.x, config.sigma)
        parts = [metrics.perturbation_scores(run.f, run.x[i:i + BATCH], baseline[i:i + BATCH], run.target[i:i + BATCH],
                                             relevance[i:i + BATCH], config.patch, config.steps, g)
                 for i in range(0, len(run.target), BATCH)]
        row.update({key: torch.cat([p[key] for p in parts]) for key in parts[0]})
    run.examples[f"{family}: {name}"] = relevance[:4]
    return row


def error_row(run: ModelRun, family: str, name: str, error: str) -> dict[str, Any]:
    return {"model": run.spec.name, "family": family, "method": name, "error": error}


def evaluate(run: ModelRun, config: Config, log: Callable[[str], None]) -> None:
    for method in config.methods(run.spec.arch, config.seed):
        start = time.perf_counter()
        try:
            relevance = attribute(run, method)
        except Exception as error:  # a library that cannot explain this model: recorded with its reason
            run.rows.append(error_row(run, method.family, method.name, f"{type(error).__name__}: {error}"))
            log(f"  {run.spec.name} {method.family} {method.name}: failed ({type(error).__name__})")
            continue
        run.rows.append(score(run, method.family, method.name, relevance, time.perf_counter() - start, config))
        log(f"  {run.spec.name} {method.family} {method.name}: {_headline(run.rows[-1])}")


def _headline(row: dict[str, Any]) -> str:
    keys = ("top1", "top2") if "top1" in row else ("abpc", "comprehensiveness", "sufficiency")
    return ", ".join(f"{k} {row[k].float().mean():.3f}" for k in keys)


# --- LXT -------------------------------------------------------------------------------------------

def start_lxt(runs: list[ModelRun], config: Config) -> subprocess.Popen | None:
    """Write the jobs and start LXT's process (ViT and text models), or None when there is none to run."""
    jobs = {}
    for run in runs:
        if run.spec.arch == "vgg_cnn":
            continue
        with torch.no_grad():
            logits = torch.cat([run.f(run.x[i:i + 256]) for i in range(0, len(run.x), 256)])
        jobs[run.spec.name] = {"spec": run.spec, "x": run.x, "target": run.target, "logits": logits}
    if not jobs or not config.lxt:
        return None
    if not config.lxt_python.exists():
        for run in runs:
            if run.spec.name in jobs:
                run.rows.append(error_row(run, "LXT", "(all)", f"not run: {config.lxt_python} not found (tox -e lxt "
                                          "creates that environment)"))
        return None
    torch.save(jobs, config.out / "lxt_jobs.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(config.out / "lxt_log.txt", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(config.lxt_python), "-m", "benchmarks.faithfulness", "--part", "lxt", "--out",
                                 str(config.out), "--cache", str(config.cache)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def finish_lxt(proc: subprocess.Popen | None, runs: list[ModelRun], config: Config,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Wait for LXT's process and score its relevance with the same metrics."""
    if proc is None:
        return {}
    code = proc.wait()
    results_path = config.out / "lxt_results.pt"
    if code != 0 or not results_path.exists():
        tail = (config.out / "lxt_log.txt").read_text()[-2000:]
        for run in runs:
            if run.spec.arch != "vgg_cnn":
                run.rows.append(error_row(run, "LXT", "(all)", f"LXT process failed (exit {code}); see lxt_log.txt"))
        log(f"LXT process failed (exit {code}):\n{tail}")
        return {}
    results = torch.load(results_path, weights_only=False)
    for run in runs:
        for variant, result in results.get(run.spec.name, {}).items():
            if "error" in result:
                run.rows.append(error_row(run, "LXT", variant, result["error"]))
                continue
            note = f"logits max diff vs main env {result['logit_diff']:.1e}"
            run.rows.append(score(run, "LXT", variant, result["relevance"], result["seconds"], config, note))
            log(f"  {run.spec.name} LXT {variant}: {_headline(run.rows[-1])}")
    return results.get("_versions", {})


# --- the whole run ---------------------------------------------------------------------------------

def run(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train / load every model, evaluate every method, merge LXT, write ``results.md`` (and plots)."""
    from .report import write_report

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "lxt_results.pt").unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not detect padding tokens")
        runs = [prepare(spec, config, log) for spec in config.specs]
        proc = start_lxt(runs, config)
        for r in runs:
            log(f"evaluating {r.spec.name} ({r.info['explained']} samples)")
            evaluate(r, config, log)
        versions = finish_lxt(proc, runs, config, log)
    seconds = time.perf_counter() - start
    summary = {"runs": runs, "seconds": seconds, "lxt_versions": versions, "config": config}
    text = write_report(summary)
    log(text)
    return summary


def main_lxt(out: Path, cache: Path) -> None:
    """LXT's process (run by :func:`start_lxt` with the LXT environment's interpreter)."""
    from .lxt_part import main

    main(out, cache)
