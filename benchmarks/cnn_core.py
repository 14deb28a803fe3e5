"""Node counts, per-op absorbed relevance and explain time vs forward+backward on VGG16 / ResNet-50.

    python -m benchmarks.cnn_core [--batch 1] [--repeats 5] [--size 224]

Times are medians over interleaved repeats in one process (:func:`benchmarks.speed.measure`: the order
rotated per round): forward only; forward + input-gradient backward; forward + ``dynlrp.explain``
(epsilon preset), at the argmax class of each row. Random weights with non-zero biases
(:func:`benchmarks.speed.build_case`); ``python -m benchmarks.speed`` has the comparisons with zennit,
LXT and Captum and peak memory.
"""
from __future__ import annotations

import argparse

import dynlrp

from .speed import build_case, measure

METHODS = {"forward": "forward", "fwd_bwd": "forward+backward", "dynlrp:epsilon": "forward+explain"}


def measure_model(name: str, batch: int, repeats: int, size: int) -> None:
    case = build_case(name, batch=batch, image_size=size)
    timings = measure(case, list(METHODS), repeats)
    med = {label: timings[method].median for method, label in METHODS.items()}
    x = case.leaf()
    exp = dynlrp.explain(case.scores(x), target=case.target, inputs=[x])
    report = dynlrp.audit(case.scores.model, case.x[:1])
    print(f"## {name} (batch {batch}, {size}x{size}, {repeats} repeats)")
    print(f"nodes {report.nodes} (without AccumulateGrad "
          f"{report.nodes - report.ops['AccumulateGrad'].count}), coverage {report.coverage}")
    print("median s: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
          + f"; explain/(fwd+bwd) {med['forward+explain'] / med['forward+backward']:.2f}")
    c = exp.conservation
    print(f"conservation: output {c.output:.6g}, inputs {c.inputs:.6g}, absorbed "
          + ", ".join(f"{k} {v:.4g}" for k, v in c.absorbed.items()) + f", unexplained {c.unexplained:.2e}")
    print(f"promises: {exp.promises}")
    print("| op | count | rule | absorbed (sum over nodes) | max error |")
    print("|---|---|---|---|---|")
    for op, s in sorted(report.ops.items()):
        absorbed = ", ".join(f"{k} {v:.3g}" for k, v in s.absorbed.items() if v)
        print(f"| {op} | {s.count} | {s.rule} | {absorbed} | {s.max_error:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    for name in args.models.split(","):
        measure_model(name, args.batch, args.repeats, args.size)


if __name__ == "__main__":
    main()
