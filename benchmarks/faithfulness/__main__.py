"""``python -m benchmarks.faithfulness [--quick] [--part main|lxt] ...``; see the package docstring."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from .run import LXT_PYTHON, OUTPUT, SPECS, Config, main_lxt, quick, run


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faithfulness", description=__doc__)
    parser.add_argument("--part", choices=("main", "lxt"), default="main",
                        help="lxt: LXT's side only (run in .tox/lxt by the main run)")
    parser.add_argument("--quick", action="store_true", help="16 images / 64 sequences per model")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument("--cache", type=Path, default=None, help="--part lxt: the weights folder (default OUT/weights)")
    parser.add_argument("--models", default=",".join(s.name for s in SPECS), help="comma-separated subset")
    parser.add_argument("--samples", type=int, default=None, help="test images per vision model")
    parser.add_argument("--text-samples", type=int, default=None, help="test sequences per text model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible, and fair on "
                        "shared machines)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--no-lxt", action="store_true")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--lxt-python", type=Path, default=LXT_PYTHON)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.part == "lxt":
        main_lxt(args.out, args.cache or args.out / "weights")
        return
    names = args.models.split(",")
    unknown = set(names) - {s.name for s in SPECS}
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {[s.name for s in SPECS]}")
    specs = tuple(dataclasses.replace(s, seed=args.seed) for s in SPECS if s.name in names)
    config = Config(out=args.out, specs=specs, seed=args.seed, lxt=not args.no_lxt, lxt_python=args.lxt_python,
                    plots=not args.no_plots, retrain=args.retrain)
    if args.quick:
        config = quick(config)
    overrides = {k: v for k, v in (("samples", args.samples), ("text_samples", args.text_samples)) if v is not None}
    run(dataclasses.replace(config, **overrides))


if __name__ == "__main__":
    main()
