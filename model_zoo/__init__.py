"""model_zoo: real architectures with random weights for auditing dynlrp, at a ``tiny`` and a ``full`` size.

    import model_zoo
    entry = model_zoo.get("resnet50")
    model, args, kwargs = entry.build(size="tiny", seed=0)   # eval mode, deterministic
    out = entry.output(model(*args, **kwargs))               # the tensor to explain

Conventions (see the builder modules for each entry):

* every model is built from a configuration written in code (the published one at ``full`` size), with
  random weights; nothing is downloaded;
* ``tiny`` keeps the set of autograd node types of ``full``; it builds and runs in well under 2 s;
* transformers decoders are built with ``use_cache=False``: the default KV cache concatenates the
  empty past keys/values (CatBackward0 nodes that are not part of the model's computation);
* ``attn=None`` means the entry's first attention implementation, ``eager``;
* inputs: text 1 x 16 tokens (tiny: 8), decoders of encoder-decoders 4 tokens, images 224 (SigLIP2 384;
  tiny smaller); float inputs require grad; all inputs are deterministic functions of ``seed``;
* ``entry.num_params(size)`` counts parameters with every parameter on the meta device (no memory);
  ``count_nodes(tensor)`` counts the autograd nodes behind a tensor by type (AccumulateGrad included);
* ``mamba_130m_ssm`` needs the optional ``mamba_ssm`` package (:class:`ModelUnavailableError` with
  the install command otherwise); on machines without its CUDA extension it runs mamba_ssm's own
  reference paths (see :mod:`model_zoo.ssm`).

``python -m model_zoo list [--select SPEC]`` prints the zoo as a table.
"""
from __future__ import annotations

from . import audio, multimodal, ssm, text, vision  # noqa: F401  (registration side effects)
from .graph import count_nodes
from .registry import (
    SIZES,
    Entry,
    ModelUnavailableError,
    UnknownModelError,
    entries,
    get,
    names,
    register_model,
    select,
    tags,
)

__all__ = [
    "SIZES", "Entry", "ModelUnavailableError", "UnknownModelError", "count_nodes", "entries", "get", "names",
    "register_model", "select", "tags",
]
