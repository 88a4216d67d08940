"""VM-UNetV2 against MONAI BasicUNet on the CPU: eval latency and the training step, as ratios from one run.

Pairs (each VM-UNetV2 row is timed alternately with its BasicUNet in the same loop, so load on a shared machine hits
both alike; the ratio is VM-UNetV2's median over BasicUNet's):

- default: ``VMUNetV2()`` (depths 2,2,9,2, dims 96) against ``BasicUNet()`` (features 32,32,64,128,256,32);
- shipped: the recipe model of ``bundle/configs/kvasir_cpu.json`` (depths 2,2,2,2, dims 64, stage 4 dropped)
  against the recipe's half-width BasicUNet (features 16,16,32,64,128,16, from
  :data:`vmunetv2_monai.evaluation.recipe.MODEL_OVERRIDES`).

Cases: eval at batch 1 (256x256 and the recipe's 128x128), eval at batch 8, and a training step at batch 8
(forward, loss, backward, AdamW step, fused as in the bundle; VM-UNetV2 with its deep-supervision loss as in the
bundle, BasicUNet with DiceCE), each at every ``--threads`` count. The default eval at batch 1 also runs with
``scan_backend="cpu"`` (the unfused SS2D path) to show what the fused ``cpu_fused`` path gains.

Two last rows per thread count are the default network's floors on this machine, against BasicUNet's time in the
same run. The eval floor (batch 1, 256^2) is its selective-scan state updates at the kernel's measured peak step rate
(``probe_updates_per_second``: exp2 + FMA on register-resident data) plus its dense multiply-adds (convolutions,
linears, einsums) at the best measured sgemm rate. The training floor (batch 8, 256^2) counts the dense products
three times (forward, input gradient, weight gradient; the patch embedding's input gradient, about 0.1 % of them, is
not formed in a real step) and the state updates twice (forward, and the backward's
recompute of the states from the saved chunk starts, which is the forward's recurrence again); the backward's
adjoint recurrence and the optimizer step count as free. Everything else (LayerNorm, SiLU, gating, layout, the loss)
counts as free too, so this implementation (its scan step arithmetic, these matmuls) cannot run the network faster
than its floors on this machine.

After them, per thread count, the same two cases of the default network are broken down
(``scripts/step_breakdown.py``): the time its matrix products take and the FLOP/s they run at (against the best
measured sgemm rate), the fused scan kernel's forward and backward, its convolutions and the rest; the row's ratio
is products plus scan kernel against BasicUNet's whole time in the same run, what is left for everything else.

Every case runs twice by default (``--allocator both``), first on glibc's default allocator (freed blocks under its
adaptive mmap threshold, at most 32 MB, are reused; larger ones are unmapped and fault their pages in again at the
next step), then with freed memory kept (``mallopt``: ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GiB, what
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` do: steps after the first fault in no pages). On glibc's
default BasicUNet's full-resolution maps (67 MB at 256x256, batch 8; 8 MB at batch 1) are often mapped afresh and
faulted in at every call, and at batch 1 whether they are depends on the cases run before in the process, while
VM-UNetV2's quarter-resolution maps mostly are not: the second pass gives the ratios without the allocator's share
(``docs/performance.md``, "Allocator check"). Each row and the JSON name the allocator.

    python scripts/benchmark_unet.py --threads 1 2     # logs the table; writes outputs/benchmark_unet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from bench_common import keep_freed_memory, machine_info, network_work
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import BasicUNet
from step_breakdown import breakdown

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.bundle.opener import DEFAULT_BUNDLE
from vmunetv2_monai.evaluation.recipe import MODEL_OVERRIDES
from vmunetv2_monai.ops.linear_cpu import linear_cpu, linear_cpu_supported
from vmunetv2_monai.ops.selective_scan.cpu import _load

logger = logging.getLogger("benchmark_unet")


@dataclass(frozen=True)
class Case:
    """One row: a VM-UNetV2 and a BasicUNet on the same input, eval or a training step."""

    name: str
    vmunet: Callable[[], nn.Module]
    basicunet: Callable[[], nn.Module]
    batch: int
    size: int
    train: bool


def shipped_kwargs() -> dict:
    """The VM-UNetV2 arguments of the shipped recipe (kvasir_cpu.json merged over train.json, as the bundle does)."""
    configs = DEFAULT_BUNDLE / "configs"
    cfg = ConfigParser.load_config_files([configs / "train.json", configs / "kvasir_cpu.json"])
    return {k: cfg[k] for k in ("depths", "dims", "d_state", "ssm_ratio", "mid_channels", "drop_path_rate",
                                "keep_unused_stage")}


def cases() -> list[Case]:
    half = {k: v for k, v in MODEL_OVERRIDES["basicunet"]["network_def"].items() if k != "_target_"}
    shipped = shipped_kwargs()

    def default_vm() -> nn.Module:
        return VMUNetV2()

    def unfused_vm() -> nn.Module:
        return VMUNetV2(scan_backend="cpu")

    def shipped_vm() -> nn.Module:
        return VMUNetV2(**shipped)

    def default_bu() -> nn.Module:
        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)

    def half_bu() -> nn.Module:
        return BasicUNet(**half)

    return [
        Case("default, eval, batch 1, 256^2", default_vm, default_bu, 1, 256, False),
        Case("default (scan_backend=cpu, unfused), eval, batch 1, 256^2", unfused_vm, default_bu, 1, 256, False),
        Case("shipped vs half-width, eval, batch 1, 256^2", shipped_vm, half_bu, 1, 256, False),
        Case("shipped vs half-width, eval, batch 1, 128^2", shipped_vm, half_bu, 1, 128, False),
        Case("default, eval, batch 8, 256^2", default_vm, default_bu, 8, 256, False),
        Case("shipped vs half-width, eval, batch 8, 128^2", shipped_vm, half_bu, 8, 128, False),
        Case("default, train step, batch 8, 256^2", default_vm, default_bu, 8, 256, True),
        Case("shipped vs half-width, train step, batch 8, 128^2", shipped_vm, half_bu, 8, 128, True),
    ]


def step_fn(net: nn.Module, batch: int, size: int, train: bool) -> Callable[[], None]:
    """One eval forward (no grad) or one training step of ``net`` on a fixed random batch."""
    x = torch.randn(batch, 3, size, size)
    if not train:
        net.eval()

        def infer() -> None:
            with torch.no_grad():
                net(x)

        return infer
    net.train()
    y = (torch.rand(batch, 1, size, size) > 0.5).float()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)  # fused, as the bundle's train.json
    dice_ce = DiceCELoss(sigmoid=True)
    ds_loss = DeepSupervisionLoss(dice_ce)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(x)
        (ds_loss(out, y) if isinstance(out, list) else dice_ce(out, y)).backward()
        opt.step()

    return train_step


def measure(case: Case, repeats: int) -> dict:
    """Medians of ``repeats`` alternating runs of both networks after one warm-up run each."""
    torch.manual_seed(0)
    fns = {"vmunet": step_fn(case.vmunet(), case.batch, case.size, case.train),
           "basicunet": step_fn(case.basicunet(), case.batch, case.size, case.train)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"vmunet_s": med["vmunet"], "basicunet_s": med["basicunet"], "ratio": med["vmunet"] / med["basicunet"],
            "per_image_vmunet_ms": 1e3 * med["vmunet"] / case.batch,
            "per_image_basicunet_ms": 1e3 * med["basicunet"] / case.batch, "load_avg_1min": os.getloadavg()[0]}


def sgemm_flops_per_second(repeats: int = 20) -> float:
    """Best FLOP/s of float32 matmuls of the default network's in_proj shapes (stages 1 and 3, 256x256), on
    PyTorch's ``@`` (MKL) and on oneDNN (:func:`~vmunetv2_monai.ops.linear_cpu.linear_cpu`, SS2D's projections on
    the fused path), whichever is faster."""
    best = 0.0
    for rows, cin, cout in ((4096, 96, 384), (256, 384, 1536), (4096, 192, 768)):
        a, w = torch.randn(rows, cin), torch.randn(cout, cin)
        products = [torch.matmul] + ([linear_cpu] if linear_cpu_supported(a, w) else [])
        for product in products:
            rhs = w.t() if product is torch.matmul else w
            product(a, rhs)
            start = time.perf_counter()
            for _ in range(repeats):
                product(a, rhs)
            best = max(best, 2 * rows * cin * cout * repeats / (time.perf_counter() - start))
    return best


#: (name of the floor row, name of its timed case in :func:`cases`, batch, dense passes, scan passes)
FLOORS = (("floor of default, eval, batch 1, 256^2", "default, eval, batch 1, 256^2", 1, 1, 1),
          ("floor of default, train step, batch 8, 256^2", "default, train step, batch 8, 256^2", 8, 3, 2))


@dataclass(frozen=True)
class FloorRates:
    """What every floor row of one thread count is formed from: the default network's work at batch 1, 256^2 (eval
    forward), the kernel's probed peak step rate and the best measured sgemm rate."""

    macs: float
    updates: int
    peak_updates_per_s: float
    sgemm_flops_per_s: float


def floor_rates() -> FloorRates:
    """:class:`FloorRates` at torch's current thread count (module docstring)."""
    kernel, reason = _load()
    if kernel is None:
        raise SystemExit(f"the floor rows need the cpu scan kernel: {reason} (or pass --no-floor)")
    macs, updates = network_work(VMUNetV2(scan_backend="cpu").eval(), torch.randn(1, 3, 256, 256))
    peak = statistics.median(kernel.probe_updates_per_second(1_000_000) for _ in range(5))
    return FloorRates(macs, updates, peak, sgemm_flops_per_second())


def floor_row(name: str, batch: int, dense_passes: int, scan_passes: int, rates: FloorRates, timed: dict) -> dict:
    """The default network's floor ``name`` at 256^2 (module docstring): ``dense_passes`` times its dense
    multiply-adds and ``scan_passes`` times its state updates at ``batch`` (both scale with the batch), at ``rates``,
    against both networks' times in ``timed``, the :func:`measure` row of the matching case."""
    dense_macs, updates = batch * dense_passes * rates.macs, batch * scan_passes * rates.updates
    scan_s, dense_s = updates / rates.peak_updates_per_s, 2 * dense_macs / rates.sgemm_flops_per_s
    floor = scan_s + dense_s
    return {"case": name, "state_updates": updates, "peak_updates_per_s": rates.peak_updates_per_s,
            "scan_floor_s": scan_s, "dense_macs": dense_macs, "sgemm_flops_per_s": rates.sgemm_flops_per_s,
            "dense_floor_s": dense_s, "floor_s": floor, "vmunet_s": timed["vmunet_s"],
            "basicunet_s": timed["basicunet_s"], "floor_ratio": floor / timed["basicunet_s"],
            "vmunet_over_floor": timed["vmunet_s"] / floor, "load_avg_1min": os.getloadavg()[0]}


def breakdown_row(name: str, case: Case, repeats: int, sgemm_flops_per_s: float | None, timed: dict) -> dict:
    """The default network's breakdown ``name`` of ``case`` (module docstring) on a fresh instance, against
    BasicUNet's time in ``timed`` (the :func:`measure` row of the case); ``sgemm_flops_per_s`` (the floors' rate,
    None without them) gives the products' share of that rate."""
    torch.manual_seed(0)
    parts = breakdown(step_fn(case.vmunet(), case.batch, case.size, case.train), repeats)
    kernels = parts["products"] + parts["scan_forward"] + parts["scan_backward"]
    return {"case": name, **parts, "sgemm_flops_per_s": sgemm_flops_per_s,
            "products_of_sgemm_rate": parts["product_flops_per_s"] / sgemm_flops_per_s if sgemm_flops_per_s else None,
            "basicunet_s": timed["basicunet_s"], "products_and_scan_ratio": kernels / timed["basicunet_s"],
            "load_avg_1min": os.getloadavg()[0]}


def log_breakdown(threads: int, row: dict) -> None:
    """One table row of :func:`breakdown_row`."""
    share = f" ({row['products_of_sgemm_rate']:.2f} of the best sgemm rate)" if row["sgemm_flops_per_s"] else ""
    logger.info("| %d | %s: matrix products %.0f ms at %.0f GFLOP/s%s, scan kernel %.0f ms forward + %.0f ms backward, "
                "convolutions %.0f ms, the rest %.0f ms (VM-UNetV2 %.0f ms) | | %.3f s | products + scan kernel "
                "%.2fx BasicUNet | | %.1f |", threads, row["case"], 1e3 * row["products"],
                row["product_flops_per_s"] / 1e9, share, 1e3 * row["scan_forward"], 1e3 * row["scan_backward"],
                1e3 * row["convolutions"], 1e3 * row["rest"], 1e3 * row["total_s"], row["basicunet_s"],
                row["products_and_scan_ratio"], row["load_avg_1min"])


def timed_case(rows: list[dict], threads: int, case_name: str, repeats: int) -> tuple[Case, dict]:
    """The case named ``case_name`` and its :func:`measure` row at ``threads`` from ``rows``, measured now when the
    run left it out (``--cases``)."""
    case = next(c for c in cases() if c.name == case_name)
    timed = next((r for r in rows if r["threads"] == threads and r["case"] == case_name), None)
    return case, timed or measure(case, repeats)


#: The allocator names of the table and the JSON.
ALLOCATORS = {"glibc": "glibc default", "keep": "keep freed memory"}


def run_pass(args: argparse.Namespace, key: str) -> list[dict]:
    """Every selected case (and the floor and breakdown rows) at every thread count under allocator ``key`` (of
    :data:`ALLOCATORS`); the rows. ``keep`` changes glibc's settings for the rest of the process: run it last."""
    allocator = ALLOCATORS[key]
    if key == "keep":
        keep_freed_memory()
    logger.info("allocator: %s%s", allocator, "" if key == "keep" else
                " (BasicUNet's times include page faults of its large maps, which depend on the cases run before)")
    rows = []
    header = "| threads | case | VM-UNetV2 | BasicUNet | ratio | VM-UNetV2 per image | load avg |"
    logger.info("%s\n|---|---|---|---|---|---|---|", header)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case in cases():
            if args.cases not in case.name:
                continue
            row = {"allocator": allocator, "threads": threads, "case": case.name, **measure(case, args.repeats)}
            rows.append(row)
            logger.info("| %d | %s | %.3f s | %.3f s | %.2fx | %.1f ms | %.1f |", threads, case.name, row["vmunet_s"],
                        row["basicunet_s"], row["ratio"], row["per_image_vmunet_ms"], row["load_avg_1min"])
        rates = floor_rates() if args.floor else None
        for name, case_name, batch, dense_passes, scan_passes in FLOORS if args.floor else ():
            _, timed = timed_case(rows, threads, case_name, args.repeats)
            row = {"allocator": allocator, "threads": threads,
                   **floor_row(name, batch, dense_passes, scan_passes, rates, timed)}
            rows.append(row)
            logger.info("| %d | %s: %.0f M state updates at %.2f G/s = %.0f ms + %.2f GMACs at %.0f GFLOP/s = %.0f ms "
                        "-> floor %.0f ms (VM-UNetV2 %.0f ms = %.2fx the floor) | | %.3f s | floor %.2fx BasicUNet | "
                        "| %.1f |", threads, row["case"], row["state_updates"] / 1e6, row["peak_updates_per_s"] / 1e9,
                        1e3 * row["scan_floor_s"], row["dense_macs"] / 1e9, row["sgemm_flops_per_s"] / 1e9,
                        1e3 * row["dense_floor_s"], 1e3 * row["floor_s"], 1e3 * row["vmunet_s"],
                        row["vmunet_over_floor"], row["basicunet_s"], row["floor_ratio"], row["load_avg_1min"])
        for _, case_name, *_ in FLOORS if args.breakdown else ():
            case, timed = timed_case(rows, threads, case_name, args.repeats)
            row = breakdown_row(f"breakdown of {case_name}", case, args.repeats,
                                rates.sgemm_flops_per_s if rates else None, timed)
            rows.append({"allocator": allocator, "threads": threads, **row})
            log_breakdown(threads, row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per network and case (median)")
    parser.add_argument("--cases", type=str, default="", help="run only cases whose name contains this text")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="add the default network's eval and training floor rows per thread count")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="add the default network's breakdown rows (products, scan kernel, the rest) per thread "
                        "count")
    parser.add_argument("--allocator", choices=("both", "glibc", "keep"), default="both",
                        help="glibc: its default; keep: no mmap, no trimming (no page faults after the first step); "
                        "both (default): every case on glibc's default, then again with freed memory kept")
    parser.add_argument("--keep-freed-memory", dest="allocator", action="store_const", const="keep",
                        help="the same as --allocator keep")
    parser.add_argument("--json", type=Path, default=Path("outputs/benchmark_unet.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = machine_info()
    logger.info("machine: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    for key in ("glibc", "keep") if args.allocator == "both" else (args.allocator,):
        rows += run_pass(args, key)  # keep last: glibc's adaptive threshold cannot be restored after it
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "repeats": args.repeats, "rows": rows}, indent=1) + "\n")
    logger.info("json: %s", args.json)


if __name__ == "__main__":
    main()
