"""Node counts, per-op absorbed relevance and explain time vs forward+backward on VGG16 / ResNet-50.

    python -m benchmarks.cnn_core [--batch 1] [--repeats 5] [--size 224]

Times are medians over interleaved repeats in one process: forward only; forward + input-gradient
backward; forward + ``dynlrp.explain`` (epsilon preset). Random weights with non-zero biases.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import dynlrp


def _randomise_biases(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            torch.nn.init.normal_(bias, std=0.01)
    return model


def measure(name: str, batch: int, repeats: int, size: int) -> None:
    torch.manual_seed(0)
    model = _randomise_biases(getattr(torchvision.models, name)().eval())
    x = torch.randn(batch, 3, size, size)
    targets = list(range(batch))
    times: dict[str, list[float]] = {"forward": [], "forward+backward": [], "forward+explain": []}
    exp = None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model(x)
        times["forward"].append(time.perf_counter() - start)
        xg = x.clone().requires_grad_(True)
        start = time.perf_counter()
        out = model(xg)
        out.gather(1, torch.tensor(targets).view(-1, 1)).sum().backward()
        times["forward+backward"].append(time.perf_counter() - start)
        xg = x.clone().requires_grad_(True)
        start = time.perf_counter()
        exp = dynlrp.explain(model(xg), target=targets, inputs=[xg])
        times["forward+explain"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = dynlrp.audit(model, x[:1])
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
        measure(name, args.batch, args.repeats, args.size)


if __name__ == "__main__":
    main()
