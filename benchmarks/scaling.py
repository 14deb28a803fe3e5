"""Cost class of ``dynlrp.explain``: time and peak memory vs depth, sequence length and batch size.

    python -m benchmarks.scaling [--layers 1,2,4,8,16] [--tokens 16,32,64,128,256] [--batches 1,2,4,8]
        [--base 4,64,1] [--hidden 256] [--attn sdpa] [--repeats 3] [--memory subprocess|none] [--no-profile]

Protocol. The model is a Llama-style decoder (transformers' ``LlamaForCausalLM`` built by
``model_zoo.scaling.hf_model``: RMSNorm, rotary embeddings, grouped-query SDPA attention, SwiGLU MLP,
tied head; ``--hidden`` wide, heads of 64, intermediate 8/3 x hidden, vocabulary 2048, random weights),
explained as in ``benchmarks.speed``: input embeddings, scores = logits at the last position, target
= their argmax, preset ``attnlrp``. One axis moves at a time from the base point (layers, tokens,
batch). Per point, ``fwd_bwd`` and ``dynlrp:attnlrp`` are timed interleaved (medians of
``--repeats`` rounds after a first call, :func:`benchmarks.speed.measure`) and their peak RSS increase
is measured in a fresh process each (:func:`benchmarks.speed.peak_rss_increase`). With profiling
(default), one more explain per point runs under cProfile (time per phase: rules, promise replays,
ledger sums) and one under ``torch.profiler`` (the share of time spent inside aten ops, i.e. kernels;
the rest is Python and dispatch, per node).

Reading the result. The graph grows linearly with depth (a fixed number of nodes per layer), while
sequence length and batch change only tensor sizes, never the node count. So:

* time vs nodes along the depth axis: linear (R^2 close to 1) means the sweep is O(nodes); the slope is
  the cost per node at the base tensor sizes;
* time vs tokens (or batch) at fixed nodes: ``t = a + b * tokens``; ``a`` is the part of the cost that
  does not depend on tensor sizes (Python, dispatch and bookkeeping per node), ``b * tokens`` the
  kernels. Their shares at the base point say which term dominates there; the aten-op share of the
  profiled run is a second, independent estimate.

Output: ``scaling.csv`` and ``scaling.md`` in ``--out`` (default ``benchmarks/output/``); printed.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .speed import (
    OUTPUT_DIR,
    Case,
    fmt,
    make_case,
    measure,
    probe_case,
    profile_call,
    run_probe,
    setup_method,
    text_input,
)

METHODS = ("fwd_bwd", "dynlrp:attnlrp")
VOCAB = 2048
HEAD_DIM = 64


def build_point(layers: int, tokens: int, batch: int, hidden: int = 256, attn: str = "sdpa",
                count_nodes: bool = True) -> Case:
    """The Llama-style decoder of the protocol at one point (seed 0)."""
    from model_zoo.registry import pick_output
    from model_zoo.scaling import hf_model

    config = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                  num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM,
                  num_key_value_heads=max(1, hidden // (2 * HEAD_DIM)), head_dim=HEAD_DIM,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = hf_model("LlamaForCausalLM", "LlamaConfig", config, attn, no_cache=True).eval()
    x, shape = text_input(model, batch, tokens)
    return make_case(f"llama-{layers}L-h{hidden}", "text", "llama", model, pick_output, x, {}, shape, attn=attn,
                     record="never", count_nodes=count_nodes)


@dataclass
class Point:
    """Measurements at one (layers, tokens, batch)."""

    layers: int
    tokens: int
    batch: int
    nodes: int = 0
    fwd_bwd_s: float | None = None
    dynlrp_s: float | None = None
    dynlrp_first_s: float | None = None
    peak_fwd_bwd_mib: float | None = None
    peak_dynlrp_mib: float | None = None
    kernel_share: float | None = None  # aten-op self time / torch.profiler'd wall
    phases: dict[str, float] = field(default_factory=dict)  # cProfile: share of the call per phase
    status: str = "ok"

    @property
    def key(self) -> tuple[int, int, int]:
        return self.layers, self.tokens, self.batch

    @property
    def ratio(self) -> float | None:
        return self.dynlrp_s / self.fwd_bwd_s if self.dynlrp_s and self.fwd_bwd_s else None

    @property
    def per_node_ms(self) -> float | None:
        return 1e3 * self.dynlrp_s / self.nodes if self.dynlrp_s and self.nodes else None


#: cProfile phases (labels of :data:`benchmarks.speed.PHASES`) shown per point
SHOWN_PHASES = {"rules": "  rules (_apply)", "replays": "  forward values / promise replays (ValueStore.resolve)",
                "ledger": "  ledger sums (rules.common.total)", "forward": "forward (model)"}


def measure_point(point: Point, args: argparse.Namespace) -> Point:
    """Time, profile and (in subprocesses) memory-probe one point."""
    case = build_point(*point.key, hidden=args.hidden, attn=args.attn)
    point.nodes = case.nodes
    results = measure(case, METHODS, args.repeats)
    fb, ours = results["fwd_bwd"], results["dynlrp:attnlrp"]
    point.status = "; ".join(f"{m}: {t.status}" for m, t in results.items() if t.status != "ok") or "ok"
    point.fwd_bwd_s, point.dynlrp_s, point.dynlrp_first_s = fb.median, ours.median, ours.first
    if args.profile and ours.status == "ok":
        with contextlib.ExitStack() as stack:
            found = profile_call(setup_method("dynlrp:attnlrp", case, stack))
        point.kernel_share = found.op_self / found.op_wall
        point.phases = {name: found.phases[label] / found.wall for name, label in SHOWN_PHASES.items()}
    del case
    gc.collect()
    if args.memory == "subprocess":
        for method, attr in (("fwd_bwd", "peak_fwd_bwd_mib"), ("dynlrp:attnlrp", "peak_dynlrp_mib")):
            cmd = [sys.executable, "-m", "benchmarks.scaling", "--probe", method, "--point",
                   ",".join(map(str, point.key)), "--hidden", str(args.hidden), "--attn", args.attn]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            setattr(point, attr, run_probe(cmd)[0])
    return point


def fit(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[float, float, float] | None:
    """Least squares ``y = a + b x``: ``(a, b, R^2)``; None with fewer than 3 points."""
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2:
        return None
    px, py = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    slope, intercept = statistics.linear_regression(px, py)
    r2 = statistics.correlation(px, py) ** 2 if len(set(py)) > 1 else 1.0
    return intercept, slope, r2


def analysis(points: Sequence[Point], base: tuple[int, int, int]) -> list[str]:
    """The fits and the dominant-term statement (markdown lines)."""
    by_key = {p.key: p for p in points}
    depth = [p for p in points if p.tokens == base[1] and p.batch == base[2]]
    tokens = [p for p in points if p.layers == base[0] and p.batch == base[2]]
    batch = [p for p in points if p.layers == base[0] and p.tokens == base[1]]
    lines = []
    for label, attr in (("dynlrp", "dynlrp_s"), ("fwd+bwd", "fwd_bwd_s")):
        found = fit([p.nodes for p in depth], [getattr(p, attr) for p in depth])
        if found:
            a, b, r2 = found
            lines.append(f"- depth, {label}: t = {a * 1e3:.1f} ms + {b * 1e3:.3f} ms x nodes (R^2 {r2:.4f})")
    found = fit([p.nodes for p in depth], [p.peak_dynlrp_mib for p in depth])
    if found:
        lines.append(f"- depth, dynlrp peak memory: {found[0]:.1f} MiB + {found[1]:.3f} MiB x nodes"
                     f" (R^2 {found[2]:.4f})")
    here = by_key.get(base)
    for axis, pts, attr in (("tokens", tokens, "tokens"), ("batch", batch, "batch")):
        found = fit([getattr(p, attr) for p in pts], [p.dynlrp_s for p in pts])
        if not found or here is None or not here.dynlrp_s:
            continue
        a, b, r2 = found
        predicted = a + b * getattr(here, attr)
        fixed = min(max(a, 0.0) / predicted, 1.0) if predicted > 0 else float("nan")
        lines.append(f"- {axis} (nodes fixed at {here.nodes}): dynlrp t = {a * 1e3:.1f} ms + {b * 1e3:.3f} ms x {axis}"
                     f" (R^2 {r2:.4f}); at the base point the size-independent term (per-node Python, dispatch,"
                     f" bookkeeping: {a / here.nodes * 1e3:.3f} ms/node) is {fixed:.0%} of the time, the size-dependent"
                     f" term (kernels) {1 - fixed:.0%}")
        memory = fit([getattr(p, attr) for p in pts], [p.peak_dynlrp_mib for p in pts])
        if memory:
            lines.append(f"- {axis}, dynlrp peak memory: {memory[0]:.1f} MiB + {memory[1]:.3f} MiB x {axis}"
                         f" (R^2 {memory[2]:.4f})")
    if here is not None and here.kernel_share is not None:
        dominant = "kernels dominate" if here.kernel_share >= 0.5 else "per-node Python and dispatch overhead dominates"
        lines.append(f"- profiled at the base point: {here.kernel_share:.0%} of the time inside aten ops, so "
                     f"{dominant}; cProfile shares: " + ", ".join(f"{k} {v:.0%}" for k, v in
                                                                            here.phases.items()))
    return lines


HEADER = ("layers", "tokens", "batch", "nodes", "fwd+bwd s", "dynlrp first s", "dynlrp s", "dynlrp/(fwd+bwd)",
          "dynlrp ms/node", "aten share", "rules", "replays", "ledger", "peak MiB fwd+bwd", "peak MiB dynlrp",
          "mem ratio", "status")


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def table(points: Sequence[Point]) -> list[list[str]]:
    rows = []
    for p in points:
        mem = p.peak_dynlrp_mib / p.peak_fwd_bwd_mib if p.peak_dynlrp_mib and p.peak_fwd_bwd_mib else None
        rows.append([str(p.layers), str(p.tokens), str(p.batch), str(p.nodes), fmt(p.fwd_bwd_s),
                     fmt(p.dynlrp_first_s), fmt(p.dynlrp_s), fmt(p.ratio, 2), fmt(p.per_node_ms),
                     _share(p.kernel_share), *(_share(p.phases.get(k)) for k in ("rules", "replays", "ledger")),
                     fmt(p.peak_fwd_bwd_mib, 4), fmt(p.peak_dynlrp_mib, 4), fmt(mem, 2), p.status])
    return rows


def points_for(args: argparse.Namespace) -> tuple[list[Point], tuple[int, int, int]]:
    """The unique points of the three axes through the base point, in axis order."""
    base = tuple(int(v) for v in args.base.split(","))
    keys = [(v, base[1], base[2]) for v in _ints(args.layers)] + [(base[0], v, base[2]) for v in _ints(args.tokens)]
    keys += [(base[0], base[1], v) for v in _ints(args.batches)]
    return [Point(*key) for key in dict.fromkeys(keys)], base  # type: ignore[return-value]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> list[Point] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,2,4,8,16")
    parser.add_argument("--tokens", default="16,32,64,128,256")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--base", default="4,64,1", help="layers,tokens,batch of the base point")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", default="subprocess", choices=("subprocess", "none"))
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(OUTPUT_DIR))
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        layers, tokens, batch = _ints(args.point)
        probe_case(build_point(layers, tokens, batch, args.hidden, args.attn, count_nodes=False), args.probe)
        return None
    points, base = points_for(args)
    for point in points:
        measure_point(point, args)
        print(f"layers {point.layers} tokens {point.tokens} batch {point.batch}: {point.nodes} nodes, dynlrp "
              f"{fmt(point.dynlrp_s)} s, fwd+bwd {fmt(point.fwd_bwd_s)} s", flush=True)
    rows = table(points)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n\n" + "\n".join(analysis(points, base))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(text + "\n")
    with open(out / "scaling.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    print("\n" + text + f"\n\nwritten: {out / 'scaling.csv'}, {out / 'scaling.md'}", flush=True)
    return points


if __name__ == "__main__":
    main()
