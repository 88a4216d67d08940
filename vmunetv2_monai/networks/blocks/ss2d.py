"""SS2D: the 2D selective-scan mixer of VMamba (v0), as used in every VSS block of VM-UNetV2.

Liu et al., "VMamba: Visual State Space Model", arXiv 2401.10166. Attribute names equal the v0 checkpoint
keys (``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``,
``out_norm``, ``out_proj``) so pretrained VMamba weights load by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.cross_scan import cross_merge, cross_scan
from ...ops.linear_cpu import linear_cpu
from ...ops.selective_scan import SCAN_BACKENDS, resolve_backend, selective_scan
from ...ops.selective_scan.cross_cpu import cross_scan_supported, cross_selective_scan_cpu
from ...ops.selective_scan.gated_norm_cpu import gated_norm_cpu, gated_norm_supported
from ...ops.selective_scan.scripted import _scan_loop as scan_loop
from ...ops.selective_scan.shapes import skip_and_gate, step_sizes

__all__ = ["SS2D"]

_K = 4  # scan directions


class SS2D(nn.Module):
    """Four-direction selective-scan mixer; input and output ``(B, H, W, d_model)``.

    Args:
        d_model: channels C of the block.
        d_state: SSM state size N (16 in VM-UNetV2). Defaults to 16.
        ssm_ratio: expansion; the scan runs on ``d_inner = int(ssm_ratio * C)`` channels. Defaults to 2.0.
        dt_rank: rank of the step-size projection; ``"auto"`` is ``ceil(C / 16)``. Defaults to ``"auto"``.
        d_conv: kernel of the depthwise convolution before the scan. Defaults to 3.
        dt_min: smallest initial step size (S4D / Mamba initialisation: log-uniform in [dt_min, dt_max]).
            Defaults to 0.001.
        dt_max: largest initial step size. Defaults to 0.1.
        dt_init_floor: lower clamp of the initial step sizes. Defaults to 1e-4.
        scan_backend: selective-scan backend, one of
            :data:`~vmunetv2_monai.ops.selective_scan.SCAN_BACKENDS`; see
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan`. ``"cpu_fused"`` (what ``"auto"`` means on CPU
            tensors when the C++ kernel builds) runs cross-scan, scan and merge as one compiled op for float32
            input without autocast, the other inputs on the unfused path. Defaults to ``"auto"``.

    Raises:
        ValueError: when ``scan_backend`` is not a known backend name.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {scan_backend!r}.")
        d_inner = int(ssm_ratio * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        # Per-direction projections, stacked: (K, rank + 2N, d_inner) and (K, d_inner, rank).
        bound = d_inner**-0.5  # nn.Linear's default initialisation of the four original x_proj layers
        self.x_proj_weight = nn.Parameter(torch.empty(_K, rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        self.dt_projs_weight = nn.Parameter(torch.empty(_K, d_inner, rank).uniform_(-(rank**-0.5), rank**-0.5))
        dt = torch.exp(torch.rand(_K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real initialisation: A = -(1..N) for every channel of every direction.
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(_K * d_inner, 1)
        self.A_logs = nn.Parameter(a_log)
        self.Ds = nn.Parameter(torch.ones(_K * d_inner))
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: channels-last ``(B, H, W, d_model)``.

        Returns:
            ``(B, H, W, d_model)`` (the scan itself runs in float32, also under autocast).
        """
        # in_proj as two products, so that each half is contiguous: x.permute below is then a channels-last map,
        # where the depthwise convolution is several times faster than on a channels-first copy
        x, z = self._proj(x, self.in_proj.weight[: self.d_inner]), self._proj(x, self.in_proj.weight[self.d_inner :])
        # SiLU and the gate in place on their fresh intermediates when no graph is recorded (no new map allocated);
        # under autograd in place would make it clone the input that their backward needs, a copy more than out of
        # place. A trace always records out of place (its check reruns it in another grad mode).
        fresh = not torch.is_grad_enabled() and not torch.jit.is_tracing()
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)), inplace=fresh)
        if torch.jit.is_scripting():
            y = self._norm_gate(self._cross_scan_unfused(x), z, fresh)
        else:
            y = self._mix_eager(x, z, fresh)
        return self._proj(y, self.out_proj.weight)

    def _proj(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, weight)`` (in_proj's halves, out_proj: no bias), ``(..., K)`` -> ``(..., N)``; on oneDNN
        (:mod:`~vmunetv2_monai.ops.linear_cpu`) on the ``cpu_fused`` path."""
        if torch.jit.is_scripting():
            return F.linear(x, weight)
        return self._proj_eager(x, weight)

    @torch.jit.unused
    def _proj_eager(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """:meth:`_proj` outside TorchScript."""
        if resolve_backend(self.scan_backend, x.device) == "cpu_fused":
            return linear_cpu(x, weight)
        return F.linear(x, weight)

    @torch.jit.unused
    def _mix_eager(self, x: torch.Tensor, z: torch.Tensor, fresh: bool) -> torch.Tensor:
        """Cross-scan, scan, merge, ``out_norm`` and gate of ``x`` ``(B, d_inner, H, W)`` and ``z``
        ``(B, H, W, d_inner)``: two compiled ops (:mod:`~vmunetv2_monai.ops.selective_scan.cross_cpu`, then
        :mod:`~vmunetv2_monai.ops.selective_scan.gated_norm_cpu` where it applies) when the backend resolves to
        ``cpu_fused`` and the op takes ``x``, else :meth:`_cross_scan_unfused` and :meth:`_norm_gate`;
        ``(B, H, W, d_inner)``."""
        if resolve_backend(self.scan_backend, x.device) == "cpu_fused" and cross_scan_supported(x, self.A_logs):
            y = cross_selective_scan_cpu(
                x.permute(0, 2, 3, 1), self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                self.Ds,
            )
            if gated_norm_supported(y, z, self.out_norm):
                return gated_norm_cpu(y, z, self.out_norm)
            return self._norm_gate(y, z, fresh)
        return self._norm_gate(self._cross_scan_unfused(x), z, fresh)

    def _norm_gate(self, y: torch.Tensor, z: torch.Tensor, fresh: bool) -> torch.Tensor:
        """``out_norm(y) * silu(z)`` in PyTorch, ``(B, H, W, d_inner)``; SiLU and the product in place on ``z`` when
        ``fresh`` (no graph is recorded)."""
        y = self.out_norm(y.to(z.dtype))
        gate = F.silu(z, inplace=fresh)
        return gate.mul_(y) if fresh else gate * y

    def _cross_scan_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-scan, scan (configured backend, or the TorchScript loop when scripted) and merge in PyTorch.

        Args:
            x: ``(B, d_inner, H, W)``.

        Returns:
            ``(B, H, W, d_inner)`` in float32.
        """
        b, _, h, w = x.shape
        length = h * w
        xs = cross_scan(x)  # (B, K, d_inner, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        u, delta = xs.reshape(b, -1, length).float(), dts.reshape(b, -1, length).float()
        bs, cs = bs.float().contiguous(), cs.float().contiguous()
        if torch.jit.is_scripting():
            y = self._scan_scripted(u, delta, bs, cs)
        else:
            y = self._scan(u, delta, bs, cs)
        y = cross_merge(y.reshape(b, xs.shape[1], self.d_inner, length), h, w)  # (B, d_inner, L)
        return y.transpose(1, 2).reshape(b, h, w, self.d_inner)

    @torch.jit.unused
    def _scan(self, u: torch.Tensor, delta: torch.Tensor, bs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
        """The selective scan on the configured backend: u, delta ``(B, K * d_inner, L)``, bs, cs ``(B, K, N, L)``."""
        return selective_scan(
            u, delta, -torch.exp(self.A_logs.float()), bs, cs, self.Ds.float(), None,
            self.dt_projs_bias.reshape(-1).float(), True, backend=self.scan_backend,
        )

    def _scan_scripted(self, u: torch.Tensor, delta: torch.Tensor, bs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
        """The same scan in TorchScript (used when the module is scripted): the export loop of ``scripted.py``."""
        b, k, length = u.shape[0], bs.shape[1], u.shape[-1]
        dl = step_sizes(delta, self.dt_projs_bias.reshape(-1).float(), True, torch.float32)
        a = -torch.exp(self.A_logs.float())
        y = scan_loop(
            u.reshape(b, k, self.d_inner, length),
            dl.reshape(b, k, self.d_inner, length),
            a.reshape(k, self.d_inner, -1),
            bs,
            cs,
        ).reshape(b, -1, length)
        return skip_and_gate(y, u, self.Ds.float(), None)
