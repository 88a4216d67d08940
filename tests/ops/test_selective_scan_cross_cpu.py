"""The fused SS2D cross-scan (``cpu_fused``) against cross-scan + ``reference`` scan + cross-merge in PyTorch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vmunetv2_monai.networks.blocks.ss2d as ss2d_module
from tests.conftest import rel_err
from vmunetv2_monai.networks.blocks.ss2d import SS2D
from vmunetv2_monai.ops.selective_scan import resolve_backend
from vmunetv2_monai.ops.selective_scan.cpu import _load, cpu_status
from vmunetv2_monai.ops.selective_scan.cross_cpu import cross_scan_supported, cross_selective_scan_cpu

CPU_OK, CPU_REASON = cpu_status()
pytestmark = pytest.mark.skipif(not CPU_OK, reason=f"cpu scan kernel unavailable: {CPU_REASON}")
PARAMS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")


def _mixer(d_model: int, d_state: int, seed: int) -> SS2D:
    """An SS2D with its scan parameters moved off the initialisation (A not -(1..N), D not 1)."""
    torch.manual_seed(seed)
    m = SS2D(d_model, d_state=d_state, scan_backend="reference")
    with torch.no_grad():
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.Ds.add_(torch.randn_like(m.Ds) * 0.5)
    return m


@pytest.mark.parametrize(
    "batch, h, w, d_model, d_state",
    [
        (2, 7, 11, 16, 16),  # H != W, L not a multiple of the 64-step chunk
        (1, 24, 29, 8, 8),  # L = 696: more than one time block of the kernel
        (2, 9, 8, 10, 24),  # 20 channels: the kernel's last vector (8 or 16 channels) is partial
        (1, 5, 6, 4, 16),  # 8 channels: one partial 16-channel vector where the build has AVX-512
        (1, 1, 5, 24, 32),  # a single row: the column-major order equals the row-major one
        (2, 4, 6, 160, 16),  # dt_rank 10: the step-size gradient's ranks in two blocks of 8, the second partial
    ],
)
def test_fused_matches_unfused_reference_forward_and_backward(batch, h, w, d_model, d_state) -> None:
    m = _mixer(d_model, d_state, seed=h * w)
    x = torch.randn(batch, h, w, m.d_inner)
    params = [getattr(m, name) for name in PARAMS]

    x_ref = x.clone().requires_grad_(True)
    y_ref = m._cross_scan_unfused(x_ref.permute(0, 3, 1, 2))
    grad_out = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *params], grad_out)

    x_fused = x.clone().requires_grad_(True)
    y = cross_selective_scan_cpu(x_fused, *params)
    grads = torch.autograd.grad(y, [x_fused, *params], grad_out)

    assert y.shape == (batch, h, w, m.d_inner)
    assert rel_err(y, y_ref) < 1e-5
    for name, got, want in zip(("x", *PARAMS), grads, grads_ref, strict=True):
        assert got.shape == want.shape, name
        assert rel_err(got, want) < 1e-5, name


def test_ss2d_takes_the_fused_path_and_matches_the_reference_backend(monkeypatch) -> None:
    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return cross_selective_scan_cpu(*args)

    monkeypatch.setattr(ss2d_module, "cross_selective_scan_cpu", counting)
    ref = _mixer(16, 8, seed=0)
    fused = SS2D(16, d_state=8, scan_backend="cpu_fused")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 10, 16)
    y_ref, y = ref(x), fused(x)
    grad_out = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, list(ref.parameters()), grad_out)
    grads = torch.autograd.grad(y, list(fused.parameters()), grad_out)
    assert calls == [(2, 6, 10, fused.d_inner)]
    assert rel_err(y, y_ref) < 1e-5
    for (name, _), got, want in zip(fused.named_parameters(), grads, grads_ref, strict=True):
        assert rel_err(got, want) < 1e-5, name


def test_plain_cpu_backend_does_not_fuse(monkeypatch) -> None:
    monkeypatch.setattr(ss2d_module, "cross_selective_scan_cpu", lambda *a: pytest.fail("fused path taken"))
    SS2D(16, d_state=8, scan_backend="cpu")(torch.randn(1, 4, 4, 16))


def test_inputs_the_fused_op_does_not_take_use_the_unfused_path() -> None:
    m = SS2D(16, d_state=8, scan_backend="cpu_fused")
    x = torch.randn(1, 4, 4, m.d_inner)
    assert cross_scan_supported(x, m.A_logs)
    assert not cross_scan_supported(x.double(), m.A_logs)
    assert not cross_scan_supported(x, torch.zeros(4 * m.d_inner, 4))  # d_state 4: not a kernel size
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cross_scan_supported(x, m.A_logs)
    ref = SS2D(16, d_state=8, scan_backend="reference").double()
    ref.load_state_dict(m.state_dict())
    x64 = torch.randn(1, 4, 5, 16, dtype=torch.float64)
    assert rel_err(m.double()(x64), ref(x64)) < 1e-8  # float64: the blocked torch scan


def test_backend_names() -> None:
    assert resolve_backend("cpu_fused", torch.device("cpu")) == "cpu_fused"
    with pytest.raises(RuntimeError, match="needs CPU tensors"):
        resolve_backend("cpu_fused", torch.device("meta"))


@pytest.fixture
def torch_threads():
    """Set torch's intra-op thread count inside a test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch without OpenMP")
def test_kernel_runs_on_torchs_threads(torch_threads) -> None:
    module, _ = _load()
    torch_threads(1)
    assert module.parallel_threads(64) == 1
    torch_threads(2)
    assert module.parallel_threads(64) == 2  # serial when built without -fopenmp (at::parallel_for is inlined)


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_op_agrees_across_thread_counts(torch_threads, batch) -> None:
    """The kernel splits each batch element's channel groups into lcm(batch, threads) / batch slices; 3 and 4 threads
    (more than CI's cores) split them unevenly and into partial sums of dx_dbl that are added after the kernel."""
    m = _mixer(24, 16, seed=3)  # 48 channels: 3 groups of 16 (AVX-512) or 6 of 8
    x = torch.randn(batch, 12, 9, m.d_inner)
    params = [getattr(m, name) for name in PARAMS]
    grad_out = torch.randn(batch, 12, 9, m.d_inner)
    results = []
    for threads in (1, 2, 3, 4):
        torch_threads(threads)
        xi = x.clone().requires_grad_(True)
        y = cross_selective_scan_cpu(xi, *params)
        results.append((y, *torch.autograd.grad(y, [xi, *params], grad_out)))
    for name, one, *more in zip(("y", "x", *PARAMS), *results, strict=True):
        for threads, other in zip((2, 3, 4), more, strict=True):
            assert rel_err(other, one) < 1e-6, (name, threads)


def test_build_uses_the_vectors_torch_reports() -> None:
    """16-channel vectors where torch reports AVX-512 (ATEN_CPU_CAPABILITY lowers it), 8 where it reports AVX2."""
    want = {"AVX512": "AVX-512", "AVX2": "AVX2+FMA"}.get(torch.backends.cpu.get_cpu_capability())
    if want is None:
        pytest.skip(f"torch reports {torch.backends.cpu.get_cpu_capability()}: the portable build")
    assert f"({want}," in CPU_REASON, CPU_REASON


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the AVX2 build runs the cases above")
def test_avx2_build_matches_the_reference_on_an_avx512_machine() -> None:
    """Machines without AVX-512 get the 8-channel build: the cases above and the gated norm's, in a process that
    torch runs at AVX2 (it builds that kernel into its own folder; the first time takes about a minute)."""
    from tests.ops import test_gated_norm_cpu as gated

    tests = [
        f"{__file__}::{name}"
        for name in (
            "test_fused_matches_unfused_reference_forward_and_backward",
            "test_build_uses_the_vectors_torch_reports",
        )
    ] + [f"{gated.__file__}::test_matches_pytorch_forward_and_backward"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=900,
    )
    cases = sum(len(test.pytestmark[0].args[1]) for test in (
        test_fused_matches_unfused_reference_forward_and_backward, gated.test_matches_pytorch_forward_and_backward)) + 1
    passed = re.search(rf"^{cases} passed", run.stdout, re.M)
    assert run.returncode == 0 and passed, run.stdout[-3000:] + run.stderr[-2000:]
