"""The tiny models of the LXT comparison, and LXT's side of it (run in a subprocess).

Both sides build the same model: ``tests/hf_tiny.py`` for the transformers models (seeded, float64,
eval), a torchvision ``VisionTransformer`` with a small config for ViT. The test process builds
them unpatched, saves state dicts, inputs and targets, and runs this file as a script: it applies
LXT's monkey patches (which change classes process-wide, so they never touch the test process),
rebuilds each model, loads the saved weights and computes LXT's relevance the way LXT reads it:
``out[target].backward()`` with gradient 1, then ``x.grad * x``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for hf_tiny

import hf_tiny

HF = ("llama", "qwen3", "gemma3", "gpt2", "bert")
CAUSAL = ("llama", "qwen3", "gemma3", "gpt2")


def build_vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    for param in model.heads.parameters():  # torchvision zero-initialises the head: every logit would be 0
        torch.nn.init.normal_(param, std=0.2)
    return model.to(torch.float64).eval()


def build(name: str, attn: str = "eager"):
    """``(model, x)``: ``x`` is what is explained (input embeddings, or pixels for ViT), a fresh leaf."""
    if name == "vit":
        model = build_vit()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    else:
        model, (ids,), _ = hf_tiny.build(name, attn)
        with torch.no_grad():
            x = model.get_input_embeddings()(ids)  # Gemma-3's embedding module applies its sqrt(d) scale
    return model, x.detach().clone().requires_grad_(True)


def scores(model, name: str, x: torch.Tensor) -> torch.Tensor:
    """The (batch, classes) scores that are explained: next-token logits at the last position for
    the causal LMs, class logits for BERT and ViT."""
    if name == "vit":
        return model(x)
    logits = model(inputs_embeds=x).logits
    return logits[:, -1] if name in CAUSAL else logits


# --- LXT's side ----------------------------------------------------------------------------------

def _attnlrp_mha_forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                         average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention`` (self-attention, batch_first, no masks: torchvision's ViT) rewritten
    with LXT's own primitive for AttnLRP's uniform rule, exactly as ``lxt.efficient.patches``'
    ``wrap_attention_forward`` does for transformers models: q and k gradients / 4, v / 2."""
    from lxt.efficient.rules import divide_gradient

    assert self.batch_first and key_padding_mask is None and attn_mask is None and not is_causal
    q, k, v = torch.nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
    batch, length, dim = q.shape
    q, k, v = (t.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2) for t in (q, k, v))
    q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)), None


def float64_rms_norms(stop_gradient=lambda t: t) -> dict:
    """Forwards of the RMSNorm classes without transformers' float32 round trip (``.to(float32)`` /
    ``x.float()``), for the ``exact`` comparison: the test process uses them as they are, LXT's side
    with ``stop_gradient`` on the normaliser, as LXT's own patches (``rms_norm_forward``, Gemma-3's
    ``_norm``) do."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    def rms_norm(self, h):
        return self.weight * (h * stop_gradient(torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)))

    def gemma3_rms_norm(self, x):
        return self._norm(x) * (1.0 + self.weight)

    return {LlamaRMSNorm: rms_norm, Qwen3RMSNorm: rms_norm, Gemma3RMSNorm: gemma3_rms_norm}


def constant_gate_mlps() -> dict:
    """Gated-MLP forwards with the gate held constant (``act(gate_proj(x)).detach()``), as LXT's
    ``cp_gated_mlp_forward`` does for CP-LRP; used on dynlrp's side to pin that difference."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)).detach() * self.up_proj(x))

    return {LlamaMLP: forward, Qwen3MLP: forward, Gemma3MLP: forward}


def _modules():
    from torchvision.models import vision_transformer
    from transformers.models.bert import modeling_bert
    from transformers.models.gemma3 import modeling_gemma3
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen3 import modeling_qwen3

    return {"llama": modeling_llama, "qwen3": modeling_qwen3, "gemma3": modeling_gemma3, "gpt2": modeling_gpt2,
            "bert": modeling_bert, "vit": vision_transformer}


def patch_lxt(phase: str) -> None:
    """Apply LXT's patches for one phase (class-level, process-wide; phases run in this order).

    ``stock``: LXT's default patch map of every model (AttnLRP; CP-LRP for torchvision's ViT, the
    only map LXT ships for it). ``vit_attnlrp``: then ViT's attention becomes
    :func:`_attnlrp_mha_forward`. ``exact``: then LXT's identity-rule stabiliser (``output / (input
    + 1e-10)``) goes to 1e-30 and the RMSNorms lose transformers' float32 round trip
    (:func:`float64_rms_norms`). ``cp``: LXT's ``cp_LRP`` maps of the transformers models (a
    process of its own: these maps patch the same classes as the AttnLRP ones)."""
    import warnings

    from lxt.efficient import monkey_patch
    from lxt.efficient.models import gemma3, gpt2, llama, qwen3
    from lxt.efficient.rules import identity_rule_implicit_fn, stop_gradient

    modules = _modules()
    with warnings.catch_warnings():
        # the maps share nn.LayerNorm / nn.Dropout patches (the same functions): LXT warns on the 2nd
        warnings.filterwarnings("ignore", message=".*already patched")
        warnings.filterwarnings("ignore", message="Failed to patch")
        if phase == "stock":
            for module in modules.values():
                monkey_patch(module)
        elif phase == "vit_attnlrp":
            torch.nn.MultiheadAttention.forward = _attnlrp_mha_forward
        elif phase == "exact":
            identity_rule_implicit_fn.forward.__defaults__ = (1e-30,)
            for cls, forward in float64_rms_norms(stop_gradient).items():
                cls.forward = forward
        elif phase == "cp":
            for name, maps in (("llama", llama), ("qwen3", qwen3), ("gemma3", gemma3), ("gpt2", gpt2)):
                monkey_patch(modules[name], patch_map=maps.cp_LRP)
        else:
            raise ValueError(phase)


PHASES = ("stock", "vit_attnlrp", "exact")  # one process; "cp" needs a process of its own


def lxt_relevance(job: dict):
    """LXT's relevance of ``job["x"]`` for the ``job["target"]`` score of each row (patches applied)."""
    model, _ = build(job["name"], job["attn"])
    model.load_state_dict(job["state"], strict=True)
    model.train(job.get("train", False))
    x = job["x"].detach().clone().requires_grad_(True)
    out = scores(model, job["name"], x)
    out.gather(-1, job["target"].view(-1, 1)).sum().backward()
    return (x.grad * x).detach(), out.detach()


def main(jobs_path: str, out_path: str) -> None:
    jobs = torch.load(jobs_path, weights_only=False)
    phases = {job["phase"] for job in jobs.values()}
    if "cp" in phases and len(phases) > 1:
        raise ValueError("run the cp phase in a process of its own")
    results = {}
    for phase in ("cp",) if "cp" in phases else PHASES:
        patch_lxt(phase)
        for key, job in jobs.items():
            if job["phase"] == phase:
                results[key] = lxt_relevance(job)
    torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
