"""PACS pipeline service: find new images (QIDO), segment (WADO + VM-UNetV2), store DICOM SEG (STOW).

Never twice: a SQLite state file records every source instance as done / failed / skipped; the SEG's UIDs
are derived from the source's, and before storing, the PACS is asked whether that SEG is already there
(which covers a crash between the store and the state update). Failures are recorded with their reason and
retried only with ``--retry-failed``; the other images go on.

Usage::

    python -m vmunetv2_monai.dicom.pipeline --url http://127.0.0.1:8042/dicom-web --state state.sqlite \\
        --checkpoint model.pt [--bundle-dir bundle | --network-json '{...}'] [--watch] [--retry-failed]
    python -m vmunetv2_monai.dicom.pipeline --files a.dcm b.dcm --output-dir segs --checkpoint model.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from ..inference import Predictor
from .algorithm import MANUFACTURER, AlgorithmInfo
from .dicomweb import DEFAULT_URL, InstanceRef, PacsClient
from .files import write_atomic
from .reader import NON_IMAGE_SOP_CLASSES, UnsupportedDicomError, load_image
from .seg import build_overlay, build_segmentation, read_back, seg_uid_for
from .state import FAILED, StateDB

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one pass did (counts of source instances)."""

    stored: list[str] = field(default_factory=list)
    already_in_pacs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    seen_before: int = 0

    def __str__(self) -> str:
        return (
            f"stored {len(self.stored)} SEG, {len(self.already_in_pacs)} already in PACS, "
            f"{len(self.failed)} failed, {self.skipped} skipped, {self.seen_before} done earlier"
        )


def segment_dataset(
    ds: Dataset, predictor: Predictor, algorithm: AlgorithmInfo, source: str, overlay: bool = False
) -> tuple[Dataset, Dataset | None]:
    """One source image -> (SEG, optional overlay); the SEG is checked by highdicom's parser before use."""
    image = load_image(ds, source=source)
    mask = predictor.predict(image.image)
    seg = build_segmentation(ds, mask, algorithm)
    read_back(seg)
    over = build_overlay(ds, image.display_rgb(), mask, algorithm) if overlay else None
    logger.info("%s: mask %s, %d foreground pixels", source, mask.shape, int(mask.sum()))
    return seg, over


class Pipeline:
    """One PACS, one model, one state file."""

    def __init__(
        self,
        client: PacsClient,
        predictor: Predictor,
        state: StateDB,
        algorithm: AlgorithmInfo | None = None,
        overlay: bool = False,
        output_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.client = client
        self.predictor = predictor
        self.state = state
        self.algorithm = algorithm or AlgorithmInfo()
        self.overlay = overlay
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.stop_requested = False  # set from a signal handler; checked between images

    def _skip_reason(self, ref: InstanceRef) -> str | None:
        if ref.sop_class_uid in NON_IMAGE_SOP_CLASSES:
            return f"not an image (SOP class {ref.sop_class_uid})"
        if ref.manufacturer == MANUFACTURER:
            return "created by this pipeline"
        return None

    def process(self, ref: InstanceRef, summary: RunSummary) -> None:
        """Segment one instance and store its SEG; every outcome is recorded in the state file."""
        ids = (ref.sop_instance_uid, ref.study_instance_uid, ref.series_instance_uid)
        source = f"{self.client.url} study {ref.study_instance_uid} instance {ref.sop_instance_uid}"
        seg_uid = seg_uid_for(ref.sop_instance_uid, self.algorithm)
        if self.client.has_instance(ref.study_instance_uid, seg_uid):
            self.state.mark_done(*ids, seg_uid, note="SEG already in PACS")
            summary.already_in_pacs.append(ref.sop_instance_uid)
            logger.info("%s: SEG %s already in PACS; recorded as done", source, seg_uid)
            return
        ds = self.client.retrieve(ref)
        if str(ds.get("Manufacturer", "")) == MANUFACTURER:
            self.state.mark_skipped(*ids, "created by this pipeline")
            summary.skipped += 1
            return
        seg, over = segment_dataset(ds, self.predictor, self.algorithm, source, overlay=self.overlay)
        if self.output_dir is not None:
            write_atomic(seg, self.output_dir / f"{seg.SOPInstanceUID}.dcm")
        if over is not None:
            self.client.store(over)  # first, so that "SEG present" implies everything is present
        self.client.store(seg)
        self.state.mark_done(*ids, str(seg.SOPInstanceUID))
        summary.stored.append(ref.sop_instance_uid)

    def run_once(self, retry_failed: bool = False) -> RunSummary:
        """One pass over everything the PACS lists; returns what happened."""
        summary = RunSummary()
        refs = self.client.list_instances()
        logger.info("PACS lists %d instances", len(refs))
        for ref in refs:
            if self.stop_requested:
                logger.info("stop requested; %d instances left for the next pass", len(refs) - refs.index(ref))
                break
            record = self.state.get(ref.sop_instance_uid)
            retry = record is not None and record.status == FAILED and retry_failed
            if record is not None and not retry:
                summary.seen_before += 1
                continue
            ids = (ref.sop_instance_uid, ref.study_instance_uid, ref.series_instance_uid)
            reason = self._skip_reason(ref)
            if reason is not None:
                self.state.mark_skipped(*ids, reason)
                summary.skipped += 1
                continue
            try:
                self.process(ref, summary)
            except UnsupportedDicomError as exc:
                logger.warning("refused %s", exc)
                self.state.mark_failed(*ids, exc.reason)
                summary.failed[ref.sop_instance_uid] = exc.reason
            except Exception as exc:  # one bad image or a transient error must not stop the others
                logger.exception("failed %s", ref.sop_instance_uid)
                reason = f"{type(exc).__name__}: {exc}"
                self.state.mark_failed(*ids, reason)
                summary.failed[ref.sop_instance_uid] = reason
        logger.info("pass finished: %s", summary)
        return summary


def segment_files(
    paths: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    predictor: Predictor,
    algorithm: AlgorithmInfo,
    overlay: bool = False,
) -> RunSummary:
    """Local mode: DICOM files -> ``<output_dir>/<SEG SOPInstanceUID>.dcm`` (atomic writes)."""
    summary = RunSummary()
    out = Path(output_dir)
    for path in paths:
        try:
            image = load_image(path)
            seg, over = segment_dataset(image.dataset, predictor, algorithm, str(path), overlay=overlay)
            write_atomic(seg, out / f"{seg.SOPInstanceUID}.dcm")
            if over is not None:
                write_atomic(over, out / f"{over.SOPInstanceUID}.dcm")
            summary.stored.append(str(path))
        except UnsupportedDicomError as exc:
            logger.warning("refused %s", exc)
            summary.failed[str(path)] = exc.reason
        except Exception as exc:  # keep going with the other files; the reason is logged and returned
            logger.exception("failed %s", path)
            summary.failed[str(path)] = f"{type(exc).__name__}: {exc}"
    logger.info("files finished: %s", summary)
    return summary


def _read_overrides(path: str | None) -> dict:
    if not path:
        return {}
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--bundle-overrides {path}: cannot read a JSON object ({exc})") from exc
    if not isinstance(overrides, dict):
        raise SystemExit(f"--bundle-overrides {path}: expected a JSON object of config ids, got {type(overrides).__name__}")
    return overrides


def _predictor(args: argparse.Namespace) -> Predictor:
    if args.bundle_dir and not args.network_json:
        return Predictor.from_bundle(args.bundle_dir, args.checkpoint, _read_overrides(args.bundle_overrides),
                                     device=args.device)
    if not args.checkpoint:
        raise SystemExit("--checkpoint is required (or --bundle-dir with models/model.pt)")
    kwargs = json.loads(args.network_json) if args.network_json else None
    return Predictor.from_checkpoint(args.checkpoint, kwargs, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the pipeline service."""
    p = argparse.ArgumentParser(prog="vmunetv2-dicom", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("VMUNETV2_PACS_URL", DEFAULT_URL),
                   help="DICOMweb root of the PACS (env VMUNETV2_PACS_URL; default %(default)s)")
    p.add_argument("--state", default=os.environ.get("VMUNETV2_STATE", "vmunetv2_dicom_state.sqlite"),
                   help="state database of processed instances (env VMUNETV2_STATE; default %(default)s)")
    p.add_argument("--checkpoint", help="state dict (.pt), loaded with weights_only=True")
    p.add_argument("--bundle-dir", help="bundle directory: network_def from configs/inference.json, name/version/"
                   "label from configs/metadata.json, checkpoint default models/model.pt")
    p.add_argument("--bundle-overrides", help="JSON file of bundle config overrides applied with --bundle-dir, e.g. "
                   "the overrides.json a results recipe wrote (network size, inference_mode, image_size)")
    p.add_argument("--network-json", help="VMUNetV2 keyword arguments as JSON (overrides the bundle's network_def)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--overlay", action="store_true", help="also store a secondary-capture overlay")
    p.add_argument("--output-dir", help="also write each SEG here (atomically); required with --files")
    p.add_argument("--retry-failed", action="store_true", help="retry instances recorded as failed")
    p.add_argument("--watch", action="store_true", help="keep polling the PACS until stopped (SIGTERM / Ctrl-C)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between passes with --watch")
    p.add_argument("--list-failed", action="store_true", help="print the failed instances and their reasons, exit")
    p.add_argument("--files", nargs="+", help="local mode: segment these DICOM files instead of polling a PACS")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; exit status 0 when nothing failed in the last pass, 1 otherwise."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list_failed:
        with StateDB(args.state) as state:
            for rec in state.records(FAILED):
                sys.stdout.write(f"{rec.sop_instance_uid}\t{rec.attempts}\t{rec.reason}\n")
        return 0
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    algorithm = AlgorithmInfo.from_bundle(args.bundle_dir)
    predictor = _predictor(args)
    if args.files:
        if not args.output_dir:
            raise SystemExit("--files needs --output-dir")
        return 1 if segment_files(args.files, args.output_dir, predictor, algorithm, args.overlay).failed else 0
    with StateDB(args.state) as state:
        pipeline = Pipeline(PacsClient(args.url, args.timeout), predictor, state, algorithm, args.overlay,
                            args.output_dir)

        def _stop(signum: int, _frame: object) -> None:
            logger.info("signal %d: stopping after the current image", signum)
            pipeline.stop_requested = True

        signal.signal(signal.SIGTERM, _stop)
        retry = args.retry_failed
        while True:
            summary = pipeline.run_once(retry_failed=retry)
            retry = False  # failures of a --retry-failed pass are not retried again in the same watch
            if not args.watch or pipeline.stop_requested:
                return 1 if summary.failed else 0
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline and not pipeline.stop_requested:
                time.sleep(min(1.0, args.interval))
            if pipeline.stop_requested:
                return 0


if __name__ == "__main__":
    sys.exit(main())
