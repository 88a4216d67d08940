"""Learning study: validation mean Dice against the CPU budget spent, for training variants of VM-UNetV2 and of
MONAI's BasicUNet (the same number of trials each), on the Kvasir-SEG 810/90 split (the 100 PraNet test ids are
held out and never read).

Each trial trains one variant for ``--budget-s`` CPU seconds of its own process (``time.process_time``, training
steps only; validation every ``--eval-every-s`` and not counted) with one thread, so trials running side by side
or beside other load get the same budget. Every trial changes one thing from its model's baseline (the CPU
recipe before this study: deep-supervised DiceCE, drop_path 0.1, AdamW 1e-3, cosine, batch 8, 128 x 128, flips
and rotation, [0, 1] input). Writes ``<out>/trials/<model>__<variant>.json`` (a finished trial is not rerun),
``<out>/study.md`` (the table) and ``<out>/learning_curves.png``.

    python scripts/learning_study.py --data-dir ../shared/data/kvasir-seg --out outputs/learning_study --jobs 2
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

from vmunetv2_monai.data.datalist import build_datalist
from vmunetv2_monai.evaluation.figures import plot_learning_curves
from vmunetv2_monai.handlers.atomic import atomic_write
from vmunetv2_monai.training import ArraySet, TrainConfig, load_arrays, train_for_budget

logger = logging.getLogger("learning_study")

BASE = {"vmunetv2": TrainConfig(model="vmunetv2"), "basicunet": TrainConfig(model="basicunet")}
# Training-level variants tried on both models (name, what changes).
SHARED = [
    ("lr 2e-3, warm-up 10 %", {"lr": 2e-3, "warmup_frac": 0.1}),
    ("lr 5e-4", {"lr": 5e-4}),
    ("batch 4", {"batch_size": 4}),
    ("batch 16", {"batch_size": 16}),
    ("input 160", {"size": 160}),
    ("input 192", {"size": 192}),
]
AUGMENT = [
    ("aug: flips only", {"rotate_prob": 0.0}),
    ("aug: + scale 0.25 + colour 0.2", {"scale": 0.25, "color": 0.2}),
    ("input: ImageNet mean/std", {"norm": "imagenet"}),
    ("EMA 0.99", {"ema": 0.99}),
    ("weight decay 0.05", {"weight_decay": 0.05}),
]
# Per model: its baseline, its own knobs, then the shared ones; each list has the same length (same number of
# tuning trials per model).
VARIANTS = {
    "vmunetv2": [
        ("baseline", {}),
        ("loss: fused output only", {"loss": "fused"}),
        ("drop_path 0", {"drop_path_rate": 0.0}),
        ("drop_path 0.2", {"drop_path_rate": 0.2}),
        *SHARED,
        ("depths 2-2-4-2", {"depths": (2, 2, 4, 2)}),
        ("depths 2-2-9-2", {"depths": (2, 2, 9, 2)}),
        ("dims 64", {"dims": 64}),
        *AUGMENT,
    ],
    "basicunet": [
        ("baseline", {}),
        ("dropout 0.1", {"dropout": 0.1}),
        ("features x0.5", {"features": (16, 16, 32, 64, 128, 16)}),
        ("features x1.5", {"features": (48, 48, 96, 192, 384, 48)}),
        *SHARED,
        ("lr 3e-3, warm-up 10 %", {"lr": 3e-3, "warmup_frac": 0.1}),
        ("warm-up 10 %", {"warmup_frac": 0.1}),
        ("weight decay 0", {"weight_decay": 0.0}),
        *AUGMENT,
    ],
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _cached(items: list[dict], size: int, path: Path, full: bool) -> ArraySet:
    """The arrays of ``items`` at ``size``, read once and kept in ``path`` for the other trials."""
    if path.is_file():
        return ArraySet(**torch.load(path, weights_only=True))
    arrays = load_arrays(items, size, keep_full_masks=full)
    atomic_write(path, lambda p: torch.save(vars(arrays), p))
    return arrays


def run_trial(model: str, name: str, changes: dict, split_file: str, budget_s: float, eval_every_s: float,
              out: str, extra: dict) -> dict:
    """Train one variant (one thread) and write its JSON; returns the result."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = BASE[model].replace(**{**extra, **changes})
    split = json.loads(Path(split_file).read_text())
    train = _cached(split["training"], cfg.size, Path(out) / "cache" / f"training_{cfg.size}.pt", False)
    val = _cached(split["validation"], cfg.size, Path(out) / "cache" / f"validation_{cfg.size}.pt", True)
    result = train_for_budget(cfg, train, val, budget_s, eval_every_s)
    record = {"model": model, "variant": name, "changes": {k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in changes.items()},
              "budget_s": budget_s, **result}
    path = Path(out) / "trials" / f"{model}__{_slug(name)}.json"
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(record, indent=2)))
    logger.info("%s / %s: best val mean Dice %.4f (%d steps)", model, name, result["best_val_dice"], result["steps"])
    return record


def write_report(records: list[dict], out: Path) -> None:
    """``study.md`` (one table per model, in run order, with the change against the baseline) and the curves."""
    lines = ["# Learning study: validation mean Dice against CPU seconds of training", "",
             f"Budget per trial: {records[0]['budget_s']:.0f} CPU s (process time of the trial's own process, one "
             "thread, training steps only). Validation: the 90-image split, per-image Dice at original resolution.", ""]
    curves: dict[str, dict[str, list]] = {}
    for model in VARIANTS:
        rows = [r for r in records if r["model"] == model]
        if not rows:
            continue
        base = next((r["curve"][-1][1] for r in rows if r["variant"] == "baseline"), None)
        lines += [f"## {model}", "", "| variant | final val Dice | vs baseline | best val Dice | steps | epochs | params |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            final = r["curve"][-1][1]
            delta = "" if base is None or r["variant"] == "baseline" else f"{final - base:+.4f}"
            lines.append(f"| {r['variant']} | {final:.4f} | {delta} | {r['best_val_dice']:.4f} | {r['steps']} | "
                         f"{r['epochs']} | {r['params'] / 1e6:.2f} M |")
            curves.setdefault(r["variant"], {})[model] = [tuple(p) for p in r["curve"]]
        lines.append("")
    plot_learning_curves(curves, out / "learning_curves.png", xlabel="training CPU seconds")
    atomic_write(out / "study.md", lambda p: Path(p).write_text("\n".join(lines)))
    logger.info("wrote %s and %s", out / "study.md", out / "learning_curves.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="Kvasir-SEG root")
    ap.add_argument("--test-names", help="ids held out (default: <data-dir>/pranet_kvasir_test_names.txt)")
    ap.add_argument("--out", required=True, help="report folder")
    ap.add_argument("--budget-s", type=float, default=120.0, help="CPU seconds of training per trial")
    ap.add_argument("--eval-every-s", type=float, default=40.0, help="CPU seconds between validations")
    ap.add_argument("--models", default="vmunetv2,basicunet")
    ap.add_argument("--variants", type=int, help="run only the first N variants of each model (smoke tests)")
    ap.add_argument("--jobs", type=int, default=1, help="trials at the same time (one thread each)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--extra", default="{}", help="JSON of TrainConfig changes for every trial (smoke tests)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = Path(args.out)
    test_names = args.test_names or os.path.join(args.data_dir, "pranet_kvasir_test_names.txt")
    split = build_datalist(args.data_dir, val_fraction=args.val_fraction, seed=args.seed, test_names_file=test_names)
    split_file = out / "split.json"
    atomic_write(split_file, lambda p: Path(p).write_text(json.dumps(
        {k: split[k] for k in ("training", "validation")}, indent=2)))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in VARIANTS:
            raise SystemExit(f"unknown model {m!r}: choose from {', '.join(VARIANTS)}")
    todo, records = [], []
    # interleave the two models so that both finish at about the same time
    for i in range(max(len(VARIANTS[m]) for m in models)):
        for m in models:
            if i < len(VARIANTS[m]) and (args.variants is None or i < args.variants):
                todo.append((m, *VARIANTS[m][i]))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = []
        for m, name, changes in todo:
            done = out / "trials" / f"{m}__{_slug(name)}.json"
            if done.is_file() and json.loads(done.read_text())["budget_s"] == args.budget_s:
                records.append(json.loads(done.read_text()))
                continue
            futures.append(pool.submit(run_trial, m, name, changes, str(split_file), args.budget_s,
                                       args.eval_every_s, str(out), json.loads(args.extra)))
        records += [f.result() for f in futures]
    order = {(m, n): i for i, (m, n, _) in enumerate(todo)}
    write_report(sorted(records, key=lambda r: order[(r["model"], r["variant"])]), out)


if __name__ == "__main__":
    main()
