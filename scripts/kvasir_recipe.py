"""Kvasir-SEG results recipe: VM-UNetV2 against MONAI's BasicUNet, same pipeline, data and wall-clock budget.

Steps: seeded split (the 100 PraNet test ids are the test set; validation is carved from the other 900 and
written to <out>/split.json, which refuses any overlap) -> bundle training of each model (best checkpoint by
validation Dice, never by test) -> prediction of the test images at their original resolution -> report folder
<out>/report with report.md, metrics.csv, learning_curves.png and overlays.png.

    python scripts/kvasir_recipe.py --recipe cpu  --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_cpu
    python scripts/kvasir_recipe.py --recipe full --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_full

``--jobs 2`` trains the models at the same time, each on an equal share of the CPU cores (on 2 cores: one
each, so both get the full wall-clock budget in half the session time). ``--report-only`` rebuilds the report
from the folders of a finished run.

The trained checkpoints are <out>/<model>/models/model.pt (state dicts, usable with bundle/configs/inference.json
given the overrides that <out>/<model>/overrides.json records; the test predictions are made that way).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from vmunetv2_monai.data.datalist import build_datalist, load_splits
from vmunetv2_monai.evaluation.recipe import (
    evaluate_models,
    predict_with_bundle,
    read_tensorboard_curves,
    train_with_budget,
)
from vmunetv2_monai.evaluation.split import write_split
from vmunetv2_monai.handlers.atomic import atomic_write

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"

# CPU budget recipe: shallow encoder (2-2-2-2) without the unused stage, 128x128 inputs, images cached in
# memory after loading and resizing: with --jobs 2 on a 2-core machine (one core each) VM-UNetV2 ran 18 epochs
# over the 810 training images in 90 minutes and BasicUNet 30; the epoch count and the cosine schedule are fitted
# to the budget from the measured pace.
# Full recipe: the paper's setting, read from bundle/configs/kvasir_full.json (one definition for both uses).
FULL = {k: v for k, v in json.loads((BUNDLE / "configs" / "kvasir_full.json").read_text()).items()
        if not k.startswith("_") and not (isinstance(v, str) and v.startswith("$"))}
RECIPES = {
    "cpu": {
        "vmunetv2": {"depths": [2, 2, 2, 2], "keep_unused_stage": False, "drop_path_rate": 0.1},
        "common": {"image_size": [128, 128], "batch_size": 8, "epochs": 100, "num_workers": 0, "cache_rate": 1.0,
                   "budget_min": 90.0},
    },
    "full": {"vmunetv2": {}, "common": {**FULL, "budget_min": None}},  # bundle/configs/kvasir_full.json
}
BASIC_UNET = {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1}


def _write_json(path: Path, obj: object) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def run_model(overrides: dict, budget_min: float | None, test_items: list, jobs: int, threads: int) -> dict:
    """Train one model, predict the test images, and write ``<output_dir>/run.json``; returns the run info."""
    if threads > 0:
        torch.set_num_threads(threads)
    out = Path(overrides["output_dir"])
    _write_json(out / "overrides.json", overrides)
    info = train_with_budget(BUNDLE, overrides, None if budget_min is None else budget_min * 60)
    predict_with_bundle(BUNDLE, overrides, test_items, out / "test_predictions")
    info = {**info, "image_size": overrides["image_size"], "batch_size": overrides["batch_size"],
            "budget_min": budget_min, "jobs": jobs, "torch_threads": torch.get_num_threads()}
    _write_json(out / "run.json", info)  # last: its presence marks a finished run
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    ap.add_argument("--data-dir", required=True, help="Kvasir-SEG root (images/masks, or train|val|test/images|masks)")
    ap.add_argument("--test-names", help="test ids file (default: <data-dir>/pranet_kvasir_test_names.txt)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--models", default="vmunetv2,basicunet", help="comma-separated: vmunetv2, basicunet")
    ap.add_argument("--budget-min", type=float, help="training wall-clock budget per model (minutes)")
    ap.add_argument("--epochs", type=int, help="maximum epochs (default: the recipe's)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pretrained", help="VMamba v0 checkpoint for the VM-UNetV2 encoder (optional)")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at the same time (cores shared equally)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report of a finished run")
    ap.add_argument("--extra", default="{}", help="JSON of extra bundle overrides for every model (tests, tuning)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")

    recipe = RECIPES[args.recipe]
    common = dict(recipe["common"])
    budget_min = args.budget_min if args.budget_min is not None else common.pop("budget_min")
    common.pop("budget_min", None)
    if args.epochs:
        common["epochs"] = args.epochs
    out = Path(args.out).resolve()
    split_file = out / "split.json"
    if args.report_only:
        datalist = load_splits(datalist_file=split_file)  # the finished run's split, whatever the arguments say
    else:
        test_names = args.test_names or os.path.join(args.data_dir, "pranet_kvasir_test_names.txt")
        datalist = build_datalist(args.data_dir, val_fraction=args.val_fraction, seed=args.seed,
                                  test_names_file=test_names)
        write_split(datalist, split_file)

    models = {
        "vmunetv2": {**recipe["vmunetv2"], **({"pretrained_path": args.pretrained} if args.pretrained else {})},
        "basicunet": {"network_def": BASIC_UNET},
    }
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        if name not in models:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(models)}")
    if not args.report_only:
        overrides = [
            {
                "bundle_root": str(BUNDLE), "output_dir": str(out / name), "datalist_file": str(split_file),
                "seed": args.seed, "lr_t_max": common["epochs"], "progress_bar": False, **common, **models[name],
                **json.loads(args.extra),
            }
            for name in names
        ]
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_model, o, budget_min, datalist["test"], args.jobs, threads) for o in overrides]
            for f in futures:
                f.result()
    runs, curves, pred_dirs = {}, {}, {}
    for name in names:
        run_file = out / name / "run.json"
        if not run_file.is_file():
            raise SystemExit(f"{run_file} is missing: the {name} run did not finish")
        runs[name] = {**json.loads(run_file.read_text()), "train/val/test": f"{len(datalist['training'])}/"
                      f"{len(datalist['validation'])}/{len(datalist['test'])}"}
        epoch_length = len(datalist["training"]) // runs[name]["batch_size"]
        curves[name] = read_tensorboard_curves(out / name / "tensorboard", epoch_length)
        pred_dirs[name] = out / name / "test_predictions"
    notes = (f"Recipe '{args.recipe}'. Split: {split_file} (seed {args.seed}; validation carved from the training "
             "pool; the test ids are never used for model selection). Each model's checkpoint is the best by "
             "validation mean Dice. Prediction: the bundle's inference.json with inference_mode resize (whole "
             "image resized to the training size, logits upsampled bilinearly to the original size, threshold 0.5).")
    evaluate_models(datalist["test"], pred_dirs, curves, runs, out / "report",
                    f"Kvasir-SEG test set ({len(datalist['test'])} images): {args.recipe} recipe", notes)


if __name__ == "__main__":
    main()
