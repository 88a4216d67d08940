"""Selective scan: the blocked ``torch`` backend against the sequential reference, dispatch and errors."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import rel_err
from vmunetv2_monai.ops.selective_scan import available_backends, resolve_backend, selective_scan
from vmunetv2_monai.ops.selective_scan.blocked import selective_scan_blocked
from vmunetv2_monai.ops.selective_scan.reference import selective_scan_reference

MAMBA_OK, MAMBA_REASON = available_backends()["mamba"]


def _inputs(
    batch: int, dim: int, length: int, n: int, groups: int | None, gate: bool, dtype=torch.float32, softplus=True
):
    """Random scan inputs with realistic scales (decaying A, positive step sizes); all require grad.

    Without softplus the raw delta is the step size, so it is drawn positive as the model would feed it.
    """
    u = torch.randn(batch, dim, length, dtype=dtype)
    delta = torch.randn(batch, dim, length, dtype=dtype) * 0.5 - 1.0
    if not softplus:
        delta = torch.nn.functional.softplus(delta)
    A = -torch.exp(torch.randn(dim, n, dtype=dtype) * 0.5)
    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    B, C = torch.randn(bc_shape, dtype=dtype), torch.randn(bc_shape, dtype=dtype)
    D = torch.randn(dim, dtype=dtype)
    z = torch.randn(batch, dim, length, dtype=dtype) if gate else None
    bias = torch.randn(dim, dtype=dtype) * 0.1
    return [t.requires_grad_() if t is not None else None for t in (u, delta, A, B, C, D, z, bias)]


CASES = [
    # batch, dim, length, n, groups, gate, softplus
    (2, 8, 37, 4, None, False, True),
    (2, 8, 37, 4, 2, True, False),
    (1, 16, 129, 16, 4, False, True),
    (3, 4, 1, 3, None, True, True),
    (1, 8, 4096, 16, 4, False, True),
    (1, 4, 4096, 4, None, True, False),
]


@pytest.mark.parametrize("batch,dim,length,n,groups,gate,softplus", CASES)
def test_torch_backend_matches_reference(batch, dim, length, n, groups, gate, softplus) -> None:
    args = _inputs(batch, dim, length, n, groups, gate, softplus=softplus)
    leaves = [a for a in args if a is not None]
    out_ref = selective_scan_reference(*args, delta_softplus=softplus)
    out = selective_scan(*args, delta_softplus=softplus, backend="torch")
    assert out.shape == (batch, dim, length) and out.dtype == torch.float32
    assert rel_err(out, out_ref) < 1e-5
    weight = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad((out_ref * weight).sum(), leaves)
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.shape == g_ref.shape
        assert rel_err(g, g_ref) < 1e-5


@pytest.mark.parametrize("block", [1, 3, 64, 1000])
def test_block_size_does_not_change_result(block: int) -> None:
    args = _inputs(2, 6, 50, 5, 3, True, torch.float64)
    ref = selective_scan_reference(*args, delta_softplus=True)
    out = selective_scan_blocked(*args, delta_softplus=True, block=block)
    assert rel_err(out, ref) < 1e-12


def test_torch_backend_gradcheck_float64() -> None:
    u, delta, A, B, C, D, z, bias = _inputs(1, 4, 9, 3, 2, True, torch.float64)

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan_blocked(u, delta, A, B, C, D, z, bias, delta_softplus=True, block=4)

    assert torch.autograd.gradcheck(fn, (u, delta, A, B, C, D, z, bias))


def test_backward_keeps_no_per_step_state() -> None:
    """Saved tensors are the inputs plus block-boundary states, far less than the (B, D, L, N) history."""
    batch, dim, length, n = 1, 32, 2048, 16
    args = _inputs(batch, dim, length, n, None, False)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_blocked(*args, delta_softplus=True)
    assert sum(saved.values()) < batch * dim * length * n / 2


def test_auto_on_cpu_never_picks_mamba_and_says_why() -> None:
    """On CPU tensors auto picks the compiled kernel (``cpu_fused``) when it works, else ``torch``; never ``mamba``."""
    cpu_ok, cpu_reason = available_backends()["cpu"]
    assert cpu_reason
    assert resolve_backend("auto", torch.device("cpu")) == ("cpu_fused" if cpu_ok else "torch")


@pytest.mark.skipif(MAMBA_OK, reason="mamba-ssm kernel is usable here; this test covers the fallback")
def test_auto_on_cuda_without_kernel_warns_with_reason_and_install_command(monkeypatch, caplog) -> None:
    """Resolving for a CUDA device needs no CUDA tensor: the fallback to ``torch`` is a WARNING, not INFO."""
    import vmunetv2_monai.ops.selective_scan as sel

    monkeypatch.setattr(sel, "_logged", set())
    with caplog.at_level(logging.INFO, logger=sel.__name__):
        assert resolve_backend("auto", torch.device("cuda")) == "torch"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "mamba unavailable" in warnings[0].getMessage() and "install_gpu.sh" in warnings[0].getMessage()


def test_auto_on_cpu_does_not_warn(monkeypatch, caplog) -> None:
    import vmunetv2_monai.ops.selective_scan as sel

    monkeypatch.setattr(sel, "_logged", set())
    with caplog.at_level(logging.INFO, logger=sel.__name__):
        resolve_backend("auto", torch.device("cpu"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_forcing_mamba_on_cpu_tensors_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="scan backend 'mamba' is unavailable"):
        resolve_backend("mamba", torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torch", "reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_our_backends_compute_in_fp32_under_autocast(backend, dtype) -> None:
    """Autocast would run the blocked scan's matmul in half precision (relative error ~3e-3 in bf16)."""
    if backend == "cpu" and not available_backends()["cpu"][0]:
        pytest.skip(f"cpu kernel unavailable: {available_backends()['cpu'][1]}")
    args = _inputs(2, 8, 300 if backend != "reference" else 40, 16, 4, True)
    with torch.no_grad():
        want = selective_scan(*args, delta_softplus=True, backend=backend)
        with torch.autocast("cpu", dtype=dtype):
            got = selective_scan(*args, delta_softplus=True, backend=backend)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 1e-6


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="scan_backend must be one of"):
        resolve_backend("cuda-fast", torch.device("cpu"))


@pytest.mark.skipif(MAMBA_OK, reason="mamba-ssm kernel is usable here; this test covers the unusable case")
def test_forcing_mamba_without_kernel_explains_how_to_install() -> None:
    args = _inputs(1, 4, 8, 2, None, False)
    with pytest.raises(RuntimeError, match="MAMBA_FORCE_BUILD=TRUE pip install"):
        selective_scan(*args, backend="mamba")
    assert MAMBA_REASON  # the probe keeps the real reason


def test_bad_shapes_name_the_argument() -> None:
    u, delta, A, B, C, D, z, bias = _inputs(1, 4, 8, 2, None, False)
    with pytest.raises(ValueError, match="delta must have the shape of u"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="group count"):
        selective_scan(u, delta, A, torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8))
    with pytest.raises(ValueError, match="D must have shape"):
        selective_scan(u, delta, A, B, C, D=torch.ones(3))


@pytest.mark.skipif(not MAMBA_OK, reason=f"mamba-ssm CUDA kernel unavailable: {MAMBA_REASON}")
@pytest.mark.parametrize("batch,dim,length,n,groups,gate,softplus", CASES[:4])
def test_mamba_backend_matches_torch_backend(batch, dim, length, n, groups, gate, softplus) -> None:
    dev = torch.device("cuda")
    host = _inputs(batch, dim, length, n, groups, gate, softplus=softplus)
    args = [a.detach().to(dev).requires_grad_() if a is not None else None for a in host]
    leaves = [a for a in args if a is not None]
    out_m = selective_scan(*args, delta_softplus=softplus, backend="mamba")
    out_t = selective_scan(*args, delta_softplus=softplus, backend="torch")
    assert rel_err(out_m, out_t) < 1e-4
    g_m = torch.autograd.grad(out_m.sum(), leaves)
    g_t = torch.autograd.grad(out_t.sum(), leaves)
    for a, b in zip(g_m, g_t, strict=True):
        assert rel_err(a, b) < 1e-3


@pytest.mark.parametrize("groups,gate,softplus", [(None, False, True), (2, True, False)])
def test_scripted_export_scan_matches_reference(groups, gate, softplus) -> None:
    from vmunetv2_monai.ops.selective_scan.scripted import selective_scan_scripted

    args = _inputs(2, 8, 33, 4, groups, gate, softplus=softplus)
    with torch.no_grad():
        ref = selective_scan_reference(*args, delta_softplus=softplus)
        assert rel_err(selective_scan_scripted(*args, delta_softplus=softplus), ref) < 1e-5
