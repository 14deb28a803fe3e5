"""``dynlrp.record()``: values the autograd graph does not hold, kept exactly and only those.

Frozen models (every parameter ``requires_grad=False``) explained inside ``record()`` give the
relevance of the same models with trainable parameters; masked eager attention and BLOOM's ALiBi
are exact under ``record()`` and a named error (listing every missing value) without it.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn
import torchvision
from ledger import conserved

import dynlrp
from dynlrp.errors import MissingValue
from dynlrp.graph import Graph
from dynlrp.modules import track_modules

D = torch.float64


def _randomise_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=g, dtype=bias.dtype) * 0.05)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _trainable(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _zoo(name: str, attn: str | None = "eager"):
    import model_zoo

    model, args, _ = model_zoo.get(name).build(size="tiny", seed=0, attn=attn)
    model = model.to(D).eval()
    embeds = model.get_input_embeddings()(args[0]).detach()
    return model, embeds


def _logits(model, embeds):
    return model(inputs_embeds=embeds).logits[:, -1]


# -- frozen models: record() == trainable ------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("vgg16", 32), ("resnet50", 32)])
def test_frozen_torchvision_models_inside_record_equal_trainable(name, size):
    torch.manual_seed(0)
    model = _randomise_biases(getattr(torchvision.models, name)().to(D).eval())
    x = torch.randn(2, 3, size, size, dtype=D, requires_grad=True)
    reference = dynlrp.explain(_trainable(model)(x), target=[1, 2], inputs=[x]).relevance(x)
    _frozen(model)
    with dynlrp.record() as rec:
        out = model(x)
    exp = dynlrp.explain(out, target=[1, 2], inputs=[x])
    torch.testing.assert_close(exp.relevance(x), reference, rtol=1e-9, atol=1e-12)
    assert exp.conservation.unexplained < 1e-10
    assert all(conserved(row, 1e-10) for row in exp.nodes)
    # what was kept: only biases (references to the parameters), no activation
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = rec.tensors()
    assert kept and all(t.untyped_storage().data_ptr() in params for t in kept)


@pytest.mark.parametrize("name", ["gpt2", "llama_3_2_1b"])
def test_frozen_language_models_inside_record_equal_trainable(name):
    model, embeds = _zoo(name)
    x = embeds.clone().requires_grad_(True)
    with dynlrp.record():  # eager attention's mask is outside the graph either way
        out = _logits(_trainable(model), x)
    reference = dynlrp.explain(out, rules="attnlrp", inputs=[x]).relevance(x)
    _frozen(model)
    x = embeds.clone().requires_grad_(True)
    with dynlrp.record():
        out = _logits(model, x)
    exp = dynlrp.explain(out, rules="attnlrp", inputs=[x])
    torch.testing.assert_close(exp.relevance(x), reference, rtol=1e-9, atol=1e-12)
    assert all(conserved(row, 1e-10) for row in exp.nodes)


def test_frozen_vgg_post_hoc_lists_every_lost_bias_with_its_module():
    """A frozen conv followed by ReLU keeps neither its bias nor its output: post hoc names each."""
    torch.manual_seed(0)
    model = _frozen(_randomise_biases(torchvision.models.vgg11().to(D).eval()))
    x = torch.randn(1, 3, 32, 32, dtype=D, requires_grad=True)
    with track_modules(model) as paths:
        out = model(x)
    with pytest.raises(dynlrp.MissingValueError) as info:
        dynlrp.explain(out, target=0, inputs=[x], module_paths=paths, recording=False)
    missing = info.value.missing
    assert all(isinstance(m, MissingValue) for m in missing)
    convs = {f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)}
    linears = {"classifier.0", "classifier.3"}  # classifier.6 is the output: its value is at hand
    assert {m.module for m in missing} == convs | linears
    assert "record()" in str(info.value) and "features.0" in str(info.value)


# -- masks and ALiBi ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,attn", [("llama_3_2_1b", "eager"), ("gpt2", "eager"), ("bloom_560m", None)])
def test_constants_added_to_attention_scores_need_record(name, attn):
    """Eager attention adds a mask, BLOOM adds ALiBi's bias inside baddbmm: not in the graph. Post hoc
    is a named error listing them; inside record() the explanation is exact and equals the one from a
    recording of every activation (an independent source of the same values)."""
    model, embeds = _zoo(name, attn)
    x = embeds.clone().requires_grad_(True)
    with track_modules(model) as paths:
        out = _logits(model, x)
    with pytest.raises(dynlrp.MissingValueError) as info:
        dynlrp.explain(out, rules="attnlrp", inputs=[x], module_paths=paths, recording=False)
    layers = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer
    assert len(info.value.missing) >= layers
    assert all(m.module for m in info.value.missing)
    with dynlrp.record() as rec:
        out = _logits(model, x)
    exp = dynlrp.explain(out, rules="attnlrp", inputs=[x])
    assert all(conserved(row, 1e-10) for row in exp.nodes)
    assert exp.conservation.unexplained < 1e-10
    with dynlrp.record(outputs=True) as full:
        out_full = _logits(model, x)
    everything = dynlrp.explain(out_full, rules="attnlrp", inputs=[x], recording=full)
    torch.testing.assert_close(exp.relevance(x), everything.relevance(x), rtol=1e-10, atol=1e-12)
    assert rec.nbytes < full.nbytes / 10


def test_bloom_alibi_is_an_operand_of_baddbmm():
    model, embeds = _zoo("bloom_560m", None)
    x = embeds.clone().requires_grad_(True)
    with dynlrp.record() as rec:
        out = _logits(model, x)
    graph = Graph.build(out.grad_fn)
    baddbmm = [n for n in graph.order if type(n).__name__ == "BaddbmmBackward0"]
    assert len(baddbmm) == model.config.n_layer
    for node in baddbmm:
        alibi = rec.operand(node, 0)
        assert alibi is not None and alibi.shape[-2] == 1  # (batch * heads, 1, tokens): the ALiBi slopes x positions


# -- the recorder's contract --------------------------------------------------------------------------------
def test_record_keeps_only_what_the_graph_lacks():
    lin = nn.Linear(4, 3).to(D).requires_grad_(False)
    buffer = torch.randn(3, dtype=D)
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    with dynlrp.record() as rec:
        out = (torch.relu(lin(x)) + buffer * 2.0).sum(1)
    kept = {t.untyped_storage().data_ptr() for t in rec.tensors()}
    assert lin.bias.untyped_storage().data_ptr() in kept  # the frozen bias (a reference: no copy)
    assert lin.weight.untyped_storage().data_ptr() not in kept  # addmm saved the weight itself
    assert x.untyped_storage().data_ptr() not in kept
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])
    assert exp.conservation.unexplained < 1e-12


def test_python_scalars_are_kept_and_replayed():
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    with dynlrp.record():
        out = ((torch.tanh(x) + 0.3).masked_fill(x > 1.0, -2.5) - 0.7).sum(1)
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])
    assert all(conserved(row, 1e-12) for row in exp.nodes)
    with pytest.raises(dynlrp.MissingValueError, match="record"):
        dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], recording=False)


def test_in_place_write_inside_the_block_is_copied_first():
    x = torch.randn(2, 5, dtype=D, requires_grad=True)
    mask = torch.zeros(5, dtype=D)
    mask[3:] = -1.0
    with dynlrp.record():
        scores = torch.tanh(x) + mask  # AddBackward0 does not save the mask
        mask.fill_(100.0)  # the forward reuses the buffer afterwards
        out = scores.softmax(-1)[:, 0]
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])
    assert all(conserved(row, 1e-12) for row in exp.nodes)
    expected = torch.tanh(x.detach()) + torch.tensor([0, 0, 0, -1.0, -1.0], dtype=D)
    assert torch.allclose(out, expected.softmax(-1)[:, 0])


def test_in_place_write_after_the_block_is_a_named_error():
    x = torch.randn(2, 5, dtype=D, requires_grad=True)
    mask = torch.randn(5, dtype=D)
    with dynlrp.record():
        out = (torch.tanh(x) + mask).softmax(-1)[:, 0]
    mask.add_(1.0)
    with pytest.raises(dynlrp.MissingValueError, match="modified in place after the record"):
        dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])


def test_several_forwards_nested_blocks_and_threads():
    lin = nn.Linear(4, 4).to(D).requires_grad_(False)

    def forward(t):
        return torch.relu(lin(t)).sum(1)

    xs = [torch.randn(2, 4, dtype=D, requires_grad=True) for _ in range(3)]
    with dynlrp.record() as outer:
        a = forward(xs[0])
        with dynlrp.record() as inner:
            b = forward(xs[1])
        c = forward(xs[2])
    for out, x, rec in ((a, xs[0], outer), (b, xs[1], inner), (b, xs[1], outer), (c, xs[2], outer)):
        exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], recording=rec)
        assert exp.conservation.unexplained < 1e-12
    with pytest.raises(dynlrp.MissingValueError):  # the inner block did not see the outer forwards
        dynlrp.explain(a, target=torch.ones_like(a), inputs=[xs[0]], recording=inner)

    results: dict[int, float] = {}

    def worker(i: int) -> None:
        x = torch.randn(2, 4, dtype=D, requires_grad=True)
        with dynlrp.record():
            out = forward(x)
        results[i] = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x]).conservation.unexplained

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and max(results.values()) < 1e-12


def test_audit_reports_both_paths():
    model, _ = _zoo("llama_3_2_1b")
    report = dynlrp.audit(model, input_ids=torch.randint(3, 100, (1, 6)), rules="attnlrp",
                          output=lambda r: r.logits[:, -1])
    assert not report.posthoc_exact and report.needs_record
    # one line per layer: the constant mask added to the scores, named with its attention module
    assert len(report.record_values) == model.config.num_hidden_layers
    assert all(line.startswith("AddBackward0 input 1 at model.layers.") and ".self_attn " in line
               for line in report.record_values), report.record_values
    assert report.conservation["unexplained"] < 1e-10
    sdpa, _ = _zoo("llama_3_2_1b", "sdpa")
    report = dynlrp.audit(sdpa, input_ids=torch.randint(3, 100, (1, 6)), rules="attnlrp",
                          output=lambda r: r.logits[:, -1])
    assert report.posthoc_exact and report.paths_agree is not None and report.paths_agree < 1e-10
