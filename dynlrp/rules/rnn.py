"""Recurrent layers: ``MkldnnRnnLayerBackward0``, the oneDNN kernel of one layer and one direction.

On CPU in float32, ``nn.LSTM`` runs each layer and direction as one fused ``mkldnn_rnn_layer`` node
(torch 2.14: LSTM only; ``nn.GRU``/``nn.RNN`` and float64 run torch's native cells, whose ops have
rules of their own). The node is explained by decomposition (:mod:`dynlrp.rules.decompose`):
:func:`rnn_layer` re-runs the layer with plain torch ops, built like torch's native CPU cells
(``aten/src/ATen/native/RNN.cpp``), so the LRP rules see the same graph as for ``model.double()``:

    projected = linear(x, W_ih, b_ih)          (all steps at once, [T, B, G*H])
    LSTM: i, f, g, o = chunk(linear(h, W_hh, b_hh) + projected[t], 4)
          c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
    GRU:  r = sigmoid(hr + xr);  z = sigmoid(hz + xz);  n = tanh(xn + hn * r);  h' = (h - n) * z + n
    RNN:  h' = tanh | relu(linear(h, W_hh, b_hh) + projected[t])

Node layout (torch 2.14): input slots ``input [T, B, I]`` (time-major whatever ``batch_first``),
``weight0..3 = W_ih, W_hh, b_ih, b_hh`` (slots 3, 4 are ``(None, 0)`` and not biases when
``has_biases`` is false), ``hx_``, ``cx_`` ``[B, H]``; outputs ``output [T, B, H]``, ``hy``, ``cy`` (and an
undifferentiable workspace). ``reverse`` runs the steps from last to first and keeps the output in
time order. ``mode``: 0 RNN_RELU, 1 RNN_TANH, 2 LSTM, 3 GRU (gate order as in torch's docs: i, f, g,
o and r, z, n). All operands are saved, so no promise is needed. Packed sequences do not reach this
kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext
from ..errors import RuleError
from .decompose import register_decomposition
from .registry import saved_values

MODES = {0: "RNN_RELU", 1: "RNN_TANH", 2: "LSTM", 3: "GRU"}


def _lstm_cell(projected, h, c, w_hh, b_hh):
    gates = F.linear(h, w_hh, b_hh) + projected
    i, f, g, o = gates.chunk(4, 1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def _gru_cell(projected, h, c, w_hh, b_hh):
    xr, xz, xn = projected.chunk(3, 1)
    hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, 1)
    r = (hr + xr).sigmoid()
    z = (hz + xz).sigmoid()
    n = (xn + hn * r).tanh()
    return (h - n) * z + n, c


def _tanh_cell(projected, h, c, w_hh, b_hh):
    return (F.linear(h, w_hh, b_hh) + projected).tanh(), c


def _relu_cell(projected, h, c, w_hh, b_hh):
    return (F.linear(h, w_hh, b_hh) + projected).relu(), c


CELLS = {0: _relu_cell, 1: _tanh_cell, 2: _lstm_cell, 3: _gru_cell}


def rnn_layer(input: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
              b_hh: torch.Tensor | None, hx: torch.Tensor, cx: torch.Tensor | None, *, mode: int = 2,
              reverse: bool = False, split_bias: bool = False,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One layer, one direction of torch's RNN family on a time-major input ``[T, B, I]``.

    Arguments in the slot order of ``MkldnnRnnLayerBackward0``; returns ``(output [T, B, H], h_T, c_T)``
    (``c_T = cx`` for GRU/RNN modes), output numbers 0, 1, 2 of the node.
    """
    if mode not in CELLS:
        raise RuleError(f"unknown RNN mode {mode}; known: {MODES}")
    cell = CELLS[mode]
    if split_bias and b_ih is not None:
        steps = (torch.matmul(input, w_ih.t()) + b_ih).unbind(0)
    else:
        steps = F.linear(input, w_ih, b_ih).unbind(0)
    outputs: list[torch.Tensor | None] = [None] * len(steps)
    h, c = hx, cx
    for t in (range(len(steps) - 1, -1, -1) if reverse else range(len(steps))):
        h, c = cell(steps[t], h, c, w_hh, b_hh)
        outputs[t] = h
    return torch.stack(outputs, 0), h, c


saved_values("MkldnnRnnLayerBackward0",
             inputs={0: "_saved_input", 1: "_saved_weight0", 2: "_saved_weight1", 5: "_saved_hx_", 6: "_saved_cx_"},
             outputs={0: "_saved_result0", 1: "_saved_result1", 2: "_saved_result2"})


def _layer_inputs(ctx: NodeContext):
    biases = ctx.saved("has_biases")
    return (ctx.saved("input"), ctx.saved("weight0"), ctx.saved("weight1"),
            ctx.saved("weight2") if biases else None, ctx.saved("weight3") if biases else None,
            ctx.saved("hx_"), ctx.saved("cx_"))


def _layer_params(ctx: NodeContext):
    if len(ctx.saved("batch_sizes") or ()):
        raise RuleError("MkldnnRnnLayerBackward0 with packed sequences (batch_sizes) is not supported")
    return {"mode": ctx.saved("mode"), "reverse": bool(ctx.saved("reverse")), "split_bias": _transposed_input(ctx)}


def _transposed_input(ctx: NodeContext) -> bool:
    """Whether the layer reads a ``batch_first`` input that the kernel transposed and made contiguous
    (``x.transpose(0, 1).contiguous()``). torch's native layer multiplies that non-contiguous input as
    ``matmul(x, W_ih^T)`` and adds ``b_ih`` separately (``at::linear``); elsewhere it uses ``addmm``."""
    child = ctx.edges[0][0]
    if not ctx.saved("batch_first") or child is None or type(child).__name__ != "CloneBackward0":
        return False
    below = child.next_functions[0][0]
    return below is not None and type(below).__name__ == "TransposeBackward0"


register_decomposition("MkldnnRnnLayerBackward0", rnn_layer, inputs=_layer_inputs, params=_layer_params)

__all__ = ["CELLS", "MODES", "rnn_layer"]
