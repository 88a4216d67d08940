"""SS2D's projections on the ``cpu_fused`` path and PatchMerging's reduction (``x @ weight.T``, no bias) on oneDNN,
forward and backward.

PyTorch runs a float32 ``F.linear`` on a CPU through MKL's sgemm. On AMD CPUs MKL takes a narrower code path: on a
2-core AMD EPYC with AVX-512 it ran these projections at about 110 GFLOP/s a core, oneDNN's matmul (which PyTorch
ships and its convolutions already use) at about 250, with the same results to the last bit on the shapes measured
(``docs/performance.md``). The backward is two more products on oneDNN: ``dx = dy @ weight`` and
``dweight = dy.T @ x``. :func:`linear_cpu_supported` says when it applies.

oneDNN takes its first operand in rows, so ``dweight`` needs one of ``dy`` and ``x`` transposed. PyTorch copies a
transposed matrix on one thread; the compiled kernel's ``transpose_copy`` uses all of torch's threads (1.5 to 2.3
times as fast on one thread here, 2.3 to 6 times on two), and is used wherever the kernel builds
(``VMUNETV2_CPU_SCAN=0`` turns it off with the rest of the kernel).

Where autograd records nothing (inference, validation) the product runs without the autograd Function. The weight is
handed over as it is, and oneDNN re-lays it out at every call: a copy packed once and reused would save that pass
(about 3 % of the default eval at batch 1), but nothing can tell such a copy is stale after an in-place change made
through ``param.data``, which bumps no version counter.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .selective_scan.cpu import _load

__all__ = ["linear_cpu", "linear_cpu_supported"]

logger = logging.getLogger(__name__)


def _find_op():
    """oneDNN's fused linear op of this PyTorch build, or None (with the reason logged) where it has none."""
    if not torch.backends.mkldnn.is_available():
        logger.info("oneDNN linear unavailable: this PyTorch build has no oneDNN; projections use F.linear")
        return None
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        logger.info("oneDNN linear unavailable: torch.ops.mkldnn._linear_pointwise is absent in torch %s; "
                    "projections use F.linear", torch.__version__)
        return None
    return torch.ops.mkldnn._linear_pointwise


_OP = _find_op()


def _mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t.T`` on oneDNN: a ``(..., K)``, b_t ``(N, K)`` (any strides); ``(..., N)``."""
    return _OP(a, b_t, None, "none", [], "")


def _rows_of_transpose(a: torch.Tensor) -> torch.Tensor:
    """``a.T`` for oneDNN's first operand: ``(M, K)`` -> ``(K, M)``, copied on all threads where the kernel is
    loaded and ``a`` is contiguous; else the transposed view, which oneDNN copies itself."""
    module, _ = _load()
    return module.transpose_copy(a) if module is not None and a.is_contiguous() else a.t()


def linear_cpu_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear_cpu` takes these inputs: float32 CPU tensors, oneDNN enabled and its op present, no CPU
    autocast (where ``F.linear`` keeps its reduced-precision product), not traced for export.

    Args:
        x: ``(..., K)``.
        weight: ``(N, K)``.
    """
    return (
        _OP is not None
        and torch.backends.mkldnn.enabled
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


class _Linear(torch.autograd.Function):
    """x ``(M, K)``, weight ``(N, K)`` -> ``(M, N)``."""

    @staticmethod
    def forward(ctx, x, weight):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return _mm(x, weight)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        dx = _mm(dy, weight.t()) if ctx.needs_input_grad[0] else None
        dweight = None
        if ctx.needs_input_grad[1]:
            # oneDNN's first operand must be rows (a transpose here): transpose the narrower of dy (M, N) and
            # x (M, K), and for K < N form dweight.T = x.T @ dy instead (in_proj: half the copy)
            if dy.shape[1] <= x.shape[1]:
                dweight = _mm(_rows_of_transpose(dy), x.t())
            else:
                dweight = _mm(_rows_of_transpose(x), dy.t()).t()
        return dx, dweight


def linear_cpu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) on oneDNN, forward and backward, where :func:`linear_cpu_supported` holds;
    ``F.linear`` itself elsewhere.

    Args:
        x: ``(..., K)`` float32 on the CPU.
        weight: ``(N, K)``.

    Returns:
        ``(..., N)``.
    """
    if not linear_cpu_supported(x, weight):
        return F.linear(x, weight)
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # 2-D inside the Function: its output is then a fresh tensor, and the view back to (..., N) is autograd's
        # own (a view made inside a Function may not be modified in place, and the VSS block adds into it in place)
        y = _Linear.apply(x2, weight)
    else:
        y = _mm(x2, weight)
    return y.view(*x.shape[:-1], weight.shape[0])
