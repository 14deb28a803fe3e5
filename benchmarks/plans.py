"""Promise plans (the paper's "caching promise structures", section 4.4.1): ``explain`` with and
without a :class:`dynlrp.PlanCache`.

    python -m benchmarks.plans [--models flan_t5_large,gpt2,vit_b_16,roberta_large,resnet50]
        [--size tiny|full] [--tokens 16] [--batch 1] [--repeats 9] [--threads N]

Protocol. Each model is built as in :mod:`benchmarks.speed` (:func:`benchmarks.speed.build_case`:
random weights, randomised biases, input embeddings or images, scores = logits at the last position,
targets fixed); the preset is ``epsilon`` for CNNs and ``attnlrp`` otherwise. Per call, one forward
(inside ``dynlrp.record()`` where the graph lacks values, decided as in ``benchmarks.speed``) and
then ``explain(..., retain_graph=False)``, of which only ``explain`` is timed: a plan saves work of the
sweep, not of the forward. Two variants, interleaved round by round after one untimed call each:
``none`` (no cache: every call finds its values and resolves its promises afresh) and ``plan`` (one
``PlanCache`` for all calls of the model; the untimed first call builds the plan, every timed call
reuses it). Medians of ``--repeats`` rounds. ``max |diff|``: the largest difference between the two
variants' relevances in the last round (a plan must not change the result: 0).

Reading the result. The plan replaces the search for each forward value and the promise resolution
with reads by node position: it saves Python work per node, so its share is largest where per-node
work dominates (tiny models, short sequences) and shrinks as kernels grow.

Output: ``plans.md`` in ``--out`` (default ``benchmarks/output/``); printed.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import dynlrp

from .speed import OUTPUT_DIR, Case, build_case, dynlrp_preset, fmt, needs_record

MODELS = ("flan_t5_large", "gpt2", "vit_b_16", "roberta_large", "resnet50")
HEADER = ("model", "size", "input", "nodes", "promises", "record", "none ms", "plan ms", "plan/none",
          "plan hits", "max |diff|")


@dataclass
class Result:
    model: str
    size: str
    shape: str
    nodes: int
    promises: int
    record: bool
    none_s: float
    plan_s: float
    hits: int
    max_diff: float

    def row(self) -> list[str]:
        return [self.model, self.size, self.shape, str(self.nodes), str(self.promises), "yes" if self.record else "",
                fmt(self.none_s * 1e3, 3), fmt(self.plan_s * 1e3, 3), fmt(self.plan_s / self.none_s, 2),
                str(self.hits), f"{self.max_diff:.1e}"]


def preset_for(case: Case) -> str:
    return "epsilon" if case.kind == "cnn" else "attnlrp"


def measure_plans(case: Case, size: str, repeats: int) -> Result:
    """Time ``explain`` alone without and with one shared :class:`dynlrp.PlanCache` (module docstring)."""
    preset = preset_for(case)
    rules = dynlrp_preset(preset, case.x.device, case.merge_batch_norm)
    record = needs_record(case.model, case.attn, preset)
    cache = dynlrp.PlanCache()

    def call(plans: dynlrp.PlanCache | None) -> tuple[float, dynlrp.Explanation, torch.Tensor]:
        x = case.leaf()
        with dynlrp.record() if record else contextlib.nullcontext():
            out = case.scores(x)
        start = time.perf_counter()
        exp = dynlrp.explain(out, target=case.target, rules=rules, inputs=[x], plans=plans, retain_graph=False)
        return time.perf_counter() - start, exp, x

    call(None)
    call(cache)  # builds the plan (a miss); every timed call with the cache is a hit
    times: dict[str, list[float]] = {"none": [], "plan": []}
    for _ in range(repeats):
        seconds, plain, x_plain = call(None)
        times["none"].append(seconds)
        seconds, planned, x_planned = call(cache)
        times["plan"].append(seconds)
    diff = float((plain.relevance(x_plain) - planned.relevance(x_planned)).abs().max())
    return Result(case.model, size, case.shape, case.nodes, plain.promises.promises, record,
                  statistics.median(times["none"]), statistics.median(times["plan"]), cache.hits, diff)


def markdown(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="zoo names, comma-separated")
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--tokens", type=int, default=16, help="sequence length of text models")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default=str(OUTPUT_DIR))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for name in args.models.split(","):
        case = build_case(name, size=args.size, batch=args.batch, tokens=args.tokens)
        results.append(measure_plans(case, args.size, args.repeats))
        print("| " + " | ".join(results[-1].row()) + " |", flush=True)
    text = markdown(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plans.md").write_text(text + "\n")
    print("\n" + text + f"\n\nwritten: {out / 'plans.md'}", flush=True)
    return results


if __name__ == "__main__":
    main()
