"""Contract test of the ``mamba`` backend on CPU: our calls through mamba-ssm's real Python interface.

mamba-ssm 2.3.2.post1's real ``selective_scan_interface`` (installed as pure Python by ``scripts/setup.sh``) is
imported with a stand-in for its compiled ``selective_scan_cuda`` (``tests/ops/mamba_stand_in.py``) that applies
every argument check of the C++ entry points (dtypes, shapes and the variable-B/C layout, ``stride(-1) == 1``,
the dstate limit, float32 weights, the gradient's dtype) and computes with mamba-ssm's sequential
``selective_scan_ref``. The whole network then runs forward and backward through ``scan_backend="mamba"``: the
real dispatcher branch, mamba-ssm's real ``SelectiveScanFn`` (contiguity fixes, B/C reshapes, saved tensors,
gradient mapping) and the stand-in, in fp32 and under bf16 / fp16 autocast, and must match the ``cpu`` backend.
Calls that break a rule must fail.

What this does NOT prove: the real kernel's numerics (its fp32 accumulation order, fast-math exp, chunking over
2048 steps), its speed, or that the kernel builds and runs on a given GPU; ``scripts/gpu_check.py`` and the CUDA
tests in ``test_selective_scan.py`` cover those where a GPU is present. Only the probe's device requirement is
replaced (the probe itself needs CUDA); its forward-and-backward test call runs against the stand-in here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.conftest import rel_err
from tests.ops.mamba_stand_in import CHUNK, StandInCalls, load_interface
from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.networks.blocks.ss2d import SS2D
from vmunetv2_monai.ops.selective_scan import available_backends, mamba, selective_scan
from vmunetv2_monai.ops.selective_scan.reference import selective_scan_reference

CPU_OK = available_backends()["cpu"][0]
TINY = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 8, "mid_channels": 8, "drop_path_rate": 0.0,
        "keep_unused_stage": False}  # every parameter gets a gradient


@pytest.fixture(scope="module")
def stand_in():
    """``(interface module, call log)`` with the stand-in installed and the ``mamba`` backend routed to it."""
    calls = StandInCalls()
    with pytest.MonkeyPatch.context() as mp:
        try:
            ssi = load_interface(mp, calls)
        except ImportError as err:
            pytest.fail(f"mamba-ssm's interface could not be loaded with the stand-in: {err}")
        mp.setattr(mamba, "_probe", functools.lru_cache(maxsize=None)(lambda device: _probe_with_stand_in(ssi, device)))
        yield ssi, calls


def _probe_with_stand_in(ssi, device: torch.device):
    ok, reason = mamba.verify_kernel(ssi.selective_scan_fn, device)
    return (ssi.selective_scan_fn if ok else None), reason


def _scan_args(batch=2, dim=8, length=40, n=4, groups=2, gate=True, dtype=torch.float32):
    """Scan inputs in the kernel's layout: u, delta, B, C, z in ``dtype``; A, D, delta_bias float32."""
    u = torch.randn(batch, dim, length).to(dtype)
    delta = (torch.randn(batch, dim, length) * 0.5 - 1.0).to(dtype)
    A = -torch.exp(torch.randn(dim, n) * 0.5)
    B = torch.randn(batch, groups, n, length).to(dtype)
    C = torch.randn(batch, groups, n, length).to(dtype)
    D, bias = torch.randn(dim), torch.randn(dim) * 0.1
    z = torch.randn(batch, dim, length).to(dtype) if gate else None
    return [t.requires_grad_() if t is not None else None for t in (u, delta, A, B, C, D, z, bias)]


def _net_grads(net: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None):
    """Training-mode outputs (fused + deep-supervision heads) and every parameter's gradient of a fixed loss."""
    outs = net(x) if autocast is None else _autocast_forward(net, x, autocast)
    net.zero_grad()
    sum((o.float() * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs).backward()
    return outs[0].detach().float(), {k: p.grad.detach().clone() for k, p in net.named_parameters()}


def _autocast_forward(net, x, dtype):
    with torch.autocast("cpu", dtype=dtype):
        return net(x)


def test_probe_call_passes_the_contract(stand_in) -> None:
    ssi, calls = stand_in
    before = len(calls)
    ok, reason = mamba.verify_kernel(ssi.selective_scan_fn, torch.device("cpu"))
    assert ok, reason
    assert [c[0] for c in calls[before:]] == ["fwd", "bwd"]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autocast"])
def test_probe_works_under_the_callers_mode(stand_in, mode) -> None:
    """The first scan (and so the probe) may run in an evaluator's no_grad / inference_mode or under AMP."""
    ssi, _ = stand_in
    contexts = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
                "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    with contexts[mode]():
        ok, reason = mamba.verify_kernel(ssi.selective_scan_fn, torch.device("cpu"))
    assert ok, reason


def test_probe_reports_a_broken_backward(stand_in, monkeypatch) -> None:
    ssi, _ = stand_in

    def broken_bwd(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(ssi.selective_scan_cuda, "bwd", broken_bwd)
    ok, reason = mamba.verify_kernel(ssi.selective_scan_fn, torch.device("cpu"))
    assert not ok and "no kernel image" in reason and "backward" in reason


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_network_through_mamba_interface_matches_cpu_backend(stand_in, autocast) -> None:
    """Forward and every parameter gradient, backend ``mamba`` (real interface + stand-in) against ``cpu``."""
    _, calls = stand_in
    other = "cpu" if CPU_OK else "torch"
    net_m = VMUNetV2(scan_backend="mamba", **TINY)
    net_c = VMUNetV2(scan_backend=other, **TINY)
    net_c.load_state_dict(net_m.state_dict())
    n_ss2d = sum(isinstance(m, SS2D) for m in net_m.modules())
    x = torch.randn(2, 3, 32, 32)
    assert mamba.mamba_status(x.device)[0]  # the (cached) probe's own fwd/bwd calls are made before counting
    before = len(calls)
    out_m, grads_m = _net_grads(net_m, x, autocast)
    made = calls[before:]
    assert [c[0] for c in made].count("fwd") == n_ss2d and [c[0] for c in made].count("bwd") == n_ss2d
    out_c, grads_c = _net_grads(net_c, x, autocast)
    tol = 1e-4 if autocast is None else 3e-2  # under autocast, scan differences move bf16/fp16 roundings
    assert torch.isfinite(out_m).all() and rel_err(out_m, out_c) < tol
    assert grads_m.keys() == grads_c.keys()
    for name, g in grads_m.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        assert rel_err(g, grads_c[name]) < (1e-3 if autocast is None else 1e-1), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gate", [False, True])
def test_half_inputs_through_mamba_interface(stand_in, dtype, gate) -> None:
    """The kernel's other input types (u, delta, B, C, z in bf16/fp16; A, D, bias fp32) pass the contract, and
    the gradients come back in each input's dtype."""
    args = _scan_args(dtype=dtype, gate=gate)
    out = selective_scan(*args, delta_softplus=True, backend="mamba")
    ref = selective_scan_reference(*args, delta_softplus=True)
    assert out.dtype == dtype
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-2)
    leaves = [a for a in args if a is not None]
    grads = torch.autograd.grad(out.float().sum(), leaves)
    for g, a in zip(grads, leaves, strict=True):
        assert g.dtype == a.dtype and torch.isfinite(g).all()


def test_last_state_over_several_chunks(stand_in) -> None:
    ssi, _ = stand_in
    args = _scan_args(batch=1, dim=2, length=CHUNK + 5, n=2, groups=1, gate=False)
    _, last = ssi.selective_scan_fn(*args, delta_softplus=True, return_last_state=True)
    _, want = ssi.selective_scan_ref(*args, delta_softplus=True, return_last_state=True)
    assert rel_err(last, want) < 1e-6


def _bad(name: str):
    """Scan args with one rule broken (see the stand-in's cpp line citations)."""
    u, delta, A, B, C, D, z, bias = _scan_args()
    with torch.no_grad():
        if name == "float64 input":
            u, delta, B, C, z = (t.double() for t in (u, delta, B, C, z))
        elif name == "bf16 weights":
            A = A.bfloat16()
        elif name == "delta dtype":
            delta = delta.bfloat16()
        elif name == "B dtype":
            B = B.half()
        elif name == "C shape":
            C = C[..., :-1]
        elif name == "dstate > 256":
            A, B, C = torch.zeros(8, 257) - 1, torch.zeros(2, 2, 257, 40), torch.zeros(2, 2, 257, 40)
        elif name == "D dtype":
            D = D.half()
        elif name == "delta_bias dtype":
            bias = bias.bfloat16()
        elif name == "z dtype":
            z = z.half()
    return u, delta, A, B, C, D, z, bias


BAD = ["float64 input", "bf16 weights", "delta dtype", "B dtype", "C shape", "dstate > 256", "D dtype",
       "delta_bias dtype", "z dtype"]


@pytest.mark.parametrize("name", BAD)
def test_calls_that_break_a_rule_fail(stand_in, name) -> None:
    ssi, _ = stand_in
    with pytest.raises(RuntimeError, match="check failed"):
        ssi.selective_scan_fn(*_bad(name), delta_softplus=True)


def test_stride_and_gradient_dtype_rules_fail(stand_in) -> None:
    """Rules the interface never lets through (it makes tensors contiguous; autograd matches dout's dtype to the
    output), checked on the stand-in's entry points directly."""
    ssi, _ = stand_in
    cuda = ssi.selective_scan_cuda
    u, delta, A, B, C, D, _, bias = (t.detach() if t is not None else None for t in _scan_args(gate=False))
    with pytest.raises(RuntimeError, match="stride"):
        cuda.fwd(u.transpose(0, 1).contiguous().transpose(0, 1)[..., ::2], delta[..., ::2], A, B[..., ::2],
                 C[..., ::2], D, None, bias, True)
    out, x = cuda.fwd(u, delta, A, B, C, D, None, bias, True)
    with pytest.raises(RuntimeError, match="dout dtype"):
        cuda.bwd(u, delta, A, B, C, D, None, bias, out.bfloat16(), x, None, None, True, False)
    du, ddelta, dA, dB, dC, dD, dbias = cuda.bwd(u, delta, A, B, C, D, None, bias, out, x, None, None, True, False)
    assert dA.dtype == dD.dtype == dbias.dtype == torch.float32 and dB.shape == B.shape
