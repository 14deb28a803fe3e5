"""Reliability: no leaks over repeated calls, in-place forwards, train mode named, faults recorded."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

import dynlrp


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10)).eval()


def test_no_leak_over_100_explanations():
    model = _model()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    for _ in range(10):  # warm up allocator and caches
        dynlrp.explain(model(x), target=1, inputs=[x])
    gc.collect()
    before = _rss_mb()
    for _ in range(100):
        dynlrp.explain(model(x), target=1, inputs=[x])
    gc.collect()
    assert _rss_mb() - before < 50  # one explanation holds ~1 MB of tensors; a leak would be ~100 MB


def test_explanation_does_not_keep_the_graph_alive():
    x = torch.randn(2, 4, requires_grad=True)
    out = nn.Linear(4, 3)(torch.tanh(x))
    node = out.grad_fn.next_functions[1][0]
    probe = weakref.ref(out)
    exp = dynlrp.explain(out, target=0, inputs=[x])
    del out, node
    gc.collect()
    assert probe() is None
    assert exp.relevance(x).shape == x.shape


@pytest.mark.parametrize("inplace", ["relu_", "add_", "mul_", "tanh_", "slice_assign"])
def test_inplace_forwards_are_explained(inplace):
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(4, 6).double(), nn.Linear(6, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def forward(x):
        h = lin1(x)
        if inplace == "relu_":
            h.relu_()
        elif inplace == "add_":
            h.add_(lin1(x))
        elif inplace == "mul_":
            h.mul_(0.5)
        elif inplace == "tanh_":
            h.tanh_()
        else:
            h[:, :2] = lin1(x)[:, 2:4]
        return lin2(h)

    out = forward(x)
    exp = dynlrp.explain(out, target=torch.ones_like(out), inputs=[x], strict=True)
    assert exp.conservation.unexplained < 1e-10
    with dynlrp.record():  # the same forward with every value kept gives the same relevance
        recorded = forward(x)
    torch.testing.assert_close(dynlrp.explain(recorded, target=torch.ones_like(out), inputs=[x]).relevance(x),
                               exp.relevance(x))


def test_train_mode_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.Linear(4, 2)).train()
    x = torch.randn(5, 4, requires_grad=True)
    with pytest.warns(dynlrp.TrainModeWarning, match="eval"):
        dynlrp.explain(model(x), target=0, inputs=[x])
    with pytest.warns(dynlrp.TrainModeWarning, match="train mode"):
        dynlrp.audit(model, x)


def test_a_rule_that_raises_is_a_named_error_and_the_audit_goes_on(monkeypatch):
    from dynlrp.rules import REGISTRY

    info = REGISTRY.rules["ReluBackward0"]

    def broken(ctx, relevance):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(REGISTRY.rules, "ReluBackward0", type(info)(info.name, info.family, info.node_types,
                                                                     info.doc, broken))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 4, requires_grad=True)
    with pytest.raises(dynlrp.RuleError, match="identity failed on ReluBackward0 at 1: ZeroDivisionError: boom"):
        from dynlrp.modules import track_modules

        with track_modules(model) as paths:
            out = model(x)
        dynlrp.explain(out, inputs=[x], module_paths=paths)
    report = dynlrp.audit(model, x)
    assert report.error.startswith("RuleError") and "boom" in report.error
    assert report.coverage == 1.0 and report.backward_ok  # the rest of the report is still there


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_input_is_named(bad):
    x = torch.randn(2, 4)
    x[0, 1] = bad
    x.requires_grad_(True)
    out = nn.Linear(4, 3)(x)
    with pytest.raises(dynlrp.InputError, match="not finite"):
        dynlrp.explain(out, target=0, inputs=[x])
