"""Selective-scan backends at the four VM-UNetV2 stage shapes of a 256x256 image (batch 1, N = 16, float32).

Prints forward and forward+backward time (median of several runs) and peak memory of our ``cpu`` (compiled),
``torch`` (blocked PyTorch) and ``reference`` (sequential) backends and of mamba-ssm's ``selective_scan_ref``
formulation (see bench_common.py), with ratios against ``selective_scan_ref`` measured in the same run.

    python scripts/benchmark_scan.py         # slow backwards (reference, selective_scan_ref) only at L <= 256
    python scripts/benchmark_scan.py --ref-backward-max-len 4096   # all of them (tens of minutes)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import (
    STAGE_SHAPES,
    machine_info,
    mamba_selective_scan_ref,
    median,
    peak_rss_increase_mb,
    rss_follows_tensors,
    scan_inputs,
    time_runs,
)

from vmunetv2_monai.ops.selective_scan import available_backends, selective_scan

SLOW = ("reference", "selective_scan_ref")


def scan_fn(name: str) -> Callable[..., torch.Tensor]:
    """The scan function of a row: one of our backends, or the selective_scan_ref formulation."""
    if name == "selective_scan_ref":
        return mamba_selective_scan_ref
    return lambda *a, **k: selective_scan(*a, **k, backend=name)


def measure(name: str, rows: int, length: int, repeats: int, backward: bool) -> dict[str, float]:
    """Median seconds and peak RSS increase (MB) of one forward (no grad) or forward+backward."""
    fn = scan_fn(name)
    u, delta, A, B, C, D, bias = scan_inputs(rows, length)
    if not backward:

        def run() -> None:
            with torch.no_grad():
                fn(u, delta, A, B, C, D, None, bias, True)

    else:
        leaves = [t.requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]

        def run() -> None:
            y = fn(*leaves[:6], None, leaves[6], True)
            torch.autograd.grad(y, leaves, torch.ones_like(y))

    slow = name in SLOW
    times = time_runs(run, repeats=1 if slow and backward else (3 if slow else repeats), warmup=0 if slow else 1)
    return {"s": median(times), "runs": len(times), "peak_mb": peak_rss_increase_mb(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="runs per fast measurement (median)")
    parser.add_argument(
        "--ref-backward-max-len", type=int, default=256, help="run the slow backwards only up to this L (minutes above)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=Path("outputs/benchmark_scan.json"))
    args = parser.parse_args()
    rss_follows_tensors()  # every timing below faults in fresh pages for each tensor above 64 KB (see there)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in ("cpu", "torch") if available_backends()[b][0]] + list(SLOW)
    info = machine_info()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"cpu backend: {available_backends()['cpu'][1]}")
    header = f"{'shape (rows x L)':>17} {'backend':>18} {'fwd ms':>10} {'x ref':>7} {'fwd MB':>7} "
    header += f"{'fwd+bwd ms':>11} {'x ref':>7} {'f+b MB':>7}"
    print(header)
    results = []
    for rows, length in STAGE_SHAPES:
        row_results = {}
        for name in backends:
            fwd = measure(name, rows, length, args.repeats, backward=False)
            bwd = None
            if name not in SLOW or length <= args.ref_backward_max_len:
                bwd = measure(name, rows, length, args.repeats, backward=True)
            row_results[name] = {"fwd": fwd, "fwd_bwd": bwd}
        ref = row_results["selective_scan_ref"]
        for name, r in row_results.items():
            fwd, bwd = r["fwd"], r["fwd_bwd"]
            r["fwd_speedup_vs_ref"] = ref["fwd"]["s"] / fwd["s"]
            r["fwd_bwd_speedup_vs_ref"] = ref["fwd_bwd"]["s"] / bwd["s"] if bwd and ref["fwd_bwd"] else None
            bwd_txt = (
                f"{bwd['s'] * 1e3:11.1f} "
                + (f"{r['fwd_bwd_speedup_vs_ref']:7.1f}" if r["fwd_bwd_speedup_vs_ref"] else f"{'-':>7}")
                + f" {bwd['peak_mb']:7.0f}"
                if bwd
                else f"{'skipped':>11} {'-':>7} {'-':>7}"
            )
            print(
                f"{f'{rows} x {length}':>17} {name:>18} {fwd['s'] * 1e3:10.1f} {r['fwd_speedup_vs_ref']:7.1f} "
                f"{fwd['peak_mb']:7.0f} {bwd_txt}"
            )
            results.append({"rows": rows, "L": length, "backend": name, **r})
    print("x ref: speed-up against selective_scan_ref in this run; MB: peak RSS increase during the call;")
    print("medians of", args.repeats, "runs (reference and selective_scan_ref: 3 forward, 1 forward+backward)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print("json:", args.json)


if __name__ == "__main__":
    main()
