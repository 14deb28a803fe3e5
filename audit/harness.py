"""The audit harness: which models to audit, running one audit, results as JSON, baselines.

One *case* is a model (a zoo entry or a user's factory) at one size and attention implementation.
``run_case`` builds it, runs ``dynlrp.audit`` (which runs the forward, explains, checks promises
against the recorded forward and backpropagates afterwards) and returns a JSON-ready dict; a
failure to build or run is recorded in that dict, never raised.
"""
from __future__ import annotations

import importlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import dynlrp


@dataclass
class Case:
    id: str
    name: str
    size: str
    attn: str | None
    build: Callable[[], tuple]
    output: Callable[[Any], torch.Tensor] | None = None
    family: str = ""
    modality: str = ""
    tags: tuple[str, ...] = ()
    paper_nodes: int | None = None
    known_gaps: dict[str, str] = field(default_factory=dict)


def zoo_cases(selection: str, size: str) -> list[Case]:
    """Cases for the zoo entries matched by ``selection`` (``all``, names, tags), every attention variant."""
    import model_zoo

    cases = []
    for entry in model_zoo.select(selection):
        for attn in entry.attn or (None,):
            case_id = f"{entry.name}[{attn}]" if attn else entry.name
            cases.append(Case(
                id=case_id, name=entry.name, size=size, attn=attn,
                build=lambda entry=entry, attn=attn: entry.build(size=size, attn=attn),
                output=entry.output, family=entry.family, modality=entry.modality, tags=tuple(entry.tags),
                paper_nodes=entry.paper_nodes, known_gaps=dict(getattr(entry, "known_gaps", {}) or {})))
    return cases


def factory_case(spec: str) -> Case:
    """A case for ``package.module:factory``; the factory returns ``(model, args)`` or ``(model, args, kwargs)``."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--model needs 'package.module:factory', got {spec!r}")

    def build():
        made = getattr(importlib.import_module(module_name), attr)()
        model, args, kwargs = (made + ({},))[:3] if len(made) == 2 else made
        args = args if isinstance(args, (tuple, list)) else (args,)
        return model.eval(), tuple(args), dict(kwargs)

    return Case(id=spec, name=attr, size="custom", attn=None, build=build)


def picture(exp: dynlrp.Explanation | None, modality: str) -> dict[str, Any] | None:
    """What the report draws: tokens with relevance, an image heatmap, or a curve over time."""
    if exp is None:
        return None
    if exp.tokens:
        first = exp.tokens[0]
        ids, rel = first.ids.reshape(-1, first.ids.shape[-1])[0], first.relevance.reshape(-1, first.ids.shape[-1])[0]
        return {"kind": "tokens", "tokens": [[int(i), float(v)] for i, v in zip(ids.tolist(), rel.tolist())]}
    for tensor in exp.inputs:
        rel = exp.relevance(tensor).detach().double()[0] if tensor.dim() > 1 else exp.relevance(tensor).double()
        if rel.dim() == 3 and modality != "audio":  # (channels, height, width)
            image = torch.nn.functional.adaptive_avg_pool2d(rel.sum(0, keepdim=True), (min(64, rel.shape[1]),
                                                                                       min(64, rel.shape[2])))
            return {"kind": "image", "values": image[0].tolist()}
        if rel.dim() >= 1:
            time_dim = max(range(rel.dim()), key=lambda d: rel.shape[d])
            curve = rel.movedim(time_dim, 0).reshape(rel.shape[time_dim], -1).sum(1)
            bins = min(200, curve.numel())
            curve = torch.nn.functional.adaptive_avg_pool1d(curve.view(1, 1, -1), bins).view(-1)
            return {"kind": "curve", "values": curve.tolist()}
    return None


def run_case(case: Case, rules: str = "epsilon") -> dict[str, Any]:
    """Build and audit one case; every failure is recorded in the result, none is raised."""
    result: dict[str, Any] = {"id": case.id, "name": case.name, "size": case.size, "attn": case.attn,
                              "family": case.family, "modality": case.modality, "tags": list(case.tags),
                              "paper_nodes": case.paper_nodes, "known_gaps": case.known_gaps, "rules": rules,
                              "status": "ok", "error": None, "audit": None, "picture": None}
    start = time.perf_counter()
    try:
        model, args, kwargs = case.build()
    except Exception as err:  # a model that fails to build is a result, not a crash
        result.update(status="build_error", error=_describe(err))
    else:
        try:
            report = dynlrp.audit(model, *args, rules=rules, output=case.output, name=case.id, **kwargs)
        except dynlrp.DynLRPError as err:  # the forward ran; dynlrp could not audit it
            result.update(status="audit_error", error=_describe(err))
        except Exception as err:
            result.update(status="forward_error", error=_describe(err))
        else:
            result["audit"] = report.to_dict()
            result["picture"] = picture(report.explanation, case.modality)
            if report.error:
                result.update(status="audit_error", error=report.error)
        del model
    result["seconds"] = time.perf_counter() - start
    return result


def _describe(err: BaseException) -> str:
    tail = traceback.format_exception(type(err), err, err.__traceback__)[-3:]
    return f"{type(err).__name__}: {err}\n" + "".join(tail)


def write_results(results: list[dict[str, Any]], report_dir: Path) -> Path:
    """``results-<UTC time>.json`` (one per run) and ``latest.json`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = json.dumps({"torch": torch.__version__, "dynlrp": dynlrp.__version__, "results": results},
                         indent=1, sort_keys=True, default=float)
    path = report_dir / f"results-{stamp}.json"
    path.write_text(payload, encoding="utf-8")
    (report_dir / "latest.json").write_text(payload, encoding="utf-8")
    return path


def regressions(results: list[dict[str, Any]], baseline_file: Path, factor: float = 10.0,
                floor: float = 1e-6) -> list[str]:
    """Newly uncovered ops, larger errors (> ``factor`` x and above ``floor``), newly failing models."""
    old = {r["id"]: r for r in json.loads(baseline_file.read_text(encoding="utf-8"))["results"]}
    lines = []
    for new in results:
        before = old.get(new["id"])
        if before is None:
            continue
        if before["status"] == "ok" and new["status"] != "ok":
            lines.append(f"{new['id']}: now {new['status']} ({(new['error'] or '').splitlines()[0]})")
        if not (before.get("audit") and new.get("audit")):
            continue
        for op in sorted(set(new["audit"]["missing"]) - set(before["audit"]["missing"])):
            lines.append(f"{new['id']}: {op} has no rule any more")
        for op, stats in new["audit"]["ops"].items():
            was = before["audit"]["ops"].get(op, {}).get("max_error", 0.0)
            if stats["max_error"] > floor and stats["max_error"] > factor * was:
                lines.append(f"{new['id']}: {op} error {stats['max_error']:.1e} (was {was:.1e})")
    return lines
