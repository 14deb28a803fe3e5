"""Documentation that cannot rot: docs/rules.md against the live registry, and the README's worked
example of auditing one's own model, run as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dynlrp import rulesdoc
from dynlrp.__main__ import main
from dynlrp.rules import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- readme-test(?:: (?P<file>\S+))? -->\n```python\n(?P<code>.*?)```", re.S)


def _python(args: list[str], cwd: Path, path: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_rules_doc_is_up_to_date():
    """Read in a fresh interpreter: other test modules register decompositions in this one's registry."""
    done = _python(["-m", "dynlrp", "rules-doc", "--check"], ROOT, [ROOT])
    assert done.returncode == 0, done.stderr[-3000:]


def test_rules_doc_check_names_the_fix(tmp_path, capsys):
    stale = tmp_path / "rules.md"
    stale.write_text("# Rules reference\n", encoding="utf-8")
    assert main(["rules-doc", "--check", "--output", str(stale)]) == 1
    assert "regenerate it with `python -m dynlrp rules-doc`" in capsys.readouterr().err
    assert main(["rules-doc", "--output", str(stale)]) == 0
    assert main(["rules-doc", "--check", "--output", str(stale)]) == 0


def test_rules_doc_covers_the_registry_and_the_presets():
    text = rulesdoc.render()
    for node_type, info in REGISTRY.rules.items():
        assert f"| `{node_type}` | `{info.family}.{info.name}` |" in text
    conv = text[text.index("### `linear.convolution`"):]
    conv = conv[:conv.index("\n### ")]
    assert "- `epsilon_gamma_box`: gamma(0.25); first layer: zbox(0.0, 1.0)" in conv
    assert "- `dynamiclrp_vit`: gamma(130)" in conv and "`cp_lrp`" not in conv
    assert REGISTRY.rules["ReluBackward0"].doc in text


@pytest.mark.parametrize("node_type, reads", [
    ("AddmmBackward0", {"linear", "attention", "epsilon"}),
    ("ConvolutionBackward0", {"linear"}),
    ("ReluBackward0", set()),
    ("AvgPool2DBackward0", {"epsilon"}),
    ("MkldnnRnnLayerBackward0", {"preset"}),
])
def test_what_a_rule_reads_from_the_preset(node_type, reads):
    assert rulesdoc.preset_fields(REGISTRY.rules[node_type].fn) == reads


def test_readme_example_runs(tmp_path):
    """The README's ``<!-- readme-test -->`` blocks, in order, in a fresh interpreter; a block marked
    ``<!-- readme-test: name.py -->`` is written to that file first. The factory is also checked the
    way ``pytest audit --model mymodel:factory`` calls it."""
    blocks = list(MARKER.finditer((ROOT / "README.md").read_text(encoding="utf-8")))
    files = [m for m in blocks if m["file"]]
    assert files and len(blocks) > len(files), "the README lost its tested example"
    for m in files:
        (tmp_path / m["file"]).write_text(m["code"], encoding="utf-8")
    script = "\n".join(m["code"] for m in blocks if not m["file"])
    script += ("\nimport harness\n"
               "result = harness.run_case(harness.factory_case('mymodel:factory'))\n"
               "assert result['status'] == 'ok' and result['audit']['coverage'] == 1.0, result\n")
    (tmp_path / "readme_example.py").write_text(script, encoding="utf-8")
    done = _python(["readme_example.py"], tmp_path, [tmp_path, ROOT, ROOT / "audit"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ScaleBackward: no rule" in done.stdout and "scaffold: python -m dynlrp new-rule" in done.stdout
