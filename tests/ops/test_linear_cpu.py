"""SS2D's projections on oneDNN (``vmunetv2_monai.ops.linear_cpu``): the same values and gradients as ``F.linear``
within float32 tolerance, any input layout, an output the block may add into in place, F.linear wherever the op
does not apply, and SS2D using it on the ``cpu_fused`` path only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vmunetv2_monai.ops.linear_cpu as linear_module
from vmunetv2_monai.networks.blocks.ss2d import SS2D
from vmunetv2_monai.ops.linear_cpu import linear_cpu, linear_cpu_supported
from vmunetv2_monai.ops.selective_scan.cpu import cpu_status

pytestmark = pytest.mark.skipif(linear_module._OP is None, reason="this PyTorch build has no oneDNN linear op")


@pytest.mark.parametrize("out_features", [48, 96])  # narrower and wider than the input: both weight-gradient forms
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_view"])
def test_values_and_gradients_equal_f_linear(layout: str, out_features: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64, 6, 5) if layout == "channels_last_view" else torch.randn(2, 6, 5, 64)
    x = (x.permute(0, 2, 3, 1) if layout == "channels_last_view" else x).requires_grad_()
    weight = torch.randn(out_features, 64, requires_grad=True)
    dy = torch.randn(2, 6, 5, out_features)
    assert linear_cpu_supported(x, weight)
    out = linear_cpu(x, weight)
    ref = F.linear(x, weight)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out, (x, weight), dy)
    ref_grads = torch.autograd.grad(ref, (x, weight), dy)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_output_may_be_modified_in_place_under_autograd() -> None:
    """The VSS block adds the residual into the mixer's output in place."""
    x = torch.randn(3, 4, 32, requires_grad=True)
    weight = torch.randn(16, 32, requires_grad=True)
    out = linear_cpu(x, weight)
    out.add_(1.0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(3, 4, 32))


def test_not_supported_where_f_linear_must_run() -> None:
    x, weight = torch.randn(4, 8), torch.randn(2, 8)
    assert not linear_cpu_supported(x.double(), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_cpu_supported(x, weight)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not linear_cpu_supported(x, weight)


@pytest.mark.parametrize("backend, expected", [("cpu_fused", 4), ("cpu", 0), ("reference", 0)])
def test_ss2d_uses_it_on_the_fused_path_only(backend: str, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On ``cpu_fused``: in_proj's two halves, x_proj and out_proj (4 products); other backends stay PyTorch."""
    ok, reason = cpu_status()
    if backend != "reference" and not ok:
        pytest.skip(f"cpu scan kernel unavailable: {reason}")
    calls = []
    op = linear_module._OP
    monkeypatch.setattr(linear_module, "_OP", lambda *a: calls.append(a[1].shape) or op(*a))
    torch.manual_seed(0)
    block = SS2D(d_model=16, scan_backend=backend)
    x = torch.randn(1, 4, 4, 16)
    out = block(x)
    assert len(calls) == expected
    if expected:
        monkeypatch.setattr(linear_module, "_OP", None)
        torch.testing.assert_close(out, block(x))


def test_without_autograd_every_change_to_the_weight_is_seen() -> None:
    """The path without autograd keeps nothing between calls: an in-place change through ``param.data`` (which bumps
    no version counter, so a cached copy of the weight could not notice it), a no-grad in-place change, a new storage,
    views of the same parameter and an optimizer step each give F.linear's values."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(linear_cpu(x, lin.weight), F.linear(x, lin.weight))
        lin.weight.data.mul_(-2.0)
        torch.testing.assert_close(linear_cpu(x, lin.weight), F.linear(x, lin.weight))
        lin.weight.add_(1.0)
        torch.testing.assert_close(linear_cpu(x, lin.weight), F.linear(x, lin.weight))
        lin.weight.data = torch.randn(96, 64)
        torch.testing.assert_close(linear_cpu(x, lin.weight), F.linear(x, lin.weight))
        for half in (lin.weight[:48], lin.weight[48:]):
            torch.testing.assert_close(linear_cpu(x, half), F.linear(x, half))
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    linear_cpu(x, lin.weight).sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(linear_cpu(x, lin.weight), F.linear(x, lin.weight))


@pytest.mark.skipif(not cpu_status()[0], reason="the compiled kernel is unavailable")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 8), (130, 37), (300, 96)])  # edges, several row blocks
def test_transpose_copy_equals_torch(shape: tuple[int, int], threads: int) -> None:
    """The weight gradient's transposing copy (compiled, on all threads) is exactly ``x.t().contiguous()``."""
    module, _ = linear_module._load()
    x = torch.randn(*shape)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = module.transpose_copy(x)
    finally:
        torch.set_num_threads(before)
    assert out.is_contiguous()
    assert torch.equal(out, x.t().contiguous())
    with pytest.raises(RuntimeError, match="contiguous float32"):
        module.transpose_copy(torch.randn(3, 5).t())


@pytest.mark.skipif(not cpu_status()[0], reason="the compiled kernel is unavailable")
@pytest.mark.parametrize("out_features", [48, 96])  # dy transposed, x transposed
def test_weight_gradient_takes_the_threaded_transpose(out_features: int, monkeypatch: pytest.MonkeyPatch) -> None:
    module, reason = linear_module._load()
    calls = []

    class Counting:
        def transpose_copy(self, a: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(a.shape))
            return module.transpose_copy(a)

    monkeypatch.setattr(linear_module, "_load", lambda: (Counting(), reason))
    x = torch.randn(40, 64, requires_grad=True)
    weight = torch.randn(out_features, 64, requires_grad=True)
    dy = torch.randn(40, out_features)
    linear_cpu(x, weight).backward(dy)
    assert calls == [(40, min(out_features, 64))]  # the narrower operand, once
    torch.testing.assert_close(weight.grad, dy.t() @ x.detach())
