"""Whole-model agreement of dynlrp's ``attnlrp`` / ``cp_lrp`` presets with LXT's efficient AttnLRP
(``lxt.efficient.monkey_patch``) on tiny random Llama, Qwen3, Gemma-3, GPT-2, BERT and torchvision
ViT models in float64. Runs in ``tox -e lxt`` only (LXT 2.1's model patches need transformers<5):
transformers 4.57.6 in a venv over the interpreter's own torch (``system_site_packages``), lxt 2.1
with ``--no-deps`` (lxt.efficient imports only torch, torchvision, transformers, packaging; zennit
is optional), ``DYNLRP_LXT_ENV=1`` so that ``tests/conftest.py`` collects this folder. ~30 s from
scratch on 2 cores; ``.ci/run`` runs it.

How each side explains. LXT patches model classes (process-wide), runs ``out[target].backward()``
with gradient 1 and reads ``x.grad * x`` (Gradient x Input with its rules built into the gradient);
it runs in a subprocess (``lxt_models.py``) on the test process's weights, inputs and targets. dynlrp
explains the unpatched model's graph: ``explain(scores, target, inputs=[x])`` with ``x`` the input
embeddings (``inputs_embeds``) or the pixels. Both use the same attention implementation (LXT wraps
every entry of ``ALL_ATTENTION_FUNCTIONS`` and ``eager_attention_forward``, and its BERT copy has
eager and SDPA classes, so eager and sdpa are both compared; torchvision's ``nn.MultiheadAttention``
calls SDPA). Compared: per-token relevance (sum over the hidden dim; per pixel, summed over
channels, for ViT) and the full relevance tensor, relative L2 difference.

Conventions, each pinned by a test below:

* start relevance: LXT's gradient 1 times input makes the starting relevance the logit value, as
  dynlrp's ``seed="value"`` (``test_start_relevance_is_the_logit``);
* stabiliser: lxt.efficient has none on linear layers, sums and products (Gradient x Input is the
  epsilon rule at eps = 0); dynlrp stabilises every z-rule with ``z + eps * sign(z)``, default 1e-6.
  Agreement needs ``presets.get(..., epsilon=1e-30)``; at eps the difference is linear in eps, 2.6e-4
  (ViT) to 2.9e-2 (Gemma-3) at the default 1e-6 (``test_stabiliser_is_the_only_rule_difference``);
* LXT's identity rule (GELU, SiLU, tanh) is ``output / (input + 1e-10)`` times the gradient: a
  relative error of 1e-10 / |x| (no sign) against dynlrp's exact identity, 7e-9 (GPT-2) to 1e-7
  (BERT) on these models (``test_exact_agreement`` sets it to 1e-30);
* precision: transformers' RMSNorm (Llama, Qwen3, Gemma-3) runs in float32 (``.to(float32)``,
  ``x.float()``), and so does the eager softmax of Llama/Qwen3/Gemma-3; LXT's gradient through those
  casts is float32, dynlrp's relevance keeps float64. This leaves ~1e-7; with float64 norms on both
  sides (and SDPA) the agreement is at rounding level, <= 4e-15 (``test_exact_agreement``);
* everything else agrees exactly: RMSNorm and LayerNorm (normaliser constant, LN-rule), rotary
  embeddings (linear in q, k with constant cos / sin), biases and position embeddings (absorbed),
  grouped-query heads, masks (absorbed), the softmax rule (LXT's efficient softmax is the gradient of
  softmax times input: ``x * (R - s * sum R)``, AttnLRP's rule), the uniform rule on ``A v``, on
  ``q k^T`` (LXT: gradient / 4 at q, k, / 2 at v) and on SwiGLU / GeGLU products (LXT: / 2);
* ViT: LXT ships only a CP-LRP map for torchvision's ViT (compared with dynlrp's ``cp_lrp``); for
  AttnLRP its attention is rewritten with LXT's own ``divide_gradient``, as LXT does for
  transformers models;
* dropout: LXT patches ``nn.Dropout`` to the identity and passes ``dropout=0`` to attention, so a
  ``train()`` model is explained as in ``eval()``; dynlrp explains the graph that ran and refuses an
  SDPA node that ran with dropout (``test_dropout``);
* ledger: dynlrp's conservation holds on every model (``unexplained < 1e-10``), including
  transformers 4.x GPT-2's eager mask, where ``finfo.min + finfo.min`` overflows to -inf;
* CP-LRP on gated MLPs: LXT's ``cp_LRP`` maps also hold the SwiGLU / GeGLU gate constant (all
  relevance through ``up_proj``); dynlrp's ``cp_lrp`` holds only attention weights constant and keeps
  the uniform rule on the gate product (``test_cp_lrp``).
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lxt_models import HF, build, constant_gate_mlps, float64_rms_norms, scores

import dynlrp

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-6  # observed <= 1.2e-7 (float32 steps in transformers' RMSNorm); issue 3 asks <= 1e-4
EXACT = 1e-12  # observed <= 4e-15


def tiny(variant: str, epsilon: float = 1e-30):
    return dynlrp.presets.get(variant, epsilon=epsilon)


@dataclass
class Case:
    key: str
    name: str
    attn: str
    phase: str  # LXT's patches: stock, vit_attnlrp, exact, cp (lxt_models.patch_lxt)
    variant: str  # dynlrp preset: attnlrp or cp_lrp
    constant_gate: bool = False  # dynlrp's side: gated MLPs with the gate detached (constant_gate_mlps)


STOCK = [Case(f"{n}-{a}", n, a, "stock", "attnlrp") for n in HF for a in ("eager", "sdpa")]
STOCK += [Case("vit-cp", "vit", "sdpa", "stock", "cp_lrp"),
          Case("vit-attnlrp", "vit", "sdpa", "vit_attnlrp", "attnlrp")]
EXACT_CASES = [Case(f"exact-{n}-{a}", n, a, "exact", "attnlrp") for n, a in
               [("llama", "sdpa"), ("qwen3", "sdpa"), ("gemma3", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"),
                ("bert", "eager"), ("bert", "sdpa"), ("vit", "sdpa")]]
CP_CASES = [Case(f"cp-{n}", n, "eager", "cp", "cp_lrp") for n in ("llama", "qwen3", "gemma3", "gpt2")]
CP_CASES += [Case(f"cp-{n}-constant-gate", n, "eager", "cp", "cp_lrp", constant_gate=True)
             for n in ("llama", "qwen3", "gemma3")]
TRAIN = "train-gpt2-sdpa"  # LXT's side only: gpt2-sdpa's weights and input, model in train() mode
ALL = STOCK + EXACT_CASES + CP_CASES


@dataclass
class Side:
    """dynlrp's side of a case: the unpatched model's forward, kept for explain."""

    case: Case
    x: torch.Tensor
    out: torch.Tensor
    target: torch.Tensor
    recording: dynlrp.Recording
    lxt: torch.Tensor | None = None
    lxt_out: torch.Tensor | None = None

    def explain(self, rules, **kwargs):
        return dynlrp.explain(self.out, target=self.target.tolist(), inputs=[self.x], rules=rules,
                              recording=self.recording, **kwargs)


def _forward(case: Case):
    with pytest.MonkeyPatch.context() as patch:
        if case.phase == "exact":
            for cls, forward in float64_rms_norms().items():
                patch.setattr(cls, "forward", forward)
        if case.constant_gate:
            for cls, forward in constant_gate_mlps().items():
                patch.setattr(cls, "forward", forward)
        model, x = build(case.name, case.attn)
        with dynlrp.record() as recording:
            out = scores(model, case.name, x)
    job = dict(name=case.name, attn=case.attn, phase=case.phase, state=model.state_dict(), x=x.detach(),
               target=out.argmax(-1), train=False)
    return Side(case, x, out, out.argmax(-1).detach(), recording), job


def _run_lxt(groups: list[dict], tmp: Path) -> dict:
    """LXT's relevance for each group of jobs, one subprocess per group, run side by side."""
    procs = []
    for i, jobs in enumerate(groups):
        torch.save(jobs, tmp / f"jobs{i}.pt")
        with open(tmp / f"log{i}.txt", "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(HERE / "lxt_models.py"), str(tmp / f"jobs{i}.pt"),
                                           str(tmp / f"out{i}.pt")], stdout=log, stderr=subprocess.STDOUT))
    results = {}
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=600) == 0, (tmp / f"log{i}.txt").read_text()[-4000:]
        results.update(torch.load(tmp / f"out{i}.pt", weights_only=False))
    return results


@pytest.fixture(scope="session")
def sides(tmp_path_factory) -> dict[str, Side]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="transformers")
            built = {case.key: _forward(case) for case in ALL}
    finally:
        torch.set_default_dtype(previous)
    jobs = {key: job for key, (_, job) in built.items()}
    main = {k: j for k, j in jobs.items() if j["phase"] != "cp"} | {TRAIN: dict(jobs["gpt2-sdpa"], train=True)}
    cp = {k: j for k, j in jobs.items() if j["phase"] == "cp"}
    results = _run_lxt([main, cp], tmp_path_factory.mktemp("lxt"))
    out = {}
    for key, (side, _) in built.items():
        side.lxt, side.lxt_out = results[key]
        out[key] = side
    out[TRAIN] = results[TRAIN]
    return out


def _tokens(name: str, relevance: torch.Tensor) -> torch.Tensor:
    return relevance.sum(1) if name == "vit" else relevance.sum(-1)  # per pixel / per token


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _check_same_model(side: Side):
    assert side.lxt.norm() > 0
    torch.testing.assert_close(side.lxt_out, side.out.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", STOCK, ids=[c.key for c in STOCK])
def test_attnlrp_agrees_with_lxt(sides, case):
    side = sides[case.key]
    _check_same_model(side)
    exp = side.explain(tiny(case.variant))
    assert exp.fallbacks == {}
    assert exp.conservation.unexplained < 1e-10
    ours = exp.relevance(side.x)
    token_diff, full_diff = _diff(_tokens(case.name, ours), _tokens(case.name, side.lxt)), _diff(ours, side.lxt)
    print(f"{case.key}: token {token_diff:.1e} full {full_diff:.1e}")
    assert token_diff <= TOLERANCE
    assert full_diff <= TOLERANCE


@pytest.mark.parametrize("case", EXACT_CASES, ids=[c.key for c in EXACT_CASES])
def test_exact_agreement(sides, case):
    """LXT's identity stabiliser at 1e-30 and float64 RMSNorms on both sides: what is left of the
    stock difference is rounding, so the two are the same rules everywhere."""
    side = sides[case.key]
    _check_same_model(side)
    diff = _diff(side.explain(tiny(case.variant)).relevance(side.x), side.lxt)
    print(f"{case.key}: full {diff:.1e}")
    assert diff <= EXACT


@pytest.mark.parametrize("case", EXACT_CASES, ids=[c.key for c in EXACT_CASES])
def test_stabiliser_is_the_only_rule_difference(sides, case):
    """dynlrp's ``z + eps * sign(z)`` against lxt.efficient's plain gradient: the difference is
    linear in eps (factor 100 for eps 1e-8 -> 1e-10) and large at the default eps 1e-6."""
    side = sides[case.key]
    diffs = {eps: _diff(side.explain(tiny(case.variant, eps)).relevance(side.x), side.lxt)
             for eps in (1e-6, 1e-8, 1e-10)}
    print(f"{case.key}: " + " ".join(f"eps {eps:.0e}: {d:.1e}" for eps, d in diffs.items()))
    assert 50 < diffs[1e-8] / diffs[1e-10] < 200, diffs
    assert diffs[1e-6] > 1e-4, diffs  # the default preset does not meet the 1e-4 bar; eps=1e-30 does


@pytest.mark.parametrize("case", STOCK[::2], ids=[c.key for c in STOCK[::2]])
def test_start_relevance_is_the_logit(sides, case):
    """LXT: gradient 1 at the target logit, times input at the end = LRP started from the logit
    value. dynlrp's ``seed="one_hot"`` relevance times the logit is the ``seed="value"`` one."""
    side = sides[case.key]
    logit = side.out.detach().gather(-1, side.target.view(-1, 1)).view(-1, *[1] * (side.x.dim() - 1))
    value = side.explain(tiny(case.variant))
    one_hot = side.explain(tiny(case.variant), seed="one_hot")
    assert value.conservation.output == pytest.approx(logit.sum().item(), rel=1e-12)
    assert one_hot.conservation.output == pytest.approx(side.x.shape[0], rel=1e-12)
    assert _diff(one_hot.relevance(side.x) * logit, side.lxt) <= TOLERANCE


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dropout(sides, attn):
    """LXT removes dropout (``nn.Dropout`` patched to the identity, ``dropout=0`` passed to the
    attention), so a model in train() mode gets its eval() relevance. dynlrp explains the graph as it
    ran, dropout masks included (another relevance, still conservative). An SDPA call with dropout
    takes torch's decomposed math path on CPU; ``record()`` works at the aten level, so it keeps what
    that path's nodes lack too (a fused SDPA node with dropout gets a RuleError)."""
    eval_side, train_lxt = sides["gpt2-sdpa"], sides[TRAIN]
    torch.testing.assert_close(train_lxt[0], eval_side.lxt, rtol=0, atol=0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, x = build("gpt2", attn)
        model.train()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="transformers")
            with dynlrp.record() as recording:
                out = scores(model, "gpt2", x)
    finally:
        torch.set_default_dtype(previous)
    exp = dynlrp.explain(out, target=eval_side.target.tolist(), inputs=[x], rules=tiny("attnlrp"), recording=recording)
    assert exp.conservation.unexplained < 1e-10
    assert _diff(exp.relevance(x), eval_side.lxt) > 1e-3


@pytest.mark.parametrize("case", CP_CASES, ids=[c.key for c in CP_CASES])
def test_cp_lrp(sides, case):
    """LXT's ``cp_LRP`` maps vs dynlrp's ``cp_lrp``: the same where there is no gated MLP (GPT-2; ViT
    in ``test_attnlrp_agrees_with_lxt``). On SwiGLU / GeGLU MLPs LXT also holds the gate constant,
    dynlrp splits the gate product uniformly: they differ (4e-2 to 0.3 here), and agree once dynlrp's
    side runs the MLP with the gate detached."""
    side = sides[case.key]
    _check_same_model(side)
    exp = side.explain(tiny("cp_lrp"))
    diff = _diff(exp.relevance(side.x), side.lxt)
    print(f"{case.key}: full {diff:.1e}")
    assert exp.conservation.unexplained < 1e-10
    if case.name == "gpt2" or case.constant_gate:
        assert diff <= TOLERANCE
    else:
        assert diff > 1e-2
