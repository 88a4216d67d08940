"""The ``vmunetv2-dicom`` command: options, checks and the three modes (DICOMweb watcher, ``--files``, ``--listen``).

Usage::

    vmunetv2-dicom --url http://127.0.0.1:8042/dicom-web --state state.sqlite \\
        --checkpoint model.pt [--bundle-dir bundle | --network-json '{...}'] [--watch] [--retry-failed]
    vmunetv2-dicom --files a.dcm b.dcm --output-dir segs --checkpoint model.pt
    vmunetv2-dicom --listen --destination ORTHANC@127.0.0.1:4242 --checkpoint model.pt

(``python -m vmunetv2_monai.dicom.cli`` is the same command.) Exit status: 0 when nothing failed in the last pass, 1
if something did, 2 for an option value the run cannot use or a PACS that could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from ..bundle.predictor import Predictor
from .algorithm import AlgorithmInfo
from .dicomweb import DEFAULT_URL, PacsClient
from .dimse import MB, ListenerLimits, RemoteAE
from .listener import Listener
from .local import segment_files
from .pipeline import Pipeline
from .state import FAILED, StateDB
from .units import Segmenter

__all__ = ["build_parser", "check_args", "main", "make_segmenter"]

logger = logging.getLogger(__name__)

DESCRIPTION = ("DICOM in, DICOM SEG out: images from a DICOMweb PACS (QIDO/WADO/STOW), a DIMSE Storage SCP (--listen) "
               "or local files (--files) are segmented with the bundle's inference, one SEG per image or settled CT/MR "
               "series, each with its SR measurement report")


def _read_overrides(path: str | None) -> dict:
    """The JSON object of config overrides in ``path`` (``{}`` without one); exits naming the file otherwise."""
    if not path:
        return {}
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--bundle-overrides {path}: cannot read a JSON object ({exc})") from exc
    if not isinstance(overrides, dict):
        raise SystemExit(f"--bundle-overrides {path}: expected a JSON object of config ids, "
                         f"got {type(overrides).__name__}")
    return overrides


def _predictor(args: argparse.Namespace) -> Predictor:
    """The bundle's inference (``--bundle-dir``, else this checkout's bundle) with the overrides; ``--network-json``
    is applied over the config's ``network_def`` (its other settings, e.g. ``keep_unused_stage``, stay).

    Args:
        args: the parsed options.

    Returns:
        The predictor.
    """
    overrides = _read_overrides(args.bundle_overrides)
    network = json.loads(args.network_json) if args.network_json else None
    if args.bundle_dir:
        return Predictor.from_bundle(args.bundle_dir, args.checkpoint, overrides, device=args.device,
                                     network_kwargs=network)
    if not args.checkpoint:
        raise SystemExit("--checkpoint is required (or --bundle-dir with models/model.pt)")
    return Predictor.from_checkpoint(args.checkpoint, network, overrides, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``vmunetv2-dicom``.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(prog="vmunetv2-dicom", description=DESCRIPTION)
    p.add_argument("--url", default=os.environ.get("VMUNETV2_PACS_URL", DEFAULT_URL),
                   help="DICOMweb root of the PACS (env VMUNETV2_PACS_URL; default %(default)s)")
    p.add_argument("--state", default=os.environ.get("VMUNETV2_STATE", "vmunetv2_dicom_state.sqlite"),
                   help="state database of processed instances (env VMUNETV2_STATE; default %(default)s)")
    p.add_argument("--checkpoint", help="state dict (.pt), loaded with weights_only=True")
    p.add_argument("--bundle-dir", help="bundle directory: inference as its configs/inference.json defines it "
                   "(network_def, intensity_transforms, inferer, postprocessing), name/version/label from "
                   "configs/metadata.json, checkpoint default the config's ckpt_path (models/model.pt); without it, "
                   "this checkout's bundle/ config with --checkpoint and the package name/version")
    p.add_argument("--bundle-overrides", help="JSON file of inference.json overrides, e.g. the overrides.json a "
                   "results recipe wrote (network size, image_size, intensity, normalization, threshold)")
    p.add_argument("--network-json", help="VMUNetV2 keyword arguments as JSON, applied over the config's "
                   "network_def (arguments not given keep the config's values, e.g. keep_unused_stage false)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"),
                   help="greyscale window for every greyscale image (default: the image's first Window Center / "
                   "Width, else the full stored range); recorded in the SEG")
    p.add_argument("--copy-attribute", action="append", default=[], metavar="KEYWORD", help="also copy this "
                   "source attribute (DICOM keyword, e.g. PatientAge) into the SEG and overlays (repeat for more); "
                   "by default only the patient and study attributes the SEG and SC IODs require are copied")
    p.add_argument("--overlay", action="store_true", help="also store a secondary-capture overlay per image")
    p.add_argument("--no-sr", action="store_true", help="no DICOM SR measurement report (TID 1500: area or volume, "
                   "pixel count, bounding box) beside each SEG (default: one SR per SEG, stored like it)")
    p.add_argument("--output-dir", help="also write each SEG here (atomically); required with --files")
    p.add_argument("--retry-failed", action="store_true", help="retry the instances and studies recorded as "
                   "failed (--listen: the images kept in <spool>/failed)")
    p.add_argument("--watch", action="store_true", help="keep polling the PACS until stopped (SIGTERM / Ctrl-C); "
                   "an unreachable PACS is retried with back-off")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between passes with --watch (spool polls "
                   "with --listen: at most 2 s)")
    p.add_argument("--max-backoff", type=float, default=600.0, help="longest wait after repeated failures to reach "
                   "the PACS (--listen: the destination); the wait doubles from --interval (default %(default)s s)")
    p.add_argument("--settle", type=float, default=60.0, help="stable-series rule: a CT/MR series is segmented once "
                   "it has had no new instance for this many seconds (0: at once)")
    p.add_argument("--study-date", help="QIDO StudyDate filter, e.g. 20240101- (only these studies are listed)")
    p.add_argument("--modality", help="QIDO ModalitiesInStudy filter, e.g. CT")
    p.add_argument("--list-failed", action="store_true", help="print the failed instances and studies with "
                   "their attempts and reasons, exit")
    p.add_argument("--files", nargs="+", help="local mode: segment these DICOM files (a folder: every DICOM file "
                   "in it, recursively) instead of polling a PACS")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    p.add_argument("--listen", action="store_true", help="DIMSE mode: a Storage SCP receives images by C-STORE and "
                   "the SEGs are sent to --destination (no DICOMweb)")
    p.add_argument("--ae-title", default="VMUNETV2", help="our AE title in --listen mode (default %(default)s)")
    p.add_argument("--listen-host", default="127.0.0.1", help="address of the Storage SCP (default %(default)s)")
    p.add_argument("--listen-port", type=int, default=11112, help="port of the Storage SCP (default %(default)s)")
    p.add_argument("--destination", help="AET@host:port that receives the SEGs in --listen mode")
    p.add_argument("--spool", default="vmunetv2_spool", help="received images wait here until their SEG is sent")
    p.add_argument("--calling-aet", action="append", default=[], metavar="AET", help="--listen: a calling AE title "
                   "allowed to associate (repeat for more); others are rejected. Default: any. The called AE title "
                   "must always be --ae-title")
    p.add_argument("--max-object-mb", type=float, default=256.0, help="--listen: largest object accepted; a larger "
                   "C-STORE is aborted while it arrives (default %(default)s MB)")
    p.add_argument("--spool-max-mb", type=float, default=10240.0, help="--listen: new associations are rejected "
                   "(transient, temporary congestion) while the spool holds more than this (default %(default)s MB)")
    p.add_argument("--keep-series", type=float, default=3600.0, metavar="SECONDS", help="--listen: keep the slices "
                   "of a segmented CT/MR series this long after its latest SEG, so that a late slice gets a new SEG of "
                   "the whole series (0: keep none; a late slice then gets a SEG of the late slices only; default "
                   "%(default)s s)")
    p.add_argument("--log-level", default="INFO")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option values the run could not use (exit status 2, naming the option and the value).

    Args:
        parser: the parser (its ``error`` exits).
        args: the parsed options.
    """
    if args.window is not None:
        center, width = args.window
        if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
            parser.error(f"--window {center:g} {width:g}: CENTER must be a finite number and WIDTH a finite number "
                         ">= 1 (DICOM window width)")
    if not args.keep_series >= 0:
        parser.error(f"--keep-series {args.keep_series:g}: must be >= 0 seconds")
    for keyword in args.copy_attribute:
        if tag_for_keyword(keyword) is None:
            parser.error(f"--copy-attribute {keyword}: not a DICOM keyword (e.g. PatientAge)")


def make_segmenter(args: argparse.Namespace) -> Segmenter:
    """Predictor, algorithm identity and intensity rule from the command line.

    Args:
        args: the parsed options.

    Returns:
        The segmenter every mode uses.
    """
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    window = tuple(args.window) if args.window else None
    return Segmenter(_predictor(args), AlgorithmInfo.from_bundle(args.bundle_dir), window, args.overlay,
                     tuple(args.copy_attribute), report=not args.no_sr)


def _listen(segmenter: Segmenter, args: argparse.Namespace) -> int:
    """DIMSE mode until SIGTERM / Ctrl-C; exit status 0."""
    if not args.destination:
        raise SystemExit("--listen needs --destination AET@host:port")
    with StateDB(args.state) as state:
        limits = ListenerLimits(tuple(args.calling_aet), int(args.max_object_mb * MB), int(args.spool_max_mb * MB),
                                args.max_backoff, args.keep_series)
        listener = Listener(segmenter, state, args.spool, RemoteAE.parse(args.destination), args.ae_title,
                            args.listen_host, args.listen_port, args.settle, limits, min(args.interval, 2.0))
        if args.retry_failed:
            listener.requeue_failed()

        def _stop(signum: int, _frame: object) -> None:
            logger.info("signal %d: stopping after the current unit", signum)
            listener.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        listener.serve()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point.

    Args:
        argv: the options (default ``sys.argv[1:]``).

    Returns:
        0 when nothing failed in the last pass, 1 if something did, 2 if the PACS could not be reached (an option
        value the run cannot use exits with 2 at parsing).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list_failed:
        with StateDB(args.state) as state:
            for rec in state.records(FAILED):
                sys.stdout.write(f"{rec.sop_instance_uid}\t{rec.attempts}\t{rec.reason}\n")
            for study in state.study_failures():
                sys.stdout.write(f"{study.study_instance_uid}\t{study.attempts}\t{study.reason}\n")
        return 0
    segmenter = make_segmenter(args)
    if args.files:
        if not args.output_dir:
            raise SystemExit("--files needs --output-dir")
        return 1 if segment_files(args.files, args.output_dir, segmenter).failed else 0
    if args.listen:
        return _listen(segmenter, args)
    filters = {k: v for k, v in (("StudyDate", args.study_date), ("ModalitiesInStudy", args.modality)) if v}
    with StateDB(args.state) as state:
        pipeline = Pipeline(PacsClient(args.url, args.timeout), segmenter, state, args.output_dir, args.settle,
                            filters)

        def _stop(signum: int, _frame: object) -> None:
            logger.info("signal %d: stopping after the current unit", signum)
            pipeline.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        return pipeline.watch(args.retry_failed, args.interval, args.max_backoff, keep_watching=args.watch)


if __name__ == "__main__":
    sys.exit(main())
