"""Kvasir-SEG results recipe: VM-UNetV2 against MONAI's BasicUNet through the bundle, with the same split, engine,
budget and protocol. This script only drives ``python -m monai.bundle run``; every command it runs is in the
model's ``train.log`` / ``eval.log`` and can be rerun by hand.

Steps: seeded split (the 100 PraNet test ids are the test set; validation is carved from the other 900 and
written to <out>/split.json, which refuses any overlap) -> per model, ``train.json`` + ``configs/kvasir_<recipe>.json``
(BasicUNet: ``network_def`` replaced; best checkpoint by validation mean Dice, never by test) -> ``evaluate.json``
on the test ids (MONAI metrics at the original resolution) -> ``inference.json`` on the three overlay cases ->
<out>/report with report.md, metrics.csv, learning_curves.png and overlays.png.

    python scripts/kvasir_recipe.py --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_cpu --jobs 2
    python scripts/kvasir_recipe.py --recipe full --data-dir ../shared/data/kvasir-seg --out outputs/kvasir_full

``cpu``: each model trains for ``--budget-s`` CPU seconds of its own process (``budget_cpu_s``; the bundle counts
``time.process_time``, validation excluded) with the learning study's settings; with ``--jobs 2`` the two models
train side by side with one thread each. ``full``: the paper's setting (``kvasir_full.json``), for a GPU.
``--resume`` continues killed runs from ``<out>/<model>/models/latest.pt``; ``--report-only`` rebuilds the report.
``--set ID=VALUE`` (repeatable; VALUE a Python literal or a plain string) adds a bundle override for every model,
``--set MODEL:ID=VALUE`` for one model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from vmunetv2_monai.bundle import DEFAULT_BUNDLE
from vmunetv2_monai.data.datalist import build_datalist, load_splits
from vmunetv2_monai.evaluation.recipe import (
    MODEL_OVERRIDES,
    bundle_command,
    check_finished,
    evaluate_models,
    overlay_cases,
    parse_set,
    read_training,
    run_bundle,
)
from vmunetv2_monai.evaluation.split import write_split
from vmunetv2_monai.files import write_json
from vmunetv2_monai.metrics import read_case_rows

logger = logging.getLogger("kvasir_recipe")

BUNDLE = DEFAULT_BUNDLE
def model_overrides(name: str, args: argparse.Namespace, split_file: Path) -> dict:
    """The bundle overrides that train and score model ``name`` (the same for training, evaluation, inference)."""
    budget = {"budget_cpu_s": args.budget_s, "val_every_cpu_s": args.eval_every_s} if args.recipe == "cpu" else {}
    return {"datalist_file": str(split_file), "output_dir": str(args.out / name), "seed": args.seed,
            **budget, **MODEL_OVERRIDES[name], **parse_set(args.set, name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=("cpu", "full"), default="cpu")
    ap.add_argument("--data-dir", required=True, help="Kvasir-SEG root (images/masks, or train|val|test/images|masks)")
    ap.add_argument("--test-names", help="test ids file (default: <data-dir>/pranet_kvasir_test_names.txt)")
    ap.add_argument("--out", required=True, type=lambda p: Path(p).resolve(), help="output folder")
    ap.add_argument("--models", default="vmunetv2,basicunet", help="comma-separated: vmunetv2, basicunet")
    ap.add_argument("--budget-s", type=float, default=6000.0, help="cpu recipe: training CPU seconds per model")
    ap.add_argument("--eval-every-s", type=float, default=300.0, help="cpu recipe: CPU seconds between validations")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--jobs", type=int, default=1, help="models trained at the same time (cores shared equally)")
    ap.add_argument("--threads", type=int, help="CPU threads per training process (default: the cores / --jobs)")
    ap.add_argument("--resume", action="store_true", help="continue killed runs from <out>/<model>/models/latest.pt")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report of a finished run")
    ap.add_argument("--set", action="append", default=[], metavar="[MODEL:]ID=VALUE",
                    help="bundle override for every model, or for MODEL only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODEL_OVERRIDES]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: choose from {', '.join(MODEL_OVERRIDES)}")
    try:
        for name in names:
            parse_set(args.set, name)  # refuse a malformed --set before anything runs
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out: Path = args.out
    split_file = out / "split.json"
    configs = ["train", f"kvasir_{args.recipe}"]
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

    todo = [n for n in names if not args.report_only and not (out / n / "run.json").is_file()]
    threads = args.threads or max(1, (os.cpu_count() or 1) // min(args.jobs, max(1, len(todo))))
    for start in range(0, len(todo), args.jobs):
        running = []
        for name in todo[start : start + args.jobs]:
            overrides = {**model_overrides(name, args, split_file), "resume": args.resume}
            log = out / name / "train.log"
            logger.info("training %s (log %s)", name, log)
            running.append((name, log, run_bundle(bundle_command(BUNDLE, configs, overrides), log, threads, False)))
        for name, log, proc in running:
            check_finished(proc, log)
            info = {**read_training(out / name / "models" / "latest.pt"), "torch_threads": threads,
                    "overrides": model_overrides(name, args, split_file)}
            write_json(out / name / "run.json", info)  # its presence marks a finished training

    runs, curves, case_rows, pred_dirs, recorded = {}, {}, {}, {}, {}
    for name in names:
        run_file = out / name / "run.json"
        if not run_file.is_file():
            raise SystemExit(f"{run_file} is missing: the {name} run did not finish")
        run = json.loads(run_file.read_text())
        recorded[name] = overrides = run.pop("overrides")  # what trained this model: evaluate and infer with it
        per_case = out / name / "eval" / "per_case.csv"
        if not per_case.is_file():
            run_bundle(bundle_command(BUNDLE, [*configs, "evaluate"], {**overrides, "eval_split": "test"}),
                       out / name / "eval.log")
        case_rows[name] = read_case_rows(per_case)
        history, epoch_length = run.pop("history"), run.pop("epoch_length")
        curves[name] = {"val_mean_dice": [(row[0] if args.recipe == "cpu" else row[1] / epoch_length, row[2])
                                          for row in history]}
        runs[name] = {**run, "train/val/test": "/".join(str(len(datalist[k])) for k in ("training", "validation",
                                                                                        "test"))}
        pred_dirs[name] = out / name / "test_predictions"
    shown = set(overlay_cases(case_rows).values())
    items = [it for it in datalist["test"] if it["name"] in shown]
    for name in names:
        overrides = {**recorded[name], "datalist": items, "overlay": False,
                     "pred_dir": str(pred_dirs[name]), "batch_size": 1,
                     "ckpt_path": str(out / name / "models" / "model.pt")}
        run_bundle(bundle_command(BUNDLE, ["inference", f"kvasir_{args.recipe}"], overrides),
                   out / name / "predict.log")
    budget = (f"Budget: {args.budget_s:.0f} CPU seconds of training per model (time.process_time of its own "
              "process, validation excluded). " if args.recipe == "cpu" else "")
    notes = (f"Recipe '{args.recipe}' (bundle configs train.json + kvasir_{args.recipe}.json). {budget}Split: "
             f"{split_file} (seed {args.seed}; validation carved from the training pool; the test ids are never used "
             "for model selection). Each model's checkpoint is the best by validation mean Dice. Scores: the "
             "bundle's evaluate.json on the test ids (MONAI metrics at the original resolution: the whole image "
             "resized to the training size, logits upsampled bilinearly, threshold 0.5).")
    evaluate_models(datalist["test"], case_rows, pred_dirs, curves, runs, out / "report",
                    f"Kvasir-SEG test set ({len(datalist['test'])} images): {args.recipe} recipe", notes,
                    xlabel="training CPU seconds" if args.recipe == "cpu" else "epoch")


if __name__ == "__main__":
    main()
