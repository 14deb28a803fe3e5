"""Helpers shared by the builders: config scaling (tiny = full with size fields overridden) and
deterministic example inputs.

Scaling rule: a builder states the published configuration once (``full``) and only the size fields
for ``tiny`` (layers, widths, heads, vocabulary, input sizes); :func:`pick` merges them, so every
other field (activation, normalisation, biases, tying, position scheme, ...) and therefore every kind
of autograd operation is shared by both sizes.

Inputs: every helper draws from its own ``torch.Generator`` seeded with ``torch.initial_seed()``
(set by :meth:`model_zoo.Entry.build`) plus a fixed salt, so inputs depend on the seed only, not on
how much randomness building the model consumed. Inputs are created on the CPU explicitly, so that a
builder also runs under ``torch.device("meta")`` (parameter counting).
"""
from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import Any

import torch

#: Text length per size: batch 1 x 16 tokens at full size (8 for tiny).
TEXT_TOKENS = {"full": 16, "tiny": 8}
#: Decoder length of encoder-decoder models (both sizes).
DECODER_TOKENS = 4

_SALTS = {"ids": 1, "decoder_ids": 2, "image": 3, "audio": 4, "features": 5, "boxes": 6, "patches": 7}


def pick(size: str, full: Mapping[str, Any], tiny: Mapping[str, Any]) -> dict[str, Any]:
    """``full`` for size ``"full"``; for ``"tiny"``, ``full`` updated by ``tiny`` (nested dicts merged)."""
    merged = copy.deepcopy(dict(full))
    if size == "full":
        return merged
    if size != "tiny":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    for key, value in tiny.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = pick("tiny", merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def generator(kind: str) -> torch.Generator:
    """A CPU generator for one kind of input, seeded from ``torch.initial_seed()``."""
    return torch.Generator().manual_seed((torch.initial_seed() + 7919 * _SALTS[kind]) % 2**63)


def token_ids(vocab_size: int, length: int, low: int = 3, kind: str = "ids") -> torch.Tensor:
    """``(1, length)`` int64 token ids in ``[low, vocab_size)`` (low skips pad/bos/eos ids)."""
    return torch.randint(low, vocab_size, (1, length), generator=generator(kind), device="cpu")


def text_ids(size: str, vocab_size: int, low: int = 3) -> torch.Tensor:
    """Encoder / decoder-only text input: ``(1, TEXT_TOKENS[size])``."""
    return token_ids(vocab_size, TEXT_TOKENS[size], low)


def decoder_ids(vocab_size: int, low: int = 3) -> torch.Tensor:
    """Decoder input of an encoder-decoder model: ``(1, DECODER_TOKENS)``."""
    return token_ids(vocab_size, DECODER_TOKENS, low, kind="decoder_ids")


def floats(*shape: int, kind: str = "features", requires_grad: bool = True) -> torch.Tensor:
    """Standard-normal float32 input of ``shape`` that requires grad (so it is a graph leaf)."""
    x = torch.randn(*shape, generator=generator(kind), device="cpu", dtype=torch.get_default_dtype())
    return x.requires_grad_(requires_grad)


def image(side: int, channels: int = 3) -> torch.Tensor:
    """``(1, channels, side, side)`` image that requires grad."""
    return floats(1, channels, side, side, kind="image")


def audio(samples: int) -> torch.Tensor:
    """``(1, samples)`` raw waveform that requires grad."""
    return floats(1, samples, kind="audio")


def tv_class(module: str, name: str) -> Any:
    """A torchvision class or function, imported lazily: ``tv_class("resnet", "Bottleneck")``."""
    return getattr(importlib.import_module(f"torchvision.models.{module}"), name)


def hf_class(name: str) -> Any:
    """A transformers class by name, imported lazily (transformers loads model code on first access)."""
    import transformers

    return getattr(transformers, name)


def hf_model(model_class: str, config_class: str, config: Mapping[str, Any], attn: str | None,
             no_cache: bool = False) -> torch.nn.Module:
    """Instantiate ``transformers.<model_class>(transformers.<config_class>(**config))`` with random weights.

    ``attn`` becomes ``attn_implementation`` (it propagates to sub-configs of composite models); None
    keeps the class default (for models without attention). ``no_cache=True`` sets ``use_cache=False``
    on the config and its sub-configs: with the default KV cache, decoders concatenate the empty past
    keys/values and the graph gains CatBackward0 nodes that are not part of the model's computation.
    """
    kwargs = dict(config)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    cfg = hf_class(config_class)(**kwargs)
    if no_cache:
        for sub in (cfg, *(getattr(cfg, key, None) for key in ("text_config", "decoder", "language_config"))):
            if sub is not None and hasattr(sub, "use_cache"):
                sub.use_cache = False
    return hf_class(model_class)(cfg)
