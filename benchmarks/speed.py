"""Speed and peak memory of dynlrp against forward, forward+backward, zennit, LXT and Captum.

    python -m benchmarks.speed [--models vgg16,resnet50,vit_b_16,gpt2,roberta_large,llama_3_2_1b,flan_t5_large]
        [--batch 1] [--tokens 64] [--attn sdpa] [--device cpu] [--repeats 5] [--memory auto]
        [--lxt-python .tox/lxt/bin/python] [--out benchmarks/output]
    .tox/lxt/bin/python -m benchmarks.speed --lxt --models vit_b_16,gpt2,llama_3_2_1b   # LXT's own env
    python -m benchmarks.speed --profile --models vit_b_16,gpt2,resnet50               # where explain's time goes
    python -m benchmarks.speed --profile --models resnet50 --methods dynlrp:epsilon_gamma_box   # a chosen preset

Protocol.

* Models: built by ``model_zoo`` (``--size full`` by default: the published configurations), seed 0,
  random weights, every ``bias`` (linear, convolution, norm) redrawn from N(0, 0.01^2) so that no bias
  is zero, eval mode, float32, on ``--device``. Images: ``batch x 3 x S x S`` standard normal (S the
  zoo's size, 224 at full size, or ``--image-size``). Text: ``batch x --tokens`` random token ids; the
  explained tensor is their input embeddings, passed as ``inputs_embeds`` (T5 also gets the zoo's 4
  decoder ids, which are not explained).
* Scores and target (one convention for every model): the scores are the model's logits, taken at the
  last position when they are per position (``logits[:, -1]``: the next token of a causal LM, the last
  position of RoBERTa's masked-LM head, the last decoder position of T5); the target of each row is
  the argmax of its scores in one no-grad forward, fixed before any method runs. Every method
  explains the same scores at the same targets.
* Methods; each call builds its own graph, i.e. includes the forward pass:

  ========================  ==============================================================================
  ``forward``               the forward under ``torch.no_grad()``
  ``fwd_bwd``               forward + ``torch.autograd.grad(target scores, x)`` (Gradient x Input; only the
                            input gradient is computed, parameters keep ``requires_grad``)
  ``dynlrp:<preset>``       forward + ``dynlrp.explain(scores, target, rules=preset, inputs=[x], retain_graph=False,
                            plans=cache)`` (saved tensors freed behind the sweep, as ``autograd.grad`` frees them;
                            ``--retain-graph on``: the default ``explain``, which only reads the graph; ``cache``:
                            one ``PlanCache`` for the calls on this model and preset, built by the first call,
                            reused by the repeated ones; ``--plans off``: none); the forward
                            runs inside ``dynlrp.record()`` where the graph lacks forward values
                            (``--record auto``, decided on the zoo's tiny build: Flan-T5's masks), which the
                            ``note`` column says
  ``zennit:<preset>``       zennit 0.5.1, CNNs only: forward inside the composite's context (entered once per
                            model, on a deep copy; ``ResNetCanonizer`` for ResNets, which folds batch norm)
                            + ``autograd.grad`` with a one-hot ``grad_outputs``, times x. ``epsilon``:
                            ``Epsilon`` on convolutions and linear layers plus zennit's ``layer_map_base``;
                            ``epsilon_gamma_box``: ``EpsilonGammaBox`` with the ImageNet pixel box (as in
                            ``tests/test_zennit_agreement.py``)
  ``captum:epsilon``        ``captum.attr.LRP(deep copy).attribute(x, target)`` (Captum's default rules,
                            epsilon on convolutions and linear layers); tried on every model, the table
                            says why it does not run
  ``lxt:attnlrp``           LXT 2.1's efficient AttnLRP (``--lxt`` runs only, in the LXT env with
                            transformers 4.57.6): forward with LXT's class-level patches switched on +
                            ``autograd.grad(target scores, x)``, times x. ViT: LXT ships a CP-LRP map
                            only; its attention is switched to AttnLRP as in ``tests/lxt_env``
  ========================  ==============================================================================

* Timing: one untimed warm-up call of ``forward`` and ``fwd_bwd``; then round 0 runs every method
  once in a fixed order (the ``first`` column: the first call of that method on this model); then
  ``--repeats`` rounds run every method once each, the order rotated by one per round (interleaved,
  so that a disturbance hits every method alike); medians (and minima) of those rounds.
  ``time.perf_counter``, ``torch.cuda.synchronize`` around each call on CUDA; ``gc.collect()`` before
  each call, untimed (a call does not pay for collecting an earlier call's reference cycles).
* Peak memory (MiB): CPU: one subprocess per (model, method), which builds the model, sets the method
  up, resets the kernel's resident high-water mark (``/proc/self/clear_refs`` <- 5, which resets
  ``VmHWM``; a 1 ms RSS-sampling thread where that is refused), reads ``VmRSS``, runs the method's
  first call and one repeated call with ``gc.collect()`` after each, and reports ``VmHWM - VmRSS
  before``: the peak resident increase of one call of that method alone (a fresh process, so no
  allocator cache from another method hides or adds memory; the collection keeps memory that a
  reference cycle holds after a call from adding to the next call's peak at random). Probes run with
  glibc's mmap threshold fixed (:data:`PROBE_ENV`): RSS then follows live memory, and repeated probes
  agree to < 1 MiB (with the dynamic threshold they varied 2x).
  CUDA: in the timing process, ``torch.cuda.max_memory_allocated()`` minus the memory allocated before
  each call (after ``reset_peak_memory_stats``), the largest over all calls.
* Ratios: a method's median over the ``fwd_bwd`` median of the same process; dynlrp / zennit for the
  same preset; dynlrp / LXT from the LXT-env process, where dynlrp was timed interleaved with LXT.
  Memory: dynlrp's peak over the smallest peak of the anchors (fwd_bwd, zennit, LXT, Captum).
* The LXT comparison: the main run starts ``--lxt-python -m benchmarks.speed --lxt`` (same options, the
  models LXT supports) as a subprocess, which times forward, fwd_bwd, dynlrp and LXT interleaved in
  its own process and writes a CSV that the main run merges (rows with ``env`` = ``lxt``). Under
  transformers 4.57.6 the zoo's ``rope_parameters`` (a transformers 5 key) are not read, so Llama runs
  with the default RoPE (theta 1e4, no llama3 scaling) there: the same ops and cost, other frequencies.

* Threads: torch's default unless ``--threads``. On a machine shared with other jobs, use
  ``--threads 1``: with OpenMP threads competing for cores every small op can wait for a descheduled
  thread, which inflates a method in proportion to its number of ops, not its work.
* Allocator: glibc's default unless ``--allocator steady`` (:data:`STEADY_ALLOCATOR`, set for the whole
  run, every method alike): with the default, freed heap memory goes back to the kernel whenever enough
  of it is free at the top, and the next call faults it in again, more or less as what ran before left
  the heap, so a method's repeated calls can be slower than its first. Report which one a figure used.

Output: ``speed.csv`` (one row per model x method x env), ``speed_summary.csv`` and ``speed.md`` (the
summary: one line per model and dynlrp preset with the medians, the ratios dynlrp / fwd_bwd, / zennit,
/ LXT and peak memory; then every row) in ``--out`` (default ``benchmarks/output/``, git-ignored);
the tables are printed.

``--profile``: per model, fwd_bwd and dynlrp are timed, then one ``forward + explain`` runs under
cProfile (cumulative time per phase: the forward, setup, rules, promise replays, ledger sums, finish;
the top functions by cumulative and by self time) and one under ``torch.profiler`` (the share of the
call spent inside aten ops, i.e. kernels, and the top ops); written to ``profile.txt``. The model's
first dynlrp preset, or every ``dynlrp:<preset>`` in ``--methods``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import csv
import functools
import gc
import importlib
import importlib.util
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dynlrp

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = ROOT / "benchmarks" / "output"
MODELS = ("vgg16", "resnet50", "vit_b_16", "gpt2", "roberta_large", "llama_3_2_1b", "flan_t5_large")
DEFAULT_LXT_PYTHON = ROOT / ".tox" / "lxt" / "bin" / "python"
#: zoo family -> LXT 2.1's ``lxt.efficient.models`` module (AttnLRP maps; ViT: see :func:`lxt_patches`)
LXT_FAMILIES = {"vit": "vit_torch", "gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3",
                "bert": "bert"}
#: the pixel box of ImageNet-normalised images (ZBox bounds of ``epsilon_gamma_box``, as in the zennit test)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROBE_PREFIX = "PROBE "
#: environment of memory probes: glibc's mmap threshold fixed at 64 KiB, so that every block above it is
#: returned to the kernel when freed and RSS follows live memory (with glibc's dynamic threshold, freed
#: blocks stay in the heap and the same call's peak varied 2x between runs)
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
BIAS_STD = 0.01
#: ``--allocator steady``: glibc keeps freed memory in its heap (no trimming; blocks up to 64 MiB from the
#: heap) instead of handing it back to the kernel and faulting it in again on the next call. With the
#: default (dynamic) thresholds, how much of a call's memory is faulted in anew depends on what ran before
#: it (measured on ResNet-50 at batch 8, 2 cores: the same explain call took 0.76 to 1.11 s with 4 to 106k
#: minor faults per call, and 0.71 to 0.75 s with these settings; fwd_bwd 0.55 and 0.50 to 0.55 s). It
#: applies to every method of the run alike; the memory probes keep :data:`PROBE_ENV`.
STEADY_ALLOCATOR = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "67108864"}


# ------------------------------------------------------------------------------------------------ models


def randomise_biases(model: nn.Module, std: float = BIAS_STD) -> nn.Module:
    """Redraw every ``bias`` tensor of ``model`` from N(0, std^2) (libraries initialise them to zero)."""
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.is_floating_point():
                bias.normal_(0.0, std)
    return model


class Scores(nn.Module):
    """``x -> (batch, classes)`` scores of a model: its logits (``output`` picks them from the result,
    e.g. a zoo entry's ``output``), at the last position when they are per position. ``x`` is the image,
    or the input embeddings for text (passed as ``inputs_embeds``)."""

    def __init__(self, model: nn.Module, output: Callable[[Any], torch.Tensor], kwargs: Mapping[str, Any],
                 text: bool):
        super().__init__()
        self.model = model
        self.output = output
        self.kwargs = dict(kwargs)
        self.text = text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.model(inputs_embeds=x, **self.kwargs) if self.text else self.model(x, **self.kwargs)
        out = self.output(result)
        return out[:, -1] if out.dim() == 3 else out


@dataclass(frozen=True)
class CaseInfo:
    """What the tables say about a case (kept once the model is freed)."""

    model: str
    device: str
    shape: str
    nodes: int


@dataclass
class Case:
    """One model ready to be explained: ``scores(x)`` and the fixed per-row ``target``."""

    model: str
    kind: str  # "cnn", "vision" (a vision transformer) or "text"
    family: str
    scores: Scores
    x: torch.Tensor  # the explained tensor (pixels or input embeddings), detached
    target: list[int]
    shape: str
    attn: str | None = None
    record: str = "auto"  # dynlrp's forward in dynlrp.record(): "auto" (where the graph lacks values), always, never
    nodes: int = 0
    merge_batch_norm: bool = True  # dynlrp presets merge batch norm into the convolution before it (as zennit)
    retain_graph: bool = False  # dynlrp's explain(retain_graph=...): False frees saved tensors behind the sweep
    plans: bool = True  # dynlrp's calls share one PlanCache (the first builds the plan, the next reuse it)

    @property
    def info(self) -> CaseInfo:
        return CaseInfo(self.model, str(self.x.device), self.shape, self.nodes)

    def leaf(self) -> torch.Tensor:
        """A fresh leaf that requires grad, sharing ``x``'s storage (no copy)."""
        return self.x.detach().requires_grad_(True)

    def selected(self, out: torch.Tensor) -> torch.Tensor:
        """Sum of each row's target score: what the gradient methods differentiate."""
        index = torch.tensor(self.target, device=out.device).view(-1, 1)
        return out.gather(1, index).sum()

    def one_hot(self, out: torch.Tensor) -> torch.Tensor:
        index = torch.tensor(self.target, device=out.device).view(-1, 1)
        return torch.zeros_like(out).scatter_(1, index, 1.0)


def image_box(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``: pixel values 0 and 1 after ImageNet normalisation, shape (1, 3, 1, 1)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


def text_input(model: nn.Module, batch: int, tokens: int) -> tuple[torch.Tensor, str]:
    """Input embeddings of ``batch x tokens`` seeded random token ids (ids >= 3: no special tokens), and
    the shape label."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(3, vocab, (batch, tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = model.get_input_embeddings()(ids)
    return x, f"{batch}x{tokens} tokens ({model.config._attn_implementation})"


def make_case(name: str, kind: str, family: str, model: nn.Module, output: Callable[[Any], torch.Tensor],
              x: torch.Tensor, kwargs: Mapping[str, Any], shape: str, *, attn: str | None = None,
              record: str = "auto", device: str = "cpu", count_nodes: bool = True) -> Case:
    """A :class:`Case` on ``device``: tensors in ``kwargs`` with batch 1 are expanded to ``x``'s batch,
    the targets are the argmax scores of one no-grad forward, ``nodes`` the forward graph's size."""
    batch = x.shape[0]
    kwargs = {k: v.expand(batch, *v.shape[1:]).to(device) if isinstance(v, torch.Tensor) and v.shape[:1] == (1,)
              else v for k, v in kwargs.items()}
    scores = Scores(model.to(device), output, kwargs, text=kind == "text")
    x = x.detach().to(device)
    with torch.no_grad():
        target = scores(x).argmax(-1).tolist()
    case = Case(name, kind, family, scores, x, target, shape, attn, record)
    if count_nodes:
        out = scores(case.leaf())
        case.nodes = len(dynlrp.Graph.build(out.grad_fn))
        del out
    return case


def build_case(name: str, *, size: str = "full", batch: int = 1, tokens: int = 64, image_size: int | None = None,
               attn: str | None = "sdpa", device: str = "cpu", record: str = "auto", count_nodes: bool = True) -> Case:
    """Build zoo model ``name`` with the protocol's inputs and targets (see the module docstring)."""
    import model_zoo

    entry = model_zoo.get(name)
    attn = attn if entry.attn else None
    model, args, kwargs = entry.build(size, seed=0, attn=attn)
    randomise_biases(model)
    if entry.modality == "text":
        x, shape = text_input(model, batch, tokens)
        kind = "text"
    elif entry.modality == "vision":
        side, channels = image_size or args[0].shape[-1], args[0].shape[1]
        x = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(1))
        shape, kind = f"{batch}x{channels}x{side}x{side}", "cnn" if "cnn" in entry.tags else "vision"
    else:
        raise ValueError(f"{name}: modality {entry.modality!r} is not benchmarked (vision and text models are)")
    return make_case(name, kind, entry.family, model, entry.output, x, kwargs, shape, attn=attn, record=record,
                     device=device, count_nodes=count_nodes)


# ------------------------------------------------------------------------------------------------ methods


class NotApplicableError(Exception):
    """The method does not apply to this model; the message says why (it goes into the table)."""


Run = Callable[[], object]
Setup = Callable[[Case, str, contextlib.ExitStack], Run]


def _forward(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    def run() -> object:
        with torch.no_grad():
            return case.scores(case.x)
    return run


def _fwd_bwd(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    def run() -> object:
        x = case.leaf()
        (grad,) = torch.autograd.grad(case.selected(case.scores(x)), x)
        return grad * x
    return run


def dynlrp_preset(preset: str, device: torch.device | str, merge_batch_norm: bool = True) -> dynlrp.Preset:
    """The dynlrp preset ``preset`` (``epsilon_gamma_box`` with the ImageNet pixel box), batch norms
    merged into the convolution before them unless ``merge_batch_norm=False``."""
    box = dict(zip(("low", "high"), image_box(device))) if preset == "epsilon_gamma_box" else {}
    return dynlrp.presets.get(preset, merge_batch_norm=merge_batch_norm, **box)


@functools.cache
def needs_record(name: str, attn: str | None, preset: str) -> bool:
    """Whether dynlrp needs ``dynlrp.record()`` for zoo model ``name``: its graph lacks forward values
    (``MissingValueError``, e.g. T5's attention masks). Decided on the zoo's tiny build, which has the
    same node types, so that no full-size explanation runs before the timed first call."""
    tiny = build_case(name, size="tiny", tokens=8, attn=attn, record="never", count_nodes=False)
    x = tiny.leaf()
    try:
        dynlrp.explain(tiny.scores(x), target=tiny.target, rules=dynlrp_preset(preset, "cpu"), inputs=[x])
    except dynlrp.MissingValueError:
        return True
    return False


def _dynlrp(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    rules = dynlrp_preset(preset, case.x.device, case.merge_batch_norm)
    record = case.record == "always" or (case.record == "auto" and needs_record(case.model, case.attn, preset))
    plans = dynlrp.PlanCache() if case.plans else None

    def run() -> object:
        x = case.leaf()
        with dynlrp.record() if record else contextlib.nullcontext():
            out = case.scores(x)
        return dynlrp.explain(out, target=case.target, rules=rules, inputs=[x], plans=plans,
                              retain_graph=case.retain_graph).relevance(x)
    run.note = "forward in dynlrp.record()" if record else ""
    return run


def zennit_composite(preset: str, model: nn.Module, device: torch.device | str) -> Any:
    """The zennit 0.5.1 composite matching dynlrp's ``preset`` (canonizer for ResNets)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.composites import EpsilonGammaBox, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Convolution

    canonizers = [ResNetCanonizer()] if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()) else None
    if preset == "epsilon":
        return LayerMapComposite(layer_map_base() + [((Convolution, nn.Linear), Epsilon())], canonizers=canonizers)
    if preset == "epsilon_gamma_box":
        low, high = image_box(device)
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    raise NotApplicableError(f"no zennit composite paired with dynlrp's {preset!r} here")


def _zennit(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    if case.kind != "cnn":
        raise NotApplicableError("zennit has no attention / LayerNorm rules; compared on CNNs")
    if importlib.util.find_spec("zennit") is None:
        raise NotApplicableError("zennit is not installed (pip install -e '.[bench]')")
    model = copy.deepcopy(case.scores)
    modified = stack.enter_context(zennit_composite(preset, model, case.x.device).context(model))

    def run() -> object:
        x = case.leaf()
        out = modified(x)
        (grad,) = torch.autograd.grad(out, x, case.one_hot(out))
        return grad * x
    return run


def _captum(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    try:
        from captum.attr import LRP
    except ImportError as err:
        raise NotApplicableError("captum is not installed (pip install -e '.[bench]')") from err
    if preset != "epsilon":
        raise NotApplicableError("Captum's LRP is run with its default (epsilon) rules only")
    from torchvision.models.resnet import BasicBlock, Bottleneck

    lrp = LRP(copy.deepcopy(case.scores))
    target = case.target

    def run() -> object:
        return lrp.attribute(case.leaf(), target=target)
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in case.scores.modules()):
        run.note = "runs, but not LRP: no rule for the residual add, relevance does not conserve"
    return run


_MISSING = object()


class LxtPatches:
    """LXT's class-level monkey patches, made switchable: applied once (recording what they change in
    each target class or module), switched off at once, and on only inside :meth:`active`, so that the
    other methods of the same process run the unpatched model."""

    def __init__(self, targets: Sequence[Any], apply: Callable[[], None]):
        before = {t: dict(vars(t)) for t in targets}
        apply()
        self.patched: dict[Any, dict[str, Any]] = {}
        self.original: dict[Any, dict[str, Any]] = {}
        for target in targets:
            after = dict(vars(target))
            changed = [k for k in set(before[target]) | set(after)
                       if before[target].get(k, _MISSING) is not after.get(k, _MISSING)]
            self.patched[target] = {k: after.get(k, _MISSING) for k in changed}
            self.original[target] = {k: before[target].get(k, _MISSING) for k in changed}
        if not any(self.patched.values()):
            raise NotApplicableError("LXT's patches changed nothing")
        self._set(self.original)

    @staticmethod
    def _set(state: Mapping[Any, Mapping[str, Any]]) -> None:
        for target, attrs in state.items():
            for key, value in attrs.items():
                if value is _MISSING:
                    delattr(target, key)
                else:
                    setattr(target, key, value)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._set(self.patched)
        try:
            yield
        finally:
            self._set(self.original)


def lxt_patches(family: str) -> LxtPatches:
    """LXT 2.1's efficient AttnLRP patches for a zoo family (``LXT_FAMILIES``), switched off."""
    if family not in LXT_FAMILIES:
        raise NotApplicableError(f"LXT 2.1 has no patch map for {family}")
    import warnings

    try:
        from lxt.efficient import monkey_patch
    except ImportError as err:
        raise NotApplicableError("lxt is not installed here (it runs in .tox/lxt)") from err
    maps = importlib.import_module(f"lxt.efficient.models.{LXT_FAMILIES[family]}")
    if family == "vit":
        # LXT ships CP-LRP for torchvision's ViT; AttnLRP's attention as tests/lxt_env does it
        sys.path.insert(0, str(ROOT / "tests" / "lxt_env"))
        from lxt_models import _attnlrp_mha_forward

        patch_map, modules = maps.cp_LRP, [maps.vision_transformer]
        targets = [*patch_map, nn.MultiheadAttention]
    else:
        patch_map, modules = maps.attnLRP, []
        targets = list(patch_map)

    def apply() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey_patch(modules[0] if modules else None, patch_map=patch_map)
        if family == "vit":
            nn.MultiheadAttention.forward = _attnlrp_mha_forward

    return LxtPatches(targets, apply)


def _lxt(case: Case, preset: str, stack: contextlib.ExitStack) -> Run:
    if preset != "attnlrp":
        raise NotApplicableError("LXT is compared with dynlrp's attnlrp preset")
    patches = lxt_patches(case.family)

    def run() -> object:
        with patches.active():
            x = case.leaf()
            (grad,) = torch.autograd.grad(case.selected(case.scores(x)), x)
        return grad * x
    return run


SETUPS: dict[str, Setup] = {"forward": _forward, "fwd_bwd": _fwd_bwd, "dynlrp": _dynlrp, "zennit": _zennit,
                            "captum": _captum, "lxt": _lxt}
ANCHORS = ("fwd_bwd", "zennit", "lxt", "captum")


def default_methods(kind: str, lxt_env: bool) -> list[str]:
    """The methods measured by default for a model kind (``--methods`` overrides)."""
    if lxt_env:
        return ["forward", "fwd_bwd", "dynlrp:attnlrp", "lxt:attnlrp"]
    if kind == "cnn":
        return ["forward", "fwd_bwd", "dynlrp:epsilon", "zennit:epsilon", "dynlrp:epsilon_gamma_box",
                "zennit:epsilon_gamma_box", "captum:epsilon"]
    return ["forward", "fwd_bwd", "dynlrp:attnlrp", "captum:epsilon"]


def setup_method(method: str, case: Case, stack: contextlib.ExitStack) -> Run:
    """The zero-argument callable that runs one call of ``method`` (``family`` or ``family:preset``)."""
    family, _, preset = method.partition(":")
    if family not in SETUPS:
        raise ValueError(f"unknown method {method!r}; families: {', '.join(SETUPS)}")
    return SETUPS[family](case, preset, stack)


# ------------------------------------------------------------------------------------------------ measuring


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def peak_rss_increase(run: Run, calls: int = 2) -> tuple[float, str]:
    """Peak resident-memory increase (MiB) over ``calls`` calls of ``run``, and how it was measured:
    ``"VmHWM"`` (high-water mark reset through ``/proc/self/clear_refs``) or ``"sampled"`` (a thread
    reading ``VmRSS`` every millisecond, where the reset is refused)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        how = "VmHWM"
    except OSError:
        how = "sampled"
    baseline = _status_kib("VmRSS")
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _status_kib("VmRSS"))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True) if how == "sampled" else None
    if sampler:
        sampler.start()
    for _ in range(calls):
        result = run()
        del result
        gc.collect()  # memory that reference cycles hold until the collector runs is not carried into the next call
    if sampler:
        stop.set()
        sampler.join()
    else:
        peak[0] = _status_kib("VmHWM")
    return (peak[0] - baseline) / 1024, how


@dataclass
class Timing:
    """One method's measurements on one case."""

    status: str = "ok"
    first: float | None = None
    times: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    memory: str = ""
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def _error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text[:160] + ("..." if len(text) > 160 else "")


def measure(case: Case, methods: Sequence[str], repeats: int, cuda_memory: bool = False) -> dict[str, Timing]:
    """Time ``methods`` on ``case``, interleaved (see the module docstring); CUDA peak memory too."""
    cuda = case.x.device.type == "cuda"
    results = {m: Timing() for m in methods}
    runs: dict[str, Run] = {}
    with contextlib.ExitStack() as stack:
        for method in methods:
            try:
                runs[method] = setup_method(method, case, stack)
                results[method].note = getattr(runs[method], "note", "")
            except NotApplicableError as err:
                results[method].status = f"n/a: {err}"
            except Exception as err:
                results[method].status = f"failed: {_error(err)}"

        def timed(method: str) -> float:
            gc.collect()  # untimed: garbage of earlier calls (reference cycles) is not collected inside this one
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = runs[method]()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            del result
            if cuda and cuda_memory:
                peak = (torch.cuda.max_memory_allocated() - before) / 2**20
                timing = results[method]
                timing.peak_mib, timing.memory = max(timing.peak_mib or 0.0, peak), "cuda.max_memory_allocated"
            return elapsed

        def attempt(method: str, sink: Callable[[float], None]) -> None:
            try:
                sink(timed(method))
            except Exception as err:
                results[method].status = f"failed: {_error(err)}"
                del runs[method]

        for warm in ("forward", "fwd_bwd"):
            if warm in runs:
                attempt(warm, lambda _t: None)
        for method in list(runs):
            attempt(method, lambda t, m=method: setattr(results[m], "first", t))
        for round_ in range(repeats):
            names = list(runs)
            shift = round_ % len(names) if names else 0
            for method in names[shift:] + names[:shift]:
                if method in runs:
                    attempt(method, results[method].times.append)
    return results


def probe_command(args: argparse.Namespace, model: str, method: str) -> list[str]:
    """The command line of the memory probe of (model, method) in a fresh process of this interpreter."""
    return [sys.executable, "-m", "benchmarks.speed", "--probe", method, "--models", model, *shared_options(args),
            *(["--lxt"] if args.lxt else [])]


#: options that a probe or the LXT-env process takes over from this run
SHARED_OPTIONS = ("size", "batch", "tokens", "image_size", "attn", "device", "record", "merge_batch_norm",
                  "retain_graph", "plans", "threads")


def shared_options(args: argparse.Namespace) -> list[str]:
    """``--option value`` for every :data:`SHARED_OPTIONS` entry that is set."""
    out = []
    for option in SHARED_OPTIONS:
        value = getattr(args, option)
        if value is not None:
            out += [f"--{option.replace('_', '-')}", str(value)]
    return out


def case_from_args(args: argparse.Namespace, name: str, count_nodes: bool = True) -> Case:
    """:func:`build_case` with the command line's options."""
    case = build_case(name, size=args.size, batch=args.batch, tokens=args.tokens, image_size=args.image_size,
                      attn=args.attn, device=args.device, record=args.record, count_nodes=count_nodes)
    case.merge_batch_norm = getattr(args, "merge_batch_norm", "on") == "on"
    case.retain_graph = getattr(args, "retain_graph", "off") == "on"
    case.plans = getattr(args, "plans", "on") == "on"
    return case


def run_probe(cmd: Sequence[str], timeout: float = 1800) -> tuple[float | None, str]:
    """Run a probe command; its last ``PROBE {json}`` line gives ``(peak_mib, how)``."""
    env = {**os.environ, **PROBE_ENV}
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "probe timed out"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_PREFIX):
            found = json.loads(line[len(PROBE_PREFIX):])
            return found["peak_mib"], found["how"]
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    return None, f"probe failed: {tail[0][:120]}"


def probe_case(case: Case, method: str) -> None:
    """The probe's side: print ``PROBE {json}`` with the peak RSS increase of ``method`` on ``case`` (a
    first and a repeated call), for :func:`run_probe` in the parent process."""
    with contextlib.ExitStack() as stack:
        run = setup_method(method, case, stack)
        peak, how = peak_rss_increase(run)
    print(PROBE_PREFIX + json.dumps({"peak_mib": peak, "how": how}), flush=True)


def probe(args: argparse.Namespace) -> None:
    """``--probe METHOD``: the memory probe of one (model, method), in this fresh process."""
    probe_case(case_from_args(args, args.models.split(",")[0], count_nodes=False), args.probe)


# ------------------------------------------------------------------------------------------------ tables


@dataclass
class Row:
    """One line of ``speed.csv``: a method on a model, in one process (``env``)."""

    model: str
    env: str
    device: str
    input: str
    nodes: int
    method: str
    status: str
    note: str
    first_s: float | None
    median_s: float | None
    min_s: float | None
    repeats: int
    ratio_fwd_bwd: float | None
    peak_mib: float | None
    memory: str


COLUMNS = tuple(f.name for f in fields(Row))


def rows_for(case: CaseInfo, env: str, results: Mapping[str, Timing]) -> list[Row]:
    """Table rows of one measured case; ratios relative to this process's ``fwd_bwd`` median."""
    base = results["fwd_bwd"].median if "fwd_bwd" in results else None
    rows = []
    for method, t in results.items():
        median = t.median
        rows.append(Row(case.model, env, case.device, case.shape, case.nodes, method, t.status, t.note, t.first,
                        median, min(t.times) if t.times else None, len(t.times),
                        median / base if median is not None and base else None, t.peak_mib, t.memory))
    return rows


def write_csv(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in vars(row).items()})


def read_csv(path: Path) -> list[Row]:
    """Rows written by :func:`write_csv` (types restored)."""
    types = {"nodes": int, "repeats": int, "first_s": float, "median_s": float, "min_s": float,
             "ratio_fwd_bwd": float, "peak_mib": float}
    with open(path, newline="") as handle:
        return [Row(**{k: (types[k](v) if v != "" else None) if k in types else v for k, v in line.items()})
                for line in csv.DictReader(handle)]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def _ok(row: Row | None, attr: str) -> float | None:
    return getattr(row, attr) if row is not None and row.status == "ok" else None


def _summary_entry(found: Mapping[tuple[str, str, str], Row], model: str, env: str, method: str) -> dict[str, Any]:
    preset = method.partition(":")[2]

    def get(m: str, where: str = env) -> Row | None:
        return found.get((model, where, m))

    ours, fb, fwd = get(method), get("fwd_bwd"), get("forward")
    zennit, captum = get(f"zennit:{preset}"), get("captum:epsilon") if preset == "epsilon" else None
    lxt, ours_lxt = get(f"lxt:{preset}", "lxt"), get(method, "lxt")
    median = {k: _ok(r, "median_s") for k, r in (("ours", ours), ("fb", fb), ("fwd", fwd), ("zennit", zennit),
                                                  ("captum", captum), ("lxt", lxt), ("ours_lxt", ours_lxt))}
    peak = {k: _ok(r, "peak_mib") for k, r in (("ours", ours), ("fb", fb), ("zennit", zennit), ("lxt", lxt),
                                                ("captum", captum), ("ours_lxt", ours_lxt))}
    # dynlrp's peak over each anchor's, both from the same env (LXT: the LXT-env process's dynlrp)
    mem = {k: _ratio(peak["ours_lxt" if k == "lxt" else "ours"], peak[k]) for k in ("fb", "zennit", "lxt", "captum")}
    worst = [v for v in mem.values() if v is not None]
    worst_lrp = [v for k, v in mem.items() if k != "fb" and v is not None]
    return {
        "model": model, "preset": preset, "input": ours.input, "nodes": ours.nodes,
        "forward_s": median["fwd"], "fwd_bwd_s": median["fb"], "dynlrp_first_s": _ok(ours, "first_s"),
        "dynlrp_s": median["ours"], "dynlrp/fwd_bwd": _ratio(median["ours"], median["fb"]),
        "zennit_s": median["zennit"], "dynlrp/zennit": _ratio(median["ours"], median["zennit"]),
        "lxt_s": median["lxt"], "dynlrp/lxt": _ratio(median["ours_lxt"], median["lxt"]), "captum_s": median["captum"],
        "peak_dynlrp_mib": peak["ours"], "peak_fwd_bwd_mib": peak["fb"], "peak_zennit_mib": peak["zennit"],
        "peak_lxt_mib": peak["lxt"], "peak_captum_mib": peak["captum"],
        "mem/fwd_bwd": mem["fb"], "mem/zennit": mem["zennit"], "mem/lxt": mem["lxt"], "mem/captum": mem["captum"],
        "mem/best_anchor": max(worst) if worst else None, "mem/best_lrp_anchor": max(worst_lrp) if worst_lrp else None,
        "status": "; ".join(f"{r.method}{' (lxt env)' if r.env == 'lxt' else ''}: {r.status}"
                            for r in (ours, zennit, captum, lxt) if r is not None and r.status != "ok"),
    }


def summary(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One entry per (model, dynlrp preset) of the main env (the LXT env for models measured only there):
    medians, the ratios dynlrp / fwd_bwd, / zennit, / LXT, and peak memory: dynlrp's over each anchor's
    (fwd_bwd, zennit, LXT, Captum; each pair from one env), and over the best (smallest) anchor, i.e. the
    largest of those ratios (``mem/best_lrp_anchor``: LRP anchors only, without fwd_bwd)."""
    found = {(r.model, r.env, r.method): r for r in rows}
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        env = "main" if any(r.model == model and r.env == "main" for r in rows) else "lxt"
        for row in rows:
            if row.model == model and row.env == env and row.method.startswith("dynlrp:"):
                out.append(_summary_entry(found, model, env, row.method))
    return out


def write_summary_csv(rows: Sequence[Row], path: Path) -> None:
    entries = summary(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(entries[0]) if entries else ["model"])
        writer.writeheader()
        for entry in entries:
            writer.writerow({k: "" if v is None else v for k, v in entry.items()})


SUMMARY_HEADER = ("model", "preset", "input", "nodes", "fwd s", "fwd+bwd s", "dynlrp first s", "dynlrp s",
                  "dynlrp/(fwd+bwd)", "zennit s", "dynlrp/zennit", "LXT s", "dynlrp/LXT", "Captum s",
                  "peak MiB dynlrp", "fwd+bwd", "zennit", "LXT", "mem/best anchor", "mem/best LRP anchor")


def markdown(rows: Sequence[Row]) -> str:
    """The summary table (one line per model and dynlrp preset), its notes, and the long table."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    notes = []
    for s in summary(rows):
        values = [s["model"], s["preset"], s["input"], str(s["nodes"]), *(fmt(s[k]) for k in (
            "forward_s", "fwd_bwd_s", "dynlrp_first_s", "dynlrp_s")), fmt(s["dynlrp/fwd_bwd"], 2),
            fmt(s["zennit_s"]), fmt(s["dynlrp/zennit"], 2), fmt(s["lxt_s"]), fmt(s["dynlrp/lxt"], 2),
            fmt(s["captum_s"]), *(fmt(s[k], 4) for k in ("peak_dynlrp_mib", "peak_fwd_bwd_mib", "peak_zennit_mib",
                                                          "peak_lxt_mib")), fmt(s["mem/best_anchor"], 2),
            fmt(s["mem/best_lrp_anchor"], 2)]
        lines.append("| " + " | ".join(values) + " |")
        if s["status"]:
            notes.append(f"- {s['model']} / {s['preset']}: {s['status']}")
    notes += [f"- {r.model}: not built: {r.status}" for r in rows if r.method == "build"]
    long_header = ("model", "env", "method", "status", "note", "first s", "median s", "min s", "n", "/(fwd+bwd)",
                   "peak MiB", "memory")
    long = ["| " + " | ".join(long_header) + " |", "|" + "---|" * len(long_header)]
    for r in rows:
        long.append("| " + " | ".join([r.model, r.env, r.method, r.status, r.note, fmt(r.first_s), fmt(r.median_s),
                                       fmt(r.min_s), str(r.repeats), fmt(r.ratio_fwd_bwd, 2),
                                       fmt(r.peak_mib, 4), r.memory]) + " |")
    text = "\n".join(lines)
    if notes:
        text += "\n\nNot measured / failed:\n" + "\n".join(notes)
    return text + "\n\nAll rows (env lxt: the LXT-env process, its own fwd+bwd and dynlrp):\n\n" + "\n".join(long)


# ------------------------------------------------------------------------------------------------ profiling

#: phases of one ``forward + explain`` call: (label, file name, function name) -> cumulative time in cProfile
PHASES = (
    ("forward (model)", "speed.py", "forward"),
    ("explain: setup (Graph.build, data flags, first layers, Analysis)", "engine.py", "__init__"),
    ("explain: sweep (_Sweep.run)", "engine.py", "run"),
    ("  rules (_apply)", "engine.py", "_apply"),
    ("  forward values / promise replays (ValueStore.resolve)", "values.py", "resolve"),
    ("  ledger sums (rules.common.total)", "common.py", "total"),
    ("explain: finish (ledger to floats)", "engine.py", "_finish"),
)


@dataclass
class Profile:
    """One profiled call: cProfile (phases, top functions) and torch.profiler (time inside aten ops)."""

    wall: float  # the cProfile'd call
    phases: dict[str, float]
    functions: str  # cProfile's top functions by cumulative and by self time
    op_wall: float  # the torch.profiler'd call
    op_self: float  # self CPU time of all aten ops (the kernels), seconds
    ops: list[tuple[str, int, float]]  # (aten op, calls, self CPU s), largest first

    def text(self, top: int = 10) -> str:
        lines = [f"cProfile: {self.wall:.3f} s; cumulative time per phase:"]
        lines += [f"  {label:66s} {sec:8.3f} s {sec / self.wall:6.1%}" for label, sec in self.phases.items()]
        lines.append(f"torch.profiler: {self.op_wall:.3f} s, of which {self.op_self:.3f} s"
                     f" ({self.op_self / self.op_wall:.0%}) inside aten ops (kernels); the rest is Python, dispatch"
                     " and profiler overhead. Top aten ops by self CPU time:")
        lines += [f"  {name:40s} {calls:6d} calls {seconds:8.3f} s" for name, calls, seconds in self.ops[:top]]
        return "\n".join(lines) + "\n" + self.functions


def profile_call(run: Run, top: int = 15) -> Profile:
    """Profile two calls of ``run``: one under cProfile, one under ``torch.profiler`` (CPU activities)."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = run()
    profiler.disable()
    wall = time.perf_counter() - start
    del result
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    phases = {}
    for label, filename, function in PHASES:
        phases[label] = sum(ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()
                            if func == function and Path(file).name == filename)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = run()
    op_wall = time.perf_counter() - start
    del result
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    ops = [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in events]
    return Profile(wall, phases, buffer.getvalue(), op_wall, sum(o[2] for o in ops), ops)


def profile(args: argparse.Namespace) -> None:
    """``--profile``: time fwd_bwd and explain, then cProfile one explain per model, print and save."""
    report = []
    for name in args.models.split(","):
        case = case_from_args(args, name)
        candidates = args.methods.split(",") if args.methods else default_methods(case.kind, False)
        methods = [m for m in candidates if m.startswith("dynlrp:")][: None if args.methods else 1]
        if not methods:
            raise ValueError(f"--profile needs a dynlrp:<preset> method, got {args.methods!r}")
        results = measure(case, ["fwd_bwd", *methods], args.repeats)
        for method in methods:
            with contextlib.ExitStack() as stack:
                found = profile_call(setup_method(method, case, stack))
            ratio = _ratio(results[method].median, results["fwd_bwd"].median)
            block = (f"## {name} {case.shape}, {case.nodes} nodes, {method}: forward+explain median "
                     f"{fmt(results[method].median)} s, fwd+bwd {fmt(results['fwd_bwd'].median)} s, "
                     f"ratio {fmt(ratio)} ({torch.get_num_threads()} threads)\n{found.text()}")
            print(block, flush=True)
            report.append(block)
        del case
        gc.collect()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text("\n\n".join(report))


# ------------------------------------------------------------------------------------------------ main


def lxt_rows(args: argparse.Namespace, models: Sequence[str]) -> list[Row]:
    """Run the LXT-env process on ``models`` and read its rows (empty when it cannot run)."""
    python = Path(args.lxt_python)
    if args.lxt_python == "none" or not python.exists():
        print(f"(LXT comparison skipped: no LXT env at {python}; `tox -e lxt` creates it)", flush=True)
        return []
    out = Path(args.out) / "speed_lxt.csv"
    cmd = [str(python), "-m", "benchmarks.speed", "--lxt", "--models", ",".join(models), *shared_options(args),
           "--repeats", str(args.repeats), "--memory", args.memory, "--csv", str(out), "--out", args.out]
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0 or not out.exists():
        print(f"(the LXT-env run failed with exit code {done.returncode})", flush=True)
        return []
    return read_csv(out)


def lxt_supported(name: str) -> bool:
    import model_zoo

    return model_zoo.get(name).family in LXT_FAMILIES


def allocator() -> str:
    """Which glibc malloc settings this process runs with (read from its environment)."""
    if all(os.environ.get(k) == v for k, v in STEADY_ALLOCATOR.items()):
        return "steady (" + ", ".join(f"{k}={v}" for k, v in STEADY_ALLOCATOR.items()) + ")"
    return "glibc default"


def run_benchmark(args: argparse.Namespace, csv_path: Path | None = None) -> list[Row]:
    """Measure every model (one at a time, freed afterwards), probe memory, merge the LXT-env rows; the
    CSV is rewritten after each model (a run cut short keeps what it measured)."""
    env = "lxt" if args.lxt else "main"
    memory = args.memory if args.memory != "auto" else ("cuda" if args.device.startswith("cuda") else "subprocess")
    print(f"allocator: {allocator()}", flush=True)
    rows: list[Row] = []
    models = [m for m in args.models.split(",") if m]
    if args.lxt:
        models = [m for m in models if lxt_supported(m)]
    for name in models:
        print(f"# {name} ({env} env, {args.device})", flush=True)
        try:
            case = case_from_args(args, name)
        except Exception as err:  # a model that cannot be built is reported, the run goes on
            rows.append(Row(name, env, args.device, "", 0, "build", f"failed: {_error(err)}", "", None, None, None,
                            0, None, None, ""))
            continue
        methods = args.methods.split(",") if args.methods else default_methods(case.kind, args.lxt)
        results = measure(case, methods, args.repeats, cuda_memory=memory == "cuda")
        info = case.info
        del case
        gc.collect()
        if memory == "subprocess":
            for method, timing in results.items():
                if timing.status == "ok":
                    timing.peak_mib, timing.memory = run_probe(probe_command(args, name, method))
        rows += rows_for(info, env, results)
        if csv_path is not None:
            write_csv(rows, csv_path)
        print(markdown([r for r in rows if r.model == name]).split("\n\nAll rows")[0], flush=True)
    if not args.lxt and args.lxt_python != "none":
        supported = [m for m in models if lxt_supported(m)]
        if supported:
            rows += lxt_rows(args, supported)
    return rows


def main(argv: Sequence[str] | None = None) -> list[Row] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="zoo names, comma-separated")
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64, help="sequence length of text models")
    parser.add_argument("--image-size", type=int, default=None, help="image side (default: the zoo's)")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=None, help="comma-separated, e.g. forward,fwd_bwd,dynlrp:epsilon")
    parser.add_argument("--memory", default="auto", choices=("auto", "subprocess", "cuda", "none"))
    parser.add_argument("--merge-batch-norm", default="on", choices=("on", "off"),
                        help="dynlrp presets merge each batch norm into the convolution before it (zennit's"
                             " ResNetCanonizer does the same); off: batch norm as its own epsilon layer")
    parser.add_argument("--retain-graph", default="off", choices=("off", "on"),
                        help="dynlrp's explain(retain_graph=...): off frees each node's saved tensors once the"
                             " sweep no longer needs them (as autograd.grad does); on only reads the graph")
    parser.add_argument("--plans", default="on", choices=("on", "off"),
                        help="dynlrp's calls on one model and preset share a PlanCache (the first call builds"
                             " the promise plan, the repeated calls reuse it, as when explaining many inputs)")
    parser.add_argument("--record", default="auto", choices=("auto", "always", "never"),
                        help="dynlrp's forward inside dynlrp.record(): auto = where the graph lacks values")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--allocator", default="default", choices=("default", "steady"),
                        help="glibc malloc as configured (default), or steady: freed memory stays in the heap"
                             " (STEADY_ALLOCATOR), which takes the allocator's page faults out of the timings")
    parser.add_argument("--lxt", action="store_true", help="this is the LXT-env process (forward, fwd_bwd, "
                        "dynlrp:attnlrp, lxt:attnlrp on the models LXT supports)")
    parser.add_argument("--lxt-python", default=str(DEFAULT_LXT_PYTHON), help="python of the LXT env, or 'none'")
    parser.add_argument("--out", default=str(OUTPUT_DIR))
    parser.add_argument("--csv", default=None, help="CSV path (default OUT/speed.csv)")
    parser.add_argument("--profile", action="store_true", help="cProfile dynlrp.explain per model instead")
    parser.add_argument("--render", default=None, help="only write the tables of these CSVs (comma-separated)")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        probe(args)
        return None
    if args.allocator == "steady" and any(os.environ.get(k) != v for k, v in STEADY_ALLOCATOR.items()):
        # glibc reads these at start-up only: run again with them set (the LXT-env process inherits them)
        argv = list(sys.argv[1:] if argv is None else argv)
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.speed", *argv], {**os.environ, **STEADY_ALLOCATOR})
    if args.profile:
        profile(args)
        return None
    out = Path(args.out)
    csv_path = Path(args.csv) if args.csv else out / ("speed_lxt.csv" if args.lxt else "speed.csv")
    if args.render:
        rows = [row for path in args.render.split(",") for row in read_csv(Path(path))]
    else:
        rows = run_benchmark(args, csv_path)
    write_csv(rows, csv_path)
    if not args.lxt:
        text = markdown(rows)
        (out / "speed.md").write_text(text + "\n")
        write_summary_csv(rows, out / "speed_summary.csv")
        print("\n" + text + f"\n\nwritten: {csv_path}, {out / 'speed_summary.csv'}, {out / 'speed.md'}", flush=True)
    return rows


if __name__ == "__main__":
    main()
