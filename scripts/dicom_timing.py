"""Time the DICOM path on CPU: one SEG of an endoscopy still, one multi-frame SEG of a CT series.

Inference is the bundle's configs/inference.json (``Predictor.from_bundle``), by default the shipped bundle and
its models/model.pt (``--checkpoint``: any state dict of the same network; the time does not depend on the
weights). Sources are a Kvasir image from tests/data wrapped as VL Endoscopic (622x530 RGB) and a series built from
pydicom's CT_small.dcm (128x128 slices, window 40/400). Each figure is the median of ``--repeats`` after a warm-up.

    python scripts/dicom_timing.py [--bundle-dir bundle] [--checkpoint model.pt] [--slices 20] [--repeats 3]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicom.conftest import ct_series, kvasir_image_paths, load_rgb, wrap_vl_endoscopic  # noqa: E402
from vmunetv2_monai.bundle import DEFAULT_BUNDLE  # noqa: E402
from vmunetv2_monai.bundle.predictor import Predictor  # noqa: E402
from vmunetv2_monai.dicom.algorithm import AlgorithmInfo  # noqa: E402
from vmunetv2_monai.dicom.units import Segmenter  # noqa: E402

logger = logging.getLogger("dicom_timing")


def main() -> None:
    """Print seconds per still and per series (median of ``--repeats``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle-dir", default=str(DEFAULT_BUNDLE))
    p.add_argument("--checkpoint", help="default: the bundle config's ckpt_path (models/model.pt)")
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one line per copied module otherwise
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_bundle(args.bundle_dir, args.checkpoint)
    segmenter = Segmenter(predictor, AlgorithmInfo.from_bundle(args.bundle_dir))
    still = wrap_vl_endoscopic(load_rgb(kvasir_image_paths(1)[0], size=(622, 530)))
    series = ct_series(args.slices)
    for ds in series:
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    segmenter.segment([still], "warm-up")
    times = {"still": [], "series": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        segmenter.segment([still], "still")
        times["still"].append(time.perf_counter() - start)
        start = time.perf_counter()
        segmenter.segment(series, "series")
        times["series"].append(time.perf_counter() - start)
    still_s, series_s = statistics.median(times["still"]), statistics.median(times["series"])
    logger.info("torch threads %d; still 622x530 RGB: %.2f s per SEG; CT series of %d slices 128x128: %.2f s per "
                "SEG (%.2f s per slice)", torch.get_num_threads(), still_s, args.slices, series_s,
                series_s / args.slices)


if __name__ == "__main__":
    main()
