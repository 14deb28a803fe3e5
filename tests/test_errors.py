"""Bad inputs and unknown ops fail with named errors that say what to do."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dynlrp


def _net():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_output_without_grad_fn():
    with pytest.raises(dynlrp.NoGraphError, match="requires_grad"):
        dynlrp.explain(torch.randn(2, 3))


def test_no_grad_forward():
    x = torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        out = _net()(x)
    with pytest.raises(dynlrp.NoGraphError, match="no_grad"):
        dynlrp.explain(out, inputs=[x])


def test_inference_mode_forward():
    x = torch.randn(2, 4, requires_grad=True)
    with torch.inference_mode():
        out = _net()(x)
    with pytest.raises(dynlrp.NoGraphError):
        dynlrp.explain(out)


def test_integer_output():
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(dynlrp.NoGraphError, match="dtype"):
        dynlrp.explain(_net()(x).argmax(-1))


def test_not_a_tensor():
    with pytest.raises(dynlrp.NoGraphError, match="logits"):
        dynlrp.explain({"logits": torch.randn(2)})


def test_graph_already_backwarded():
    x = torch.randn(2, 4, requires_grad=True)
    out = _net()(x)
    out.sum().backward()
    with pytest.raises(dynlrp.GraphFreedError, match="retain_graph"):
        dynlrp.explain(out, target=0, inputs=[x])


@pytest.mark.parametrize("target", [3, -4, [0, 7], [0], [0, 1, 2]])
def test_target_out_of_range_or_wrong_length(target):
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(dynlrp.TargetError):
        dynlrp.explain(_net()(x), target=target, inputs=[x])


@pytest.mark.parametrize("target", ["cat", 1.5, torch.ones(3, 3), [[0, 1]]])
def test_target_of_wrong_type_or_shape(target):
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(dynlrp.TargetError):
        dynlrp.explain(_net()(x), target=target, inputs=[x])


def test_input_not_requiring_grad():
    x = torch.randn(2, 4)
    out = _net()(x)
    with pytest.raises(dynlrp.InputError, match="requires_grad_"):
        dynlrp.explain(out, target=0, inputs=[x])


def test_input_not_in_graph():
    x = torch.randn(2, 4, requires_grad=True)
    other = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(dynlrp.InputError, match="does not depend"):
        dynlrp.explain(_net()(x), target=0, inputs=[other])


def test_no_input_at_all():
    out = _net()(torch.randn(2, 4))  # only parameters require grad
    with pytest.raises(dynlrp.InputError, match="no explained input"):
        dynlrp.explain(out, target=0)


def _unknown_op_output():
    x = torch.randn(3, 4, requires_grad=True)
    head = nn.Linear(5, 2)  # saves its input, so the unknown op's output is known
    return x, head(torch.special.erfcx(x @ torch.randn(4, 5)))  # SpecialErfcxBackward0


def test_strict_raises_missing_rule_error_with_counts():
    x, out = _unknown_op_output()
    with pytest.raises(dynlrp.MissingRuleError) as info:
        dynlrp.explain(out, inputs=[x], strict=True)
    assert info.value.missing["SpecialErfcxBackward0"][0] == 1
    assert "SpecialErfcxBackward0 x1" in str(info.value)


def test_default_mode_names_the_fallback():
    x, out = _unknown_op_output()
    with pytest.warns(dynlrp.MissingRuleWarning, match="SpecialErfcxBackward0"):
        exp = dynlrp.explain(out, inputs=[x])
    assert exp.fallbacks == {"SpecialErfcxBackward0": 1}
    rows = [row for row in exp.nodes if row.fallback]
    assert [row.node_type for row in rows] == ["SpecialErfcxBackward0"]
    assert rows[0].rule == "fallback:gradient"


def test_missing_rule_error_names_module_paths():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.erfcx(x)

    model = nn.Sequential(nn.Linear(4, 4), Odd(), nn.Linear(4, 2)).eval()
    report = dynlrp.audit(model, torch.randn(1, 4))
    assert report.missing == {"SpecialErfcxBackward0": (1, ["1"])}
    assert report.coverage < 1.0
    assert report.ops["SpecialErfcxBackward0"].covered is False


def test_inplace_modified_saved_tensor():
    x = torch.randn(3, requires_grad=True)
    y = torch.sigmoid(x)  # saves its result
    z = y * 1.0
    y.add_(1.0)  # modifies the saved result in place; backward would fail too
    del z
    out = y.sum()
    with pytest.raises(dynlrp.InplaceModifiedError, match="in place"):
        dynlrp.explain(out, inputs=[x])
