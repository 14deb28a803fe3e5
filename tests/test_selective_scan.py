"""mamba-ssm's fused selective scan (``SelectiveScanFnBackward``) explained by decomposition.

The CUDA extension ``selective_scan_cuda`` is absent on CPU: mamba_ssm is imported as
``model_zoo.ssm`` does (a stub during the import), and the real ``SelectiveScanFn`` runs with a fake
kernel whose ``fwd`` is mamba_ssm's own ``selective_scan_ref`` (float32) and whose ``bwd`` is autograd
through it. float64 (which the CUDA kernel does not take, and which ``selective_scan_ref`` computes in
float32) uses dynlrp's reference in the fake; that reference is checked against ``selective_scan_ref``
separately. CI installs mamba-ssm, so a missing package fails here.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dynlrp
from dynlrp.rules.selective_scan import selective_scan
from model_zoo.ssm import import_mamba_ssm

# ruff: noqa: N803, N806 -- the names of the selective-scan math (A, B, C, D) and of the kernel's API

NODE = "SelectiveScanFnBackward"
BATCH, DIM, STATE, LENGTH = 2, 4, 3, 5


@pytest.fixture(scope="module")
def scan():
    import_mamba_ssm()  # raises ModelUnavailableError with the reason if mamba_ssm cannot be imported
    import mamba_ssm.ops.selective_scan_interface as interface

    return interface


class FakeKernel:
    """``selective_scan_cuda`` on CPU: same arguments and results as the CUDA extension."""

    def __init__(self, reference):
        self.reference = reference

    def _ref(self, u):
        return selective_scan if u.dtype == torch.float64 else self.reference

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ref = self._ref(u)
        with torch.no_grad():
            out, last = ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state=True)
            x = torch.zeros(*last.shape[:2], 1, 2 * last.shape[2], dtype=last.dtype)  # one chunk: (a, b) pairs
            x[..., 1::2] = last.unsqueeze(2)
            if z is None:
                return out, x
            return out, x, ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        args = [u, delta, A, B, C, D, z, delta_bias]
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_(True) if a is not None else None for a in args]
            result = self._ref(u)(*leaves, delta_softplus=delta_softplus)
            used = [leaf for leaf in leaves if leaf is not None]
            grads = iter(torch.autograd.grad(result, used, dout, allow_unused=True))
        grads = [next(grads) if leaf is not None else None for leaf in leaves]
        grads = [torch.zeros_like(a) if g is None and a is not None else g for g, a in zip(grads, args)]
        du, ddelta, dA, dB, dC, dD, dz_, ddelta_bias = grads
        return (du, ddelta, dA, dB, dC, dD, ddelta_bias) + ((dz_,) if z is not None else ())


@pytest.fixture
def kernel(scan, monkeypatch):
    monkeypatch.setattr(scan, "selective_scan_cuda", FakeKernel(scan.selective_scan_ref))
    return scan


CONFIGS = {
    "full": dict(bc="batch", D=True, z=True, delta_bias=True, delta_softplus=True),
    "minimal": dict(bc="constant"),
    "groups_last_state": dict(bc="groups", D=True, delta_softplus=True, return_last_state=True),
    "batch_z_no_D": dict(bc="batch", z=True, delta_bias=True),
}


def _operands(cfg: dict, dtype: torch.dtype, seed: int = 0):
    """(data, parameters, options): data are explained, parameters (A, D, delta_bias) are not."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    bc = {"constant": (DIM, STATE), "batch": (BATCH, STATE, LENGTH), "groups": (BATCH, 2, STATE, LENGTH)}[cfg["bc"]]
    data = dict(u=rand(BATCH, DIM, LENGTH), delta=rand(BATCH, DIM, LENGTH, scale=0.5).abs(), B=rand(*bc), C=rand(*bc))
    if cfg.get("z"):
        data["z"] = rand(BATCH, DIM, LENGTH)
    data = {k: v.requires_grad_(True) for k, v in data.items()}
    params = dict(A=nn.Parameter(-torch.rand(DIM, STATE, generator=g).to(dtype) - 0.5))
    if cfg.get("D"):
        params["D"] = nn.Parameter(rand(DIM))
    if cfg.get("delta_bias"):
        params["delta_bias"] = nn.Parameter(rand(DIM, scale=0.1))
    options = dict(delta_softplus=cfg.get("delta_softplus", False),
                   return_last_state=cfg.get("return_last_state", False))
    return data, params, options


def _call(fn, data, params, options):
    """``fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)`` positionally."""
    get = {**data, **params}.get
    result = fn(get("u"), get("delta"), get("A"), get("B"), get("C"), get("D"), get("z"), get("delta_bias"),
                options["delta_softplus"], options["return_last_state"])
    return result[0] if options["return_last_state"] else result


def _explain(fn, data, params, options, target, rules="attnlrp"):
    out = _call(fn, data, params, options)
    exp = dynlrp.explain(out, target=target, inputs=list(data.values()), rules=rules)
    return out, exp, [exp.relevance(t) for t in data.values()]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_matches_mamba_selective_scan_ref(scan, name):
    data, params, options = _operands(CONFIGS[name], torch.float32)
    options["return_last_state"] = True
    get = {**data, **params}.get
    args = (get("u"), get("delta"), get("A"), get("B"), get("C"), get("D"), get("z"), get("delta_bias"))
    want = scan.selective_scan_ref(*args, **options)
    got = selective_scan(*args, **options)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    got64 = selective_scan(*(a.double() if a is not None else None for a in args), **options)
    for g, w in zip(got64, want):  # float64 agrees up to the float32 rounding of selective_scan_ref
        torch.testing.assert_close(g.float(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_decomposition_equals_plain_torch_reference(kernel, name, dtype):
    cfg = CONFIGS[name]
    data, params, options = _operands(cfg, dtype)
    out, exp, got = _explain(kernel.SelectiveScanFn.apply, data, params, options, None)
    assert exp.fallbacks == {}
    rows = [row for row in exp.nodes if row.node_type == NODE]
    assert len(rows) == 1 and rows[0].rule == "decompose[_selective_scan_node]"
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    _, exp, got = _explain(kernel.SelectiveScanFn.apply, data, params, options, target)
    ref_data, ref_params, _ = _operands(cfg, dtype)
    _, ref_exp, want = _explain(selective_scan, ref_data, ref_params, options, target)
    assert NODE not in {row.node_type for row in ref_exp.nodes}
    assert_fused_matches_reference(exp, got, ref_exp, want, dtype, NODE)


class TinyScan(nn.Module):
    """A Mamba-like mixer: projections to delta, B, C, z, then the fused scan."""

    def __init__(self, apply, dim=DIM, state=STATE):
        super().__init__()
        self.apply_scan = apply
        self.delta = nn.Linear(dim, dim)
        self.bc = nn.Linear(dim, 2 * state, bias=False)
        self.gate = nn.Linear(dim, dim)
        self.A = nn.Parameter(-torch.rand(dim, state) - 0.5)
        self.D = nn.Parameter(torch.randn(dim))
        self.delta_bias = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, u):  # u: (batch, dim, L)
        t = u.transpose(1, 2)
        delta = self.delta(t).transpose(1, 2)
        B, C = self.bc(t).transpose(1, 2).chunk(2, dim=1)
        z = self.gate(t).transpose(1, 2)
        return self.apply_scan(u, delta, self.A, B, C, self.D, z, self.delta_bias, True, False)


def test_audit_covers_the_scan(kernel):
    torch.manual_seed(0)
    model = TinyScan(kernel.SelectiveScanFn.apply)
    report = dynlrp.audit(model, torch.randn(BATCH, DIM, LENGTH), rules="attnlrp")
    assert report.error is None
    assert report.coverage == 1.0 and not report.missing
    stats = report.ops[NODE]
    assert stats.covered and stats.count == 1 and stats.rule == "decompose[_selective_scan_node]"
    assert stats.max_error < 1e-4
    assert report.conservation["unexplained"] < 1e-4
    assert report.backward_ok


def assert_fused_matches_reference(exp, got, ref_exp, want, dtype, node):
    """The fused node's explanation equals the plain-torch one; its ledger row is exact to dtype."""
    rtol = 1e-6 if dtype == torch.float64 else 1e-4
    assert all(w.abs().max() > 0 for w in want)
    for g, w in zip(got, want):
        assert (g.double() - w.double()).abs().max() <= rtol * w.double().abs().max() + 1e-12
    assert exp.conservation.unexplained == pytest.approx(ref_exp.conservation.unexplained, abs=rtol)
    assert exp.conservation.inputs == pytest.approx(ref_exp.conservation.inputs, rel=rtol, abs=1e-9)
    ledger = 1e-9 if dtype == torch.float64 else 1e-4
    assert max(row.error for row in exp.nodes if row.node_type == node) < ledger
