"""Learning study: validation mean Dice against the CPU budget spent, for training variants of VM-UNetV2 and of
MONAI's BasicUNet (the same number of trials each), on the Kvasir-SEG 810/90 split (the 100 PraNet test ids are
held out and never read).

Every trial is one ``python -m monai.bundle run`` of ``train.json`` + ``configs/kvasir_cpu.json`` (the CPU
recipe; BasicUNet with its MODEL_OVERRIDES) with ``--budget-s`` CPU seconds of its own
process (``budget_cpu_s``, validation excluded), one thread, and the variant's bundle overrides: each variant
changes one thing from its model's recipe. Writes ``<out>/trials/<model>__<variant>/`` (the bundle run),
``<out>/trials/<model>__<variant>.json`` (a finished trial is not rerun), ``<out>/study.md`` (the table) and
``<out>/learning_curves.png``.

    python scripts/learning_study.py --data-dir ../shared/data/kvasir-seg --out outputs/learning_study --jobs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from vmunetv2_monai.bundle import Bundle
from vmunetv2_monai.data.datalist import build_datalist
from vmunetv2_monai.evaluation.figures import plot_learning_curves
from vmunetv2_monai.evaluation.recipe import (
    MODEL_OVERRIDES,
    bundle_command,
    check_finished,
    parse_set,
    read_training,
    run_bundle,
)
from vmunetv2_monai.evaluation.split import write_split
from vmunetv2_monai.files import atomic_write, write_json

logger = logging.getLogger("learning_study")

# More augmentation than the recipe's flips and rotation: appended to train.json's train#augmentation.
_ZOOM_INTENSITY = [
    {"_target_": "RandZoomd", "keys": "@keys", "prob": 1.0, "min_zoom": 0.75, "max_zoom": 1.25,
     "mode": ["bilinear", "nearest"], "padding_mode": "constant", "keep_size": True},
    {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.2, "prob": 1.0},
]
BUNDLE = Bundle()  # bundle/ of this checkout
_AUGMENTATION = BUNDLE.config("train")["train#augmentation"]
# Variants tried on both models (name, bundle overrides).
SHARED: list[tuple[str, dict[str, Any]]] = [
    ("lr 2e-3, warm-up 10 %", {"learning_rate": 2e-3, "lr_warmup_fraction": 0.1}),
    ("lr 5e-4", {"learning_rate": 5e-4}),
    ("batch 4", {"batch_size": 4}),
    ("batch 16", {"batch_size": 16}),
    ("input 160", {"image_size": [160, 160]}),
    ("input 192", {"image_size": [192, 192]}),
    ("aug: flips only", {"train#augmentation#2#prob": 0.0}),
    ("aug: + zoom 0.25 + intensity 0.2", {"train#augmentation": _AUGMENTATION + _ZOOM_INTENSITY}),
    ("input: ImageNet mean/std", {"normalization": "imagenet"}),
]
# Per model: its recipe, its own knobs, then the shared ones; each list has the same length (the same number of
# tuning trials per model).
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "vmunetv2": [
        ("recipe", {}),
        ("loss: fused output only", {"network_def#deep_supervision": False}),
        ("drop_path 0", {"drop_path_rate": 0.0}),
        ("drop_path 0.2", {"drop_path_rate": 0.2}),
        ("depths 2-2-4-2", {"depths": [2, 2, 4, 2]}),
        ("depths 2-2-9-2", {"depths": [2, 2, 9, 2]}),
        ("dims 96", {"dims": 96}),
        ("weight decay 0.01", {"weight_decay": 0.01}),
        *SHARED,
    ],
    "basicunet": [
        ("recipe", {}),
        ("dropout 0.1", {"network_def#dropout": 0.1}),
        ("features x1", {"network_def#features": [32, 32, 64, 128, 256, 32]}),
        ("features x1.5", {"network_def#features": [48, 48, 96, 192, 384, 48]}),
        ("lr 3e-3, warm-up 10 %", {"learning_rate": 3e-3, "lr_warmup_fraction": 0.1}),
        ("no warm-up", {"lr_warmup_fraction": 0.0}),
        ("weight decay 0.01", {"weight_decay": 0.01}),
        ("weight decay 0.05", {"weight_decay": 0.05}),
        *SHARED,
    ],
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def trial_overrides(model: str, changes: dict[str, Any], args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The bundle overrides of one trial."""
    return {"datalist_file": str(args.out / "split.json"), "output_dir": str(run_dir), "seed": args.seed,
            "budget_cpu_s": args.budget_s, "val_every_cpu_s": args.eval_every_s, **MODEL_OVERRIDES[model],
            **parse_set(args.set, model), **changes}


def write_report(records: list[dict], out: Path) -> None:
    """``study.md`` (one table per model, in run order, with the change against the recipe) and the curves."""
    lines = ["# Learning study: validation mean Dice against CPU seconds of training", "",
             (f"Budget per trial: {records[0]['budget_s']:.0f} CPU s (process time of the trial's own process, one "
              "thread, validation excluded), through the bundle's train.json + kvasir_cpu.json. Validation: the "
              "90-image split, per-image Dice at the original resolution."), ""]
    curves: dict[str, dict[str, list]] = {}
    for model in VARIANTS:
        rows = [r for r in records if r["model"] == model]
        if not rows:
            continue
        base = next((r["history"][-1][2] for r in rows if r["variant"] == "recipe"), None)
        lines += [f"## {model}", "", "| variant | final val Dice | vs recipe | best val Dice | iterations | epochs |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            final = r["history"][-1][2]
            delta = "" if base is None or r["variant"] == "recipe" else f"{final - base:+.4f}"
            lines.append(f"| {r['variant']} | {final:.4f} | {delta} | {r['best_val_mean_dice']:.4f} | "
                         f"{r['iterations']} | {r['epochs']} |")
            curves.setdefault(r["variant"], {})[model] = [(row[0], row[2]) for row in r["history"]]
        lines.append("")
    plot_learning_curves(curves, out / "learning_curves.png", xlabel="training CPU seconds")
    atomic_write(out / "study.md", lambda p: Path(p).write_text("\n".join(lines)))
    logger.info("wrote %s and %s", out / "study.md", out / "learning_curves.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="Kvasir-SEG root")
    ap.add_argument("--test-names", help="ids held out (default: <data-dir>/pranet_kvasir_test_names.txt)")
    ap.add_argument("--out", required=True, type=lambda p: Path(p).resolve(), help="report folder")
    ap.add_argument("--budget-s", type=float, default=150.0, help="CPU seconds of training per trial")
    ap.add_argument("--eval-every-s", type=float, default=50.0, help="CPU seconds between validations")
    ap.add_argument("--models", default="vmunetv2,basicunet")
    ap.add_argument("--variants", type=int, help="run only the first N variants of each model (smoke tests)")
    ap.add_argument("--jobs", type=int, default=1, help="trials at the same time (one thread each)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--set", action="append", default=[], metavar="[MODEL:]ID=VALUE",
                    help="bundle override for every trial, or for MODEL's trials only (smoke tests)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out: Path = args.out
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in VARIANTS:
            raise SystemExit(f"unknown model {m!r}: choose from {', '.join(VARIANTS)}")
        try:
            parse_set(args.set, m)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    test_names = args.test_names or os.path.join(args.data_dir, "pranet_kvasir_test_names.txt")
    split = build_datalist(args.data_dir, val_fraction=args.val_fraction, seed=args.seed, test_names_file=test_names)
    write_split({k: split[k] for k in ("training", "validation")}, out / "split.json")  # the test ids: never
    todo = []
    # interleave the two models so that both finish at about the same time
    for i in range(max(len(VARIANTS[m]) for m in models)):
        for m in models:
            if i < len(VARIANTS[m]) and (args.variants is None or i < args.variants):
                todo.append((m, *VARIANTS[m][i]))
    records, pending = {}, []
    for m, name, changes in todo:
        record = out / "trials" / f"{m}__{_slug(name)}.json"
        if record.is_file() and json.loads(record.read_text())["budget_s"] == args.budget_s:
            records[(m, name)] = json.loads(record.read_text())
        else:
            pending.append((m, name, changes, record))
    for start in range(0, len(pending), args.jobs):
        running = []
        for m, name, changes, record in pending[start : start + args.jobs]:
            run_dir = record.with_suffix("")
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists without a finished record: remove it to run the trial again")
            cmd = bundle_command(BUNDLE.root, ["train", "kvasir_cpu"], trial_overrides(m, changes, args, run_dir))
            running.append((m, name, changes, record, run_dir, run_bundle(cmd, run_dir / "train.log", 1, False)))
        for m, name, changes, record, run_dir, proc in running:
            check_finished(proc, run_dir / "train.log")
            result = {"model": m, "variant": name, "changes": changes, "budget_s": args.budget_s,
                      **read_training(run_dir / "models" / "latest.pt")}
            write_json(record, result)
            logger.info("%s / %s: best val mean Dice %.4f (%d iterations)", m, name, result["best_val_mean_dice"],
                        result["iterations"])
            records[(m, name)] = result
    write_report([records[(m, n)] for m, n, _ in todo], out)


if __name__ == "__main__":
    main()
