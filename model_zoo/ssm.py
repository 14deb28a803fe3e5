"""State-space models: transformers' Mamba, Mamba-2 and Falcon-Mamba (pure PyTorch paths on CPU), and
the original ``mamba_ssm`` implementation (optional package).

mamba-ssm on a machine without its CUDA extension
-------------------------------------------------
``pip install mamba-ssm`` with ``MAMBA_SKIP_CUDA_BUILD=TRUE`` installs the Python code without the
``selective_scan_cuda`` extension, which ``mamba_ssm.ops.selective_scan_interface`` imports at module
level. :func:`import_mamba_ssm` therefore

1. imports transformers' Mamba modelling modules first, so that their optional "use mamba_ssm's kernels
   if importable" hooks are resolved while mamba_ssm is still unimportable (they keep the torch path);
2. inserts an empty stub module ``selective_scan_cuda`` into ``sys.modules`` only for the duration of
   the import of ``mamba_ssm`` and removes it afterwards;
3. points ``mamba_ssm.modules.mamba_simple``'s module globals at the reference implementations
   shipped by mamba_ssm itself: ``selective_scan_fn -> selective_scan_ref``,
   ``mamba_inner_fn -> mamba_inner_ref`` and ``causal_conv1d_fn -> None`` (the module's own
   ``nn.Conv1d`` path). The originals cannot run without the extension, so nothing that worked before
   changes.

The published configuration uses the fused (Triton) add + RMSNorm; the builder sets
``fused_add_norm=False`` (the unfused path is the same computation, as mamba_ssm's ``Block``
documents) and replaces each Triton ``RMSNorm`` module by :class:`ReferenceRMSNorm`, which shares its
parameters and calls mamba_ssm's ``rms_norm_ref``. Everything stays inside this module.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types

import torch
from torch import nn

from .registry import ModelUnavailableError, register_model
from .scaling import hf_model, pick, text_ids

TINY_SSM = dict(hidden_size=32, num_hidden_layers=2, vocab_size=128)


# ------------------------------------------------------------------------------------------ transformers


def _hf_ssm(model_class, config_class, full, tiny, size):
    config = pick(size, full, {**TINY_SSM, **tiny})
    return hf_model(model_class, config_class, config, None, no_cache=True), (text_ids(size, config["vocab_size"]),), {}


@register_model(name="mamba_130m", family="mamba", modality="state-space",
                tags=("paper", "ssm", "decoder", "transformers"), paper_nodes=3421)
def mamba_130m(size, attn):
    """Mamba-130M (state-spaces/mamba-130m-hf), transformers' MambaForCausalLM, sequential selective scan."""
    full = dict(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=24, expand=2, conv_kernel=4,
                time_step_rank=48, use_bias=False, use_conv_bias=True, hidden_act="silu", layer_norm_epsilon=1e-5,
                residual_in_fp32=True, tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return _hf_ssm("MambaForCausalLM", "MambaConfig", full, dict(state_size=4, time_step_rank=2), size)


@register_model(name="falcon_mamba_7b", family="falcon-mamba", modality="state-space",
                tags=("ssm", "decoder", "transformers"))
def falcon_mamba_7b(size, attn):
    """Falcon-Mamba-7B (tiiuae/falcon-mamba-7b): Mamba-1 with RMS-normalised B, C and dt; untied head."""
    full = dict(vocab_size=65024, hidden_size=4096, state_size=16, num_hidden_layers=64, expand=2, conv_kernel=4,
                time_step_rank=256, use_bias=False, use_conv_bias=True, hidden_act="silu", layer_norm_epsilon=1e-5,
                mixer_rms_eps=1e-6, residual_in_fp32=True, tie_word_embeddings=False, pad_token_id=11,
                bos_token_id=0, eos_token_id=11)
    tiny = dict(state_size=4, time_step_rank=2, pad_token_id=0, eos_token_id=0)
    return _hf_ssm("FalconMambaForCausalLM", "FalconMambaConfig", full, tiny, size)


@register_model(name="mamba2_130m", family="mamba2", modality="state-space", tags=("ssm", "decoder", "transformers"))
def mamba2_130m(size, attn):
    """Mamba-2-130M (state-spaces/mamba2-130m), transformers' Mamba2ForCausalLM: chunked SSD scan in torch."""
    full = dict(vocab_size=50288, hidden_size=768, state_size=128, num_hidden_layers=24, expand=2, head_dim=64,
                num_heads=24, n_groups=1, conv_kernel=4, chunk_size=256, use_bias=False, use_conv_bias=True,
                hidden_act="silu", layer_norm_epsilon=1e-5, residual_in_fp32=True, tie_word_embeddings=True,
                pad_token_id=0, bos_token_id=0, eos_token_id=0)
    tiny = dict(state_size=8, head_dim=8, num_heads=8)  # num_heads * head_dim = expand * hidden_size
    return _hf_ssm("Mamba2ForCausalLM", "Mamba2Config", full, tiny, size)


# -------------------------------------------------------------------------------------------- mamba_ssm


@contextlib.contextmanager
def _stub_module(name: str):
    """Make ``import name`` succeed with an empty module inside the block; restore ``sys.modules`` after."""
    previous = sys.modules.get(name)
    sys.modules[name] = types.ModuleType(name, f"stub inserted by model_zoo.ssm: {name} is not installed")
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def import_mamba_ssm() -> types.SimpleNamespace:
    """Import mamba_ssm, on installs without its CUDA extension through the stub and reference paths above.

    Returns a namespace with ``MambaLMHeadModel``, ``MambaConfig``, ``RMSNorm`` (mamba_ssm's Triton
    module class), ``rms_norm_ref`` and ``reference`` (True when the reference paths are in use, i.e.
    the extension or a GPU is missing). Raises :class:`ModelUnavailableError` when mamba_ssm is missing
    or fails to import.
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        raise ModelUnavailableError("mamba_130m_ssm", ("mamba_ssm",))
    has_kernels = importlib.util.find_spec("selective_scan_cuda") is not None
    if not has_kernels:
        for name in ("mamba", "falcon_mamba", "mamba2"):  # resolve transformers' kernel hooks first (step 1)
            importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    try:
        with contextlib.nullcontext() if has_kernels else _stub_module("selective_scan_cuda"):
            mixer = importlib.import_module("mamba_ssm.models.mixer_seq_simple")
            config = importlib.import_module("mamba_ssm.models.config_mamba")
            simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
            scan = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
            norms = importlib.import_module("mamba_ssm.ops.triton.layer_norm")
    except Exception as error:  # e.g. einops or triton missing, or an API change in mamba_ssm
        raise ModelUnavailableError("mamba_130m_ssm", ("mamba_ssm",), f"{type(error).__name__}: {error}") from error
    reference = not has_kernels or not torch.cuda.is_available()
    if reference:
        simple.selective_scan_fn = scan.selective_scan_ref
        simple.mamba_inner_fn = scan.mamba_inner_ref
        simple.causal_conv1d_fn = None
    return types.SimpleNamespace(MambaLMHeadModel=mixer.MambaLMHeadModel, MambaConfig=config.MambaConfig,
                                 RMSNorm=getattr(norms, "RMSNorm", None), rms_norm_ref=norms.rms_norm_ref,
                                 reference=reference)


class ReferenceRMSNorm(nn.Module):
    """mamba_ssm's RMSNorm computed with its reference function (no Triton); shares the parameters."""

    def __init__(self, norm: nn.Module, rms_norm_ref):
        super().__init__()
        self.weight = norm.weight
        self.bias = getattr(norm, "bias", None)
        self.eps = norm.eps
        self._ref = rms_norm_ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._ref(x, self.weight, self.bias, eps=self.eps)


def _replace_norms(model: nn.Module, norm_class, rms_norm_ref) -> None:
    if norm_class is None:
        return
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, norm_class):
                setattr(parent, child_name, ReferenceRMSNorm(child, rms_norm_ref))


@register_model(name="mamba_130m_ssm", family="mamba", modality="state-space",
                tags=("ssm", "decoder", "mamba_ssm"), paper_nodes=3421, requires=("mamba_ssm",), output="logits")
def mamba_130m_ssm(size, attn):
    """Mamba-130M (state-spaces/mamba-130m) with mamba_ssm's MambaLMHeadModel; reference scan on CPU."""
    ms = import_mamba_ssm()
    full = dict(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg=dict(layer="Mamba1"), rms_norm=True,
                residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
    tiny = dict(d_model=32, n_layer=2, vocab_size=128, ssm_cfg=dict(d_state=4))
    config = pick(size, full, tiny)
    if ms.reference:
        config["fused_add_norm"] = False  # the Triton fused add + norm needs a GPU; same computation unfused
    model = ms.MambaLMHeadModel(ms.MambaConfig(**config))
    if ms.reference:
        _replace_norms(model, ms.RMSNorm, ms.rms_norm_ref)
    return model, (text_ids(size, config["vocab_size"]),), {}
