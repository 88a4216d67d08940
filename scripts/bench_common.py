"""Shared pieces of the benchmark scripts: timing, peak memory, machine facts, stage shapes, and the formulation
of mamba-ssm's ``selective_scan_ref`` (the scan a CPU user of the official VM-UNetV2 code gets).

mamba-ssm's own ``selective_scan_ref`` cannot be imported on a CPU machine (its module imports Triton and the
CUDA extension at top level), so :func:`mamba_selective_scan_ref` below re-implements its formulation: the
discretised decays ``exp(einsum('bdl,dn->bdln'))`` and inputs ``delta * B * u`` for all steps at once, then a
Python loop over L that indexes step i of those tensors and reads the state out with one einsum per step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vmunetv2_monai.networks.blocks.ss2d as ss2d_module

# (rows = batch * K * d_inner, L) of the four VM-UNetV2 stages for a 256x256 image, batch 1, K = 4 directions.
STAGE_SHAPES = ((768, 4096), (1536, 1024), (3072, 256), (6144, 64))
D_STATE = 16
K = 4


def mamba_selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The formulation of ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` (real A).

    Shapes: u, delta, z ``(b, d, L)``; A ``(d, n)``; B, C ``(b, n, L)`` or grouped ``(b, G, n, L)``; D,
    delta_bias ``(d,)``. Returns ``(b, d, L)`` in u's dtype.
    """
    out_dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, n = u.shape[0], A.shape[0], A.shape[1]
    B, C = B.float(), C.float()
    if B.dim() == 4:  # grouped: every group serves dim / G consecutive channels
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 3:
        drive = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    state = A.new_zeros((batch, dim, n))
    outputs = []
    for i in range(u.shape[2]):
        state = decay[:, :, i] * state + drive[:, :, i]
        if C.dim() == 3:
            outputs.append(torch.einsum("bdn,bn->bd", state, C[:, :, i]))
        else:
            outputs.append(torch.einsum("bdn,bdn->bd", state, C[:, :, :, i]))
    y = torch.stack(outputs, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(out_dtype)


def scan_inputs(rows: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """VM-UNetV2-like scan inputs for ``rows = K * d_inner`` (batch 1): u, delta, A, B, C, D, delta_bias."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, rows, length, generator=g),
        torch.randn(1, rows, length, generator=g) * 0.5 - 1.0,
        -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(rows, 1),
        torch.randn(1, K, D_STATE, length, generator=g),
        torch.randn(1, K, D_STATE, length, generator=g),
        torch.ones(rows),
        torch.randn(rows, generator=g) * 0.5 - 4.0,
    ]


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of fn after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_RSS_TRACKS_TENSORS = False


def keep_freed_memory() -> None:
    """glibc: serve every later allocation from the heap and never give freed memory back (``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` 2 GiB), so that steps after the first fault in no pages."""
    if (not hasattr(_LIBC, "mallopt") or _LIBC.mallopt(_M_MMAP_MAX, 0) != 1
            or _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1):
        raise SystemExit("keeping freed memory needs glibc's mallopt (M_MMAP_MAX, M_TRIM_THRESHOLD)")


def rss_follows_tensors() -> None:
    """Serve every later allocation above 64 KB by mmap (glibc), so that freed tensors go back to the system and
    the resident size follows the live ones (glibc otherwise keeps freed memory for reuse and a later peak would not
    show). The memory functions below need it. It slows every later step of the process, and not alike for
    different networks: each fresh tensor above 64 KB faults its pages in again (docs/performance.md, "Allocator").
    A benchmark that only times must not call it."""
    global _RSS_TRACKS_TENSORS
    if _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD, 64 KB) failed: peak memory cannot be measured here")
    _RSS_TRACKS_TENSORS = True


def _require_rss_tracking() -> None:
    if not _RSS_TRACKS_TENSORS:
        raise RuntimeError("call bench_common.rss_follows_tensors() before measuring memory")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_increase_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory above the level before the call, in MB (Linux: resets VmHWM first)."""
    _require_rss_tracking()
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory of the whole process during the call, in MB (Linux)."""
    _require_rss_tracking()
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return _status_kib("VmHWM") / 1024


def machine_info() -> dict[str, object]:
    """Cores, CPU model, torch version and threads of this run."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "load_avg_1min": os.getloadavg()[0],
    }


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth (read + write bytes per second) of a large tensor copy, GB/s."""
    src = torch.empty(megabytes * 2**20 // 4).fill_(1.0)
    dst = torch.empty_like(src)
    best = min(time_runs(lambda: dst.copy_(src), repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's ``_linear_pointwise`` (``linear_cpu``: x ``(..., K)`` @ w ``(N, K)``.T), which
    ``FlopCounterMode`` does not know (it would count 0)."""
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * x_shape[-1] * w_shape[0]


def flop_mapping() -> dict:
    """Formulas for the ops outside ``FlopCounterMode``'s registry that the network runs: oneDNN's linear
    (SS2D's projections, PatchMerging's reduction, LevelProjection's 1x1 projection) where this PyTorch build has
    it; its ``custom_mapping``."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    return {op: _onednn_linear_flops} if op is not None else {}


def network_work(net: nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Dense multiply-adds (torch ``FlopCounterMode`` / 2: convolutions, linears, einsums, oneDNN's linear) and
    selective-scan state updates (batch x channels x steps x d_state, summed over calls) of one no-grad forward of
    ``net`` on ``x``.

    ``net``'s SS2D blocks must take the unfused path (``scan_backend="cpu"``), whose ``selective_scan`` calls are
    counted; the fused op is one call the counter cannot see into.
    """
    updates = 0
    original = ss2d_module.selective_scan

    def counting_scan(u, delta, A, *args, **kwargs):
        nonlocal updates
        updates += u.shape[0] * u.shape[1] * u.shape[2] * A.shape[1]
        return original(u, delta, A, *args, **kwargs)

    ss2d_module.selective_scan = counting_scan
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
            net(x)
    finally:
        ss2d_module.selective_scan = original
    return counter.get_total_flops() / 2, updates
