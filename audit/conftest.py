"""pytest plugin of the audit: options, one parametrized case per model, results and the report.

    pytest audit --model-zoo all [--zoo-size tiny|full] [--model pkg.mod:factory] [--rules PRESET]
                 [--report-dir DIR] [--baseline FILE] [-n 2]

Under pytest-xdist every worker audits its models and hands its results to the controller
(``workeroutput``), which writes the JSON and the HTML report once at the end.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness

_RESULTS_KEY = "dynlrp_audit_results"


def pytest_addoption(parser):
    group = parser.getgroup("dynlrp audit")
    group.addoption("--model-zoo", default=None, help="zoo selection: 'all', names or tags, comma separated")
    group.addoption("--zoo-size", default="tiny", choices=("tiny", "full"))
    group.addoption("--model", action="append", default=[], help="a user's model: package.module:factory")
    group.addoption("--rules", default="epsilon", help="dynlrp preset name")
    group.addoption("--report-dir", default="reports/output", help="where the JSON and HTML go")
    group.addoption("--baseline", default=None, help="a results JSON of an earlier run to compare against")
    group.addoption("--tolerance", type=float, default=1e-4,
                    help="largest per-node unexplained error, relative to the node's flow (sum |R|)")


def _cases(config):
    cases = [harness.factory_case(spec) for spec in config.getoption("--model")]
    selection = config.getoption("--model-zoo")
    if selection is None and not cases:
        selection = "all"
    if selection:
        cases += harness.zoo_cases(selection, config.getoption("--zoo-size"))
    return cases


def pytest_configure(config):
    config._dynlrp_results = {}
    config._dynlrp_cases = {case.id: case for case in _cases(config)}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = list(metafunc.config._dynlrp_cases.values())
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(config, items):
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(case.id))


@pytest.fixture
def result(request, case):
    """The audit of ``case``, computed once per process and shared by its tests."""
    store = request.config._dynlrp_results
    if case.id not in store:
        store[case.id] = harness.run_case(case, rules=request.config.getoption("--rules"))
    return store[case.id]


def pytest_testnodedown(node, error):
    results = getattr(node, "workeroutput", {}).get(_RESULTS_KEY)
    if results:
        node.config._dynlrp_results.update(json.loads(results))


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: hand results to the controller
        config.workeroutput[_RESULTS_KEY] = json.dumps(config._dynlrp_results, default=float)
        return
    results = list(config._dynlrp_results.values())
    if not results:
        return
    out = Path(config.getoption("--report-dir"))
    json_path = harness.write_results(results, out)
    baseline = config.getoption("--baseline")
    lines = harness.regressions(results, Path(baseline)) if baseline else []
    from reports import render_report

    index = render_report(results, out, lines)
    config._dynlrp_summary = (json_path, index, results, lines)


def pytest_terminal_summary(terminalreporter, config):
    summary = getattr(config, "_dynlrp_summary", None)
    if summary is None:
        return
    json_path, index, results, lines = summary
    audited = [r for r in results if r["audit"]]
    nodes = sum(r["audit"]["nodes"] for r in audited)
    covered = sum(r["audit"]["coverage"] * r["audit"]["nodes"] for r in audited)
    terminalreporter.section("dynlrp audit")
    terminalreporter.write_line(f"{len(results)} models, {len(audited)} audited, {nodes} nodes, "
                                f"coverage {covered / nodes if nodes else 0:.4f}")
    for line in lines:
        terminalreporter.write_line(f"regression: {line}")
    terminalreporter.write_line(f"results: {json_path}")
    terminalreporter.write_line(f"report:  {index}")
