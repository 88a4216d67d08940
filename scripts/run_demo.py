"""Main job: train, evaluate and infer with the bundle on the bundled Kvasir-SEG sample, tracked in MLflow.

Leaves in --output-dir (default ./outputs/demo): models/model.pt and latest.pt, eval/per_case.csv and
eval/summary.json, predictions/<name>_mask.png and <name>_overlay.png, tensorboard/, and the MLflow store
mlruns.db (open it with: mlflow ui --backend-store-uri sqlite:///<output-dir>/mlruns.db).
The default network is a tiny one so the job ends in a few minutes on a CPU; --full uses the paper's size.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8, "image_size": [64, 64]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--dataset-dir", default=str(REPO / "tests" / "data" / "kvasir_sample"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="paper-size network (depths 2,2,9,2, 256x256; slow on CPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    output_dir = os.path.abspath(args.output_dir)
    common = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": os.path.abspath(args.dataset_dir),
        "output_dir": output_dir,
        "test_fraction": 0.15,
        "num_workers": 0,
        "experiment_name": "vmunetv2_demo",
        **({} if args.full else TINY),
    }
    configs = BUNDLE / "configs"
    c = {name: str(configs / f"{name}.json") for name in ("common", "train", "evaluate", "inference")}
    run(config_file=[c["common"], c["train"]], tracking="mlflow", epochs=args.epochs, batch_size=2,
        progress_bar=False, run_name="train", **common)
    run(config_file=[c["common"], c["train"], c["evaluate"]], tracking="mlflow", run_name="evaluate", **common)
    run(config_file=[c["common"], c["inference"]], **common)
    logging.getLogger("run_demo").info(
        "done: %s (models/, eval/summary.json, eval/per_case.csv, predictions/, mlruns.db)", output_dir
    )


if __name__ == "__main__":
    main()
