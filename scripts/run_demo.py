"""Main job: the shipped Kvasir-SEG model on the bundled sample images, scored against their masks, in MLflow.

Runs the bundle's inference config (the one inference path) with bundle/models/model.pt on bundle/sample_data
(12 Kvasir-SEG test-set images the model never saw), then scores each predicted mask against its ground truth at
the original resolution and logs per-image Dice. Leaves in --output-dir (default ./outputs/demo/<time>):
predictions/<name>_mask.png and <name>_overlay.png, overlays.png (every case: image, ground truth, prediction),
eval/per_case.csv and eval/summary.json, and the MLflow store mlruns.db with the inference and evaluation runs
(open it with: mlflow ui --backend-store-uri sqlite:///<output-dir>/mlruns.db).

--train-demo instead trains, evaluates and infers a tiny network for a few epochs on tests/data/kvasir_sample
(a smoke test of the training path, not a useful model; --full uses the paper's network size).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from pathlib import Path

from vmunetv2_monai.bundle import Bundle
from vmunetv2_monai.data.datalist import find_pairs
from vmunetv2_monai.evaluation.figures import plot_overlay_grid
from vmunetv2_monai.evaluation.folders import score_predictions
from vmunetv2_monai.files import write_json
from vmunetv2_monai.metrics import pooled_metrics, write_case_rows

REPO = Path(__file__).resolve().parents[1]
BUNDLE = Bundle()  # bundle/ of this checkout
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8, "image_size": [64, 64]}
EXPERIMENT = "vmunetv2_demo"
logger = logging.getLogger("run_demo")


def _run(files: list[str], **override: object) -> None:
    """Run the bundle workflow of the config ``files`` (merged in order) with ``override``, as ``monai.bundle run``."""
    workflow = BUNDLE.workflow("train" if "train" in files else "inference", files, **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def shipped_model_job(output_dir: Path, dataset_dir: Path) -> dict:
    """Infer with the shipped model through the bundle, score at original resolution, log to MLflow."""
    ckpt = BUNDLE.model_path
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: the shipped model is part of the bundle (git lfs or a full clone)")
    items = find_pairs(dataset_dir / "images", dataset_dir / "masks")
    pred_dir = output_dir / "predictions"
    _run(["inference"], dataset_dir=str(dataset_dir / "images"), output_dir=str(output_dir), pred_dir=str(pred_dir),
         ckpt_path=str(ckpt), num_workers=0, tracking="mlflow", experiment_name=EXPERIMENT,
         run_name="infer_shipped_model")
    rows = score_predictions(items, pred_dir)
    width = max(len(str(r["name"])) for r in rows)
    for r in rows:
        logger.info("%-*s  Dice %.3f  IoU %.3f", width, r["name"], r["dice"], r["iou"])
    summary = {"images": len(rows), "mean_dice": sum(r["dice"] for r in rows) / len(rows),
               "mean_iou": sum(r["iou"] for r in rows) / len(rows),
               **pooled_metrics(rows),
               "model_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    logger.info("mean Dice %.3f over %d images (pooled DSC %.3f)", summary["mean_dice"], len(rows),
                summary["pooled_dsc"])
    eval_dir = output_dir / "eval"
    write_case_rows(rows, eval_dir / "per_case.csv")
    write_json(eval_dir / "summary.json", summary)
    cases = {f"{r['name'][:12]} Dice {r['dice']:.2f}": next(it for it in items if it["name"] == r["name"])
             for r in sorted(rows, key=lambda r: r["dice"])}
    plot_overlay_grid(cases, {"prediction (red)": pred_dir}, output_dir / "overlays.png")
    _log_evaluation(output_dir, summary, rows)
    return summary


def _log_evaluation(output_dir: Path, summary: dict, rows: list[dict]) -> None:
    import mlflow
    from monai.utils import path_to_sqlite_uri

    mlflow.set_tracking_uri(path_to_sqlite_uri(str(output_dir / "mlruns.db")))
    mlflow.set_experiment(EXPERIMENT)
    infer = mlflow.search_runs(experiment_names=[EXPERIMENT],
                               filter_string="tags.mlflow.runName = 'infer_shipped_model'",
                               order_by=["start_time DESC"], max_results=1)
    with mlflow.start_run(run_name="evaluate_shipped_model"):
        if len(infer):
            mlflow.set_tag("inference_run_id", infer["run_id"].iloc[0])
        mlflow.log_params({"model": "bundle/models/model.pt", "model_sha256": summary["model_sha256"],
                           "images": summary["images"]})
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if k not in ("model_sha256", "images")})
        for step, r in enumerate(rows):
            mlflow.log_metric("dice_per_image", float(r["dice"]), step=step)
        for name in ("eval/per_case.csv", "eval/summary.json", "overlays.png"):
            mlflow.log_artifact(str(output_dir / name))


def train_demo(output_dir: Path, dataset_dir: Path, epochs: int, full: bool) -> None:
    """Tiny train / evaluate / infer of the bundle on a handful of pairs (a smoke test of the training path)."""
    common = {"dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "test_fraction": 0.15, "num_workers": 0,
              "experiment_name": EXPERIMENT, **({} if full else TINY)}
    _run(["train"], tracking="mlflow", epochs=epochs, batch_size=2, progress_bar=False, run_name="train", **common)
    _run(["train", "evaluate"], tracking="mlflow", run_name="evaluate", **common)
    _run(["inference"], **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", help="new folder for the outputs (default: outputs/demo/<time>)")
    parser.add_argument("--dataset-dir", help="images/ and masks/ (default: bundle/sample_data; "
                        "tests/data/kvasir_sample with --train-demo)")
    parser.add_argument("--train-demo", action="store_true", help="train a tiny network instead (smoke test)")
    parser.add_argument("--epochs", type=int, default=4, help="--train-demo epochs")
    parser.add_argument("--full", action="store_true", help="--train-demo with the paper's network size (slow)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    output_dir = Path(args.output_dir or os.path.join("outputs", "demo", time.strftime("%Y%m%d-%H%M%S"))).resolve()
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"{output_dir} exists and is not empty: choose a new --output-dir (nothing is overwritten)")
    if args.train_demo:
        train_demo(output_dir, Path(args.dataset_dir or REPO / "tests" / "data" / "kvasir_sample").resolve(),
                   args.epochs, args.full)
    else:
        shipped_model_job(output_dir, Path(args.dataset_dir or BUNDLE.root / "sample_data").resolve())
        logger.info("overlays: %s", output_dir / "overlays.png")
    logger.info("done: %s (MLflow: mlflow ui --backend-store-uri sqlite:///%s)", output_dir, output_dir / "mlruns.db")


if __name__ == "__main__":
    main()
