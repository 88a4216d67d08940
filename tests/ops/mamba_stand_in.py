"""A CPU stand-in for mamba-ssm's compiled ``selective_scan_cuda``, and a loader for mamba-ssm's real Python
interface (``mamba_ssm/ops/selective_scan_interface.py``) on top of it.

The stand-in applies the argument checks of mamba-ssm 2.3.2.post1's C++ entry points
(``csrc/selective_scan/selective_scan.cpp``, cited as ``cpp:LINE`` below) and computes with mamba-ssm's own
sequential ``selective_scan_ref`` (forward) and autograd through it (backward), in float32 as the kernel does.
It returns what the C++ returns, with the same dtypes, so the real ``SelectiveScanFn`` runs unchanged.

What it replaces, and so does not prove: the CUDA kernels' numerics and speed, the device checks
``u.is_cuda()`` etc. (cpp:246-250, 283, 291, 301, 364-369: here "all on u's device"), complex A (not modelled:
VM-UNetV2's A is real), and the running decay products that the kernel keeps in the even slots of ``x`` (NaN
here, so that any use of them outside the kernel shows).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = ["CHUNK", "StandInCalls", "load_interface", "make_stand_in"]

CHUNK = 2048  # cpp:307 and cpp:447: n_chunks = ceil(seqlen / 2048)
_INPUT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


class StandInCalls(list):
    """One ``(entry, {name: dtype})`` record per call of ``fwd`` / ``bwd``, so tests see that the kernel ran."""


def _check(cond: bool, what: str) -> None:
    """TORCH_CHECK: raises RuntimeError, as the compiled extension does."""
    if not cond:
        raise RuntimeError(f"selective_scan_cuda stand-in: check failed: {what}")


def _last_dim_ok(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 or t.size(-1) == 1


def _check_common(u, delta, A, B, C, D, z, delta_bias) -> tuple[bool, bool]:
    """Checks shared by fwd (cpp:233-305) and bwd (cpp:350-445); returns (is_variable_B, is_variable_C)."""
    input_type, weight_type = u.dtype, A.dtype
    _check(input_type in _INPUT_TYPES, f"u dtype {input_type} not float32/float16/bfloat16 (cpp:235, cpp:352)")
    _check(weight_type in (torch.float32, torch.complex64), f"A dtype {weight_type} (cpp:236, cpp:353)")
    _check(weight_type == torch.float32, "complex A is not modelled by the stand-in")
    is_variable_B, is_variable_C = B.dim() >= 3, C.dim() >= 3  # cpp:238-239
    _check(delta.dtype == input_type, f"delta dtype {delta.dtype} != u dtype {input_type} (cpp:242, cpp:359)")
    _check(B.dtype == (input_type if is_variable_B else weight_type), f"B dtype {B.dtype} (cpp:243, cpp:360)")
    _check(C.dtype == (input_type if is_variable_C else weight_type), f"C dtype {C.dtype} (cpp:244, cpp:361)")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        _check(t.device == u.device, f"{name} on {t.device}, u on {u.device} (is_cuda, cpp:246-250)")
    _check(_last_dim_ok(u) and _last_dim_ok(delta), "u / delta stride(-1) != 1 (cpp:252-253, cpp:371-372)")
    batch, dim, seqlen = u.shape  # cpp:255-258
    dstate = A.size(1)
    n_groups = B.size(1) if is_variable_B else 1  # cpp:260
    _check(dstate <= 256, f"dstate {dstate} > 256 (cpp:262, cpp:382)")
    _check(tuple(delta.shape) == (batch, dim, seqlen), f"delta shape {tuple(delta.shape)} (cpp:265)")
    _check(tuple(A.shape) == (dim, dstate), f"A shape {tuple(A.shape)} (cpp:266)")
    for name, t, variable in (("B", B, is_variable_B), ("C", C, is_variable_C)):
        want = (batch, n_groups, dstate, seqlen) if variable else (dim, dstate)
        _check(tuple(t.shape) == want, f"{name} shape {tuple(t.shape)} != {want} (cpp:267-278)")
        _check(not variable or _last_dim_ok(t), f"{name} stride(-1) != 1 (cpp:271, cpp:277)")
    # Not checked by the C++, which divides silently (cpp:93); a remainder would read the wrong group.
    _check(dim % n_groups == 0, f"dim {dim} not divisible by n_groups {n_groups}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:  # cpp:280-294, cpp:401-415
            _check(t.dtype == torch.float32, f"{name} dtype {t.dtype} != float32 (cpp:282, cpp:290)")
            _check(t.device == u.device and _last_dim_ok(t), f"{name} device / stride (cpp:283-284, cpp:291-292)")
            _check(tuple(t.shape) == (dim,), f"{name} shape {tuple(t.shape)} (cpp:285, cpp:293)")
    if z is not None:  # cpp:298-303, cpp:419-424
        _check(z.dtype == input_type, f"z dtype {z.dtype} != u dtype (cpp:300)")
        _check(z.device == u.device and _last_dim_ok(z), "z device / stride (cpp:301-302)")
        _check(tuple(z.shape) == (batch, dim, seqlen), f"z shape {tuple(z.shape)} (cpp:303)")
    return is_variable_B, is_variable_C


def make_stand_in(ref_fn, calls: StandInCalls) -> ModuleType:
    """A module named ``selective_scan_cuda`` with ``fwd`` and ``bwd``; ``ref_fn`` is mamba-ssm's
    ``selective_scan_ref`` (it computes in float32 and returns u's dtype)."""

    def scan_f32(u, delta, A, B, C, D, delta_bias, softplus, last_state=False):
        f = [t.float() if t is not None else None for t in (u, delta, B, C)]
        return ref_fn(f[0], f[1], A, f[2], f[3], D, None, delta_bias, softplus, return_last_state=last_state)

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        """cpp:226-336: returns ``[out, x]`` (+ ``out_z`` with z); out in delta's dtype (cpp:311)."""
        _check_common(u, delta, A, B, C, D, z, delta_bias)
        calls.append(("fwd", {k: v.dtype for k, v in zip("u delta A B C".split(), (u, delta, A, B, C), strict=True)}))
        batch, dim, seqlen = u.shape
        n_chunks = (seqlen + CHUNK - 1) // CHUNK
        with torch.no_grad():
            out, state = scan_f32(u, delta, A, B, C, D, delta_bias, delta_softplus, last_state=True)
            x_shape = (batch, dim, n_chunks, 2 * A.size(1))  # cpp:313
            x = torch.full(x_shape, float("nan"), dtype=A.dtype, device=u.device)
            x[:, :, -1, 1::2] = state  # odd slots: the state at the end of each chunk (the last is last_state)
            for c in range(n_chunks - 1):
                pre = [t[..., : (c + 1) * CHUNK] if t.dim() >= 3 else t for t in (u, delta, B, C)]
                x[:, :, c, 1::2] = scan_f32(*pre[:2], A, *pre[2:], D, delta_bias, delta_softplus, last_state=True)[1]
            result = [out.to(delta.dtype), x]
            if z is not None:
                result.append((out * F.silu(z.float())).to(z.dtype))
        return result

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        """cpp:338-492: returns ``[du, ddelta, dA, dB, dC, dD, ddelta_bias]`` (+ dz, + out_z)."""
        _check_common(u, delta, A, B, C, D, z, delta_bias)
        calls.append(("bwd", {"u": u.dtype, "dout": dout.dtype}))
        batch, dim, seqlen = u.shape
        _check(dout.dtype == u.dtype, f"dout dtype {dout.dtype} != u dtype {u.dtype} (cpp:362)")
        _check(dout.device == u.device and _last_dim_ok(dout), "dout device / stride (cpp:369, cpp:373)")
        _check(tuple(dout.shape) == (batch, dim, seqlen), f"dout shape {tuple(dout.shape)} (cpp:399)")
        if z is not None:
            _check(out is not None, "out missing with z (cpp:426)")
            _check(out.dtype == u.dtype and _last_dim_ok(out), "out dtype / stride (cpp:428-430)")
            _check(tuple(out.shape) == (batch, dim, seqlen), f"out shape {tuple(out.shape)} (cpp:431)")
            _check(dz is None or dz.dtype == u.dtype, "dz dtype (cpp:435)")
        n_chunks = (seqlen + CHUNK - 1) // CHUNK
        _check(n_chunks == 1 or x is not None, "x missing with more than one chunk (cpp:449)")
        if x is not None:
            _check(x.dtype == A.dtype and x.is_contiguous(), "x dtype / contiguity (cpp:452-454)")
            _check(tuple(x.shape) == (batch, dim, n_chunks, 2 * A.size(1)), f"x shape {tuple(x.shape)} (cpp:455)")
        leaves = [t.detach().float().requires_grad_() if t is not None else None for t in (u, delta, A, B, C, D)]
        bias = delta_bias.detach().requires_grad_() if delta_bias is not None else None
        zf = z.detach().float().requires_grad_() if z is not None else None
        with torch.enable_grad():
            y = scan_f32(*leaves[:5], leaves[5], bias, delta_softplus)
            if zf is not None:
                y = y * F.silu(zf)
            inputs = [t for t in leaves + [bias, zf] if t is not None]
            grads = iter(torch.autograd.grad(y, inputs, dout.float()))
        du, ddelta, dA, dB, dC = (next(grads) for _ in range(5))
        dD = next(grads) if D is not None else None
        ddelta_bias = next(grads) if delta_bias is not None else None
        # cpp:458-466 and cpp:488: du, ddelta like u / delta; dA, dD, ddelta_bias float32; dB, dC in B's / C's dtype.
        result = [du.to(u.dtype), ddelta.to(delta.dtype), dA, dB.to(B.dtype), dC.to(C.dtype), dD, ddelta_bias]
        if z is not None:
            result.append(next(grads).to(z.dtype))  # cpp:489
        if recompute_out_z:
            result.append(y.detach().to(u.dtype))  # cpp:490
        return result

    module = ModuleType("selective_scan_cuda")
    module.fwd, module.bwd = fwd, bwd
    return module


def load_interface(monkeypatch, calls: StandInCalls) -> ModuleType:
    """Import mamba-ssm's real ``selective_scan_interface`` with the stand-in as ``selective_scan_cuda``.

    ``mamba_ssm/__init__.py`` imports the Mamba2/Mamba3 modules (Triton kernels), so the package and its
    ``ops``/``utils`` sub-packages are entered as plain package shells over the installed folders, and the
    Triton layer norm that the interface imports for ``mamba_inner_fn`` (not used by ``selective_scan_fn``) is a
    stub that raises. Everything is registered through ``monkeypatch`` and removed again afterwards.
    Raises ``ImportError`` when mamba-ssm is not installed.
    """
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mamba_ssm is not installed (scripts/setup.sh installs it as pure Python)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("mamba_ssm", root), ("mamba_ssm.ops", root / "ops"), ("mamba_ssm.utils", root / "utils"),
                         ("mamba_ssm.ops.triton", root / "ops" / "triton")):
        shell = ModuleType(name)
        shell.__path__ = [str(folder)]
        monkeypatch.setitem(sys.modules, name, shell)

    def no_triton(*args, **kwargs):
        raise RuntimeError("Triton layer norm stub: not part of the selective-scan contract test")

    layer_norm = ModuleType("mamba_ssm.ops.triton.layer_norm")
    layer_norm._layer_norm_fwd = no_triton
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.layer_norm", layer_norm)
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)  # the interface treats it as optional (ImportError)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", ModuleType("selective_scan_cuda"))  # replaced below
    for name in ("mamba_ssm.utils.torch", "mamba_ssm.ops.selective_scan_interface"):
        # Register the names with monkeypatch (so undo removes them), then free them for the real import below.
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    ssi = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    stand_in = make_stand_in(ssi.selective_scan_ref, calls)
    monkeypatch.setattr(ssi, "selective_scan_cuda", stand_in)
    return ssi
