"""The compiled ``cpu`` selective-scan backend against the sequential ``reference``, and its fallback."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from vmunetv2_monai.ops.selective_scan import available_backends, resolve_backend, selective_scan
from vmunetv2_monai.ops.selective_scan import cpu as cpu_mod
from vmunetv2_monai.ops.selective_scan.cpu import cpu_status, cpu_unsupported_reason, selective_scan_cpu
from vmunetv2_monai.ops.selective_scan.reference import selective_scan_reference

CPU_OK, CPU_REASON = cpu_status()
needs_kernel = pytest.mark.skipif(not CPU_OK, reason=f"cpu scan kernel unavailable: {CPU_REASON}")
ENV_FORCED = os.environ.get("VMUNETV2_SCAN_BACKEND", "auto") != "auto"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(batch: int, dim: int, length: int, n: int, groups: int | None, gate: bool, seed: int) -> list:
    """Random scan inputs; B/C ungrouped (batch, N, L) when groups is None, else (batch, groups, N, L).

    delta + delta_bias is positive, so the scan is stable with and without softplus.
    """
    g = torch.Generator().manual_seed(seed)
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    return [
        torch.randn(batch, dim, length, generator=g),
        torch.rand(batch, dim, length, generator=g) * 0.5 + 0.3,
        -torch.rand(dim, n, generator=g) * 2.0 - 0.05,
        torch.randn(*bc, generator=g),
        torch.randn(*bc, generator=g),
        torch.randn(dim, generator=g),
        torch.randn(batch, dim, length, generator=g) if gate else None,
        torch.randn(dim, generator=g) * 0.1,
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _forward_backward(fn, args: list, softplus: bool, grad_out: torch.Tensor | None = None):
    leaves = [a.clone().requires_grad_(True) if a is not None else None for a in args]
    y = fn(*leaves, delta_softplus=softplus)
    grad_out = torch.randn_like(y) if grad_out is None else grad_out
    grads = torch.autograd.grad(y, [a for a in leaves if a is not None], grad_out)
    return y, grad_out, grads


@needs_kernel
@pytest.mark.parametrize(
    "batch, dim, length, n, groups, gate, softplus",
    [
        (2, 16, 100, 16, None, True, True),  # ungrouped B/C, L not a multiple of the chunk
        (1, 24, 333, 8, 3, False, False),
        (2, 32, 64, 32, 4, True, False),
        (1, 8, 7, 24, 2, False, True),  # shorter than one 8-step vector
        (1, 8, 4096, 16, 2, False, True),  # long sequence
    ],
)
def test_cpu_matches_reference(batch, dim, length, n, groups, gate, softplus):
    args = _inputs(batch, dim, length, n, groups, gate, seed=length + dim)
    y_ref, g_out, grads_ref = _forward_backward(selective_scan_reference, args, softplus)
    y, _, grads = _forward_backward(selective_scan_cpu, args, softplus, g_out)
    assert _rel(y, y_ref) < 1e-5
    present = [name for name, a in zip(NAMES, args, strict=True) if a is not None]
    for name, got, want in zip(present, grads, grads_ref, strict=True):
        assert got.shape == want.shape, name
        assert _rel(got, want) < 1e-5, name


@needs_kernel
def test_cpu_without_optional_inputs_and_no_grad():
    u, delta, A, B, C, *_ = _inputs(1, 16, 200, 16, None, False, seed=1)
    with torch.no_grad():
        y = selective_scan_cpu(u, delta, A, B, C)
    assert _rel(y, selective_scan_reference(u, delta, A, B, C)) < 1e-5


@needs_kernel
def test_dispatcher_uses_cpu_and_defers_float64():
    if not ENV_FORCED:  # auto means the fused SS2D path; a plain scan runs on the cpu kernel under that name
        assert resolve_backend("auto", torch.device("cpu")) == "cpu_fused"
    f32 = _inputs(1, 8, 50, 16, None, True, seed=3)
    assert _rel(selective_scan(*f32, backend="cpu_fused"), selective_scan_cpu(*f32)) == 0.0
    args = [a.double() if a is not None else None for a in _inputs(1, 8, 50, 16, None, True, seed=2)]
    assert cpu_unsupported_reason(args[0], args[2]) is not None
    y = selective_scan(*args, delta_softplus=True, backend="cpu")  # deferred to the torch backend
    assert y.dtype == torch.float64
    assert _rel(y, selective_scan_reference(*args, delta_softplus=True)) < 1e-10
    u, A = torch.zeros(1, 8, 4), torch.zeros(8, 12)
    assert "d_state" in cpu_unsupported_reason(u, A)


def test_status_reports_a_reason():
    ok, reason = available_backends()["cpu"]
    assert isinstance(ok, bool) and reason


def test_clean_fallback_when_disabled(monkeypatch):
    cpu_mod._load.cache_clear()
    monkeypatch.setenv("VMUNETV2_CPU_SCAN", "0")
    try:
        ok, reason = cpu_status()
        assert not ok and "VMUNETV2_CPU_SCAN=0" in reason
        if not ENV_FORCED:
            assert resolve_backend("auto", torch.device("cpu")) == "torch"
        with pytest.raises(RuntimeError, match="VMUNETV2_CPU_SCAN=0"):
            resolve_backend("cpu", torch.device("cpu"))
        u, delta, A, B, C, *_ = _inputs(1, 8, 40, 16, None, False, seed=3)
        y = selective_scan(u, delta, A, B, C, backend="auto")
        assert _rel(y, selective_scan_reference(u, delta, A, B, C)) < 1e-5
    finally:
        monkeypatch.delenv("VMUNETV2_CPU_SCAN")
        cpu_mod._load.cache_clear()


def test_clean_fallback_when_build_fails(monkeypatch, tmp_path):
    def broken_load(**kwargs):
        raise OSError("no compiler")

    cpu_mod._load.cache_clear()
    monkeypatch.setattr(cpu_mod.cpp_extension, "load", broken_load)
    monkeypatch.setenv("VMUNETV2_EXT_DIR", str(tmp_path))
    try:
        ok, reason = cpu_status()
        assert not ok and "OSError: no compiler" in reason
    finally:
        monkeypatch.undo()
        cpu_mod._load.cache_clear()


def test_single_threaded_build_when_openmp_build_fails(monkeypatch, tmp_path):
    """A compiler without OpenMP still gets the kernel, built without -fopenmp, and the status says so."""
    tried = []

    def load_without_openmp(**kwargs):
        tried.append(kwargs["extra_cflags"])
        if "-fopenmp" in kwargs["extra_cflags"]:
            raise OSError("omp.h: No such file or directory")
        return SimpleNamespace(simd_name=lambda: "AVX2+FMA")  # stands in for the module the second build makes

    cpu_mod._load.cache_clear()
    monkeypatch.setattr(cpu_mod, "_openmp_threads", lambda: True)
    monkeypatch.setattr(cpu_mod.cpp_extension, "load", load_without_openmp)
    monkeypatch.setenv("VMUNETV2_EXT_DIR", str(tmp_path))
    try:
        ok, reason = cpu_status()
        assert ok and "1 thread: built without OpenMP" in reason, reason
        assert ["-fopenmp" in flags for flags in tried] == [True, False]
    finally:
        monkeypatch.undo()
        cpu_mod._load.cache_clear()
