"""The audit harness end to end: `pytest audit --model ...` runs, records failures, merges xdist
workers, writes JSON and an escaped HTML report that a real browser renders."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

USER_MODELS = textwrap.dedent('''
    import torch, torch.nn as nn

    def cnn():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
        return model, (torch.randn(1, 3, 12, 12),)

    def text():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(40, 2))
        return model, (torch.tensor([[1, 5, 7, 2, 3]]),)

    def unknown_op():
        class Odd(nn.Module):
            def forward(self, x):
                return torch.special.erfcx(x)
        return nn.Sequential(nn.Linear(4, 4), Odd(), nn.Linear(4, 2)), (torch.randn(1, 4),)

    def broken():
        raise RuntimeError("<script>alert('x')</script> cannot be built")

    class Crashes(nn.Module):
        def forward(self, x):
            raise ValueError("forward fails on purpose")

    def crashing_forward():
        return Crashes(), (torch.randn(1, 4),)
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("audit")
    (work / "user_models.py").write_text(USER_MODELS)
    out = work / "report"
    env = {"PYTHONPATH": str(work), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    specs = ["user_models:cnn", "user_models:text", "user_models:unknown_op", "user_models:broken",
             "user_models:crashing_forward"]
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "audit"), "-q", "-n", "2", "--report-dir", str(out)]
    for spec in specs:
        cmd += ["--model", spec]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env})
    return proc, out


def test_exit_code_and_failures_are_per_model(run):
    proc, _ = run
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "test_every_node_has_a_rule[user_models:unknown_op]" in proc.stdout
    assert "test_builds[user_models:broken]" in proc.stdout
    assert "test_builds[user_models:cnn]" not in proc.stdout  # passed, so not in the failure summary
    assert "coverage" in proc.stdout


def test_results_json_merges_all_workers(run):
    _, out = run
    data = json.loads((out / "latest.json").read_text())
    by_id = {r["id"]: r for r in data["results"]}
    assert set(by_id) == {"user_models:cnn", "user_models:text", "user_models:unknown_op", "user_models:broken",
                          "user_models:crashing_forward"}
    assert by_id["user_models:broken"]["status"] == "build_error"
    assert by_id["user_models:crashing_forward"]["status"] == "forward_error"
    assert "forward fails on purpose" in by_id["user_models:crashing_forward"]["error"]
    assert by_id["user_models:cnn"]["audit"]["coverage"] == 1.0
    assert by_id["user_models:unknown_op"]["audit"]["missing"]["SpecialErfcxBackward0"]["count"] == 1
    assert by_id["user_models:text"]["picture"]["kind"] == "tokens"
    assert by_id["user_models:cnn"]["picture"]["kind"] == "image"
    assert len(list(out.glob("results-*.json"))) == 1


def test_baseline_marks_regressions(run, tmp_path):
    sys.path.insert(0, str(ROOT / "audit"))
    import harness

    _, out = run
    data = json.loads((out / "latest.json").read_text())
    old = json.loads(json.dumps(data))
    for r in old["results"]:
        if r["audit"]:
            r["audit"]["missing"] = {}
            for stats in r["audit"]["ops"].values():
                stats["max_error"] = 0.0
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(old))
    lines = harness.regressions(data["results"], baseline)
    assert any("SpecialErfcxBackward0 has no rule any more" in line for line in lines)
    assert not harness.regressions(data["results"], out / "latest.json")


def test_report_escapes_names(run):
    _, out = run
    pages = [p.read_text() for p in out.glob("*.html")]
    assert pages and all("<script>alert" not in page for page in pages)
    assert any("&lt;script&gt;alert" in page for page in pages)
    assert all("http://" not in page and "https://" not in page for page in pages)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (CI installs the Debian package)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    _, out = run
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "index.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900",
                    (out / "index.html").as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", (out / "user_models_cnn.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Conservation" in dom and "ConvolutionBackward0" in dom and "relevance heatmap" in dom
    index = subprocess.run([CHROMIUM, *flags, "--dump-dom", (out / "index.html").as_uri()],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "SpecialErfcxBackward0" in index and "build_error" in index
