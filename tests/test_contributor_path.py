"""The contributor's path from a red cell to a rule: the audit's missing-node panel (data, JSON, HTML),
``python -m dynlrp new-rule`` (dry run, errors, a real run into a copy of the package) and the
generated conformance test, which fails until the formula is written and passes after."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

import dynlrp
from dynlrp.__main__ import main
from dynlrp.rules import REGISTRY
from dynlrp.scaffold import STUB_MARK, ScaffoldError, example_call, plan_rule, remove_stub, snake_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "audit"))
import harness  # noqa: E402

POOL = "AvgPool2DBackward0"
# unary elementwise ops without a rule today: the identity rule (R_x = R_y) is their correct formula
UNARY_CANDIDATES = ("SpecialErfcxBackward0", "SincBackward0", "AtanBackward0", "SinhBackward0", "AsinhBackward0")


@contextlib.contextmanager
def unregistered(*node_types: str) -> Iterator[None]:
    """The registry without the rules of ``node_types`` inside the block; restored afterwards."""
    rules = {t: REGISTRY.rules.pop(t) for t in node_types}
    sources = REGISTRY.sources & set(node_types)
    REGISTRY.sources -= sources
    try:
        yield
    finally:
        REGISTRY.rules.update(rules)
        REGISTRY.sources |= sources


def _pool_net() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(27, 4)).eval()
    return model, torch.randn(1, 2, 8, 8)


def _uncovered_unary() -> str:
    for name in UNARY_CANDIDATES:
        if name not in REGISTRY.rules and example_call(name) is not None:
            return name
    pytest.skip(f"every candidate of {UNARY_CANDIDATES} has a rule now: add an uncovered unary op")


def _copy_package(dest: Path) -> Path:
    """A checkout with only what the scaffold and the generated test need: dynlrp/ and tests/conftest.py."""
    shutil.copytree(ROOT / "dynlrp", dest / "dynlrp", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", dest / "tests" / "conftest.py")
    return dest


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# -------------------------------------------------------------------------------------------------
# the audit's panel data


def test_unregistered_restores_the_rule():
    info = REGISTRY.rules[POOL]
    with unregistered(POOL):
        assert POOL not in REGISTRY.rules
    assert REGISTRY.rules[POOL] is info


def test_audit_describes_a_missing_node_type():
    model, x = _pool_net()
    with unregistered(POOL):
        report = dynlrp.audit(model, x)
    assert set(report.missing) == {POOL}
    d = report.missing_details[POOL]
    assert (d.node_type, d.count, d.modules) == (POOL, 1, ["1"])
    assert d.inputs == [{"slot": 0, "shape": [1, 3, 6, 6], "dtype": "float32", "from": "ConvolutionBackward0"}]
    assert d.outputs == [{"shape": [1, 3, 3, 3], "dtype": "float32"}]
    assert d.saved_tensors == {"_saved_self": {"shape": [1, 3, 6, 6], "dtype": "float32", "equals": "input 0"}}
    assert d.saved_values["_saved_kernel_size"] == "(2, 2)" and d.saved_values["_saved_ceil_mode"] == "False"
    assert d.opaque is None and d.family == "pooling"
    assert any(n.startswith("AvgPool3DBackward0 (pooling.average)") for n in d.nearest)
    assert d.command == f"python -m dynlrp new-rule {POOL} --family pooling"
    text = d.describe()
    assert "_saved_self: (1, 3, 6, 6) float32 (= input 0)" in text and d.command in text
    assert json.loads(report.to_json())["missing_details"][POOL] == json.loads(json.dumps(asdict(d)))
    assert not dynlrp.audit(model, x).missing_details  # the rule is back


def test_audit_describes_a_custom_function():
    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, factor):
            ctx.factor = factor
            return x * factor

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.factor, None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(Twice.apply(x, 2.0))

    report = dynlrp.audit(Net().eval(), torch.randn(2, 3))
    d = report.missing_details["TwiceBackward"]
    assert d.opaque.endswith("Twice") and d.saved_values["factor"] == "2.0"
    assert "register_decomposition(Twice, reference)" in d.describe()


# -------------------------------------------------------------------------------------------------
# the HTML report


def _pool_result() -> dict:
    model, x = _pool_net()
    case = harness.Case(id="user:pool_net", name="pool_net", size="custom", attn=None, build=lambda: (model, (x,), {}))
    with unregistered(POOL):
        return json.loads(json.dumps(harness.run_case(case), default=float))


def test_report_has_a_panel_per_missing_node_type(tmp_path):
    from reports import render_report

    result = _pool_result()
    index = render_report([result], tmp_path).read_text(encoding="utf-8")
    page = (tmp_path / "user_pool_net.html").read_text(encoding="utf-8")
    for html in (index, page):
        panel = html[html.index(f'<section class="panel" id="missing-{POOL}">'):]
        panel = panel[:panel.index("</section>")]
        for text in (f"<h3>{POOL}: no rule</h3>", "modules: 1.", "<code>_saved_self</code>",
                     "(1, 3, 6, 6) float32 (= input 0)", "<code>_saved_kernel_size</code>", "<code>(2, 2)</code>",
                     "<th>input 0</th><td>(1, 3, 6, 6) float32 from ConvolutionBackward0</td>",
                     "<th>output 0</th><td>(1, 3, 3, 3) float32</td>", "<code>dynlrp/rules/pooling.py</code>",
                     f'<pre class="cmd">python -m dynlrp new-rule {POOL} --family pooling</pre>'):
            assert text in panel, text
    assert f'<a href="#missing-{POOL}">1</a>' in index  # the red cell of the matrix links to its panel
    del result["audit"]["missing_details"]  # a results JSON of an older run: still a panel and a command
    index = render_report([result], tmp_path / "old").read_text(encoding="utf-8")
    assert "no node details" in index and f"python -m dynlrp new-rule {POOL}</pre>" in index


def test_audit_report_html_shows_the_panel(tmp_path):
    model, x = _pool_net()
    with unregistered(POOL):
        report = dynlrp.audit(model, x)
    html = report.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "_saved_self: (1, 3, 6, 6) float32 (= input 0)" in html and "new-rule AvgPool2DBackward0" in html


# -------------------------------------------------------------------------------------------------
# the scaffold


def test_node_names_map_to_op_names():
    assert snake_name("MaxPool2DWithIndicesBackward0") == "max_pool2d_with_indices"
    assert snake_name("Log1PBackward0") == "log1p" and snake_name("Im2ColBackward0") == "im2col"
    assert snake_name("SpecialErfcxBackward0") == "special_erfcx"


def test_example_call_builds_the_node_or_gives_up():
    call = example_call("MaxPool2DWithIndicesBackward0")
    assert call is not None and "max_pool2d_with_indices" in call.call
    assert call.details["saved_tensors"]["_saved_self"]["equals"] == "input 0"
    assert example_call("NoSuchOpAnywhereBackward0") is None


def test_dry_run_prints_and_writes_nothing(capsys):
    name = _uncovered_unary()
    before = {p: p.read_text(encoding="utf-8") for p in (ROOT / "dynlrp" / "rules").glob("*.py")}
    assert main(["new-rule", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    test = f"tests/rules_new/test_rule_{snake_name(name)}.py"
    assert f'+@rule("{name}")' in out and f"+++ b/{test}" in out and "dry run: nothing written" in out
    assert "+    raise NotImplementedError(" in out
    assert not (ROOT / test).exists()
    assert before == {p: p.read_text(encoding="utf-8") for p in (ROOT / "dynlrp" / "rules").glob("*.py")}


@pytest.mark.parametrize("args, message", [
    (["new-rule", "AddmmBackward0"], "already has a rule: addmm in dynlrp/rules/linear.py"),
    (["new-rule", "addmm"], "is not an autograd node type name"),
    (["new-rule", "SpecialErfcxBackward0", "--family", "Bad-Name", "--dry-run"], "bad family"),
    (["new-rule", "SpecialErfcxBackward0", "--root", "/nonexistent", "--dry-run"], "pass --root"),
])
def test_errors_are_named(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_stub_replay_and_saved_values_come_out_again():
    """What the scaffold appends (saved_values, the stub, a replay for an op of tensors only) is what
    ``--force`` takes out before writing it again."""
    name = _uncovered_unary()
    plan = plan_rule(name)
    module = next(c for c in plan.changes if c.path.parent.name == "rules")
    assert f'@replay("{name}")' in module.new and "ctx.input(0)" in module.new
    assert f'saved_values("{name}", inputs={{0: "_saved_self"}}' in module.new
    assert remove_stub(module.new, name) == module.old


def test_new_family_module_is_registered(tmp_path):
    name = _uncovered_unary()
    root = _copy_package(tmp_path)
    plan = plan_rule(name, root=root, family="special_functions")
    texts = {c.path.relative_to(root).as_posix(): c.new for c in plan.changes}
    module = texts["dynlrp/rules/special_functions.py"]
    assert "from ..context import NodeContext" in module and f'@rule("{name}")' in module
    assert "    special_functions,\n" in texts["dynlrp/rules/__init__.py"]
    plan.write()
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(ROOT / "pyproject.toml"),
                           *(str(c.path) for c in plan.changes)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout[-2000:]


def test_generated_test_fails_until_the_formula_is_written(tmp_path):
    """Scaffold into a copy (``--root``), see the generated test fail, write the identity formula and
    its reference (what a contributor writes), see it pass."""
    name = _uncovered_unary()
    root = _copy_package(tmp_path)
    done = _run(["-m", "dynlrp", "new-rule", name, "--root", str(root)], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    test = root / "tests" / "rules_new" / f"test_rule_{snake_name(name)}.py"
    module = root / "dynlrp" / "rules" / "activation.py"
    assert test.exists() and f'@rule("{name}")' in module.read_text(encoding="utf-8")
    assert f'@rule("{name}")' not in (ROOT / "dynlrp" / "rules" / "activation.py").read_text(encoding="utf-8")
    with pytest.raises(ScaffoldError, match="scaffolded already"):
        plan_rule(name, root=root)
    forced = plan_rule(name, root=root, force=True)
    assert next(c.new for c in forced.changes if c.path == module).count(f'@rule("{name}")') == 1

    failed = _run(["-m", "pytest", str(test), "-q", "-p", "no:cacheprovider"], cwd=root)
    assert failed.returncode == 1 and "2 failed, 2 passed" in failed.stdout, failed.stdout[-3000:]
    assert "NotImplementedError: the float64 reference" not in failed.stdout  # the rule fails first
    assert f"the {name} rule is not written yet" in failed.stdout

    source = module.read_text(encoding="utf-8")
    stub = source[source.index(f'@rule("{name}")'):]
    written = re.sub(r'""".*?"""', '"""Pass-through: ``R_x = R_y``. Exact; nothing absorbed."""', stub, count=1,
                     flags=re.S)
    written = written[:written.index("    raise NotImplementedError(")] + "    return RuleResult((relevance[0],))\n"
    module.write_text(source.replace(stub, written), encoding="utf-8")
    reference = test.read_text(encoding="utf-8")
    test.write_text(re.sub(r"    raise NotImplementedError\(f\"write the float64 reference.*?\n",
                           "    return (r0,), {}\n", reference), encoding="utf-8")

    passed = _run(["-m", "pytest", str(test), "-q", "-p", "no:cacheprovider"], cwd=root)
    assert passed.returncode == 0 and "4 passed" in passed.stdout, passed.stdout[-3000:]
    assert STUB_MARK not in module.read_text(encoding="utf-8")
