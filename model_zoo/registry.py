"""The model registry: entries, the ``@register_model`` decorator, look-up and selection.

An :class:`Entry` describes one architecture (a published checkpoint's configuration) and knows how to
build it at two sizes with random weights:

* ``tiny``: the same code paths and the same set of autograd node types as the full model, scaled
  down so that building and one forward pass take well under two seconds on a CPU;
* ``full``: the published configuration (layers, widths, heads, vocabulary, input sizes).

Builders have the signature ``builder(size, attn) -> (model, args, kwargs)``; :meth:`Entry.build`
validates the arguments, seeds torch, checks the entry's requirements and puts the model in eval mode.
The registry is the one piece of module-level state of the package (as in timm's model registry):
it is filled once, at import time, by the ``@register_model`` decorators of the builder modules.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SIZES = ("tiny", "full")
MODALITIES = ("vision", "text", "audio", "vision-text", "state-space")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")

#: pip instructions shown by :class:`ModelUnavailableError`, per importable requirement.
INSTALL_HINTS = {
    "mamba_ssm": (
        "MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE "
        "CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm causal-conv1d"
    ),
}

#: Keys tried in order by :meth:`Entry.output` when an entry does not name its output.
OUTPUT_KEYS = ("logits", "start_logits", "logits_per_image", "pooler_output", "last_hidden_state")

Builder = Callable[[str, "str | None"], "tuple[nn.Module, tuple, dict]"]


class UnknownModelError(KeyError):
    """A name (or tag) that is not in the registry; the message lists the closest matches."""

    def __init__(self, name: str, candidates: Sequence[str]):
        self.name = name
        self.close_matches = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(self.close_matches)}" if self.close_matches else ""
        super().__init__(f"unknown model or tag {name!r}{hint} (see `python -m model_zoo list`)")

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


class ModelUnavailableError(RuntimeError):
    """An entry whose requirements (optional packages) cannot be imported here."""

    def __init__(self, name: str, missing: Sequence[str], reason: str | None = None):
        self.name = name
        self.missing = tuple(missing)
        hints = "; ".join(f"{m}: {INSTALL_HINTS[m]}" for m in self.missing if m in INSTALL_HINTS)
        message = f"model {name!r} needs {', '.join(self.missing)}, which cannot be imported"
        message += f" ({reason})" if reason else ""
        super().__init__(message + (f"; install with: {hints}" if hints else ""))


def _randomise_zero_matrices(model: nn.Module, std: float = 0.02) -> None:
    """Give weight matrices that the library initialises to all zeros (torchvision's ViT head, some
    classifier heads) random values: with random weights elsewhere, a zero head makes every logit 0
    and every explanation trivially zero."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and param.device.type != "meta" and not param.any():
                param.normal_(0.0, std)


@dataclass(frozen=True)
class Entry:
    """One architecture of the zoo.

    ``attn`` lists the attention implementations the builder accepts (transformers' ``eager`` and
    ``sdpa``); it is empty for models whose graph does not depend on one (torchvision, timm, models
    without attention). ``output`` optionally names the output field to explain (or is a callable);
    otherwise :meth:`output` picks the first of :data:`OUTPUT_KEYS` that the result holds.
    """

    name: str
    family: str
    modality: str
    builder: Builder = field(repr=False, compare=False)
    tags: tuple[str, ...] = ()
    paper_nodes: int | None = None
    requires: tuple[str, ...] = ()
    attn: tuple[str, ...] = ()
    output_key: str | Callable[[Any], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    description: str = ""

    def missing(self) -> tuple[str, ...]:
        """Requirements that cannot be imported here."""
        return tuple(req for req in self.requires if importlib.util.find_spec(req) is None)

    def available(self) -> bool:
        """True when every requirement can be imported."""
        return not self.missing()

    def resolve_attn(self, attn: str | None) -> str | None:
        """The attention implementation a build uses: ``attn``, or the entry's first (``eager``)."""
        if attn is None:
            return self.attn[0] if self.attn else None
        if attn not in self.attn:
            supported = ", ".join(self.attn) if self.attn else "none (pass attn=None)"
            raise ValueError(f"model {self.name!r} does not support attn={attn!r}; supported: {supported}")
        return attn

    def build(self, size: str = "tiny", seed: int = 0, attn: str | None = None) -> tuple[nn.Module, tuple, dict]:
        """Build the model with random weights: ``(model in eval mode, example args, example kwargs)``.

        ``torch.manual_seed(seed)`` runs first, so weights and example inputs are deterministic.
        Floating-point example inputs (images, audio, patches) require grad; token ids do not.
        Raises :class:`ModelUnavailableError` when a requirement is missing.
        """
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        attn = self.resolve_attn(attn)
        missing = self.missing()
        if missing:
            raise ModelUnavailableError(self.name, missing)
        torch.manual_seed(seed)
        model, args, kwargs = self.builder(size, attn)
        _randomise_zero_matrices(model)
        return model.eval(), tuple(args), dict(kwargs)

    def output(self, result: Any) -> torch.Tensor:
        """The tensor to explain, picked from the model's output (a tensor, ModelOutput, dict or tuple)."""
        if callable(self.output_key):
            return self.output_key(result)
        if self.output_key is not None:
            value = result[self.output_key] if isinstance(result, Mapping) else getattr(result, self.output_key)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{self.name}: output field {self.output_key!r} is not a tensor")
            return value
        return pick_output(result)

    def num_params(self, size: str = "full") -> int:
        """Parameter count (shared parameters counted once); parameters live on the meta device while the
        model is built (see :func:`meta_parameters`), so even 46B-parameter configurations cost no memory."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        missing = self.missing()
        if missing:
            raise ModelUnavailableError(self.name, missing)
        with meta_parameters():
            model, _, _ = self.builder(size, self.resolve_attn(None))
        return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def meta_parameters():
    """Inside the block, every parameter a module registers is moved to the meta device at once.

    Initialisers then run on meta tensors (no work, no memory), while ordinary tensor arithmetic in
    constructors (torchvision's RegNet computes its widths with tensors) still runs on the CPU, which a
    plain ``torch.device("meta")`` context would break. Only ``nn.Module.register_parameter`` is
    replaced, and only for the duration of the block.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def pick_output(result: Any) -> torch.Tensor:
    """First tensor among :data:`OUTPUT_KEYS` of a mapping-like output, the first tensor of a tuple."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, Mapping):
        for key in OUTPUT_KEYS:
            value = result.get(key)
            if isinstance(value, torch.Tensor):
                return value
        for value in result.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(result, (tuple, list)):
        for value in result:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(f"cannot pick an output tensor from {type(result).__name__}")


_REGISTRY: dict[str, Entry] = {}


def register_model(
    *,
    name: str,
    family: str,
    modality: str,
    tags: Sequence[str] = (),
    paper_nodes: int | None = None,
    requires: Sequence[str] = (),
    attn: Sequence[str] = (),
    output: str | Callable[[Any], torch.Tensor] | None = None,
) -> Callable[[Builder], Builder]:
    """Register ``builder(size, attn) -> (model, args, kwargs)`` under ``name``; returns the builder.

    The entry's tags always include its family and modality, so both can be used in :func:`select`.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    unknown_attn = set(attn) - set(ATTN_IMPLEMENTATIONS)
    if unknown_attn:
        raise ValueError(f"unknown attention implementations {sorted(unknown_attn)}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        all_tags = tuple(dict.fromkeys((*tags, family, modality)))
        _REGISTRY[name] = Entry(
            name=name, family=family, modality=modality, builder=builder, tags=all_tags,
            paper_nodes=paper_nodes, requires=tuple(requires), attn=tuple(attn), output_key=output,
            description=(builder.__doc__ or "").strip().split("\n")[0],
        )
        return builder

    return decorator


def names() -> list[str]:
    """Sorted names of all entries."""
    return sorted(_REGISTRY)


def entries() -> list[Entry]:
    """All entries, sorted by name."""
    return [_REGISTRY[n] for n in names()]


def tags() -> list[str]:
    """Sorted tags used by at least one entry."""
    return sorted({t for entry in _REGISTRY.values() for t in entry.tags})


def get(name: str) -> Entry:
    """The entry called ``name``; :class:`UnknownModelError` (a KeyError) lists close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name, names()) from None


def select(spec: str | Sequence[str]) -> list[Entry]:
    """Entries for ``"all"``, a name, a tag, or a comma-separated mix of names and tags.

    Order: the order of the tokens, each tag's entries sorted by name; duplicates are dropped.
    Unknown tokens raise :class:`UnknownModelError`.
    """
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise ValueError("empty model selection")
    chosen: dict[str, Entry] = {}
    for token in tokens:
        if token == "all":
            found = entries()
        elif token in _REGISTRY:
            found = [_REGISTRY[token]]
        else:
            found = [entry for entry in entries() if token in entry.tags]
            if not found:
                raise UnknownModelError(token, names() + tags())
        for entry in found:
            chosen.setdefault(entry.name, entry)
    return list(chosen.values())
