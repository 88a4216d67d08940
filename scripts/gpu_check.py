"""GPU check for a lent device where nothing can be downloaded: build mamba-ssm's kernel from a carried sdist, then
measure the ``mamba`` backend against ours and the network / bundle on the GPU. Writes ``gpu_check.json`` (after
every section, so a run stopped at its time limit still leaves what it measured) and ``gpu_check.log``.

Sections: environment; build (``scripts/install_gpu.sh``); backends; scan parity of ``mamba`` against ``cpu`` (on
CPU copies) and ``torch`` at the four stage shapes, forward and every gradient, with timings; one training step
with each backend (gradients compared); eval images/s at batch 1 and 32 in fp32 and bf16; the training step at
batch 16 (fp32 and bf16) with peak memory (``train_step``); batch-1 latency, eager against
:class:`~vmunetv2_monai.networks.CUDAGraphed` replay, for the default and the shipped network and MONAI's BasicUNet
(``latency``); the bundle's train / evaluate / inference on the sample data with ``device cuda``; with ``--kvasir
DIR``, ``scripts/kvasir_recipe.py --recipe full`` for VM-UNetV2 and BasicUNet side by side on the GPU, each for
``--kvasir-budget-s`` wall seconds of training (``budget_clock wall``), scored on the test ids (``kvasir``; the run
folder without checkpoints is packed into ``kvasir_full.tar.gz``). ``--sections`` picks sections.

``--smoke`` runs the same code on CPU at small sizes with ``cpu`` / ``torch`` instead of ``mamba``, without the
build: the test of this script on a machine without a GPU. Exit status 1 when a section failed.

Usage (on the device, from the repository root)::

    python3 scripts/gpu_check.py --sdist .whl/mamba_ssm-2.3.2.post1.tar.gz --out "$OUT"
    python scripts/gpu_check.py --smoke --out outputs/gpu_check_smoke       # CPU test of the script

An offline device needs, besides the sdist, wheels for what its image lacks (for the lent H200 image: monai==1.6.1
and pytorch-ignite==0.5.5, installed with ``pip install --no-index --no-deps``); torch, triton, einops,
transformers, ninja and nvcc come with it. The build takes several minutes with all cores (one architecture).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import D_STATE, STAGE_SHAPES, K, scan_inputs

REPO = Path(__file__).resolve().parents[1]
# the package from this checkout: the editable install that the build section makes is not seen by a running process
sys.path.insert(0, str(REPO))
logger = logging.getLogger("gpu_check")
TINY_NET = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 8, "mid_channels": 8}
TINY_BUNDLE = ["--depths", "[1,1,1,1]", "--dims", "16", "--d_state", "8", "--mid_channels", "8",
               "--image_size", "[64,64]"]


class Report:
    """The JSON result, rewritten after every section; failed sections are listed under ``failed``."""

    def __init__(self, out: Path, chosen: set[str] | None = None) -> None:
        self.path, self.data, self.chosen = out / "gpu_check.json", {"failed": []}, chosen

    def section(self, name: str, fn: Callable[[], object]) -> object | None:
        if self.chosen is not None and name not in self.chosen and name not in ("environment", "backends"):
            return None
        logger.info("section %s", name)
        start = time.perf_counter()
        try:
            self.data[name] = fn()
        except Exception as err:  # recorded with its traceback in the log, reported in the JSON and the exit status
            logger.exception("section %s failed", name)
            self.data[name] = {"error": f"{type(err).__name__}: {err}"}
            self.data["failed"].append(name)
        self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))
        return self.data[name]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the largest magnitude of ``b`` (both moved to CPU float64)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def environment() -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True) if _has("nvcc") else None
    info["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc is not None and nvcc.returncode == 0 else None
    return info


def _has(program: str) -> bool:
    return any((Path(p) / program).exists() for p in os.environ.get("PATH", "").split(os.pathsep))


def build(out: Path, sdist: Path | None) -> dict:
    """``scripts/install_gpu.sh`` with this python and the carried sdist; its output goes to ``build.log``."""
    env = {**os.environ, "PYTHON": sys.executable}
    if sdist is not None:
        env["MAMBA_SDIST"] = str(sdist.resolve())
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install_gpu.sh")], env=env, capture_output=True, text=True)
    (out / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"install_gpu.sh exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "tail": (proc.stdout + proc.stderr)[-600:]}


def backends() -> dict:
    from vmunetv2_monai import available_backends

    return {name: {"ok": ok, "reason": reason} for name, (ok, reason) in available_backends().items()}


def scan_parity(device: torch.device, main: str, others: list[str], shapes, repeats: int) -> list[dict]:
    """Per stage shape: ``main`` on ``device`` against each other backend (``cpu`` on CPU copies), output and every
    gradient, plus forward and forward+backward times."""
    from vmunetv2_monai.ops.selective_scan import selective_scan

    rows_out = []
    for rows, length in shapes:
        host = scan_inputs(rows, length)
        weight = torch.randn(1, rows, length, generator=torch.Generator().manual_seed(1))
        results, entry = {}, {"rows": rows, "L": length}
        for backend in [main] + others:
            dev = torch.device("cpu") if backend == "cpu" else device
            args = [t.to(dev).requires_grad_() for t in host]
            w = weight.to(dev)

            def fwd(args=args, backend=backend):
                return selective_scan(*args[:5], args[5], None, args[6], True, backend=backend)

            def fwd_bwd(args=args, w=w, fwd=fwd):
                return torch.autograd.grad((fwd() * w).sum(), args)

            out = fwd()
            results[backend] = (out, torch.autograd.grad((out * w).sum(), args))
            entry[f"{backend}_fwd_ms"] = round(1e3 * timed(lambda fwd=fwd: fwd().detach(), dev, repeats), 3)
            entry[f"{backend}_fwd_bwd_ms"] = round(1e3 * timed(fwd_bwd, dev, repeats), 3)
        out_m, grads_m = results[main]
        names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
        for backend in others:
            out_o, grads_o = results[backend]
            entry[f"{main}_vs_{backend}"] = {"out": rel_err(out_m, out_o)} | {
                f"d{n}": rel_err(g, h) for n, g, h in zip(names, grads_m, grads_o, strict=True)
            }
        logger.info("scan %s", entry)
        rows_out.append(entry)
    return rows_out


def _network(net_kwargs: dict, backend: str, device: torch.device) -> torch.nn.Module:
    from vmunetv2_monai import VMUNetV2

    torch.manual_seed(0)
    return VMUNetV2(scan_backend=backend, drop_path_rate=0.0, keep_unused_stage=False, **net_kwargs).to(device)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``, or nothing for None (fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _loss():
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    return DeepSupervisionLoss(DiceCELoss(sigmoid=True))


def train_step_per_backend(device: torch.device, net_kwargs: dict, backends_: list[str], batch: int, size: int):
    """One training step (loss, backward, AdamW) per backend from the same weights and batch; gradients compared."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(device)
    result, grads = {}, {}
    for backend in backends_:
        net = _network(net_kwargs, backend, device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        sync(device)
        start = time.perf_counter()
        loss = _loss()(net(x), y)
        loss.backward()
        opt.step()
        sync(device)
        grads[backend] = {k: p.grad.detach().cpu() for k, p in net.named_parameters()}
        result[backend] = {"loss": loss.item(), "seconds": round(time.perf_counter() - start, 3)}
    first = backends_[0]
    for backend in backends_[1:]:
        errs = {k: rel_err(grads[first][k], g) for k, g in grads[backend].items()}
        worst = max(errs, key=errs.get)
        result[f"{first}_vs_{backend}_grad_rel_err_max"] = {"parameter": worst, "value": errs[worst]}
    return result


def throughput(device: torch.device, net_kwargs: dict, backend: str, batches: list[int], size: int, repeats: int):
    """Eval images/s per batch size, fp32 and (on CUDA with bf16) bf16 autocast."""
    net = _network(net_kwargs, backend, device).eval()
    dtypes = [None] + ([torch.bfloat16] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [])
    result = {}
    for batch in batches:
        x = torch.rand(batch, 3, size, size, device=device)
        for dtype in dtypes:

            def run(x=x, dtype=dtype):
                with torch.no_grad(), _autocast(device, dtype):
                    return net(x)

            seconds = timed(run, device, repeats, warmup=2)
            result[f"batch{batch}_{'bf16' if dtype else 'fp32'}_images_per_s"] = round(batch / seconds, 2)
    return result


def train_step_memory(device: torch.device, net_kwargs: dict, backend: str, batch: int, size: int, repeats: int):
    """Training step time and peak memory at ``batch``, fp32 and (where supported) bf16 autocast."""
    from vmunetv2_monai.ops import autocast_dtype

    net = _network(net_kwargs, backend, device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = _loss()
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    result: dict[str, object] = {"batch": batch, "image_size": size}
    for amp in ("off", "auto"):
        dtype = autocast_dtype(amp, device)
        if amp == "auto" and dtype is None:
            continue

        def step(dtype=dtype):
            opt.zero_grad(set_to_none=True)
            with _autocast(device, dtype):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(step, device, repeats)
        label = "fp32" if dtype is None else "bf16"
        result[f"{label}_step_s"] = round(seconds, 4)
        result[f"{label}_images_per_s"] = round(batch / seconds, 2)
        if device.type == "cuda":
            result[f"{label}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def latency(device: torch.device, smoke: bool, repeats: int) -> dict:
    """Batch-1 eval images/s, eager and replayed from a CUDA graph (:class:`CUDAGraphed`; eager on CPU), fp32 and bf16
    autocast, with the graph's largest relative difference from eager: the default network at 256 x 256, the shipped
    network (kvasir_cpu.json's 2-2-2-2, dims 64) at 128 x 128, and MONAI's BasicUNet (default and half width)."""
    from monai.networks.nets import BasicUNet

    from vmunetv2_monai.networks import CUDAGraphed

    half = (16, 16, 32, 64, 128, 16)
    cases = {
        "vmunetv2_default_256": (lambda: _network(TINY_NET if smoke else {}, "auto", device), 256),
        "vmunetv2_shipped_128": (lambda: _network({"depths": (2, 2, 2, 2), "dims": 64}, "auto", device), 128),
        "basicunet_default_256": (lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=1).to(device), 256),
        "basicunet_half_128": (lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=1,
                                                 features=half).to(device), 128),
    }
    dtypes = [None] + ([torch.bfloat16] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [])
    result = {}
    for name, (make, size) in cases.items():
        torch.manual_seed(0)
        net = make().eval()
        graphed = CUDAGraphed(net)
        x = torch.rand(1, 3, size // 4 if smoke else size, size // 4 if smoke else size, device=device)
        for dtype in dtypes:
            label = "bf16" if dtype else "fp32"
            for mode, module in (("eager", net), ("graph", graphed)):

                def run(module=module, dtype=dtype, x=x):
                    with torch.no_grad(), _autocast(device, dtype):
                        return module(x)

                result[f"{name}_{label}_{mode}_images_per_s"] = round(1.0 / timed(run, device, repeats, 3), 1)
            with torch.no_grad(), _autocast(device, dtype):
                result[f"{name}_{label}_graph_rel_err"] = rel_err(graphed(x).float(), net(x).float())
        logger.info("latency %s", {k: v for k, v in result.items() if k.startswith(name)})
    return result


def kvasir_full(out: Path, data_dir: Path, budget_s: float, val_every_s: float, timeout_s: float,
                extra: list[str]) -> dict:
    """``scripts/kvasir_recipe.py --recipe full`` for both models side by side (``--jobs 2``), each training for
    ``budget_s`` wall seconds, then scored on the test ids, in a temporary folder: its ``report.md`` and each
    model's test ``eval/summary.json`` go into the result, the folder without checkpoints into
    ``kvasir_full.tar.gz``. The run is stopped after ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="kvasir_full_") as work:
        return _kvasir_full(out, Path(work), data_dir, budget_s, val_every_s, timeout_s, extra)


def _kvasir_full(out: Path, run_dir: Path, data_dir: Path, budget_s: float, val_every_s: float, timeout_s: float,
                 extra: list[str]) -> dict:
    sets = [f"budget_cpu_s={budget_s}", "budget_clock=wall", f"val_every_cpu_s={val_every_s}", *extra]
    cmd = [sys.executable, str(REPO / "scripts" / "kvasir_recipe.py"), "--recipe", "full", "--jobs", "2",
           "--data-dir", str(data_dir), "--out", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    with open(out / "kvasir.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | str = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the recipe and the bundle runs it started
            proc.wait()
            status = f"stopped after {timeout_s:.0f} s"
    tail = (out / "kvasir.log").read_text()[-1500:]
    with tarfile.open(out / "kvasir_full.tar.gz", "w:gz") as tar:
        tar.add(run_dir, arcname="kvasir_full", filter=lambda m: None if m.name.endswith(".pt") else m)
    result = {"status": status, "seconds": round(time.perf_counter() - start, 1), "command": cmd,
              "test_summaries": {p.parent.parent.name: json.loads(p.read_text())
                                 for p in sorted(run_dir.glob("*/eval/summary.json"))}}
    report = run_dir / "report" / "report.md"
    if report.is_file():
        result["report_md"] = report.read_text()
    if status != 0:
        raise RuntimeError(f"kvasir_recipe.py: {status}: {tail}")
    return result


def bundle_runs(out: Path, device: str, extra: list[str], epochs: int) -> dict:
    """The bundle's train, evaluate and inference configs on ``bundle/sample_data`` as subprocesses, run in a
    temporary folder (a device returns only a few files); their output goes to ``bundle.log``."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_bundle_") as work:
        return _bundle_runs(out, Path(work) / "bundle_run", device, extra, epochs)


def _bundle_runs(out: Path, run_dir: Path, device: str, extra: list[str], epochs: int) -> dict:
    cfg = REPO / "bundle" / "configs"
    data = REPO / "bundle" / "sample_data"
    common = ["--bundle_root", str(REPO / "bundle"), "--dataset_dir", str(data), "--output_dir", str(run_dir),
              "--device", f"$torch.device('{device}')", "--num_workers", "0", *extra]
    steps = {
        "train": (["train"], ["--epochs", str(epochs), "--batch_size", "4", "--progress_bar", "False",
                                        "--test_fraction", "0.2"]),
        "evaluate": (["train", "evaluate"], ["--test_fraction", "0.2"]),
        "inference": (["inference"], []),
    }
    result = {}
    for name, (configs, args) in steps.items():
        files = str([str(cfg / f"{c}.json") for c in configs])
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *common, *args]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=run_dir.parent)
        with open(out / "bundle.log", "a") as log:
            log.write(f"===== {name}: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise RuntimeError(f"bundle {name} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
        result[f"{name}_s"] = round(time.perf_counter() - start, 1)
    summary = run_dir / "eval" / "summary.json"
    result["eval_summary"] = json.loads(summary.read_text()) if summary.exists() else None
    result["predictions"] = len(list((run_dir / "predictions").glob("*_mask.png")))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_check")))
    parser.add_argument("--sdist", type=Path, help="mamba_ssm-2.3.2.post1.tar.gz to build from (offline)")
    parser.add_argument("--skip-build", action="store_true", help="use the mamba-ssm already installed")
    parser.add_argument("--skip-bundle", action="store_true", help="leave out the bundle runs")
    parser.add_argument("--smoke", action="store_true", help="CPU test of this script: small sizes, no build")
    parser.add_argument("--sections", default="all", help="comma-separated sections to run (default: all)")
    parser.add_argument("--kvasir", type=Path, help="Kvasir-SEG root: run the full recipe on it (section kvasir)")
    parser.add_argument("--kvasir-budget-s", type=float, default=150.0, help="wall seconds of training per model")
    parser.add_argument("--kvasir-val-every-s", type=float, default=30.0, help="wall seconds between validations")
    parser.add_argument("--kvasir-timeout-s", type=float, default=360.0, help="stop the recipe after this long")
    parser.add_argument("--stop-after-s", type=float, help="end by this many seconds after the start: the recipe's "
                        "timeout and training budget shrink to fit (180 s are kept for its start and scoring)")
    parser.add_argument("--kvasir-set", action="append", default=[], help="extra --set for kvasir_recipe.py")
    args = parser.parse_args()
    started = time.perf_counter()
    chosen = None if args.sections == "all" else set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "gpu_check.log")])
    report = Report(args.out, chosen)
    env = report.section("environment", environment)
    if not args.smoke and not env["cuda_available"]:
        logger.error("no CUDA device: this check needs one (use --smoke for the CPU test of the script)")
        report.data["failed"].append("no CUDA device")
        report.path.write_text(json.dumps(report.data, indent=2, default=str))
        return 1
    if not (args.smoke or args.skip_build):
        report.section("build", lambda: build(args.out, args.sdist))
    found = report.section("backends", backends)
    if args.smoke:
        device, main_backend, others = torch.device("cpu"), "torch", ["cpu"]
        shapes, net_kwargs, size, repeats = [(r // 16, n // 16) for r, n in STAGE_SHAPES], TINY_NET, 64, 1
        batches, big_batch, bundle_extra, epochs = [1, 2], 2, TINY_BUNDLE, 1
    else:
        if not found.get("mamba", {}).get("ok"):
            report.data["failed"].append("mamba backend unavailable")
        device, main_backend, others = torch.device("cuda"), "mamba", ["cpu", "torch"]
        shapes, net_kwargs, size, repeats = list(STAGE_SHAPES), {}, 256, 10
        batches, big_batch, bundle_extra, epochs = [1, 32], 16, [], 2
    report.data["config"] = {"device": str(device), "main": main_backend, "others": others, "image_size": size,
                             "d_state": D_STATE, "directions": K, "network": net_kwargs or "default (22.7 M)"}
    report.section("scan_parity", lambda: scan_parity(device, main_backend, others, shapes, repeats))
    step_backends = [main_backend] + [b for b in others if device.type == "cpu" or b != "cpu"]
    report.section("train_step_per_backend",
                   lambda: train_step_per_backend(device, net_kwargs, step_backends, 2, size))
    report.section("eval_throughput", lambda: throughput(device, net_kwargs, "auto", batches, size, repeats))
    step_repeats = max(3, repeats // 3)
    report.section("train_step", lambda: train_step_memory(device, net_kwargs, "auto", big_batch, size, step_repeats))
    report.section("latency", lambda: latency(device, args.smoke, 2 if args.smoke else 30))
    if not args.skip_bundle:
        report.section("bundle", lambda: bundle_runs(args.out, str(device), bundle_extra, epochs))
    if args.kvasir is not None:
        budget_s, timeout_s = args.kvasir_budget_s, args.kvasir_timeout_s
        if args.stop_after_s is not None:
            left = args.stop_after_s - (time.perf_counter() - started)
            timeout_s = min(timeout_s, left)
            budget_s = max(20.0, min(budget_s, left - 180.0))
            logger.info("%.0f s left: recipe timeout %.0f s, training budget %.0f wall s per model", left, timeout_s,
                        budget_s)
        report.section("kvasir", lambda: kvasir_full(args.out, args.kvasir, budget_s, args.kvasir_val_every_s,
                                                     timeout_s, args.kvasir_set))
    logger.info("failed sections: %s", report.data["failed"] or "none")
    return 1 if report.data["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
