"""Kvasir-SEG results recipe: VM-UNetV2 against MONAI's BasicUNet, same data pipeline, split, budget and protocol.

Steps: seeded split (the 100 PraNet test ids are the test set; validation is carved from the other 900 and
written to <out>/split.json, which refuses any overlap) -> training of each model (best checkpoint by validation
mean Dice, never by test) -> prediction of the test images at their original resolution with the bundle's
inference config -> report folder <out>/report with report.md, metrics.csv, learning_curves.png and overlays.png.

    python scripts/kvasir_recipe.py --recipe cpu  --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_cpu --jobs 2
    python scripts/kvasir_recipe.py --recipe full --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_full

``cpu``: each model trains for ``--budget-s`` CPU seconds of its own process (``time.process_time``; training
steps only, validation not counted) with the settings chosen by ``scripts/learning_study.py`` (see RECIPES); with
``--jobs 2`` the two models train side by side with one thread each. ``full``: the paper's setting through the
bundle's training config (``bundle/configs/kvasir_full.json``), for a GPU. ``--resume`` continues killed runs from
``<out>/<model>/models/latest.pt``; ``--report-only`` rebuilds the report from the folders of a finished run.

The trained checkpoints are <out>/<model>/models/model.pt (state dicts, usable with the bundle's inference config
given the overrides that <out>/<model>/overrides.json records; the test predictions are made that way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from vmunetv2_monai.data.datalist import build_datalist, load_splits
from vmunetv2_monai.evaluation.recipe import (
    bundle_overrides,
    evaluate_models,
    predict_with_bundle,
    read_tensorboard_curves,
    train_with_bundle,
)
from vmunetv2_monai.evaluation.split import write_split
from vmunetv2_monai.handlers.atomic import atomic_write
from vmunetv2_monai.training import TrainConfig, load_arrays, train_for_budget

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"

# CPU recipe: the settings the learning study (scripts/learning_study.py, bundle/docs/learning_study.md) found to
# learn fastest per CPU second, for each model.
# Study of 2026-11-30 (150 CPU s per trial): VM-UNetV2 gained most from dims 64 (+0.073 validation Dice over its
# baseline) and weight decay 0.05 (+0.023); BasicUNet from half-width features (+0.019) and no weight decay (+0.018).
RECIPES = {
    "vmunetv2": TrainConfig(model="vmunetv2", dims=64, weight_decay=0.05),
    "basicunet": TrainConfig(model="basicunet", features=(16, 16, 32, 64, 128, 16), weight_decay=0.0),
}
# Full recipe: the paper's setting, read from bundle/configs/kvasir_full.json (one definition for both uses).
FULL = {k: v for k, v in json.loads((BUNDLE / "configs" / "kvasir_full.json").read_text()).items()
        if not k.startswith("_") and not (isinstance(v, str) and v.startswith("$"))}
BASIC_UNET = {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1}


def _write_json(path: Path, obj: object) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def run_cpu_model(name: str, cfg: TrainConfig, split_file: Path, budget_s: float, eval_every_s: float, out: Path,
                  resume: bool, threads: int) -> dict:
    """Train one model for ``budget_s`` CPU seconds, predict the test images with the bundle, write run.json."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    split = load_splits(datalist_file=split_file)
    train = load_arrays(split["training"], cfg.size)
    val = load_arrays(split["validation"], cfg.size, keep_full_masks=True)
    result = train_for_budget(cfg, train, val, budget_s, eval_every_s, out / "models", resume=resume)
    overrides = {"bundle_root": str(BUNDLE), "ckpt_path": str(out / "models" / "model.pt"), **bundle_overrides(cfg)}
    _write_json(out / "overrides.json", overrides)
    predict_with_bundle(BUNDLE, overrides, split["test"], out / "test_predictions")
    info = {**result, "budget_cpu_s": budget_s, "torch_threads": torch.get_num_threads(),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}}
    _write_json(out / "run.json", info)  # last: its presence marks a finished run
    return info


def run_full_model(overrides: dict) -> dict:
    """Train one model with the bundle's training config (full recipe), predict the test images, write run.json."""
    out = Path(overrides["output_dir"])
    _write_json(out / "overrides.json", overrides)
    info = train_with_bundle(BUNDLE, overrides)
    predict_with_bundle(BUNDLE, overrides, load_splits(datalist_file=overrides["datalist_file"])["test"],
                        out / "test_predictions")
    info = {**info, "image_size": overrides["image_size"], "batch_size": overrides["batch_size"]}
    _write_json(out / "run.json", info)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=("cpu", "full"), default="cpu")
    ap.add_argument("--data-dir", required=True, help="Kvasir-SEG root (images/masks, or train|val|test/images|masks)")
    ap.add_argument("--test-names", help="test ids file (default: <data-dir>/pranet_kvasir_test_names.txt)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--models", default="vmunetv2,basicunet", help="comma-separated: vmunetv2, basicunet")
    ap.add_argument("--budget-s", type=float, default=3000.0, help="cpu recipe: training CPU seconds per model")
    ap.add_argument("--eval-every-s", type=float, default=300.0, help="cpu recipe: CPU seconds between validations")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pretrained", help="full recipe: VMamba v0 checkpoint for the VM-UNetV2 encoder (optional)")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at the same time (cores shared equally)")
    ap.add_argument("--resume", action="store_true", help="continue killed runs from <out>/<model>/models/latest.pt")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report of a finished run")
    ap.add_argument("--extra", default="{}",
                    help="JSON of changes for every model: TrainConfig fields (cpu) or bundle overrides (full)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        if name not in RECIPES:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(RECIPES)}")
    extra = json.loads(args.extra)
    out = Path(args.out).resolve()
    split_file = out / "split.json"
    if args.report_only or args.resume:
        datalist = load_splits(datalist_file=split_file)  # the run's own split, whatever the arguments say
    else:
        for name in names:
            if (out / name / "models").exists():
                raise SystemExit(f"{out / name / 'models'} exists: use --resume to continue that run or choose "
                                 "another --out (nothing is overwritten)")
        test_names = args.test_names or os.path.join(args.data_dir, "pranet_kvasir_test_names.txt")
        datalist = build_datalist(args.data_dir, val_fraction=args.val_fraction, seed=args.seed,
                                  test_names_file=test_names)
        write_split(datalist, split_file)

    if not args.report_only:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = []
            for name in names:
                if (out / name / "run.json").is_file():
                    continue  # finished (resume)
                if args.recipe == "cpu":
                    cfg = RECIPES[name].replace(seed=args.seed, **extra)
                    futures.append(pool.submit(run_cpu_model, name, cfg, split_file, args.budget_s,
                                               args.eval_every_s, out / name, args.resume, threads))
                else:
                    model = ({"network_def": BASIC_UNET} if name == "basicunet" else
                             {"pretrained_path": args.pretrained} if args.pretrained else {})
                    overrides = {"bundle_root": str(BUNDLE), "output_dir": str(out / name), "datalist_file":
                                 str(split_file), "seed": args.seed, "progress_bar": False, "resume": args.resume,
                                 **FULL, "lr_t_max": FULL["epochs"], **model, **extra}
                    futures.append(pool.submit(run_full_model, overrides))
            for f in futures:
                f.result()
    runs, curves, pred_dirs = {}, {}, {}
    for name in names:
        run_file = out / name / "run.json"
        if not run_file.is_file():
            raise SystemExit(f"{run_file} is missing: the {name} run did not finish")
        run = json.loads(run_file.read_text())
        sizes = f"{len(datalist['training'])}/{len(datalist['validation'])}/{len(datalist['test'])}"
        if args.recipe == "cpu":
            curves[name] = {"val_mean_dice": [tuple(p) for p in run.pop("curve")]}
            settings = run.pop("settings")
            runs[name] = {**run, **{f"setting: {k}": v for k, v in settings.items() if k != "extra"}}
        else:
            epoch_length = len(datalist["training"]) // run["batch_size"]
            curves[name] = read_tensorboard_curves(out / name / "tensorboard", epoch_length)
            runs[name] = run
        runs[name]["train/val/test"] = sizes
        pred_dirs[name] = out / name / "test_predictions"
    budget = (f"Budget: {args.budget_s:.0f} CPU seconds of training per model (time.process_time of its own process, "
              "validation excluded). " if args.recipe == "cpu" else "")
    notes = (f"Recipe '{args.recipe}'. {budget}Split: {split_file} (seed {args.seed}; validation carved from the "
             "training pool; the test ids are never used for model selection). Each model's checkpoint is the best "
             "by validation mean Dice. Prediction: the bundle's inference config with inference_mode resize (whole "
             "image resized to the training size, logits upsampled bilinearly to the original size, threshold 0.5).")
    evaluate_models(datalist["test"], pred_dirs, curves, runs, out / "report",
                    f"Kvasir-SEG test set ({len(datalist['test'])} images): {args.recipe} recipe", notes,
                    xlabel="training CPU seconds" if args.recipe == "cpu" else "epoch")


if __name__ == "__main__":
    main()
