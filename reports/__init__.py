"""HTML reports of audit runs: an index with the model x node-type matrix and one page per model.

    from reports import render_report
    render_report(results, "out/")          # results: the harness's JSON-ready per-model dicts

Pages are self-contained (inline CSS, images as data URIs, no network), readable without
JavaScript (tables sort when it is on), and escape every name they print (jinja2 autoescape).
"""
from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from dynlrp.scaffold import nearest_rules, scaffold_command

PAPER_TABLE4 = {  # the seed paper's promise statistics (zoo names): promises, internal nodes, delta, rho, nodes
    "roberta_large": (243, 48, 438, 0.166, 1465), "flan_t5_large": (798, 348, 980, 0.140, 5713),
    "vit_b_16": (224, 27, 227, 0.288, 779), "vgg16": (32, 0, 32, 0.356, 90),
}
PAPER_COVERAGE = "99.92% (31,440 / 31,465 nodes over 15 architectures)"

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def page_name(result: Mapping[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(result["id"])) + ".html"


def heatmap_png(values: list[list[float]], size: int = 256) -> str:
    """A red/blue heatmap (positive red, negative blue), about ``size`` pixels wide, as a data URI."""
    from PIL import Image

    height, width = len(values), len(values[0]) if values else 0
    scale = max(1, size // max(1, width))
    peak = max((abs(v) for row in values for v in row), default=0.0) or 1.0
    image = Image.new("RGB", (width, height))
    for y, row in enumerate(values):
        for x, v in enumerate(row):
            a = min(1.0, abs(v) / peak)
            shade = int(255 * (1 - a))
            image.putpixel((x, y), (255, shade, shade) if v >= 0 else (shade, shade, 255))
    image = image.resize((max(1, width * scale), max(1, height * scale)), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _token_colour(value: float, peak: float) -> str:
    a = min(1.0, abs(value) / (peak or 1.0))
    return f"rgba(220,40,40,{a:.2f})" if value >= 0 else f"rgba(40,80,220,{a:.2f})"


def _curve_points(values: list[float], width: int = 600, height: int = 80) -> str:
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    step = width / max(1, len(values) - 1)
    return " ".join(f"{i * step:.1f},{height / 2 - v / peak * height / 2:.1f}" for i, v in enumerate(values))


def _summary(results: list[Mapping[str, Any]]) -> dict[str, Any]:
    audited = [r for r in results if r.get("audit")]
    nodes = sum(r["audit"]["nodes"] for r in audited)
    covered = sum(r["audit"]["coverage"] * r["audit"]["nodes"] for r in audited)
    types = sorted({op for r in audited for op in r["audit"]["ops"]})
    missing = sorted({op for r in audited for op in r["audit"]["missing"]})
    return {"models": len(results), "audited": len(audited), "failed": len(results) - len(audited),
            "nodes": nodes, "coverage": covered / nodes if nodes else 0.0, "types": types, "missing": missing,
            "paper": PAPER_COVERAGE}


def _op_table(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for result in results:
        audit = result.get("audit")
        if not audit:
            continue
        for op, stats in audit["ops"].items():
            row = table.setdefault(op, {"op": op, "count": 0, "rule": stats["rule"], "covered": stats["covered"],
                                        "max_error": 0.0, "errors": [], "absorbed": {}, "models": 0})
            row["count"] += stats["count"]
            row["models"] += 1
            row["max_error"] = max(row["max_error"], stats["max_error"])
            row["errors"].append(stats["mean_error"])
            for cause, value in stats["absorbed"].items():
                row["absorbed"][cause] = row["absorbed"].get(cause, 0.0) + value
    for row in table.values():
        row["mean_error"] = sum(row["errors"]) / len(row["errors"])
        row["hint"] = ", ".join(nearest_rules(row["op"])) if not row["covered"] else ""
    return sorted(table.values(), key=lambda r: (r["covered"], -r["count"]))


def missing_panels(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One panel per node type without a rule, over ``results``: node count, models, module paths,
    the details of its first node (``audit.missing_details``) and the scaffold command."""
    panels: dict[str, dict[str, Any]] = {}
    for result in results:
        audit = result.get("audit")
        if not audit:
            continue
        details = audit.get("missing_details") or {}
        for op, info in audit["missing"].items():
            panel = panels.setdefault(op, {"op": op, "count": 0, "models": [], "modules": [], "detail": None})
            panel["count"] += info["count"]
            panel["models"].append(str(result["id"]))
            panel["modules"] += [m for m in info["modules"] if m not in panel["modules"]]
            panel["detail"] = panel["detail"] or details.get(op)
    for panel in panels.values():
        panel["command"] = panel["detail"]["command"] if panel["detail"] else scaffold_command(panel["op"])
    return sorted(panels.values(), key=lambda p: (-p["count"], p["op"]))


def render_report(results: list[Mapping[str, Any]], out_dir: str | Path,
                  regressions: list[str] | None = None) -> Path:
    """Write ``index.html`` and one page per model into ``out_dir``; returns the index path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = sorted(results, key=lambda r: str(r["id"]))
    summary = _summary(results)
    index = _ENV.get_template("index.html.j2").render(
        summary=summary, results=results, ops=_op_table(results), regressions=regressions or [],
        page_name=page_name, panels=missing_panels(results))
    (out / "index.html").write_text(index, encoding="utf-8")
    for result in results:
        picture = result.get("picture") or {}
        image = heatmap_png(picture["values"]) if picture.get("kind") == "image" else None
        tokens = picture.get("tokens") if picture.get("kind") == "tokens" else None
        peak = max((abs(v) for _, v in tokens), default=0.0) if tokens else 0.0
        curve = _curve_points(picture["values"]) if picture.get("kind") == "curve" else None
        audit = result.get("audit")
        paper = PAPER_TABLE4.get(result["name"])
        page = _ENV.get_template("model.html.j2").render(
            r=result, audit=audit, panels=missing_panels([result]), image=image, tokens=tokens, peak=peak, curve=curve,
            paper=paper, colour=_token_colour, ops=sorted((audit or {}).get("ops", {}).items()))
        (out / page_name(result)).write_text(page, encoding="utf-8")
    return out / "index.html"
