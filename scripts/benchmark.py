"""VM-UNetV2 on the CPU: one table of the figures of issue 4, each row against its reference in the same run.

Rows:
- scan, four stage shapes of a 256x256 image: our ``cpu`` backend against mamba-ssm's ``selective_scan_ref``
  formulation (forward; forward+backward at the shapes up to ``--ref-backward-max-len``), and the fraction of
  this machine's limit reached (state updates/s against the measured peak of the kernel's exp+FMA step
  arithmetic, or the time to stream the scan's inputs and outputs at the measured copy bandwidth, whichever is
  larger);
- scan backward peak memory against its forward with saved inputs (stage 1);
- whole network, default config, 1x3x256x256, eval: VM-UNetV2 (auto = cpu_fused; cpu; torch backend) against the
  same network computed with ``selective_scan_ref``, and MONAI BasicUNet and SwinUNETR (2D) on the same input;
- training step, batch 8, 256x256, forward + deep-supervision loss + backward + fused AdamW (as the bundle): time and
  peak RSS;
- parameters and FLOPs like the paper's complexity table.

    python scripts/benchmark.py                # prints the table, writes outputs/benchmark.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from bench_common import (
    D_STATE,
    STAGE_SHAPES,
    machine_info,
    mamba_selective_scan_ref,
    median,
    memory_bandwidth_gbs,
    network_work,
    peak_rss_increase_mb,
    peak_rss_mb,
    rss_follows_tensors,
    scan_inputs,
    time_runs,
)
from benchmark_scan import measure
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import BasicUNet, SwinUNETR

import vmunetv2_monai.networks.blocks.ss2d as ss2d_module
from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.networks.blocks import LevelProjection, PatchMerging2D
from vmunetv2_monai.ops.selective_scan import available_backends, selective_scan
from vmunetv2_monai.ops.selective_scan.cpu import _load

ROWS: list[dict[str, object]] = []


def add(section: str, item: str, value: float, unit: str, reference: str = "", ratio: float | None = None,
        note: str = "") -> None:
    """Record and print one table row."""
    row = {"section": section, "item": item, "value": value, "unit": unit, "reference": reference, "ratio": ratio,
           "note": note}
    ROWS.append(row)
    ratio_txt = f"{ratio:8.3g}x" if ratio is not None else f"{'':9}"
    print(f"{section:<9} {item:<44} {value:10.4g} {unit:<8} {ratio_txt} {reference:<26} {note}", flush=True)


@contextlib.contextmanager
def network_with_selective_scan_ref() -> Iterator[None]:
    """Run every SS2D with the selective_scan_ref formulation (the official code's CPU path)."""
    original = ss2d_module.selective_scan

    def ref(*args, backend: str = "auto", **kwargs):  # noqa: ARG001 - the backend argument is ignored here
        return mamba_selective_scan_ref(*args, **kwargs)

    ss2d_module.selective_scan = ref
    try:
        yield
    finally:
        ss2d_module.selective_scan = original


def scan_rows(repeats: int, ref_backward_max_len: int) -> None:
    module, _ = _load()
    peak = median([module.probe_updates_per_second(1_000_000) for _ in range(5)])
    bandwidth = memory_bandwidth_gbs()
    add("machine", "peak of the scan step arithmetic (exp2+FMA)", peak / 1e9, "G upd/s", note="kernel probe, median 5")
    add("machine", "memory copy bandwidth (read+write)", bandwidth, "GB/s", note="512 MB tensor copy, best of 5")
    for rows, length in STAGE_SHAPES:
        ours_f = measure("cpu", rows, length, repeats, backward=False)
        ref_f = measure("selective_scan_ref", rows, length, repeats, backward=False)
        updates = rows * length * D_STATE
        # bytes the forward must move at least: u, delta, y per row and step; B, C per group and step
        bytes_fwd = 4 * (3 * rows * length + 2 * 4 * length * D_STATE)
        limit = max(updates / peak, bytes_fwd / (bandwidth * 1e9))
        shape = f"{rows}x{length}"
        add("scan", f"{shape} forward, cpu backend", ours_f["s"] * 1e3, "ms", "selective_scan_ref fwd",
            ref_f["s"] / ours_f["s"], f"ref {ref_f['s'] * 1e3:.0f} ms")
        add("scan", f"{shape} forward state updates/s", updates / ours_f["s"] / 1e9, "G upd/s",
            note=f"{100 * limit / ours_f['s']:.0f}% of the machine limit ({limit * 1e3:.1f} ms)")
        ours_b = measure("cpu", rows, length, repeats, backward=True)
        if length <= ref_backward_max_len:
            ref_b = measure("selective_scan_ref", rows, length, repeats, backward=True)
            add("scan", f"{shape} forward+backward, cpu backend", ours_b["s"] * 1e3, "ms",
                "selective_scan_ref fwd+bwd", ref_b["s"] / ours_b["s"], f"ref {ref_b['s']:.1f} s (1 run)")
        else:  # its backward takes many minutes; its forward alone gives a lower bound of the ratio
            add("scan", f"{shape} forward+backward, cpu backend", ours_b["s"] * 1e3, "ms",
                "selective_scan_ref fwd only", ref_f["s"] / ours_b["s"],
                "lower bound: reference backward not run (--ref-backward-max-len)")


def backward_memory_row() -> None:
    """Peak RSS of the scan's backward against its forward, both counting the saved inputs (stage 1)."""
    rows, length = STAGE_SHAPES[0]
    tensors = scan_inputs(rows, length)
    inputs_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    leaves = [t.requires_grad_(True) for t in tensors]
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        state["y"] = selective_scan(*leaves[:6], None, leaves[6], True, backend="cpu")

    def backward() -> None:
        torch.autograd.grad(state.pop("y"), leaves, torch.ones(1, rows, length))

    fwd_mb = inputs_mb + peak_rss_increase_mb(forward)
    bwd_mb = fwd_mb + peak_rss_increase_mb(backward)
    add("memory", f"scan backward peak, {rows}x{length}", bwd_mb, "MB", "forward with saved inputs",
        bwd_mb / fwd_mb, f"forward {fwd_mb:.0f} MB (inputs {inputs_mb:.0f} MB); goal <= 2x")


def network_rows(repeats: int) -> None:
    x = torch.randn(1, 3, 256, 256)
    torch.manual_seed(0)
    vmunet = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1).eval()
    # the unfused SS2D path calls selective_scan, which network_with_selective_scan_ref replaces
    ref_net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, scan_backend="cpu").eval()
    ref_net.load_state_dict(vmunet.state_dict())
    candidates: list[tuple[str, nn.Module, Callable[[], contextlib.AbstractContextManager]]] = [
        ("VM-UNetV2, selective_scan_ref", ref_net, network_with_selective_scan_ref),
        ("VM-UNetV2, auto (cpu_fused)", vmunet, contextlib.nullcontext),
        ("VM-UNetV2, cpu backend (unfused SS2D)", ref_net, contextlib.nullcontext),
    ]
    torch_net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, scan_backend="torch").eval()
    torch_net.load_state_dict(vmunet.state_dict())
    candidates.append(("VM-UNetV2, torch backend", torch_net, contextlib.nullcontext))
    candidates.append(("MONAI BasicUNet (2D)", BasicUNet(spatial_dims=2, in_channels=3, out_channels=1).eval(),
                       contextlib.nullcontext))
    candidates.append(("MONAI SwinUNETR (2D, feature_size 24)",
                       SwinUNETR(in_channels=3, out_channels=1, spatial_dims=2).eval(), contextlib.nullcontext))
    ref_time = None
    for name, net, ctx in candidates:
        with torch.no_grad(), ctx():
            slow = "selective_scan_ref" in name
            times = time_runs(lambda net=net: net(x), repeats=3 if slow else repeats, warmup=1)
        t = median(times)
        ref_time = t if slow else ref_time
        add("network", f"{name}, 1x3x256x256 eval", t * 1e3, "ms",
            "" if slow else "VM-UNetV2 + selective_scan_ref", None if slow else ref_time / t,
            f"min {min(times) * 1e3:.0f} ms, {len(times)} runs")


def training_row(repeats: int) -> None:
    torch.manual_seed(0)
    net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)  # fused, as the bundle's train.json
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True))
    x = torch.randn(8, 3, 256, 256)
    y = (torch.rand(8, 1, 256, 256) > 0.5).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    times = time_runs(step, repeats=repeats, warmup=1)
    idle = peak_rss_mb(lambda: None)
    peak = peak_rss_mb(step)
    add("train", "step, batch 8, 256x256, fwd+bwd+AdamW", median(times), "s",
        note=f"min {min(times):.2f} s, {len(times)} runs")
    add("train", "peak RSS of the process during a step", peak, "MB", note=f"{idle:.0f} MB between steps")


def complexity_rows() -> None:
    # the unfused SS2D path, whose selective_scan calls are counted below
    net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, scan_backend="cpu").eval()
    params = sum(p.numel() for p in net.parameters())
    add("model", "parameters (default config, with unused stage 4)", params / 1e6, "M", note="paper: 22.77 M")
    x = torch.randn(1, 3, 256, 256)
    macs = {"module": 0}

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Linear):
            macs["module"] += out.numel() * m.in_features
        elif isinstance(m, nn.ConvTranspose2d):
            macs["module"] += inputs[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Conv2d):
            macs["module"] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def functional_hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        # layers whose weights their block applies functionally (on oneDNN, as two halves, or inside one autograd
        # Function), which the hook above would not see called: SS2D's in_proj and out_proj, PatchMerging's
        # reduction, LevelProjection's 1x1 conv and its attention's MLP (on the two pooled vectors) and 7x7 conv
        if isinstance(m, ss2d_module.SS2D):
            macs["module"] += inputs[0].numel() * m.in_proj.out_features + out.numel() * m.out_proj.in_features
        elif isinstance(m, PatchMerging2D):
            macs["module"] += out.numel() * m.reduction.in_features
        else:
            batch, pixels = out.shape[0], out.shape[-2] * out.shape[-1]
            mlp = m.ca.fc1.weight.numel() + m.ca.fc2.weight.numel()
            macs["module"] += out.numel() * m.conv.in_channels + batch * (2 * mlp + pixels * m.sa.conv1.weight.numel())

    layers_of = {
        ss2d_module.SS2D: ("in_proj", "out_proj"),
        PatchMerging2D: ("reduction",),
        LevelProjection: ("conv", "ca.fc1", "ca.fc2", "sa.conv1"),
    }
    owners = [m for m in net.modules() if type(m) in layers_of]
    applied = {id(m.get_submodule(name)) for m in owners for name in layers_of[type(m)]}
    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and id(m) not in applied]
    handles += [m.register_forward_hook(functional_hook) for m in owners]
    try:
        dense, updates = network_work(net, x)
    finally:
        for h in handles:
            h.remove()
    add("model", "GMACs thop-style (Conv/ConvT/Linear modules)", macs["module"] / 1e9, "G",
        note="paper table: 4.40 G (thop; scan and einsums not counted)")
    scan_ops = 9 * updates  # VMamba's convention for a real-A selective scan: 9 ops per state update
    add("model", "GMACs incl. einsums (conv/linear/einsum)", dense / 1e9, "G", note="torch FlopCounterMode / 2")
    add("model", "G ops of the selective scans", scan_ops / 1e9, "G",
        note=f"{updates / 1e6:.0f} M state updates x 9 (VMamba's count)")
    add("model", "total, all counted", (dense + scan_ops) / 1e9, "G")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per fast measurement (median)")
    parser.add_argument("--ref-backward-max-len", type=int, default=256,
                        help="measure selective_scan_ref forward+backward only at L up to this (it takes minutes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("outputs/benchmark.json"))
    args = parser.parse_args()
    rss_follows_tensors()  # every timing below faults in fresh pages for each tensor above 64 KB (see there)
    if args.threads:
        torch.set_num_threads(args.threads)
    ok, reason = available_backends()["cpu"]
    if not ok:
        raise SystemExit(f"the cpu scan backend is unavailable: {reason}")
    info = machine_info()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"cpu backend: {reason}")
    print(f"{'section':<9} {'item':<44} {'value':>10} {'unit':<8} {'ratio':>9} {'reference':<26} note")
    backward_memory_row()
    scan_rows(args.repeats, args.ref_backward_max_len)
    network_rows(args.repeats)
    training_row(args.train_repeats)
    complexity_rows()
    print(f"values: medians of {args.repeats} runs (selective_scan_ref: 3 forward runs, 1 forward+backward run)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rows": ROWS}, indent=1))
    print("json:", args.json)


if __name__ == "__main__":
    main()
