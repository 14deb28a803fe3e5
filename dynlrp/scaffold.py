"""``python -m dynlrp new-rule XBackward0``: scaffold a rule and its conformance test.

The path from a red cell of the audit's coverage matrix to a merged rule:

1. the audit's panel for the node type (:func:`describe_node`, :func:`suggest_family`) shows what a
   rule can read (saved tensors, saved attributes, input and output shapes), the nearest rule family
   and the command below;
2. ``python -m dynlrp new-rule XBackward0 [--family F] [--dry-run] [--force] [--root DIR]`` appends a
   rule stub to ``dynlrp/rules/<family>.py`` (a new family module is registered in
   ``dynlrp/rules/__init__.py``) and writes ``tests/rules_new/test_rule_<op>.py``, which builds a minimal
   graph producing the node where torch can tell how from the name (:func:`example_call`) and compares
   the rule with a float64 reference and with conservation;
3. the stub raises ``NotImplementedError`` and the test's reference does too, so the test fails until
   both formulas are written.
"""
from __future__ import annotations

import ast
import difflib
import json
import keyword
import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import DynLRPError
from .graph import Node, node_type
from .rules import REGISTRY
from .saved import read_saved, signed

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]*Backward(\d*)$")
STUB_MARK = "python -m dynlrp new-rule"  # in a scaffolded stub's docstring until the rule is written
SCAFFOLD_REPLAY = "written by the scaffold"  # in a forward replay the scaffold wrote
NOT_FAMILIES = ("__init__", "common", "decompose", "registry")  # rules/ modules that take no new rules

FAMILY_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (  # first match wins; see _matches
    ("attention", ("attention", "softmax")),
    ("pooling", ("pool",)),
    ("reduction", ("linalg", "logsumexp", "sum", "mean", "prod", "std", "var", "nansum", "nanmean", "cumprod")),
    ("normalization", ("norm", "batch", "instance", "group", "layer", "rms")),
    ("linear", ("conv", "mm", "bmm", "addmm", "addbmm", "baddbmm", "mv", "addmv", "matmul", "dot", "vdot",
                "linear", "bilinear", "einsum", "outer", "addr")),
    ("sources", ("embedding",)),
    ("indexing", ("index", "gather", "scatter", "take", "masked", "pad", "upsample", "sampler", "sort", "topk",
                  "max", "min", "median", "kthvalue", "mode", "unfold", "im2col", "col2im", "diag", "diagonal",
                  "shuffle", "cummax", "cummin", "cumsum", "put", "amax", "amin", "maximum", "minimum")),
    ("shape", ("view", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "expand", "cat", "stack",
               "split", "chunk", "unbind", "repeat", "flip", "roll", "clone", "alias", "tril", "triu", "where",
               "copy", "t", "narrow", "slice", "select", "movedim", "flatten", "tile")),
    ("elementwise", ("add", "sub", "rsub", "mul", "div", "neg", "lerp", "addcmul", "addcdiv", "hypot", "atan2",
                     "glu", "fmod", "remainder", "xlogy")),
    ("activation", ("relu", "elu", "gelu", "silu", "sigmoid", "tanh", "softplus", "softsign", "hardswish",
                    "hardsigmoid", "hardtanh", "mish", "exp", "expm1", "log", "log1p", "erf", "erfc", "erfinv",
                    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "sqrt", "rsqrt", "pow", "abs",
                    "sign", "sgn", "clamp", "threshold", "reciprocal", "special", "sinc", "logit", "frac",
                    "round", "floor", "ceil", "trunc", "celu", "prelu", "rrelu", "dropout", "square", "lgamma",
                    "digamma", "polygamma", "exp2")),
)


class ScaffoldError(DynLRPError, ValueError):
    """The scaffold cannot write a rule: a bad name, a node type that has a rule, a file in the way."""


# -------------------------------------------------------------------------------------------------
# names and families


def check_name(name: str) -> str:
    """``name`` if it is an autograd node type name (``SomeOpBackward0``), else :class:`ScaffoldError`."""
    if not NAME_RE.match(name):
        raise ScaffoldError(f"{name!r} is not an autograd node type name: expected CamelCase ending in Backward or"
                            " Backward<N>, as `out.grad_fn.name()` prints it (e.g. SpecialErfcxBackward0)")
    return name


def snake_name(name: str) -> str:
    """``MaxPool2DWithIndicesBackward0`` -> ``max_pool2d_with_indices`` (the aten op's spelling)."""
    stem = re.sub(r"Backward\d*$", "", name)
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", stem).lower()


def _ident(name: str) -> str:
    """A Python name for the rule and its test: the snake name, ``_<N>`` for ``Backward<N>``, N > 0."""
    number = NAME_RE.match(name).group(1) if NAME_RE.match(name) else ""
    base = snake_name(name) + (f"_{number}" if number not in ("", "0") else "")
    return base + "_rule" if keyword.iskeyword(base) else base


def nearest_rules(name: str, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Registered node types whose names are closest to ``name`` (a hint for a new rule)."""
    stem = re.sub(r"Backward\d*$", "", name)
    names = {re.sub(r"Backward\d*$", "", other): other for other in REGISTRY.rules}
    return [names[m] for m in difflib.get_close_matches(stem, list(names), n=n, cutoff=cutoff)]


def _matches(word: str, tokens: Sequence[str]) -> bool:
    return any(tok == word or (len(word) >= 4 and word in tok) for tok in tokens)


def suggest_family(name: str, inputs: Sequence[dict] | None = None,
                   outputs: Sequence[dict] | None = None) -> tuple[str, str]:
    """The rule family (module of ``dynlrp/rules``) for a new rule of node type ``name``, and why.

    In order: a registered node type with a very similar name; a keyword of the op name
    (:data:`FAMILY_HINTS`); the node's shapes (``inputs``/``outputs`` as :func:`describe_node` gives
    them): one operand and an output of its shape is an activation, several operands an elementwise
    op, a smaller output a reduction.
    """
    for close in nearest_rules(name, n=3, cutoff=0.8):
        info = REGISTRY.rules[close]
        if info.family not in NOT_FAMILIES:  # a decomposition's family takes no hand-written rules
            return info.family, f"nearest rule: {info.family}.{info.name} ({close})"
    tokens = snake_name(name).split("_")
    for family, words in FAMILY_HINTS:
        word = next((w for w in words if _matches(w, tokens)), None)
        if word:
            return family, f"op name contains {word!r}"
    shapes = [tuple(i["shape"]) for i in inputs or () if i.get("shape") is not None]
    out = [tuple(o["shape"]) for o in outputs or ()]
    if shapes and out:
        numel = [torch.Size(s).numel() for s in shapes]
        if len(shapes) == 1 and out[0] == shapes[0]:
            return "activation", "one operand, output of the same shape: an elementwise function"
        if len(shapes) > 1 and torch.Size(out[0]).numel() >= max(numel):
            return "elementwise", "several operands, a broadcast output"
        if torch.Size(out[0]).numel() < max(numel):
            return "reduction", "output smaller than its operand"
        return "indexing", "output larger than its operand"
    return "elementwise", "no hint in the name or shapes (pass --family)"


def scaffold_command(name: str, family: str | None = None) -> str:
    """The shell command that scaffolds a rule (and its test) for node type ``name``."""
    return f"python -m dynlrp new-rule {name}" + (f" --family {family}" if family else "")


# -------------------------------------------------------------------------------------------------
# what a node exposes


def _dtype(t: torch.Tensor | None) -> str | None:
    return None if t is None else str(t.dtype).removeprefix("torch.")


def _tensor_info(t: Any, values: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    if t is None:
        return None
    info: dict[str, Any] = {"shape": list(t.shape), "dtype": _dtype(t)}
    for label, value in values.items():
        if value is t or (value.shape == t.shape and value.dtype == t.dtype and value.device == t.device
                          and t.layout == torch.strided and torch.equal(value, t)):
            info["equals"] = label
            break
    return info


def _saved_attributes(node: Node) -> list[tuple[str, Any]]:
    """``(name, value)`` of what the node saved for backward (``_saved_*``; a custom Function's
    ``saved_tensors`` and the attributes its ``forward`` set on ``ctx``)."""
    if isinstance(node, torch.autograd.function.BackwardCFunction):
        pairs: list[tuple[str, Any]] = [("saved_tensors", "saved_tensors")]
        pairs += [(name, name) for name in sorted(vars(node)) if not name.startswith("_")]
    else:
        pairs = [(name, name) for name in sorted(dir(node)) if name.startswith("_saved_")]
    found = []
    for label, attr in pairs:
        try:
            found.append((label, read_saved(node, attr)))
        except Exception as err:  # freed, modified in place, or a type autograd cannot hand out: say so
            found.append((label, f"<unavailable: {type(err).__name__}: {err}>"))
    return found


def describe_node(node: Node, value: Callable[[Node, int], torch.Tensor | None] | None = None) -> dict[str, Any]:
    """What a rule can read from ``node``, JSON-ready.

    ``inputs``: per input slot, shape, dtype and producer type (``None`` for operands outside the
    graph); ``outputs``: per output, shape and dtype; ``saved_tensors``: name -> shape and dtype (a
    list for tuples), with ``equals: "input 0"`` where the saved tensor is an input's or output's value;
    ``saved_values``: name -> repr of the other saved attributes; ``opaque``: the class of a custom
    ``torch.autograd.Function`` (explain it with ``register_decomposition``), else ``None``.
    ``value(producer, output_nr)`` gives forward values to compare saved tensors with (default:
    the tensors of leaf inputs).
    """
    def lookup(producer: Node, nr: int) -> torch.Tensor | None:
        found = value(producer, nr) if value is not None else None
        return found if found is not None else getattr(producer, "variable", None)

    inputs, values = [], {}
    for slot, (child, nr) in enumerate(node.next_functions):
        if child is None:
            inputs.append({"slot": slot, "shape": None, "dtype": None, "from": None})
            continue
        meta = child._input_metadata[nr]
        inputs.append({"slot": slot, "shape": list(meta.shape), "dtype": _dtype(torch.empty(0, dtype=meta.dtype)),
                       "from": node_type(child)})
        held = lookup(child, nr)
        if isinstance(held, torch.Tensor):
            values[f"input {slot}"] = held
    outputs = []
    for k, meta in enumerate(node._input_metadata):
        outputs.append({"shape": list(meta.shape), "dtype": _dtype(torch.empty(0, dtype=meta.dtype))})
        held = value(node, k) if value is not None else None
        if isinstance(held, torch.Tensor):
            values[f"output {k}"] = held
    saved_tensors: dict[str, Any] = {}
    saved_values: dict[str, str] = {}
    for name, item in _saved_attributes(node):
        if isinstance(item, torch.Tensor):
            saved_tensors[name] = _tensor_info(item, values)
        elif isinstance(item, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in item):
            saved_tensors[name] = [_tensor_info(t, values) if isinstance(t, torch.Tensor) else None for t in item]
        else:
            text = repr(signed(item))
            saved_values[name] = text if len(text) <= 200 else text[:197] + "..."
    cls = getattr(node, "_forward_cls", None)
    opaque = f"{cls.__module__}.{cls.__qualname__}" if cls is not None else None
    return {"inputs": inputs, "outputs": outputs, "saved_tensors": saved_tensors, "saved_values": saved_values,
            "opaque": opaque}


def describe_lines(details: dict[str, Any]) -> list[str]:
    """:func:`describe_node`'s dict as text lines (inputs, outputs, saved tensors and values)."""
    def shape(info: dict | None) -> str:
        if info is None:
            return "None"
        text = f"{tuple(info['shape'])} {info['dtype']}"
        return text + (f" (= {info['equals']})" if info.get("equals") else "")

    lines = [f"input {i['slot']}: " + (f"{tuple(i['shape'])} {i['dtype']} from {i['from']}" if i["shape"] is not None
                                       else "not in the graph (a constant or a tensor without grad)")
             for i in details["inputs"]]
    lines += [f"output {k}: {tuple(o['shape'])} {o['dtype']}" for k, o in enumerate(details["outputs"])]
    for name, info in details["saved_tensors"].items():
        lines.append(f"{name}: " + (", ".join(shape(i) for i in info) if isinstance(info, list) else shape(info)))
    lines += [f"{name} = {text}" for name, text in details["saved_values"].items()]
    if details.get("opaque"):
        cls = details["opaque"].rsplit(".", 1)[-1]
        lines.append(f"opaque: a custom autograd Function ({details['opaque']}); usually a decomposition explains it:"
                     f" dynlrp.rules.register_decomposition({cls}, reference) with a plain-torch forward")
    return lines


# -------------------------------------------------------------------------------------------------
# a minimal graph producing the node, from the op's name


@dataclass
class ExampleCall:
    """Source of a ``build()`` body that produces the node type, and what that node exposes."""

    body: str
    call: str
    details: dict[str, Any]
    replay: str | None = None  # ``call`` on ctx.input(slot): exact when the op has tensor arguments only


DOMAINS = ("torch.randn({dims}, dtype=torch.float64, requires_grad=True)",  # inputs tried, in order
           "(torch.rand({dims}, dtype=torch.float64) + 0.5).requires_grad_(True)",
           "(0.1 + 0.8 * torch.rand({dims}, dtype=torch.float64)).requires_grad_(True)")


def _arg_source(arg: Any, make_leaf: Callable[[], str]) -> str | None:
    """Source text of a value for one schema argument (``None``: leave it to its default)."""
    kind = str(arg.type)
    if arg.has_default_value() and kind != "Tensor":
        return None
    if kind == "Tensor":
        return make_leaf()
    if kind == "List[Tensor]":
        return f"[{make_leaf()}, {make_leaf()}]"
    if kind.startswith("Optional["):
        return "None"
    if kind in ("int", "SymInt"):
        return "2" if "size" in arg.name or "kernel" in arg.name else "1"
    if kind in ("List[int]", "List[SymInt]"):
        item = "2" if "size" in arg.name or "kernel" in arg.name else "1"
        return "[" + ", ".join([item] * (arg.N or 1)) + "]"
    if kind in ("float", "number"):
        return "0.5"
    if kind == "bool":
        return "False"
    raise TypeError(kind)


def _callables(name: str) -> list[tuple[str, list[Any]]]:
    """``(source of a callable, aten schemas to take its arguments from)``: public functions first."""
    snake = snake_name(name)
    schemas, aten = [], []
    for op_name in (snake, "_" + snake):
        packet = getattr(torch.ops.aten, op_name, None)
        if packet is None:
            continue
        order = sorted(packet.overloads(), key=lambda o: (o != "default", o != "Tensor", o))
        for overload in order:
            schema = getattr(packet, overload)._schema
            if "out" in overload or schema.is_mutable or not any(str(a.type) == "Tensor" for a in schema.arguments):
                continue
            schemas.append(schema)
            aten.append((f"torch.ops.aten.{op_name}.{overload}", [schema]))
    public = []
    for prefix, module, attr in (("torch.special.", torch.special, snake.removeprefix("special_")),
                                 ("torch.linalg.", torch.linalg, snake.removeprefix("linalg_")),
                                 ("torch.", torch, snake), ("torch.nn.functional.", torch.nn.functional, snake)):
        if callable(getattr(module, attr, None)) and not attr.startswith("_"):
            public.append((prefix + attr, schemas))
    return public + aten


def _try(body: str, name: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor] | None:
    namespace: dict[str, Any] = {"torch": torch}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile("def build():\n" + body, "<scaffold>", "exec"), namespace)
            inputs, out = namespace["build"]()
    except Exception:  # an argument guess that does not fit this op: try the next
        return None
    ok = (isinstance(out, torch.Tensor) and out.grad_fn is not None and out.grad_fn.name() == name
          and torch.isfinite(out.detach()).all())
    return (inputs, out) if ok else None


def _arg_source_all(schema: Any, make_leaf: Callable[[], str] = lambda: "x") -> list[tuple[Any, str | None]]:
    return [(a, _arg_source(a, make_leaf)) for a in schema.arguments]


def _try_call(name: str, call: str, schema: Any, shape: tuple[int, ...], domain: str) -> ExampleCall | None:
    leaves: list[str] = []

    def make_leaf() -> str:
        leaves.append(domain.format(dims=", ".join(map(str, shape))))
        return f"x{len(leaves) - 1}"

    args = _arg_source_all(schema, make_leaf)
    positional = [src for a, src in args if src is not None and not a.kwarg_only]
    keywords = [f"{a.name}={src}" for a, src in args if src is not None and a.kwarg_only]
    text = f"{call}({', '.join(positional + keywords)})"
    setup = "".join(f"    x{i} = {src}\n" for i, src in enumerate(leaves))
    names = "".join(f"x{i}, " for i in range(len(leaves))).rstrip(" ")
    for pick in ("", "[0]", "[1]"):  # a node with several outputs: the tensor output that is the node's
        body = setup + f"    return ({names}), {text}{pick}\n"
        found = _try(body, name)
        if found:
            node, held = found[1].grad_fn, {(found[1].grad_fn, found[1].output_nr): found[1].detach()}
            details = describe_node(node, lambda n, k, held=held: held.get((n, k)))
            tensors_only = all(str(a.type) == "Tensor" for a in schema.arguments)
            exact = tensors_only and not pick and len(node._input_metadata) == 1
            replay = re.sub(r"\bx(\d+)\b", r"ctx.input(\1)", text) if exact else None
            return ExampleCall(body, text + pick, details, replay)
    return None


def example_call(name: str) -> ExampleCall | None:
    """A minimal forward producing a ``name`` node from small float64 leaves, or ``None``.

    The op is looked up from the name (``torch.special.<op>``, ``torch.linalg.<op>``, ``torch.<op>``,
    ``torch.nn.functional.<op>``, ``torch.ops.aten[._]<op>``), its arguments guessed from the aten
    schema, and the call kept if its output's ``grad_fn.name()`` is ``name``.
    """
    for call, schemas in _callables(name):
        for schema in schemas:
            try:
                _arg_source_all(schema)
            except TypeError:  # an argument type the scaffold cannot guess (a string, a generator)
                continue
            for shape in ((2, 3), (2, 3, 4), (1, 2, 4, 4), (1, 2, 4, 4, 4)):
                for domain in DOMAINS:
                    found = _try_call(name, call, schema, shape, domain)
                    if found:
                        return found
    return None


# -------------------------------------------------------------------------------------------------
# editing the sources


_REGISTERED: dict[tuple, dict[str, Any]] = {}  # another checkout's registry, by its files' state
_READ = ("import json, dynlrp.rules as r; print(json.dumps({'rules': {t: {'family': i.family, 'name': i.name, 'stub':"
         " MARK in i.doc} for t, i in r.REGISTRY.rules.items()}, 'replays': sorted(r.REGISTRY.replays)}))")


def _registered(root: Path) -> dict[str, Any]:
    """``{"rules": {node type: {family, name, stub}}, "replays": [node types]}`` of the package under
    ``root`` (another checkout's is read in a subprocess, once per state of its ``dynlrp/`` files)."""
    if root.resolve() == PACKAGE_ROOT:
        rules = {t: {"family": i.family, "name": i.name, "stub": STUB_MARK in i.doc} for t, i in REGISTRY.rules.items()}
        return {"rules": rules, "replays": sorted(REGISTRY.replays)}
    key = (root, *sorted((p.as_posix(), p.stat().st_mtime_ns, p.stat().st_size)
                         for p in (root / "dynlrp").rglob("*.py")))
    if key not in _REGISTERED:
        _REGISTERED[key] = _read_registry(root)
    return _REGISTERED[key]


def _read_registry(root: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _READ.replace("MARK", repr(STUB_MARK))], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    if done.returncode:
        raise ScaffoldError(f"cannot import dynlrp from {root}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _format_import(level: int, module: str | None, names: Sequence[str], comment: str) -> list[str]:
    head = "from " + "." * level + (module or "") + " import "
    line = head + ", ".join(names) + (f"  {comment}" if comment else "")
    if len(line) <= 120 and not comment:
        return [line]
    return [head + "(" + (f"  {comment}" if comment else "")] + [f"    {n}," for n in names] + [")"]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's isort order of imported names: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def ensure_import(text: str, level: int, module: str | None, names: Sequence[str]) -> str:
    """``text`` with ``from <level dots><module> import <names>`` present (merged into an existing
    statement, else added after the module's last relative import)."""
    tree = ast.parse(text)
    lines = text.splitlines()
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0]
    for node in imports:
        if node.level == level and node.module == module:
            have = [a.name for a in node.names]
            if set(names) <= set(have):
                return text
            first = lines[node.lineno - 1]
            comment = first[first.index("#"):] if "#" in first else ""
            merged = sorted(set(have) | set(names), key=_isort_key)
            lines[node.lineno - 1:node.end_lineno] = _format_import(level, module, merged, comment)
            return "\n".join(lines) + "\n"
    key = (-level, module or "")
    after = [n for n in imports if (-n.level, n.module or "") < key]
    anchor = after[-1].end_lineno if after else (imports[0].lineno - 1 if imports else _header_end(tree))
    lines[anchor:anchor] = _format_import(level, module, sorted(names, key=_isort_key), "")
    return "\n".join(lines) + "\n"


def _header_end(tree: ast.Module) -> int:
    """The line after the docstring and ``from __future__`` imports."""
    end = 0
    for node in tree.body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            end = node.end_lineno
        else:
            break
    return end


def remove_stub(text: str, name: str) -> str:
    """``text`` without what the scaffold wrote for ``name``: the unwritten rule, its ``saved_values``
    line and its forward replay."""
    tree = ast.parse(text)
    lines = text.splitlines()

    def names(node: ast.FunctionDef, decorator: str) -> list[Any]:
        return [a.value for d in node.decorator_list if isinstance(d, ast.Call) and getattr(d.func, "id", None) ==
                decorator for a in d.args if isinstance(a, ast.Constant)]

    spans = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            start = min(d.lineno for d in node.decorator_list) if node.decorator_list else node.lineno
            source = "\n".join(lines[start - 1:node.end_lineno])
            stub = name in names(node, "rule") and STUB_MARK in (ast.get_docstring(node) or "")
            if stub or (name in names(node, "replay") and SCAFFOLD_REPLAY in source):
                spans.append((start, node.end_lineno))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == "saved_values" and len(node.value.args) == 1 and \
                isinstance(node.value.args[0], ast.Constant) and node.value.args[0].value == name:
            spans.append((node.lineno, node.end_lineno))
    for start, end in sorted(spans, reverse=True):
        del lines[start - 1:end]
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def ensure_torch(text: str) -> str:
    """``text`` with ``import torch`` (before its first relative import)."""
    if re.search(r"^import torch$", text, re.M):
        return text
    tree = ast.parse(text)
    first = next((n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0), None)
    lines = text.splitlines()
    at = first.lineno - 1 if first else _header_end(tree)
    lines[at:at] = ["import torch", ""] if first else ["", "import torch"]
    return "\n".join(lines) + "\n"


def _stub(name: str, family: str, function: str, test: str, example: ExampleCall | None, siblings: list[str],
          replay: str | None) -> str:
    """The rule stub (and a ``saved_values`` line and a forward replay where the probe showed them)."""
    lines = []
    if example is not None:
        saved = {"inputs": {}, "outputs": {}}
        for attr, t in example.details["saved_tensors"].items():
            if isinstance(t, dict) and t.get("equals"):
                where, index = t["equals"].split()
                saved[where + "s"].setdefault(int(index), attr)
        declared = ", ".join(f"{where}={value}" for where, value in saved.items() if value)
        if declared:
            lines.append(f"saved_values({name!r}, {declared})".replace("'", '"'))
            lines += ["", ""]
    lines += [
        f'@rule("{name}")',
        f"def {function}(ctx: NodeContext, relevance):",
        '    """TODO: the formula and what it absorbs (docs/rules.md shows this docstring).',
        "",
        f'    Scaffolded by ``{STUB_MARK} {name}``."""',
        "    # relevance[k]: relevance of output k. Return RuleResult((R of slot 0, ...), {cause: absorbed})",
        "    # (from ..context import RuleResult). Values: ctx.input(slot), ctx.output(k), ctx.vjp(*grads),",
        "    # ctx.saved(name) (the name without _saved_), ctx.settings.epsilon (the preset's stabiliser).",
    ]
    if siblings:
        lines.append(f"    # Rules of this family to start from: {', '.join(siblings)} (docs/rules.md).")
    if not replay and not (example and any(isinstance(t, dict) and t.get("equals", "").startswith("output")
                                             for t in example.details["saved_tensors"].values())):
        lines.append("    # ctx.output(k) needs a forward replay (@replay) where the node saved no result.")
    if example is not None:
        lines.append(f"    # The test's node ({example.call}):")
        lines += [f"    #   {line}" for line in describe_lines(example.details)]
    lines += [
        "    raise NotImplementedError(",
        f'        "the {name} rule is not written yet:"',
        f'        " write {function} in dynlrp/rules/{family}.py,"',
        f'        " then run python -m pytest {test}")',
    ]
    if replay:
        lines += ["", "", f'@replay("{name}")', f"def _{function}_forward(ctx: NodeContext):",
                  f"    # {SCAFFOLD_REPLAY}: the op has tensor arguments only, so its inputs determine it",
                  f"    return ({replay},)"]
    return "\n".join(lines) + "\n"


TEST_DOC = ("Conformance test of the {name} rule ({family}.{function}),\nwritten by ``{command}``.\n\n"
            "It fails until the rule (``{function}`` in dynlrp/rules/{family}.py) and the float64 reference"
            " below are written. When it passes, move ``build`` and ``reference`` into a case of"
            " tests/test_rules_reference.py (its meta-test wants one case per registered node type) and run"
            " ``python -m dynlrp rules-doc`` to update docs/rules.md.")

TEST_TEMPLATE = '''"""{doc}
"""
from __future__ import annotations

import torch

import dynlrp
from dynlrp.rules import REGISTRY

NODE_TYPE = "{name}"
RTOL = 1e-10


def build() -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Float64 leaves that require grad, and an output whose ``grad_fn`` is a NODE_TYPE node."""
{build}

def reference(inputs: tuple[torch.Tensor, ...], out: torch.Tensor, r0: torch.Tensor):
    """The rule by hand, in float64: one relevance tensor (or None) per input of ``build``, and the
    relevance the rule absorbs by cause (``{{"bias": ..., "stabiliser": ...}}``; ``{{}}`` if none).
    ``r0`` is the relevance of ``out``."""
    raise NotImplementedError(f"write the float64 reference of the {{NODE_TYPE}} rule in {{__file__}}")
    # a pass-through rule:     return (r0,), {{}}
    # the z-rule of z = M x:   s = z + 1e-6 * sign(z); R_x = x * (M^T (r0 / s));
    #                          absorbed {{"stabiliser": ((s - z) * r0 / s).sum()}}


def explain() -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, dynlrp.Explanation]:
    inputs, out = build()
    r0 = torch.randn(out.shape, dtype=torch.float64)
    return inputs, out, r0, dynlrp.explain(out, target=r0, inputs=list(inputs), strict=True)


def test_build_makes_the_node():
    _, out = build()
    assert out.grad_fn is not None and out.grad_fn.name() == NODE_TYPE


def test_rule_is_registered():
    assert NODE_TYPE in REGISTRY.rules, "no rule: is its module imported in dynlrp/rules/__init__.py?"


def test_rule_matches_the_reference():
    inputs, out, r0, exp = explain()
    expected, absorbed = reference(tuple(t.detach() for t in inputs), out.detach(), r0)
    assert len(expected) == len(inputs), "reference: one relevance (or None) per input of build()"
    for x, want in zip(inputs, expected):
        got = exp.relevance(x)
        want = torch.zeros_like(got) if want is None else want.to(got.dtype)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-12)
    row = next(row for row in exp.nodes if row.node_type == NODE_TYPE)
    scale = max(1.0, abs(row.relevance_in))
    for cause in set(row.absorbed) | set(absorbed):
        assert abs(row.absorbed.get(cause, 0.0) - float(absorbed.get(cause, 0.0))) <= RTOL * scale, cause


def test_conservation():
    """Relevance in = relevance out + absorbed, on every node and overall."""
    *_, exp = explain()
    for row in exp.nodes:
        assert not row.fallback and row.error <= RTOL, row
    assert exp.conservation.unexplained <= RTOL, exp.conservation
'''

BUILD_TEMPLATE = '''    # torch could not tell from the name how to make a {name} node: write the smallest forward
    # that does, from float64 leaves that require grad, e.g.
    #     x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    #     return (x,), torch.some_op(x)
    raise NotImplementedError("write build(): a minimal forward that produces a {name} node")
'''

NEW_FAMILY = '''"""{title}: TODO what this family's ops are and the rules they get."""
from __future__ import annotations

from ..context import NodeContext
from .registry import rule
'''


@dataclass
class Change:
    """One file the scaffold writes: its path, old text (``""`` for a new file) and new text."""

    path: Path
    old: str
    new: str

    def diff(self, root: Path) -> str:
        rel = self.path.relative_to(root).as_posix()
        return "".join(difflib.unified_diff(self.old.splitlines(True), self.new.splitlines(True),
                                            "/dev/null" if not self.old else f"a/{rel}", f"b/{rel}"))


@dataclass
class Plan:
    """What ``new-rule`` writes for one node type."""

    name: str
    family: str
    function: str
    reason: str
    root: Path
    test: Path
    example: ExampleCall | None
    changes: list[Change] = field(default_factory=list)

    def write(self) -> None:
        for change in self.changes:
            change.path.parent.mkdir(parents=True, exist_ok=True)
            change.path.write_text(change.new, encoding="utf-8")

    def summary(self) -> str:
        test = self.test.relative_to(self.root).as_posix()
        made = (f"builds the node with {self.example.call}" if self.example else
                "build() is a template: torch could not tell from the name how to make the node")
        return "\n".join([
            f"{self.name}: rule {self.function} in dynlrp/rules/{self.family}.py ({self.reason}),",
            f"  test {test} ({made}).",
            "next:",
            f"  1. write the formula in {self.function} (dynlrp/rules/{self.family}.py) and its docstring",
            f"  2. write reference() in {test}: the same relevance by hand, in float64",
            f"  3. python -m pytest {test} -q   (fails until 1 and 2 are done)",
            "  4. move the case into tests/test_rules_reference.py, then: python -m dynlrp rules-doc",
        ])


def _check_free(name: str, registered: dict[str, Any] | None, force: bool) -> None:
    if registered and not registered["stub"]:
        raise ScaffoldError(f"{name} already has a rule: {registered['name']} in dynlrp/rules/{registered['family']}.py"
                            " (edit that rule, or see docs/rules.md)")
    if registered and not force:
        raise ScaffoldError(f"{name} was scaffolded already ({registered['name']} in dynlrp/rules/"
                            f"{registered['family']}.py, not written yet); --force writes the stub and its test again")


def _check_family(family: str) -> str:
    if not family.isidentifier() or keyword.iskeyword(family) or family in NOT_FAMILIES or family != family.lower():
        raise ScaffoldError(f"bad family {family!r}: a lower-case module name of dynlrp/rules other than"
                            f" {', '.join(NOT_FAMILIES)}")
    return family


def _module_names(text: str) -> set[str]:
    """Names bound at module level (functions, classes, imports, assignments)."""
    names: set[str] = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _imported(init_text: str, family: str) -> bool:
    """Whether ``dynlrp/rules/__init__.py`` imports the module ``family``."""
    return any(isinstance(n, ast.ImportFrom) and n.level == 1 and
               (n.module == family or (n.module is None and family in {a.name for a in n.names}))
               for n in ast.parse(init_text).body)


def plan_rule(name: str, root: str | Path | None = None, family: str | None = None, force: bool = False) -> Plan:
    """Work out the files ``new-rule`` writes (see :func:`new_rule`), writing nothing."""
    check_name(name)
    root = Path(root).resolve() if root is not None else PACKAGE_ROOT
    rules_dir = root / "dynlrp" / "rules"
    if not (rules_dir / "registry.py").is_file():
        raise ScaffoldError(f"{root} holds no dynlrp/rules/registry.py: pass --root <the dynlrp checkout>")
    registry = _registered(root)
    registered = registry["rules"].get(name)
    _check_free(name, registered, force)
    example = example_call(name)
    if family is None:
        family, reason = suggest_family(name, *(example.details[k] for k in ("inputs", "outputs")) if example else ())
    else:
        reason = "--family"
    _check_family(family)
    test = root / "tests" / "rules_new" / f"test_rule_{_ident(name)}.py"
    if test.exists() and not force:
        raise ScaffoldError(f"{test} exists; --force overwrites it")

    texts: dict[Path, str] = {}
    if registered:  # --force on a stub: take the old one out first (it may move to another family)
        old_module = rules_dir / f"{registered['family']}.py"
        texts[old_module] = remove_stub(old_module.read_text(encoding="utf-8"), name)
    module, init = rules_dir / f"{family}.py", rules_dir / "__init__.py"
    text = texts.get(module) or (module.read_text(encoding="utf-8") if module.exists() else
                                 NEW_FAMILY.format(title=family.replace("_", " ").capitalize()))
    if not _imported(init.read_text(encoding="utf-8"), family):
        texts[init] = ensure_import(init.read_text(encoding="utf-8"), 1, None, [family])
    function = _ident(name) + ("_rule" if _ident(name) in _module_names(text) else "")
    siblings = sorted({i["name"] for i in registry["rules"].values() if i["family"] == family and not i["stub"]})
    replay = example.replay if example and name not in registry["replays"] else None
    stub = _stub(name, family, function, test.relative_to(root).as_posix(), example, siblings, replay)
    text = ensure_import(text, 2, "context", ["NodeContext"])
    needed = ["rule"] + (["saved_values"] if stub.startswith("saved_values(") else []) + (["replay"] if replay else [])
    text = ensure_import(text, 1, "registry", needed)
    text = (ensure_torch(text) if replay else text).rstrip("\n")
    after_imports = isinstance(ast.parse(text).body[-1], (ast.Import, ast.ImportFrom))
    texts[module] = text + ("\n\n" if after_imports and stub.startswith("saved_values(") else "\n\n\n") + stub

    doc = TEST_DOC.format(name=name, family=family, function=function, command=scaffold_command(name, family))
    head, body = doc.split("\n\n")
    doc = head + "\n\n" + textwrap.fill(body, 100, break_on_hyphens=False)
    build = example.body if example else BUILD_TEMPLATE.format(name=name)
    texts[test] = TEST_TEMPLATE.format(name=name, build=build, doc=doc)
    changes = [Change(path, path.read_text(encoding="utf-8") if path.exists() else "", new)
               for path, new in texts.items()]
    return Plan(name, family, function, reason, root, test, example, changes)


def new_rule(name: str, root: str | Path | None = None, family: str | None = None, dry_run: bool = False,
             force: bool = False) -> Plan:
    """Scaffold a rule for node type ``name``: a stub in ``dynlrp/rules/<family>.py`` and a test in
    ``tests/rules_new/``, both failing until the formula is written; ``dry_run``: write nothing."""
    plan = plan_rule(name, root, family, force)
    if not dry_run:
        plan.write()
    return plan
