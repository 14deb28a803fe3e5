"""The benchmark runners' plumbing on tiny models: tables, ratios, medians, CSV round trip, the memory
probe and the switchable LXT patches. No timing assertions (timings on a shared CI machine are noise)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import scaling, speed

METHODS = "forward,fwd_bwd,dynlrp:epsilon,zennit:epsilon"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    threads = torch.get_num_threads()
    try:
        rows = speed.main(["--models", "vgg16", "--size", "tiny", "--repeats", "1", "--methods", METHODS,
                           "--memory", "none", "--lxt-python", "none", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # --threads sets it process-wide
    return out, rows


def test_csv_and_markdown_columns(run):
    out, rows = run
    with open(out / "speed.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == speed.COLUMNS
        lines = list(reader)
    assert [line["method"] for line in lines] == METHODS.split(",")
    assert speed.read_csv(out / "speed.csv") == rows  # the round trip the LXT-env merge relies on
    text = (out / "speed.md").read_text()
    assert text.startswith("| " + " | ".join(speed.SUMMARY_HEADER) + " |")
    with open(out / "speed_summary.csv", newline="") as handle:
        (entry,) = list(csv.DictReader(handle))
    assert entry["model"] == "vgg16" and entry["preset"] == "epsilon"
    for key in ("dynlrp/fwd_bwd", "dynlrp/zennit", "dynlrp_first_s"):
        assert float(entry[key]) > 0, key
    assert entry["dynlrp/lxt"] == entry["peak_dynlrp_mib"] == ""  # no LXT env, no memory probes in this run


def test_rows_medians_and_ratios(run):
    _, rows = run
    by_method = {row.method: row for row in rows}
    for row in rows:
        assert row.status == "ok", (row.method, row.status)
        assert row.repeats == 1 and row.median_s == row.min_s > 0 and row.first_s > 0
        assert row.nodes > 0 and row.input == "1x3x28x28"
    base = by_method["fwd_bwd"].median_s
    assert by_method["fwd_bwd"].ratio_fwd_bwd == pytest.approx(1.0)
    assert by_method["dynlrp:epsilon"].ratio_fwd_bwd == pytest.approx(by_method["dynlrp:epsilon"].median_s / base)


@pytest.mark.parametrize("choice", ["default", "steady"])
def test_allocator_settings_reach_the_timing_process(tmp_path, choice):
    """``--allocator steady`` runs the benchmark again with glibc's settings in its environment (glibc
    reads them at start-up only); the default leaves the environment as it is."""
    env = {k: v for k, v in os.environ.items() if k not in speed.STEADY_ALLOCATOR}
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--allocator", choice, "--models", "vgg16",
                           "--size", "tiny", "--repeats", "1", "--methods", "forward", "--memory", "none",
                           "--lxt-python", "none", "--threads", "1", "--out", str(tmp_path)],
                          cwd=speed.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "allocator: steady (MALLOC_" if choice == "steady" else "allocator: glibc default"
    assert expected in done.stdout
    assert (tmp_path / "speed.csv").exists()


def test_timing_medians_and_failures():
    case = speed.build_case("vgg16", size="tiny", count_nodes=False)
    results = speed.measure(case, ["forward", "zennit:nope"], repeats=3)
    assert len(results["forward"].times) == 3
    assert results["forward"].median == sorted(results["forward"].times)[1]
    assert results["zennit:nope"].status.startswith("n/a")
    summary = speed.markdown(speed.rows_for(case.info, "main", results))
    assert "zennit:nope" in summary and "n/a" in summary


def test_peak_rss_increase_sees_an_allocation():
    def allocate():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        return float(block[-1])

    peak, how = speed.peak_rss_increase(allocate, calls=1)
    assert how in ("VmHWM", "sampled")
    assert peak > 48


def test_lxt_patches_switch_class_attributes():
    class Layer:
        def forward(self):
            return "original"

    def patch():
        Layer.forward = lambda self: "patched"
        Layer.original_forward = "kept"

    patches = speed.LxtPatches([Layer], patch)
    assert Layer().forward() == "original" and not hasattr(Layer, "original_forward")
    with patches.active():
        assert Layer().forward() == "patched" and Layer.original_forward == "kept"
    assert Layer().forward() == "original" and not hasattr(Layer, "original_forward")


def test_scaling_fit_and_table():
    intercept, slope, r2 = scaling.fit([1, 2, 4, 8], [1.5, 2.0, 3.0, 5.0])
    assert intercept == pytest.approx(1.0) and slope == pytest.approx(0.5) and r2 == pytest.approx(1.0)
    assert scaling.fit([1, 2], [1.0, 2.0]) is None
    points = [scaling.Point(layers, 16, 1, nodes=10 + 20 * layers, fwd_bwd_s=0.01 * layers, dynlrp_s=0.02 * layers)
              for layers in (1, 2, 4)]
    rows = scaling.table(points)
    assert len(rows) == 3 and all(len(r) == len(scaling.HEADER) for r in rows)
    assert rows[0][scaling.HEADER.index("dynlrp/(fwd+bwd)")] == "2"
    assert any(line.startswith("- depth, dynlrp") for line in scaling.analysis(points, (1, 16, 1)))


def test_plans_benchmark_reuses_one_plan_and_changes_nothing(tmp_path):
    """``benchmarks.plans``: every timed call with the cache reads the plan the first call built, and
    the relevance is the same with and without it."""
    from benchmarks import plans

    (result,) = plans.main(["--models", "gpt2", "--size", "tiny", "--tokens", "8", "--repeats", "2",
                            "--out", str(tmp_path)])
    assert result.hits == 2 and result.max_diff == 0.0 and result.promises > 0
    assert result.none_s > 0 and result.plan_s > 0
    table = (tmp_path / "plans.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| gpt2 | tiny |")
