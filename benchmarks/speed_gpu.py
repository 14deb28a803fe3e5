"""The speed benchmark on CUDA in one go, for a lent GPU machine (nothing in CI depends on it).

    python3 benchmarks/speed_gpu.py [--skip-sdpa] [any benchmarks.speed option, e.g. --models gpt2 --repeats 10]

Run from anywhere; it works in the repository root. Steps:

1. Install: when dynlrp's requirements do not import (``torch``, ``torchvision``, ``transformers``), the
   README's first line runs (``pip install torch==2.14.1 torchvision==0.29.1 && pip install -e
   ".[test]"``). A machine without network (the lent H200s reach no registry) goes on with the torch,
   torchvision and transformers it has, from the source tree. Wheels in ``.whl/`` (carried along:
   zennit, captum, pure Python) are installed to ``/tmp/site`` and put on the path first.
2. The CUDA SDPA rule check. ``tests/test_rules_transformer.py::test_sdpa_reference`` takes no device
   (CPU tensors, the CPU flash node, float64), so this runs its reference formula
   (``_attention_reference``, AttnLRP written out in float64 on the CPU) against dynlrp on CUDA
   tensors, per SDPA backend that takes the case: efficient attention (float32), flash and cuDNN
   (bfloat16), with and without causal masking, grouped-query heads and an additive mask, and
   CP-LRP; tolerances in :func:`sdpa_check`.
3. ``python -m benchmarks.speed --device cuda --memory cuda --lxt-python none`` (peak memory:
   ``torch.cuda.max_memory_allocated`` in the timing process; LXT needs its own transformers 4.57.6
   env, which such a machine does not have).

Output in ``$OUT`` if set (the device tool's output folder), else ``benchmarks/output/gpu``:
``sdpa_cuda.txt``, ``speed.csv`` (rewritten after every model), ``speed_summary.csv``, ``speed.md``.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_INSTALL = (f"{sys.executable} -m pip install torch==2.14.1 torchvision==0.29.1 && "
                  f"{sys.executable} -m pip install -e '.[test]'")
REQUIRED = ("torch", "torchvision", "transformers")


def ensure_installed() -> None:
    """Carried wheels first, then the README's install line if a requirement is missing."""
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", "/tmp/site", *wheels], check=False)
        sys.path.insert(0, "/tmp/site")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, ["/tmp/site", os.environ.get("PYTHONPATH")]))
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing {missing}: {README_INSTALL}", flush=True)
        done = subprocess.run(README_INSTALL, shell=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            print("install failed (no network?); going on from the source tree", flush=True)
    sys.path.insert(0, str(ROOT))


def _sdpa_errors(q64, k64, v64, mask64, relevance, causal: bool, gqa: bool, cp: bool, device: str, dtype) -> tuple:
    """dynlrp on ``device`` / ``dtype`` against the float64 reference on the same inputs rounded to ``dtype``:
    per q/k/v the relative L2 error (for
    CP-LRP's q, k, which must get nothing: max |R|), the ledger's unexplained share, the node type."""
    import torch.nn.functional as F
    from test_rules_transformer import _attention_reference

    import dynlrp

    q, k, v = (t.to(device, dtype).requires_grad_(True) for t in (q64, k64, v64))
    mask = mask64.to(device, dtype) if mask64 is not None else None
    with dynlrp.record():  # values a decomposed (math) path lacks; a fused node needs none
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    exp = dynlrp.explain(out, target=relevance.to(device, dtype), inputs=[q, k, v],
                         rules=dynlrp.presets.get("cp_lrp") if cp else "attnlrp")
    rounded = [t.detach().double().cpu() for t in (q, k, v)]  # the reference sees the same (rounded) inputs
    expected = _attention_reference(*rounded, relevance, causal, mask.double().cpu() if mask is not None else None, cp)
    errors = []
    for tensor, want in zip((q, k, v), expected):
        got = exp.relevance(tensor).double().cpu()
        errors.append(float(got.abs().max()) if want is None else float((got - want).norm() / want.norm()))
    return errors, exp.conservation.unexplained, out.grad_fn.name()


def sdpa_check(out: Path) -> bool:
    """dynlrp's SDPA rule on CUDA against the float64 reference formula of the CPU test, per backend.

    Float32 rounding is amplified by the rule's divisions (scores near zero), so the tolerance is
    calibrated per case: the same case through the CPU's fused node in float32 gives the rounding
    level; CUDA passes at <= max(1e-3, 10 x that) in float32 and <= 5e-2 in bfloat16 (a wrong formula,
    scale or mask gives errors of order 1)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, str(ROOT / "tests"))
    backends = ((SDPBackend.EFFICIENT_ATTENTION, torch.float32), (SDPBackend.FLASH_ATTENTION, torch.bfloat16),
                (SDPBackend.CUDNN_ATTENTION, torch.bfloat16))
    cases = ((False, False, False, False), (True, True, False, False), (False, False, True, False),
             (True, True, False, True))
    lines, ok = [], True
    for causal, gqa, use_mask, cp in cases:
        generator = torch.Generator().manual_seed(0)
        q64 = torch.randn(2, 4, 16, 64, generator=generator, dtype=torch.float64)
        k64, v64 = (torch.randn(2, 2 if gqa else 4, 16, 64, generator=generator, dtype=torch.float64)
                    for _ in range(2))
        mask64 = torch.randn(16, 16, generator=generator, dtype=torch.float64) if use_mask else None
        relevance = torch.randn(2, 4, 16, 64, generator=generator, dtype=torch.float64)
        data = (q64, k64, v64, mask64, relevance, causal, gqa, cp)
        cpu_errors, _, _ = _sdpa_errors(*data, "cpu", torch.float32)
        label = f"causal={causal} gqa={gqa} mask={use_mask} cp={cp}"
        lines.append(f"{label}: CPU float32 rounding level q/k/v {', '.join(f'{e:.1e}' for e in cpu_errors)}")
        for backend, dtype in backends:
            try:
                with sdpa_kernel([backend]):
                    errors, unexplained, node = _sdpa_errors(*data, "cuda", dtype)
            except RuntimeError as err:
                lines.append(f"  {backend.name} {dtype}: not taken by the backend ({str(err).splitlines()[0][:80]})")
                continue
            tolerance = max(1e-3, 10 * max(cpu_errors)) if dtype == torch.float32 else 5e-2
            passed = max(errors) <= tolerance and unexplained <= tolerance
            ok &= passed
            lines.append(f"  {backend.name} {dtype}: node {node}, q/k/v {', '.join(f'{e:.1e}' for e in errors)},"
                         f" unexplained {unexplained:.1e}, tolerance {tolerance:.0e}: {'ok' if passed else 'FAIL'}")
    text = "\n".join(lines)
    print(text, flush=True)
    (out / "sdpa_cuda.txt").write_text(text + "\n")
    return ok


def main() -> int:
    ensure_installed()
    os.chdir(ROOT)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", flush=True)
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "output" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:]
    sdpa_ok = True
    if "--skip-sdpa" in argv:
        argv.remove("--skip-sdpa")
    else:
        sdpa_ok = sdpa_check(out)
    from benchmarks import speed

    speed.main(["--device", "cuda", "--memory", "cuda", "--lxt-python", "none", "--out", str(out), *argv])
    return 0 if sdpa_ok else 1


if __name__ == "__main__":
    sys.exit(main())
