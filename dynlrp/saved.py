"""Reading a node's ``_saved_*`` attributes with named errors instead of autograd's RuntimeErrors."""
from __future__ import annotations

from typing import Any

from .errors import GraphFreedError, InplaceModifiedError
from .graph import Node, node_type


def read_saved(node: Node, attr: str) -> Any:
    """``getattr(node, attr)``; freed or in-place-modified saved tensors raise named errors."""
    try:
        return getattr(node, attr)
    except RuntimeError as err:
        text = str(err)
        if "freed" in text or "second time" in text:
            raise GraphFreedError(
                f"{node_type(node)}.{attr} was freed by an earlier backward(); explain before calling"
                " backward(), or call backward(retain_graph=True)"
            ) from err
        if "inplace operation" in text:
            raise InplaceModifiedError(
                f"{node_type(node)}.{attr} was modified in place after the forward saved it, so its"
                " forward value is gone; run the model without that in-place update (e.g. disable"
                " caches such as use_cache=True) or use an out-of-place op"
            ) from err
        raise
