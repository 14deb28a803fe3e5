"""mamba-ssm's fused Mamba mixer (``MambaInnerFnBackward``) explained by decomposition.

The CUDA extensions ``causal_conv1d_cuda`` and ``selective_scan_cuda`` are absent on CPU: mamba_ssm is
imported as ``model_zoo.ssm`` does, and the real ``MambaInnerFn`` runs with fake kernels monkeypatched
into ``mamba_ssm.ops.selective_scan_interface``: ``causal_conv1d_fwd_function``/``..._bwd_function``
built on the causal-conv1d reference math (:func:`dynlrp.rules.mamba_inner.causal_conv1d`, checked
against a naive loop below), the ``selective_scan_cuda`` fake of tests/test_selective_scan.py (on
mamba_ssm's ``selective_scan_ref``; dynlrp's reference in float64), and ``rms_norm_forward`` (Triton)
on mamba_ssm's ``rms_norm_ref``. The backward of each fake is autograd through its reference.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dynlrp
from dynlrp.rules.mamba_inner import causal_conv1d, mamba_inner
from model_zoo.ssm import import_mamba_ssm

try:
    from . import test_selective_scan as sst
except ImportError:
    import test_selective_scan as sst

# ruff: noqa: N803 -- the names of mamba_ssm's arguments (A, B, C, D) and of the kernels' API

NODE = "MambaInnerFnBackward"
BATCH, D_MODEL, DIM, STATE, RANK, WIDTH, LENGTH = 2, 3, 4, 3, 2, 3, 5


def _vjp(ref, args, douts):
    """Gradients of ``ref(*args)`` w.r.t. the floating tensor args (zeros where unused, None for None)."""
    with torch.enable_grad():
        leaves = [a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
        result = ref(*leaves)
        used = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        grads = iter(torch.autograd.grad(result, used, douts, allow_unused=True))
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            g = next(grads)
            out.append(torch.zeros_like(leaf) if g is None else g)
        else:
            out.append(None)
    return out


def fake_conv_fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
    assert seq_idx is None and initial_states is None and final_states_out is None
    with torch.no_grad():
        return causal_conv1d(x, weight, bias, "silu" if silu_activation else None)


def fake_conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial_states,
                  silu_activation):
    def ref(x, weight, bias):
        return causal_conv1d(x, weight, bias, "silu" if silu_activation else None)

    gx, gw, gb = _vjp(ref, [x, weight, bias], dout)
    if dx is not None:
        dx.copy_(gx)  # the kernel writes into the pre-allocated dx (a view of MambaInnerFn's dxz)
        gx = dx
    return gx, gw, gb, None


class FakeScanKernel(sst.FakeKernel):
    """``selective_scan_cuda`` as MambaInnerFn calls it: ``bwd`` fills the pre-allocated ``dz`` and,
    with ``recompute_out_z``, also returns ``out_z``."""

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        grads = super().bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus,
                            recompute_out_z)
        if z is None:
            return grads
        grads = list(grads)
        if dz is not None:
            dz.copy_(grads[7])
            grads[7] = dz
        if recompute_out_z:
            with torch.no_grad():
                grads.append(self._ref(u)(u, delta, A, B, C, D, z, delta_bias, delta_softplus))
        return tuple(grads)


@pytest.fixture(scope="module")
def interface():
    ns = import_mamba_ssm()  # raises ModelUnavailableError with the reason if mamba_ssm cannot be imported
    import mamba_ssm.ops.selective_scan_interface as interface

    interface._rms_norm_ref = ns.rms_norm_ref
    return interface


def patch_kernels(interface, setattr_):
    """Install the CPU fakes with ``setattr_(module, name, value)`` (``monkeypatch.setattr`` or a
    restoring helper)."""
    import mamba_ssm.ops.triton.layer_norm as norms

    def fake_rms_norm_forward(x, weight, bias, eps=1e-6, is_rms_norm=True):
        assert is_rms_norm
        return norms.rms_norm_ref(x, weight, bias, eps=eps)

    def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                              final_states_out=None, activation=None):
        return causal_conv1d(x, weight, bias, activation)

    setattr_(interface, "causal_conv1d_fwd_function", fake_conv_fwd)
    setattr_(interface, "causal_conv1d_bwd_function", fake_conv_bwd)
    setattr_(interface, "causal_conv1d_fn", fake_causal_conv1d_fn)  # for mamba_inner_ref
    setattr_(interface, "selective_scan_cuda", FakeScanKernel(interface.selective_scan_ref))
    setattr_(interface, "rms_norm_forward", fake_rms_norm_forward)


@pytest.fixture
def kernel(interface, monkeypatch):
    patch_kernels(interface, monkeypatch.setattr)
    return interface


CONFIGS = {
    "default": dict(conv_bias=True, D=True, delta_bias=True),
    "biases_lvl0": dict(out_proj_bias=True, proj_bias=True, D=True, checkpoint_lvl=0),
    "rms": dict(conv_bias=True, D=True, delta_bias=True, rms=True),
    "given_bc_no_softplus": dict(conv_bias=True, given_bc=True, out_proj_bias=True, delta_softplus=False),
}


def _operands(cfg: dict, dtype: torch.dtype, seed: int = 0):
    """(data, parameters, options): data (xz, and a given B/C) are explained, parameters are not."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    data = dict(xz=rand(BATCH, 2 * DIM, LENGTH))
    if cfg.get("given_bc"):
        data.update(B=rand(BATCH, STATE, LENGTH), C=rand(BATCH, STATE, LENGTH))
    data = {k: v.requires_grad_(True) for k, v in data.items()}
    n_dbl = RANK + (0 if cfg.get("given_bc") else 2 * STATE)
    params = dict(conv1d_weight=rand(DIM, 1, WIDTH, scale=0.5), x_proj_weight=rand(n_dbl, DIM, scale=0.5),
                  delta_proj_weight=rand(DIM, RANK, scale=0.5), out_proj_weight=rand(D_MODEL, DIM, scale=0.5),
                  A=-torch.rand(DIM, STATE, generator=g).to(dtype) - 0.5)
    if cfg.get("conv_bias"):
        params["conv1d_bias"] = rand(DIM, scale=0.1)
    if cfg.get("out_proj_bias"):
        params["out_proj_bias"] = rand(D_MODEL, scale=0.1)
    if cfg.get("D"):
        params["D"] = rand(DIM)
    if cfg.get("delta_bias"):
        params["delta_bias"] = rand(DIM, scale=0.1)
    if cfg.get("proj_bias"):
        params.update(B_proj_bias=rand(STATE, scale=0.1), C_proj_bias=rand(STATE, scale=0.1))
    if cfg.get("rms"):
        params.update(b_rms_weight=1 + rand(STATE, scale=0.2), c_rms_weight=1 + rand(STATE, scale=0.2),
                      dt_rms_weight=1 + rand(DIM, scale=0.2))
    params = {k: nn.Parameter(v) for k, v in params.items()}
    options = dict(delta_softplus=cfg.get("delta_softplus", True), checkpoint_lvl=cfg.get("checkpoint_lvl", 1))
    return data, params, options


ORDER = ("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "out_proj_weight",
         "out_proj_bias", "A", "B", "C", "D", "delta_bias", "B_proj_bias", "C_proj_bias")
RMS = ("b_rms_weight", "c_rms_weight", "dt_rms_weight")


def call_fused(interface, data, params, options):
    get = {**data, **params}.get
    return interface.MambaInnerFn.apply(*(get(k) for k in ORDER), options["delta_softplus"],
                                        options["checkpoint_lvl"], *(get(k) for k in RMS), 1e-6)


def call_reference(data, params, options):
    args = {"conv1d_bias": None, "out_proj_bias": None, **data, **params}
    return mamba_inner(**args, delta_softplus=options["delta_softplus"], b_c_dt_rms_eps=1e-6)


def _explain(call, data, params, options, target, record):
    if record:
        with dynlrp.record() as rec:
            out = call(data, params, options)
            rec.keep(out)  # Function.apply bypasses the recorder's TorchFunctionMode
    else:
        out = call(data, params, options)
    exp = dynlrp.explain(out, target=target, inputs=list(data.values()), rules="attnlrp")
    return out, exp, [exp.relevance(t) for t in data.values()]


def test_causal_conv1d_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    want = torch.zeros(2, 3, 6)
    for t in range(6):
        for k in range(4):  # weight[:, -1] multiplies the current step
            if t - 3 + k >= 0:
                want[:, :, t] += w[:, k] * x[:, :, t - 3 + k]
    want = torch.nn.functional.silu(want + b[:, None])
    torch.testing.assert_close(causal_conv1d(x, w, b, "silu"), want)
    torch.testing.assert_close(causal_conv1d(x, w.unsqueeze(1), b, "silu"), want)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_matches_mamba_inner_fn_and_ref(kernel, name):
    data, params, options = _operands(CONFIGS[name], torch.float32)
    with torch.no_grad():
        got = call_reference(data, params, options)
        torch.testing.assert_close(got, call_fused(kernel, data, params, options), rtol=1e-5, atol=1e-6)
        if not CONFIGS[name].get("rms") and options["delta_softplus"]:  # mamba_inner_ref: softplus always, no norms
            get = {**data, **params}.get
            want = kernel.mamba_inner_ref(*(get(k) for k in ORDER))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_decomposition_equals_plain_torch_reference(kernel, name, dtype):
    cfg = CONFIGS[name]
    # with RMS norms mamba_ssm's backward is not the forward's derivative: record, so the check uses outputs
    record = bool(cfg.get("rms"))
    data, params, options = _operands(cfg, dtype)
    fused = lambda *a: call_fused(kernel, *a)  # noqa: E731
    out, exp, _ = _explain(fused, data, params, options, None, record)
    assert exp.fallbacks == {}
    rows = [row for row in exp.nodes if row.node_type == NODE]
    assert len(rows) == 1 and rows[0].rule == "decompose[_mamba_inner_node]"
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    _, exp, got = _explain(fused, data, params, options, target, record)
    ref_data, ref_params, _ = _operands(cfg, dtype)
    _, ref_exp, want = _explain(call_reference, ref_data, ref_params, options, target, False)
    assert NODE not in {row.node_type for row in ref_exp.nodes}
    sst.assert_fused_matches_reference(exp, got, ref_exp, want, dtype, NODE)


def test_rms_backward_is_not_the_derivative_without_a_recording(kernel):
    """Documents mamba_ssm 2.3's backward with RMS norms: without a recording the check falls back to the
    VJP, which disagrees with the forward's derivative, and the decomposition refuses the node."""
    data, params, options = _operands(CONFIGS["rms"], torch.float64)
    out = call_fused(kernel, data, params, options)
    with pytest.raises(dynlrp.errors.DecompositionMismatchError):
        dynlrp.explain(out, target=torch.ones_like(out), inputs=list(data.values()), rules="attnlrp")
