"""Engine behaviour: batches, dtypes, graph reuse, big graphs, presets, ledger, audit report."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn
import torchvision

import dynlrp
from dynlrp.graph import Graph


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10), nn.ReLU(), nn.Dropout(), nn.Linear(10, 4),
    ).eval()


def _randomise(model):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.running_mean, -0.5, 0.5)
            nn.init.uniform_(module.running_var, 0.5, 1.5)
        for name in ("bias",):
            b = getattr(module, name, None)
            if isinstance(b, torch.Tensor):
                nn.init.normal_(b, std=0.1)
    return model


def test_batch_rows_do_not_mix_targets():
    model = _randomise(_cnn()).double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    both = dynlrp.explain(model(x), target=[0, 3, 1], inputs=[x]).relevance(x)
    for row, target in enumerate([0, 3, 1]):
        xi = x[row:row + 1].detach().requires_grad_(True)
        single = dynlrp.explain(model(xi), target=target, inputs=[xi]).relevance(xi)
        torch.testing.assert_close(both[row:row + 1], single, rtol=1e-10, atol=1e-12)


def test_int_target_applies_per_row_and_none_is_argmax():
    model = _randomise(_cnn())
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    out = model(x)
    by_int = dynlrp.explain(out, target=2, inputs=[x]).relevance(x)
    by_list = dynlrp.explain(out, target=[2, 2], inputs=[x]).relevance(x)
    torch.testing.assert_close(by_int, by_list)
    argmax = out.argmax(-1).tolist()
    torch.testing.assert_close(dynlrp.explain(out, inputs=[x]).relevance(x),
                               dynlrp.explain(out, target=argmax, inputs=[x]).relevance(x))


def test_seed_value_vs_one_hot():
    out = torch.tensor([[1.0, -3.0]], requires_grad=True) * 2
    torch.testing.assert_close(dynlrp.seed_relevance(out, 1), torch.tensor([[0.0, -6.0]]))
    torch.testing.assert_close(dynlrp.seed_relevance(out, 1, "one_hot"), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_dtypes(dtype, tol):
    model = _randomise(_cnn()).to(dtype)
    x = torch.randn(2, 3, 12, 12, dtype=dtype, requires_grad=True)
    exp = dynlrp.explain(model(x), target=[0, 1], inputs=[x])
    assert exp.relevance(x).dtype == dtype
    assert exp.conservation.unexplained < tol
    assert torch.isfinite(exp.relevance(x)).all()


def test_graph_is_not_consumed():
    model = _randomise(_cnn())
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    out = model(x)
    dynlrp.explain(out, target=[0, 1], inputs=[x])
    out.sum().backward()
    with_explain = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    torch.testing.assert_close(x.grad, with_explain, rtol=0, atol=0)


def test_whole_model_conservation_in_float64():
    model = _randomise(_cnn()).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    exp = dynlrp.explain(model(x), target=[0, 1], inputs=[x])
    c = exp.conservation
    assert c.unexplained < 1e-12
    assert max(row.error for row in exp.nodes) < 1e-10
    assert c.absorbed["bias"] != 0.0
    total = c.inputs + sum(c.absorbed.values())
    assert total == pytest.approx(c.output, rel=1e-12)
    assert exp.relevance(x).sum().item() == pytest.approx(c.inputs, rel=1e-12)


def test_frozen_model_inside_record_matches_trainable():
    model = _randomise(_cnn()).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    reference = dynlrp.explain(model(x), target=[0, 1], inputs=[x]).relevance(x)
    model.requires_grad_(False)
    with dynlrp.record():
        out = model(x)
    frozen = dynlrp.explain(out, target=[0, 1], inputs=[x]).relevance(x)
    torch.testing.assert_close(frozen, reference, rtol=1e-10, atol=1e-12)


def test_intermediate_tensor_as_input_cuts_the_sweep():
    lin1, lin2 = nn.Linear(4, 5).double(), nn.Linear(5, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.relu(lin1(x))
    out = lin2(h)
    exp = dynlrp.explain(out, target=0, inputs=[h])
    assert exp.relevance(h).shape == h.shape
    assert {row.node_type for row in exp.nodes} == {"AddmmBackward0"}
    assert exp.conservation.unexplained < 1e-12


def test_deep_graph_has_no_recursion_limit():
    """20,000+ nodes: graph build, promises and the sweep are iterative."""
    x = torch.randn(2, 4, requires_grad=True)
    h = x
    for _ in range(7000):  # three nodes per step
        h = (h * 1.0001).view(2, 4).clone()
    out = h.sum(-1, keepdim=True)
    graph = Graph.build(out.grad_fn)
    assert len(graph) > 20000
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x])
    assert exp.conservation.unexplained < 1e-5
    assert exp.promises.delta > 20000  # the sum's input was replayed through the whole chain


def test_two_explanations_in_two_threads():
    model = _randomise(_cnn()).double()
    xs = [torch.randn(1, 3, 12, 12, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    expected = [dynlrp.explain(model(x), target=1, inputs=[x]).relevance(x) for x in xs]
    results = [None, None]

    def work(i):
        for _ in range(3):
            results[i] = dynlrp.explain(model(xs[i]), target=1, inputs=[xs[i]]).relevance(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_presets_conserve_up_to_their_documented_absorption():
    model = _randomise(_cnn()).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    out = model(x)
    for name in dynlrp.presets.NAMES:
        exp = dynlrp.explain(out, target=[0, 1], inputs=[x], rules=name)
        assert exp.conservation.unexplained < 1e-10, name
        assert max(row.error for row in exp.nodes) < 1e-9, name


def test_first_layer_rule_applies_to_the_first_layer_only():
    model = _randomise(_cnn()).double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    out = model(x)
    flat = dynlrp.presets.get("flat")
    first = dynlrp.Preset("first_only", first=dynlrp.LinearRule("flat"))
    torch.testing.assert_close(dynlrp.explain(out, target=0, inputs=[x], rules=flat).relevance(x),
                               dynlrp.explain(out, target=0, inputs=[x], rules=first).relevance(x))
    eps = dynlrp.explain(out, target=0, inputs=[x]).relevance(x)
    assert not torch.allclose(dynlrp.explain(out, target=0, inputs=[x], rules=flat).relevance(x), eps)


def test_module_override():
    model = _randomise(_cnn()).double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    report_paths = {}
    with dynlrp.modules.track_modules(model) as paths:
        out = model(x)
    report_paths.update(paths)
    preset = dynlrp.presets.get("epsilon").override(modules={"3": dynlrp.LinearRule("zplus")})
    by_module = dynlrp.explain(out, target=0, inputs=[x], rules=preset, module_paths=report_paths)
    zplus_conv = dynlrp.Preset("conv_zplus", conv=dynlrp.LinearRule("zplus"),
                               first=dynlrp.LinearRule("epsilon"))
    by_role = dynlrp.explain(out, target=0, inputs=[x], rules=zplus_conv)
    torch.testing.assert_close(by_module.relevance(x), by_role.relevance(x))
    assert {row.module for row in by_module.nodes if row.node_type == "ConvolutionBackward0"} == {"0", "3"}


def test_list_rules_have_formula_docstrings():
    rules = dynlrp.list_rules()
    assert len(rules) >= 15
    for info in rules:
        assert "R" in info.doc and len(info.doc) > 40, info.name
        assert info.node_types


def test_audit_report_fields_and_html(tmp_path):
    model = _randomise(_cnn())
    report = dynlrp.audit(model, torch.randn(1, 3, 12, 12), name="cnn <script>alert(1)</script>")
    assert report.coverage == 1.0 and report.missing == {}
    assert report.backward_ok is True
    assert report.activations.unavailable == {} and report.activations.max_error < 1e-6
    conv = report.ops["ConvolutionBackward0"]
    assert conv.count == 2 and conv.covered and conv.rule == "convolution" and conv.max_error < 1e-5
    assert set(conv.modules) == {"0", "3"}
    assert "bias" in conv.absorbed
    data = report.to_dict()
    assert data["coverage"] == 1.0
    page = report.to_html(tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_vgg16_batch_of_two_acceptance():
    model = torchvision.models.vgg16().eval()
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    exp = dynlrp.explain(model(x), target=[1, 2], inputs=[x])
    assert exp.conservation.unexplained < 1e-4
    assert exp.relevance(x).shape == x.shape


def test_resnet50_audit_coverage_acceptance():
    report = dynlrp.audit(torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224))
    assert report.coverage == 1.0
    assert report.nodes == 338


def test_ledger_reuses_sums_only_for_the_same_elements():
    """An output that holds the input relevance's elements (identity, reshape, permutation) reuses
    its ledger sums; a part, a strided slice or a broadcast view does not."""
    from dynlrp.engine import _dense_layout, _same_elements

    t = torch.randn(2, 3, 4)
    assert _same_elements(t, t) and _same_elements(t, t.view(6, 4)) and _same_elements(t, t.permute(2, 0, 1))
    assert not _same_elements(t, t.reshape(-1)[:12]) and not _same_elements(t, t.clone())
    assert not _same_elements(t.double(), t.double().float().double())
    assert not _dense_layout(t[:, :, ::2]) and not _dense_layout(t[:, :2]) and not _dense_layout(t.expand(2, 2, 3, 4))
    assert _dense_layout(t[:1]) and _dense_layout(t.transpose(0, 2))


@pytest.fixture
def collections():
    """The dynlrp functions (other than ``explain`` and ``collector_paused``, which pause the collector)
    inside which Python's garbage collector ran a collection while the test ran; every allocation
    triggers one (threshold 1). The collector's settings are restored afterwards."""
    import gc
    import sys
    from pathlib import Path

    package = str(Path(dynlrp.__file__).parent)
    seen: list[str] = []

    def note(phase, info):
        frame = sys._getframe(1)
        while phase == "start" and frame is not None:
            code = frame.f_code
            if code.co_filename.startswith(package) and code.co_name not in ("explain", "collector_paused"):
                seen.append(code.co_name)
                break
            frame = frame.f_back

    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(1)
    gc.callbacks.append(note)
    yield seen
    gc.callbacks.remove(note)
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_the_sweep_runs_with_the_garbage_collector_paused(collections):
    """No collection runs inside explain's work (each would only scan: the sweep makes no reference
    cycles, which the audit checks per zoo model); the collector is on again after it, also after an
    error, and stays off where the caller had switched it off."""
    import gc

    model = _randomise(_cnn())
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    out = model(x)
    dynlrp.explain(out, target=[0, 1], inputs=[x])
    assert collections == [] and gc.isenabled()
    with pytest.raises(dynlrp.TargetError):
        dynlrp.explain(out, target=[0, 9], inputs=[x])
    assert collections == [] and gc.isenabled()
    gc.disable()
    dynlrp.explain(out, target=[0, 1], inputs=[x])
    assert not gc.isenabled()


def test_an_explanation_leaves_nothing_for_the_garbage_collector():
    """What explain allocates is freed by reference counting alone (no cycles), also with the
    Promise System's replays, record() and a plan cache; here on a CNN with batch norm and a tiny GPT-2."""
    import gc

    import model_zoo

    model, args, _ = model_zoo.get("gpt2").build("tiny", seed=0)
    gpt2_input = model.get_input_embeddings()(args[0]).detach()
    cases = [(_randomise(_cnn()), torch.randn(2, 3, 12, 12), lambda m, x: m(x)),
             (model, gpt2_input, lambda m, x: m(inputs_embeds=x).logits[:, -1])]
    cache = dynlrp.PlanCache()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for model, x, scores in cases:
            for plans, retain in ((None, True), (cache, False), (cache, False)):
                x = x.detach().requires_grad_(True)
                with dynlrp.record():
                    out = scores(model, x)
                gc.collect()
                exp = dynlrp.explain(out, inputs=[x], plans=plans, retain_graph=retain)
                del exp, out
                assert gc.collect() == 0
        assert cache.hits == 2
    finally:
        (gc.enable if enabled else gc.disable)()
