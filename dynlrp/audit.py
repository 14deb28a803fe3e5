"""``dynlrp.audit``: run a model, explain it, and report rule coverage and conservation per op."""
from __future__ import annotations

import gc
import html
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from .engine import explain
from .errors import DynLRPError, MissingRuleWarning, MissingValueError, TrainModeWarning
from .explanation import Explanation
from .graph import Graph, node_type
from .modules import track_modules
from .record import Recording, record
from .rules import REGISTRY
from .scaffold import describe_lines, describe_node, nearest_rules, scaffold_command, suggest_family
from .values import ValueStore


@dataclass
class OpStats:
    """Per node type: how many nodes, which rule, covered or not, unexplained error, absorbed share."""

    count: int
    rule: str | None
    covered: bool
    max_error: float = 0.0
    mean_error: float = 0.0
    absorbed: dict[str, float] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    max_flow_error: float = 0.0  # largest |in - out - absorbed| / flow: rounding-scale error (low precision)


@dataclass
class ActivationCheck:
    """Promise-recovered forward values against the values recorded during the forward."""

    checked: int
    max_error: float
    unavailable: dict[str, int]


@dataclass
class MissingNode:
    """A node type without a rule, seen on its first node: what a new rule can read and how to add one.

    ``inputs``, ``outputs``, ``saved_tensors`` (``_saved_*`` shapes and dtypes), ``saved_values``
    (the other saved attributes) and ``opaque`` (a custom Function's class): see
    :func:`dynlrp.scaffold.describe_node`. ``family``: the nearest rule family
    (``dynlrp/rules/<family>.py``), ``family_reason`` why; ``nearest``: registered node types with
    close names and their rules; ``command``: the command that scaffolds the rule and its test.
    """

    node_type: str
    count: int
    modules: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    saved_tensors: dict[str, Any]
    saved_values: dict[str, str]
    opaque: str | None
    family: str
    family_reason: str
    nearest: list[str]
    command: str

    def describe(self) -> str:
        """The report's panel as text."""
        where = ", ".join(self.modules[:5]) + (f" (+{len(self.modules) - 5})" if len(self.modules) > 5 else "")
        lines = [f"{self.node_type}: no rule, {self.count} node(s) in {where or '<unknown module>'}",
                 *describe_lines(vars(self)),
                 f"nearest rule family: {self.family} (dynlrp/rules/{self.family}.py; {self.family_reason})"]
        lines += [f"nearest rules: {', '.join(self.nearest)}"] if self.nearest else []
        lines.append(f"scaffold: {self.command}")
        return "\n".join(lines)


@dataclass
class AuditReport:
    model: str
    coverage: float
    nodes: int
    missing: dict[str, tuple[int, list[str]]]
    ops: dict[str, OpStats]
    conservation: dict[str, Any] | None
    promises: dict[str, float] | None
    activations: ActivationCheck | None
    backward_ok: bool | None
    error: str | None = None
    needs_record: str | None = None
    record_values: list[str] = field(default_factory=list)  # what record() must keep: "NodeType input k at module"
    paths_agree: float | None = None  # max |post hoc - recorded| / max |recorded| of the input relevance
    record_nbytes: int = 0  # bytes the plain record() block kept (shared storages such as parameters included)
    freed_agrees: float | None = None  # the same, explained with retain_graph=False (saved tensors freed behind)
    cycles: int | None = None  # objects in reference cycles that explanation left behind (gc.collect() after it)
    missing_details: dict[str, MissingNode] = field(default_factory=dict)  # panel data per missing node type
    explanation: Explanation | None = field(default=None, repr=False, compare=False)

    @property
    def posthoc_exact(self) -> bool:
        """Whether the graph alone holds every value the rules need (no ``record()`` needed)."""
        return self.needs_record is None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the :class:`Explanation` and its tensors are left out)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "explanation"}
        data["ops"] = {k: asdict(v) for k, v in self.ops.items()}
        data["activations"] = asdict(self.activations) if self.activations else None
        data["missing"] = {k: {"count": c, "modules": p} for k, (c, p) in self.missing.items()}
        data["missing_details"] = {k: asdict(v) for k, v in self.missing_details.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def to_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML page (no network, every name escaped)."""
        esc = html.escape
        rows = "".join(
            f"<tr class='{'ok' if s.covered else 'missing'}'><td>{esc(op)}</td><td>{s.count}</td>"
            f"<td>{esc(s.rule or 'MISSING')}</td><td>{s.max_error:.2e}</td><td>{s.mean_error:.2e}</td>"
            f"<td>{esc(', '.join(f'{k}: {v:.3g}' for k, v in s.absorbed.items()))}</td>"
            f"<td>{esc(', '.join(s.modules[:5]))}</td></tr>"
            for op, s in sorted(self.ops.items(), key=lambda kv: (kv[1].covered, -kv[1].count)))
        summary = (f"<p>coverage {self.coverage:.4f} of {self.nodes} nodes; "
                   f"{len(self.missing)} node types without a rule</p>")
        if self.error:
            summary += f"<p class='missing'>error: {esc(self.error)}</p>"
        summary += "".join(f"<pre class='missing'>{esc(d.describe())}</pre>" for d in self.missing_details.values())
        if self.conservation:
            summary += f"<pre>{esc(json.dumps(self.conservation, indent=1))}</pre>"
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dynlrp audit: "
            f"{esc(self.model)}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px}}"
            ".missing{background:#fdd}.ok{background:#efe}</style></head><body>"
            f"<h1>{esc(self.model)}</h1>{summary}<table><tr><th>node type</th><th>count</th><th>rule</th>"
            "<th>max error</th><th>mean error</th><th>absorbed</th><th>modules</th></tr>"
            f"{rows}</table></body></html>")
        path = Path(path)
        path.write_text(page, encoding="utf-8")
        return path


def pick_output(result: Any) -> torch.Tensor:
    """The tensor to explain: a tensor itself, else ``.logits``, else the first floating tensor."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = result.values() if isinstance(result, Mapping) else result
    for leaf in tree_leaves(list(values) if isinstance(values, Mapping) or hasattr(values, "__iter__") else [values]):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.grad_fn is not None:
            return leaf
    raise DynLRPError(f"cannot find an output tensor with a graph in {type(result).__name__}; pass output=...")


def check_activations(graph: Graph, recording: Recording) -> ActivationCheck:
    """Recover every recorded node output post hoc (no recording) and compare with the recording."""
    store = ValueStore(graph, REGISTRY, recording=None)
    worst, checked, unavailable = 0.0, 0, {}
    for node in graph.order:
        for nr in range(len(node._input_metadata)):
            expected = recording.output(node, nr)
            if expected is None or expected.numel() == 0:
                continue
            try:
                got = store.output_value(node, nr)
            except DynLRPError:
                unavailable[node_type(node)] = unavailable.get(node_type(node), 0) + 1
                continue
            scale = expected.detach().abs().max().item() or 1.0
            worst = max(worst, (got.to(expected.dtype) - expected).abs().max().item() / scale)
            checked += 1
    return ActivationCheck(checked, worst, unavailable)


def _op_stats(graph: Graph, paths: Mapping, exp: Explanation | None) -> dict[str, OpStats]:
    ops: dict[str, OpStats] = {}
    for node in graph.order:
        name = node_type(node)
        info = REGISTRY.rules.get(name)
        stats = ops.setdefault(name, OpStats(0, info.name if info else None, info is not None))
        stats.count += 1
        path = paths.get(node)
        if path and path not in stats.modules:
            stats.modules.append(path)
    if exp is not None:
        errors: dict[str, list[float]] = {}
        for row in exp.nodes:
            errors.setdefault(row.node_type, []).append(row.error)
            stats = ops[row.node_type]
            stats.max_flow_error = max(stats.max_flow_error, row.flow_error)
            for cause, value in row.absorbed.items():
                stats.absorbed[cause] = stats.absorbed.get(cause, 0.0) + value
        for name, errs in errors.items():
            ops[name].max_error, ops[name].mean_error = max(errs), sum(errs) / len(errs)
    return ops


def _agreement(posthoc: Explanation, recorded: Explanation, inputs: list[torch.Tensor]) -> float:
    """Largest difference of the two paths' relevance (inputs and tokens), relative to its scale."""
    pairs = [(posthoc.relevance(t), recorded.relevance(t)) for t in inputs]
    pairs += [(a.relevance, b.relevance) for a, b in zip(posthoc.tokens, recorded.tokens)]
    scale = max((b.abs().max().item() for _, b in pairs if b.numel()), default=0.0)
    diff = max(((a - b).abs().max().item() for a, b in pairs if a.numel()), default=0.0)
    return diff / scale if scale else diff


def missing_nodes(graph: Graph, ops: Mapping[str, OpStats],
                  value: Callable[[Any, int], torch.Tensor | None] | None = None) -> dict[str, MissingNode]:
    """A :class:`MissingNode` per node type without a rule, described from its first node;
    ``value(node, output_nr)`` gives forward values (a recording) to match saved tensors against."""
    details: dict[str, MissingNode] = {}
    for node in graph.order:
        name = node_type(node)
        if ops[name].covered or name in details:
            continue
        info = describe_node(node, value)
        family, reason = suggest_family(name, info["inputs"], info["outputs"])
        nearest = [f"{t} ({REGISTRY.rules[t].family}.{REGISTRY.rules[t].name})" for t in nearest_rules(name)]
        details[name] = MissingNode(name, ops[name].count, list(ops[name].modules), **info, family=family,
                                    family_reason=reason, nearest=nearest, command=scaffold_command(name, family))
    return details


def audit(model: torch.nn.Module, *args: Any, target: Any = None, rules: Any = "epsilon",
          output: Callable[[Any], torch.Tensor] | None = None, name: str | None = None,
          **kwargs: Any) -> AuditReport:
    """Run ``model(*args, **kwargs)`` and audit the explanation of its output.

    Floating-point tensor arguments are explained (a copy that requires grad is fed in); integer
    arguments (token ids) reach the relevance through embedding lookups. Reports node coverage, the
    missing rules with module paths, per-op conservation, promise statistics, promise-recovered
    activations against the recorded forward, and whether ``backward()`` still works afterwards.
    Both paths are run: post hoc (graph only) and from a plain ``record()`` of the forward. Where the
    graph lacks a value, ``needs_record`` says so and ``record_values`` lists each one (node, operand,
    module); where both run, ``paths_agree`` is their largest relative difference; ``freed_agrees``:
    the same against ``explain(..., retain_graph=False)``, run last (it frees the graph); ``cycles``: the
    objects in reference cycles that this last explanation left for the garbage collector (none is
    expected: ``explain`` pauses the collector). The explanation returned is the post-hoc one where
    that is exact, else the recorded one.
    """
    label = name or type(model).__name__
    if any(module.training for module in model.modules()):
        warnings.warn(f"{label} is in train mode (dropout, batch statistics); the audit explains that forward."
                      " Call model.eval() to audit the model as deployed", TrainModeWarning, stacklevel=2)
    args = tuple(a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    kwargs = {k: v.detach().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.requires_grad]
    with record(outputs=True) as recording, track_modules(model) as paths:
        result = model(*args, **kwargs)
    out = output(result) if output is not None else pick_output(result)
    graph = Graph.build(out.grad_fn)
    ops = _op_stats(graph, paths, None)
    missing = {op: (s.count, s.modules) for op, s in ops.items() if not s.covered}
    coverage = sum(s.count for s in ops.values() if s.covered) / len(graph)
    missing_details = missing_nodes(graph, ops, recording.output)
    exp, error, needs_record, record_values, agree = None, None, None, [], None
    plain = recording.without_outputs()  # what a user's record() holds: the values the graph lacks
    with warnings.catch_warnings():  # the report lists missing rules itself
        warnings.simplefilter("ignore", MissingRuleWarning)
        try:
            exp = explain(out, target, rules=rules, inputs=inputs or None, module_paths=paths, recording=False)
        except MissingValueError as err:
            needs_record = str(err)
            record_values = [m.line().strip() for m in err.missing] or [str(err)]
        except DynLRPError as err:
            error = f"{type(err).__name__}: {err}"
        if error is None:
            try:
                recorded = explain(out, target, rules=rules, inputs=inputs or None, module_paths=paths,
                                   recording=plain)
                agree = _agreement(exp, recorded, inputs) if exp is not None else None
                exp = exp or recorded
            except DynLRPError as err:
                error = f"{type(err).__name__} (inside record()): {err}"
    activations = check_activations(graph, recording)
    record_nbytes = plain.nbytes
    backward_ok = None
    try:
        out.sum().backward(retain_graph=True)
        backward_ok = True
    except RuntimeError as err:
        backward_ok, error = False, error or f"backward after explain failed: {err}"
    freed_agrees = cycles = None
    if exp is not None and backward_ok:  # last: it frees the graph
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingRuleWarning)
            try:
                gc.collect()
                freed = explain(out, target, rules=rules, inputs=inputs or None, module_paths=paths,
                                recording=plain if needs_record else False, retain_graph=False)
                cycles = gc.collect()  # what the sweep, run with the collector paused, left to it
                freed_agrees = _agreement(freed, exp, inputs)
            except DynLRPError as err:
                error = error or f"{type(err).__name__} (retain_graph=False): {err}"
    recording.clear()
    return AuditReport(
        model=label, coverage=coverage, nodes=len(graph), missing=missing,
        ops=_op_stats(graph, paths, exp),
        conservation=asdict(exp.conservation) if exp else None,
        promises=({**asdict(exp.promises), "rho": exp.promises.rho} if exp else None),
        activations=activations, backward_ok=backward_ok, error=error, needs_record=needs_record,
        record_values=record_values, paths_agree=agree, record_nbytes=record_nbytes, freed_agrees=freed_agrees,
        cycles=cycles,
        missing_details=missing_details, explanation=exp)
