"""The model zoo: registry API, every tiny entry builds and runs fast, selection, errors, the CLI.

Extended (``-m extended``): tiny and full configurations produce the same set of autograd node
types; full-size node counts are printed and recorded (``record_property``). Full-size models are
built one at a time, also across xdist workers (a file lock), and skipped above
``MODEL_ZOO_MAX_FULL_PARAMS`` parameters (default 1.5e9: float32 weights plus activations must fit
next to other jobs on a 24 GB machine).
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import model_zoo
from model_zoo.registry import MODALITIES, meta_parameters

PAPER = {
    "vgg16": 90, "resnet50": 339, "vit_b_16": 779, "efficientnet_v2_m": 1526, "siglip2_so400m_p14_384": 2178,
    "wav2vec2_xls_r_300m": 2022, "whisper_small": 2729, "gpt2": 885, "roberta_large": 1461, "llama_3_2_1b": 1787,
    "gemma_3_270m": 2482, "qwen3_0_6b": 2590, "flan_t5_large": 5713, "deplot": 2863, "mamba_130m": 3421,
}
CASES = [(entry.name, attn) for entry in model_zoo.entries() for attn in (entry.attn or (None,))]
CASE_IDS = [f"{name}-{attn}" if attn else name for name, attn in CASES]
MAX_FULL_PARAMS = float(os.environ.get("MODEL_ZOO_MAX_FULL_PARAMS", "1.5e9"))


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import the heavy libraries once, so that per-model timings measure building and running."""
    import timm  # noqa: F401
    import torchvision.models  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    if model_zoo.get("mamba_130m_ssm").available():
        from model_zoo.ssm import import_mamba_ssm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_mamba_ssm()  # about 4 s: triton, einops and mamba_ssm's modules


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _run(entry, size, attn, seed=0):
    model, args, kwargs = entry.build(size, seed=seed, attn=attn)
    return model, args, kwargs, entry.output(model(*args, **kwargs))


# --------------------------------------------------------------------------------------------- registry


def test_names_are_sorted_unique_and_cover_the_paper():
    names = model_zoo.names()
    assert names == sorted(set(names))
    assert len(names) >= 45
    assert set(PAPER) <= set(names)
    assert {e.name for e in model_zoo.select("paper")} == set(PAPER)
    for name, nodes in PAPER.items():
        assert model_zoo.get(name).paper_nodes == nodes


def test_entries_are_well_formed():
    for entry in model_zoo.entries():
        assert entry.modality in MODALITIES
        assert set(entry.attn) <= {"eager", "sdpa"}
        assert entry.family in entry.tags and entry.modality in entry.tags
        assert entry.description, f"{entry.name}: the builder needs a docstring naming the checkpoint"
        if "transformers" in entry.tags and entry.attn:
            assert entry.attn[0] == "eager"


def test_select_all_names_tags_and_mixtures():
    assert [e.name for e in model_zoo.select("all")] == model_zoo.names()
    assert [e.name for e in model_zoo.select("gpt2")] == ["gpt2"]
    moe = {e.name for e in model_zoo.select("moe")}
    assert moe == {"mixtral_8x7b", "qwen3_moe_30b_a3b"}
    mixed = [e.name for e in model_zoo.select(" gpt2, moe ,vgg16,gpt2")]
    assert mixed == ["gpt2", "mixtral_8x7b", "qwen3_moe_30b_a3b", "vgg16"]
    assert {e.modality for e in model_zoo.select("audio")} == {"audio"}
    assert {e.name for e in model_zoo.select(["state-space"])} >= {"mamba_130m", "mamba2_130m"}


@pytest.mark.parametrize("spec,expected", [("resnet5", "resnet50"), ("gpt-2", "gpt2"), ("vgg16,visoin", "vision")])
def test_unknown_names_list_close_matches(spec, expected):
    with pytest.raises(model_zoo.UnknownModelError) as info:
        model_zoo.select(spec)
    assert isinstance(info.value, KeyError)
    assert expected in info.value.close_matches
    assert expected in str(info.value)
    with pytest.raises(KeyError):
        model_zoo.get("resnet5")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size"):
        model_zoo.get("vgg16").build("small")
    with pytest.raises(ValueError, match="attn"):
        model_zoo.get("deberta_v3_base").build(attn="sdpa")
    with pytest.raises(ValueError, match="attn"):
        model_zoo.get("resnet50").build(attn="eager")
    with pytest.raises(ValueError, match="empty"):
        model_zoo.select(" , ")
    with pytest.raises(ValueError, match="twice"):
        model_zoo.register_model(name="gpt2", family="gpt2", modality="text")(lambda size, attn: None)


def test_register_model_adds_family_and_modality_tags():
    decorator = model_zoo.register_model(name="_probe", family="probe-family", modality="vision", tags=("x",))
    try:
        decorator(lambda size, attn: (nn.Linear(2, 2), (torch.ones(1, 2),), {}))
        entry = model_zoo.get("_probe")
        assert entry.tags == ("x", "probe-family", "vision") and entry.attn == () and entry.requires == ()
        model, args, _ = entry.build()
        assert not model.training and entry.output(model(*args)).grad_fn is not None
    finally:
        model_zoo.registry._REGISTRY.pop("_probe", None)


@pytest.mark.parametrize("name", [e.name for e in model_zoo.entries() if e.attn == ("eager",)])
def test_eager_only_entries_really_lack_sdpa(name):
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        model_zoo.get(name).builder("tiny", "sdpa")


def test_mamba_ssm_entry_is_optional(monkeypatch):
    entry = model_zoo.get("mamba_130m_ssm")
    assert entry.requires == ("mamba_ssm",)
    find_spec = importlib.util.find_spec  # hide an installed mamba_ssm for this test only
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mamba_ssm" else find_spec(name, *args))
    assert not entry.available()
    with pytest.raises(model_zoo.ModelUnavailableError) as info:
        entry.build()
    assert info.value.missing == ("mamba_ssm",)
    assert "MAMBA_SKIP_CUDA_BUILD=TRUE" in str(info.value) and "pip install --no-build-isolation" in str(info.value)


def test_output_picks_the_tensor_to_explain():
    pick = model_zoo.get("vgg16").output
    logits, hidden = torch.ones(1, 2), torch.zeros(1, 3)
    assert pick(logits) is logits
    assert pick({"last_hidden_state": hidden, "logits": logits}) is logits
    assert pick((None, hidden)) is hidden
    assert model_zoo.get("clip_vit_b_32").output({"logits_per_image": logits, "logits_per_text": hidden}) is logits
    with pytest.raises(TypeError):
        pick("not a model output")


def test_parameters_are_counted_on_meta_without_leaking_the_patch():
    register = nn.Module.register_parameter
    assert model_zoo.get("vgg16").num_params("full") == 138_357_544
    assert model_zoo.get("mixtral_8x7b").num_params("full") > 46e9  # never materialised
    assert nn.Module.register_parameter is register
    with meta_parameters():
        layer = nn.Linear(3, 3)
    assert layer.weight.is_meta and not nn.Linear(3, 3).weight.is_meta


# ---------------------------------------------------------------------------------------- tiny entries


@pytest.mark.parametrize("name,attn", CASES, ids=CASE_IDS)
def test_tiny_entry_builds_and_runs_fast(name, attn):
    entry = model_zoo.get(name)
    if not entry.available():
        pytest.skip(f"{name} needs {', '.join(entry.missing())}")
    start = time.perf_counter()
    model, args, kwargs = entry.build("tiny", attn=attn)
    built = time.perf_counter() - start
    out = entry.output(model(*args, **kwargs))
    total = time.perf_counter() - start
    print(f"{name} [{attn}] build {built:.2f} s + forward {total - built:.2f} s")
    assert not model.training
    assert isinstance(out, torch.Tensor) and out.grad_fn is not None
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert total < 5.0, f"{name}: tiny build + forward took {total:.1f} s (target: under 2 s)"


def test_inputs_are_deterministic_in_the_seed():
    entry = model_zoo.get("llava_1_5_7b")
    _, _, first, out1 = _run(entry, "tiny", "eager", seed=3)
    _, _, second, out2 = _run(entry, "tiny", "eager", seed=3)
    _, _, other, _ = _run(entry, "tiny", "eager", seed=4)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(out1, out2)
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    assert first["pixel_values"].requires_grad and not first["input_ids"].is_floating_point()


def test_inputs_follow_the_measured_conventions():
    _, whisper_args, whisper_kwargs = model_zoo.get("whisper_small").build()
    model = model_zoo.get("whisper_small").build()[0]
    assert whisper_args[0].shape[-1] == 2 * model.config.max_source_positions
    assert whisper_kwargs["decoder_input_ids"].shape == (1, 4)
    model, _, kwargs = model_zoo.get("deplot").build()
    ids = kwargs["flattened_patches"][0, :, :2]
    assert ids.min() == 1 and ids.max() == 4 and model.config.vision_config.patch_embed_hidden_size == 48
    model, _, kwargs = model_zoo.get("llava_1_5_7b").build()
    assert (kwargs["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length
    _, args, _ = model_zoo.get("gpt2").build()
    assert args[0].shape == (1, 8)
    for name in ("gpt2", "llama_3_2_1b", "flan_t5_large", "whisper_small", "llava_1_5_7b"):
        model = model_zoo.get(name).build()[0]
        config = getattr(model.config, "text_config", model.config)
        assert config.use_cache is False, name


def test_cli_lists_the_zoo():
    result = subprocess.run([sys.executable, "-m", "model_zoo", "list", "--select", "paper,mamba_130m_ssm"],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    for name in (*PAPER, "mamba_130m_ssm"):
        assert f"| {name} " in result.stdout
    assert "1,235.8" in result.stdout  # Llama-3.2-1B counted on the meta device
    assert "16 entries" in result.stdout


# ----------------------------------------------------------------------------- mamba_ssm import shim

FAKE_MAMBA_SSM = {
    "__init__.py": "",
    "models/__init__.py": "",
    "modules/__init__.py": "",
    "ops/__init__.py": "",
    "ops/triton/__init__.py": "",
    "ops/selective_scan_interface.py": """
        import selective_scan_cuda  # the CUDA extension, imported at module level as in mamba_ssm
        def selective_scan_fn(u, *args, **kwargs):
            return selective_scan_cuda.fwd(u)
        def selective_scan_ref(u, *args, **kwargs):
            return u * 2
        def mamba_inner_fn(*args, **kwargs):
            raise RuntimeError("fused kernel")
        def mamba_inner_ref(*args, **kwargs):
            raise RuntimeError("not used")
    """,
    "ops/triton/layer_norm.py": """
        import torch
        from torch import nn
        def rms_norm_ref(x, weight, bias, residual=None, eps=1e-6, prenorm=False, upcast=False):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
        class RMSNorm(nn.Module):
            def __init__(self, d, eps=1e-5, device=None, dtype=None):
                super().__init__()
                self.eps, self.weight = eps, nn.Parameter(torch.ones(d))
                self.register_parameter("bias", None)
            def forward(self, x):
                raise RuntimeError("triton kernel")
    """,
    "modules/mamba_simple.py": """
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, mamba_inner_fn
        causal_conv1d_fn = object()
    """,
    "models/config_mamba.py": """
        from dataclasses import dataclass, field
        @dataclass
        class MambaConfig:
            d_model: int = 8
            n_layer: int = 1
            vocab_size: int = 16
            ssm_cfg: dict = field(default_factory=dict)
            rms_norm: bool = True
            residual_in_fp32: bool = True
            fused_add_norm: bool = True
            pad_vocab_size_multiple: int = 8
    """,
    "models/mixer_seq_simple.py": """
        from collections import namedtuple
        from torch import nn
        from mamba_ssm.modules import mamba_simple
        from mamba_ssm.ops.triton.layer_norm import RMSNorm
        class MambaLMHeadModel(nn.Module):
            def __init__(self, config):
                super().__init__()
                assert not config.fused_add_norm
                self.embedding = nn.Embedding(config.vocab_size, config.d_model)
                self.norm_f = RMSNorm(config.d_model)
                self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            def forward(self, input_ids):
                hidden = mamba_simple.selective_scan_fn(self.norm_f(self.embedding(input_ids)))
                return namedtuple("CausalLMOutput", ["logits"])(self.lm_head(hidden))
    """,
}


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """A stand-in for a CPU-only mamba-ssm install (no selective_scan_cuda), shadowing a real install
    for this test only; the real modules are put back afterwards."""
    real = {n: m for n, m in sys.modules.items() if n == "mamba_ssm" or n.startswith("mamba_ssm.")}
    for name in real:
        del sys.modules[name]
    for path, source in FAKE_MAMBA_SSM.items():
        target = tmp_path / "mamba_ssm" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        del sys.modules[name]
    sys.modules.update(real)


def test_mamba_ssm_runs_through_the_scoped_stub_and_reference_paths(fake_mamba_ssm):
    entry = model_zoo.get("mamba_130m_ssm")
    assert entry.available()
    model, args, _ = entry.build("tiny")
    assert "selective_scan_cuda" not in sys.modules  # the stub only lived during the import
    out = entry.output(model(*args))
    assert out.shape == (1, 8, 128) and out.grad_fn is not None
    assert type(model.norm_f).__name__ == "ReferenceRMSNorm"
    simple = sys.modules["mamba_ssm.modules.mamba_simple"]
    assert simple.selective_scan_fn.__name__ == "selective_scan_ref" and simple.causal_conv1d_fn is None


# ----------------------------------------------------------------------------------- extended: full size


def collect_node_types(output: torch.Tensor) -> set[str]:
    """Node type names reachable from ``output.grad_fn`` (iterative walk over next_functions)."""
    seen, stack, types = {output.grad_fn}, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        types.add(type(node).__name__)
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return types


@contextlib.contextmanager
def one_full_model_at_a_time():
    """A machine-wide lock so that xdist workers (and other test runs) build one full model at a time."""
    with open(Path(tempfile.gettempdir()) / "model_zoo_full_size.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.mark.extended
@pytest.mark.parametrize("name,attn", CASES, ids=CASE_IDS)
def test_tiny_and_full_have_the_same_node_types(name, attn, record_property):
    entry = model_zoo.get(name)
    if not entry.available():
        pytest.skip(f"{name} needs {', '.join(entry.missing())}")
    params = entry.num_params("full")
    if params > MAX_FULL_PARAMS:
        pytest.skip(f"{name}: {params / 1e9:.1f}B parameters > MODEL_ZOO_MAX_FULL_PARAMS={MAX_FULL_PARAMS:.2g}")
    tiny = collect_node_types(_run(entry, "tiny", attn)[3])
    with one_full_model_at_a_time():
        gc.collect()
        start = time.perf_counter()
        model, _, _, out = _run(entry, "full", attn)
        counts = model_zoo.count_nodes(out)
        seconds = time.perf_counter() - start
        del model, out
        gc.collect()
    total = sum(counts.values())
    record_property("full_nodes", total)
    record_property("paper_nodes", entry.paper_nodes)
    print(f"{name} [{attn}] full: {total} nodes ({len(counts)} types, paper {entry.paper_nodes}), {seconds:.1f} s")
    assert tiny == set(counts), f"only tiny: {tiny - set(counts)}; only full: {set(counts) - tiny}"
