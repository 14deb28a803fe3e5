"""LXT's side of the benchmark: ``python -m benchmarks.faithfulness --part lxt --out DIR``.

Runs in the ``.tox/lxt`` environment (LXT 2.1, transformers 4.57.6, the same torch; dynlrp and this
package importable). The main run writes ``DIR/lxt_jobs.pt`` (per model: its :class:`~.models.Spec`, the
explained inputs, targets and the main process's logits); this process rebuilds each model from its spec
*after* applying LXT's monkey patches (process-wide class patches, hence a process of its own), loads
the cached weights, checks that its logits equal the main process's, and writes ``DIR/lxt_results.pt``:
per model and LXT variant the relevance ``x.grad * x`` (LXT's Gradient x Input reading: gradient 1 at
the target logit), or the error that stopped it.

Variants. Text (BERT, Llama): ``AttnLRP`` = ``lxt.efficient.monkey_patch`` with LXT's default map.
ViT: ``CP-LRP`` = LXT's default (and only) map for torchvision's ViT (identity rule on GELU, LN-rule,
``nn.MultiheadAttention`` with query and key detached); ``CP-LRP + gamma`` = the same plus LXT's
patched zennit with ``Gamma(130)`` on convolutions and ``Gamma(0.001)`` on ``nn.Linear`` modules (the
settings of dynlrp's ``dynamiclrp_vit``; LXT's ViT recipe); ``AttnLRP`` = the attention rewritten with
LXT's ``divide_gradient`` (gradient / 4 at q and k, / 2 at v), as LXT's transformers patches do.
"""
from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from .models import load_cached

TEXT_ARCHS = ("bert", "llama")


def attnlrp_multihead_attention(self: torch.nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                                need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                                average_attn_weights: bool = True, is_causal: bool = False):
    """Batch-first self-attention without masks (torchvision's ViT) with AttnLRP's uniform rule in LXT's
    efficient form: ``softmax(q k^T / sqrt(d)) v`` with the gradient divided by 4 at ``q``, ``k`` and by 2
    at ``v`` (``lxt.efficient.rules.divide_gradient``)."""
    from lxt.efficient.rules import divide_gradient

    if not self.batch_first or key_padding_mask is not None or attn_mask is not None or is_causal:
        raise NotImplementedError("only unmasked batch-first self-attention (torchvision's ViT)")
    projected = torch.nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
    batch, length, dim = query.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    q, k, v = (heads(t) for t in projected.chunk(3, dim=-1))
    out = torch.nn.functional.scaled_dot_product_attention(divide_gradient(q, 4), divide_gradient(k, 4),
                                                           divide_gradient(v, 2))
    return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)), None


def lxt_relevance(model: torch.nn.Module, is_text: bool, x: torch.Tensor, target: torch.Tensor,
                  composite: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x.grad * x, logits)`` with gradient 1 at each row's target logit."""
    x = x.detach().clone().requires_grad_(True)
    with composite.context(model) if composite is not None else contextlib.nullcontext():
        logits = model(inputs_embeds=x).logits if is_text else model(x)
        logits.gather(1, target.view(-1, 1)).sum().backward()
    return (x.grad * x).detach(), logits.detach()


def _gamma_composite():
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    return LayerMapComposite([(torch.nn.Conv2d, Gamma(130.0)), (torch.nn.Linear, Gamma(0.001))])


def _run(job: dict[str, Any], cache: Path, composite: Any = None) -> dict[str, Any]:
    try:
        spec = job["spec"]
        model = load_cached(spec, cache)
        start = time.perf_counter()
        relevance, logits = lxt_relevance(model, spec.is_text, job["x"], job["target"], composite)
        return {"relevance": relevance, "logit_diff": (logits - job["logits"]).abs().max().item(),
                "seconds": time.perf_counter() - start}
    except Exception as error:  # recorded in the table, never silently dropped
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def main(out: Path, cache: Path) -> None:
    import transformers
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer
    from transformers.models.bert import modeling_bert
    from transformers.models.llama import modeling_llama

    torch.set_num_threads(1)
    jobs: dict[str, dict[str, Any]] = torch.load(out / "lxt_jobs.pt", weights_only=False)
    results: dict[str, dict[str, Any]] = {"_versions": {"transformers": transformers.__version__}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already patched")  # maps share nn.LayerNorm / nn.Dropout
        warnings.filterwarnings("ignore", message="Failed to patch (Dropout|LayerNorm)")  # (so they fail twice)
        for module in (modeling_bert, modeling_llama, vision_transformer):
            monkey_patch(module)
    vit_jobs = {name: job for name, job in jobs.items() if not job["spec"].is_text}
    for name, job in jobs.items():
        results[name] = {("AttnLRP" if job["spec"].is_text else "CP-LRP"): _run(job, cache)}
    if vit_jobs:
        monkey_patch_zennit()
        for name, job in vit_jobs.items():
            results[name]["CP-LRP + gamma"] = _run(job, cache, _gamma_composite())
        torch.nn.MultiheadAttention.forward = attnlrp_multihead_attention
        for name, job in vit_jobs.items():
            results[name]["AttnLRP"] = _run(job, cache)
    torch.save(results, out / "lxt_results.pt")
