"""PACS pipeline service: find new images (QIDO), refuse from metadata, segment (WADO + VM-UNetV2), store
DICOM SEG (STOW): one SEG per independent image, one multi-frame SEG per settled CT/MR series.

Never twice: a SQLite state file records every source instance as done / failed / skipped; the SEG's UIDs
are derived from the sources' UIDs, and before storing, the PACS is asked whether that SEG is already there
(which covers a crash between the store and the state update). Failures are recorded with their reason and
retried only with ``--retry-failed``; the other images go on. An unreachable PACS records nothing: the pass
is retried (with back-off under ``--watch``). Listing is incremental: only studies whose instance count
changed since they were last fully handled are opened.

Usage::

    python -m vmunetv2_monai.dicom.pipeline --url http://127.0.0.1:8042/dicom-web --state state.sqlite \\
        --checkpoint model.pt [--bundle-dir bundle | --network-json '{...}'] [--watch] [--retry-failed]
    python -m vmunetv2_monai.dicom.pipeline --files a.dcm b.dcm --output-dir segs --checkpoint model.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from ..inference import Predictor
from .algorithm import AlgorithmInfo
from .dicomweb import DEFAULT_URL, InstanceRef, PacsClient, PacsUnavailable, is_transient
from .files import write_atomic
from .listener import MB, Listener, ListenerLimits, RemoteAE, backoff_delay
from .reader import UnsupportedDicomError, check_metadata, check_supported, failure_reason, read_dataset
from .state import DONE, FAILED, StateDB
from .units import Segmenter, duplicate_uids, group_units, is_volumetric, skip_reason

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one pass did (counts of source instances)."""

    stored: list[str] = field(default_factory=list)
    already_in_pacs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    seen_before: int = 0
    waiting: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.stored)} instances segmented and stored, {len(self.already_in_pacs)} already in PACS, "
            f"{len(self.failed)} failed, {self.skipped} skipped, {self.seen_before} done earlier, "
            f"{self.waiting} waiting for their series to settle"
        )


class Pipeline:
    """One PACS, one model, one state file."""

    def __init__(
        self,
        client: PacsClient,
        segmenter: Segmenter,
        state: StateDB,
        output_dir: str | os.PathLike[str] | None = None,
        settle_s: float = 60.0,
        study_filters: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.segmenter = segmenter
        self.state = state
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.settle_s = settle_s
        self.study_filters = dict(study_filters or {})
        self.stop_requested = False  # set from a signal handler; checked between units

    @staticmethod
    def _skip_reason(ref: InstanceRef | Dataset) -> str | None:
        if isinstance(ref, InstanceRef):
            return skip_reason(ref.sop_class_uid, ref.manufacturer)
        return skip_reason(str(ref.get("SOPClassUID", "")), str(ref.get("Manufacturer", "")))

    def _needs_work(self, sop: str, retry_failed: bool, summary: RunSummary) -> bool:
        record = self.state.get(sop)
        if record is None or (record.status == FAILED and retry_failed):
            return True
        summary.seen_before += 1
        return False

    def run_once(self, retry_failed: bool = False) -> RunSummary:
        """One pass: studies whose instance count changed since they were last fully handled (plus, with
        ``retry_failed``, those holding failed instances or failed as a whole) are listed and their new images
        segmented. A study that cannot be processed (e.g. its instances cannot be listed) is recorded as failed
        and not opened again until ``retry_failed`` or a change of its instance count; the others go on.

        Raises :class:`PacsUnavailable` when the PACS cannot be reached; nothing is then recorded as failed.
        """
        summary = RunSummary()
        try:
            retry_studies = set()
            if retry_failed:
                retry_studies = {r.study_instance_uid for r in self.state.records(FAILED)}
                retry_studies |= {f.study_instance_uid for f in self.state.study_failures()}
            studies = list(self.client.iter_studies(self.study_filters))
            changed = [(uid, n) for uid, n in studies if uid in retry_studies or self.state.study_count(uid) != n]
            logger.info("PACS lists %d studies, %d new or changed", len(studies), len(changed))
            for study_uid, n_instances in changed:
                if self.stop_requested:
                    logger.info("stop requested; remaining studies are left for the next pass")
                    break
                try:
                    complete = self._process_study(study_uid, retry_failed, summary)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    reason = f"study {study_uid}: {failure_reason(exc)}"
                    logger.exception("failed %s; it is skipped until --retry-failed or a change of the study",
                                     reason)
                    self.state.mark_study_failed(study_uid, reason)
                    summary.failed[study_uid] = reason
                    self.state.set_study_count(study_uid, n_instances)
                    continue
                if complete:
                    self.state.clear_study_failure(study_uid)
                    self.state.set_study_count(study_uid, n_instances)
        except Exception as exc:
            if is_transient(exc):
                raise PacsUnavailable(f"{self.client.url}: {type(exc).__name__}: {exc}") from exc
            raise
        logger.info("pass finished: %s", summary)
        return summary

    def _process_study(self, study_uid: str, retry_failed: bool, summary: RunSummary) -> bool:
        """New images of one study; True when nothing in it is left waiting for a later pass."""
        complete = True
        by_series: dict[str, list[InstanceRef]] = {}
        for ref in self.client.study_instances(study_uid):
            if not self._needs_work(ref.sop_instance_uid, retry_failed, summary):
                continue
            reason = self._skip_reason(ref)
            if reason is not None:
                self.state.mark_skipped(ref.sop_instance_uid, study_uid, ref.series_instance_uid, reason)
                summary.skipped += 1
                continue
            by_series.setdefault(ref.series_instance_uid, []).append(ref)
        for series_uid, refs in by_series.items():
            if self.stop_requested:
                return False
            complete &= self._process_series(study_uid, series_uid, {r.sop_instance_uid for r in refs}, summary)
        return complete

    def _process_series(self, study_uid: str, series_uid: str, new: set[str], summary: RunSummary) -> bool:
        """Refuse from the metadata, group into units, segment the units holding new images."""
        try:
            headers, unreadable = self.client.series_metadata(study_uid, series_uid)
        except Exception as exc:  # e.g. a SeriesInstanceUID that dicomweb-client refuses to put in a URL
            if is_transient(exc):
                raise
            reason = f"series {series_uid}: {failure_reason(exc)}"
            logger.warning("failed %s", reason)
            self.state.mark_failed_many(sorted(new), study_uid, series_uid, reason)
            summary.failed.update(dict.fromkeys(new, reason))
            return True
        candidates = []
        for sop, ds in headers.items():
            record = self.state.get(sop)
            if sop not in new:
                if record is not None and record.status == DONE:
                    candidates.append(ds)  # an earlier slice of a series that got a late one
                continue
            reason = self._skip_reason(ds)
            if reason is not None:
                self.state.mark_skipped(sop, study_uid, series_uid, reason)
                summary.skipped += 1
                continue
            try:
                # no pixel data element in the metadata is checked on the retrieved instance (Orthanc leaves
                # out encapsulated pixel data)
                check_metadata(ds, f"{self.client.url} study {study_uid}", pixel_data_in_header=False)
            except Exception as exc:  # refused before any pixel data is downloaded; the others go on
                logger.warning("refused %s: %s", sop, failure_reason(exc),
                               exc_info=not isinstance(exc, UnsupportedDicomError))
                self.state.mark_failed(sop, study_uid, series_uid, failure_reason(exc))
                summary.failed[sop] = failure_reason(exc)
                continue
            candidates.append(ds)
        for sop in new - set(headers):
            reason = unreadable.get(sop, "listed by QIDO but missing from the series metadata")
            self.state.mark_failed(sop, study_uid, series_uid, reason)
            summary.failed[sop] = reason
        n_instances = len(headers) + len(unreadable)
        complete = True
        for unit in group_units(candidates):
            uids = [str(ds.SOPInstanceUID) for ds in unit]
            fresh = [u for u in uids if u in new]
            if not fresh:
                continue
            if len(unit) > 1 or is_volumetric(unit[0]):
                if not self.state.series_settled(series_uid, n_instances, self.settle_s):
                    logger.info("series %s: %d instances, waiting %.0f s without new ones", series_uid,
                                n_instances, self.settle_s)
                    summary.waiting += len(fresh)
                    complete = False
                    continue
                if len(fresh) < len(uids):
                    logger.warning("series %s: %d late instance(s); a new SEG of all %d slices is made (the earlier "
                                   "SEG stays)", series_uid, len(fresh), len(uids))
            if self.stop_requested:
                return False
            self._process_unit(study_uid, series_uid, uids, fresh, summary)
        return complete

    def _process_unit(self, study: str, series: str, uids: list[str], fresh: list[str], summary: RunSummary) -> None:
        """Segment one unit and store its SEG; the outcome is recorded for every instance of the unit."""
        source = f"{self.client.url} study {study} series {series}"
        seg_uid = self.segmenter.seg_uid(uids)
        try:
            if self.client.has_instance(study, seg_uid):
                self.state.mark_done_many(uids, study, series, seg_uid, note="SEG already in PACS")
                summary.already_in_pacs += fresh
                logger.info("%s: SEG %s already in PACS; recorded as done", source, seg_uid)
                return
            datasets = [self.client.retrieve(study, series, uid) for uid in uids]
            result = self.segmenter.segment(datasets, source)
            if self.output_dir is not None:
                for ds in result.reports + [result.seg]:
                    write_atomic(ds, self.output_dir / f"{ds.SOPInstanceUID}.dcm")
            for extra in result.extras():  # first, so that "SEG present" implies everything is present
                self.client.store(extra)
            self.client.store(result.seg)
        except Exception as exc:
            if is_transient(exc):
                raise
            reason = failure_reason(exc)
            if isinstance(exc, UnsupportedDicomError):
                logger.warning("refused %s", exc)
            else:  # one bad unit must not stop the others
                logger.exception("failed %s", source)
            self.state.mark_failed_many(fresh, study, series, reason)
            summary.failed.update(dict.fromkeys(fresh, reason))
            return
        self.state.mark_done_many(uids, study, series, seg_uid)
        summary.stored += fresh


def dicom_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``--files`` inputs: a file as given; a folder scanned recursively (sorted) for DICOM files, other files in
    it skipped with an INFO line (a file named explicitly is always tried, and refused by name if unreadable)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(path)
            continue
        found = 0
        for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
            if is_dicom(candidate):
                out.append(candidate)
                found += 1
            else:
                logger.info("skipped %s: not a DICOM file (no DICM prefix)", candidate)
        logger.info("%s: %d DICOM file(s) found", path, found)
    return out


def segment_files(
    paths: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], segmenter: Segmenter
) -> RunSummary:
    """Local mode: DICOM files (folders are scanned, :func:`dicom_files`) -> ``<output_dir>/<SOPInstanceUID>.dcm``
    (atomic writes): one SEG per image, or per volumetric series among the files. A file that cannot be read or
    processed is reported with its reason in the summary and the others go on. Files are checked first
    (:func:`~.reader.check_supported`, pixel data included), then SOPInstanceUIDs repeated among the valid files are
    refused, so a broken copy never keeps the good one from its SEG."""
    summary = RunSummary()
    out = Path(output_dir)
    read: list[tuple[str, Dataset]] = []
    for path in dicom_files(paths):
        try:
            ds = read_dataset(path)
            check_supported(ds, str(path))
            read.append((str(path), ds))
        except Exception as exc:
            logger.warning("refused %s: %s", path, failure_reason(exc),
                           exc_info=not isinstance(exc, UnsupportedDicomError))
            summary.failed[str(path)] = failure_reason(exc)
    duplicates = duplicate_uids(read)
    for path, reason in duplicates.items():
        logger.warning("refused %s: %s", path, reason)
        summary.failed[path] = reason
    path_of = {id(ds): path for path, ds in read if path not in duplicates}
    for unit in group_units(ds for path, ds in read if path not in duplicates):
        unit_paths = [path_of[id(ds)] for ds in unit]
        try:
            result = segmenter.segment(unit, unit_paths[0] if len(unit) == 1 else f"series of {len(unit)} files")
            write_atomic(result.seg, out / f"{result.seg.SOPInstanceUID}.dcm")
            for extra in result.extras():
                write_atomic(extra, out / f"{extra.SOPInstanceUID}.dcm")
            summary.stored += unit_paths
        except UnsupportedDicomError as exc:
            logger.warning("refused %s", exc)
            summary.failed.update(dict.fromkeys(unit_paths, exc.reason))
        except Exception as exc:  # keep going with the other files; the reason is logged and returned
            logger.exception("failed %s", unit_paths)
            summary.failed.update(dict.fromkeys(unit_paths, failure_reason(exc)))
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
        raise SystemExit(f"--bundle-overrides {path}: expected a JSON object of config ids, "
                         f"got {type(overrides).__name__}")
    return overrides


def _predictor(args: argparse.Namespace) -> Predictor:
    """The bundle's inference (``--bundle-dir``, else this checkout's bundle) with the overrides; ``--network-json``
    is applied over the config's ``network_def`` (its other settings, e.g. ``keep_unused_stage``, stay)."""
    overrides = _read_overrides(args.bundle_overrides)
    network = json.loads(args.network_json) if args.network_json else None
    if args.bundle_dir:
        return Predictor.from_bundle(args.bundle_dir, args.checkpoint, overrides, device=args.device,
                                     network_kwargs=network)
    if not args.checkpoint:
        raise SystemExit("--checkpoint is required (or --bundle-dir with models/model.pt)")
    return Predictor.from_checkpoint(args.checkpoint, network, overrides, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the pipeline service."""
    p = argparse.ArgumentParser(prog="vmunetv2-dicom", description=__doc__.split("\n\n")[0])
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
    """Refuse option values the run could not use (exit status 2, naming the option and the value)."""
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
    """Predictor, algorithm identity and intensity rule from the command line."""
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    window = tuple(args.window) if args.window else None
    return Segmenter(_predictor(args), AlgorithmInfo.from_bundle(args.bundle_dir), window, args.overlay,
                     tuple(args.copy_attribute), report=not args.no_sr)


def watch(pipeline: Pipeline, args: argparse.Namespace) -> int:
    """Passes until stopped (or one pass without ``--watch``); exit status of the last pass."""
    retry, failures = args.retry_failed, 0
    while True:
        try:
            summary = pipeline.run_once(retry_failed=retry)
            retry, failures = False, 0  # failures of a --retry-failed pass are not retried again in this watch
            status, delay = (1 if summary.failed else 0), args.interval
        except PacsUnavailable as exc:
            failures += 1
            status, delay = 2, backoff_delay(failures, args.interval, args.max_backoff)
            logger.warning("PACS unavailable (failure %d in a row): %s; next try in %.0f s", failures, exc, delay)
        if not args.watch or pipeline.stop_requested:
            return status
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not pipeline.stop_requested:
            time.sleep(min(1.0, delay))
        if pipeline.stop_requested:
            return 0


def listen(segmenter: Segmenter, args: argparse.Namespace) -> int:
    """DIMSE mode until SIGTERM / Ctrl-C."""
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
    """Console entry point; exit status 0 when nothing failed in the last pass, 1 if something did, 2 if the
    PACS could not be reached."""
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
        return listen(segmenter, args)
    filters = {k: v for k, v in (("StudyDate", args.study_date), ("ModalitiesInStudy", args.modality)) if v}
    with StateDB(args.state) as state:
        pipeline = Pipeline(PacsClient(args.url, args.timeout), segmenter, state, args.output_dir, args.settle,
                            filters)

        def _stop(signum: int, _frame: object) -> None:
            logger.info("signal %d: stopping after the current unit", signum)
            pipeline.stop_requested = True

        signal.signal(signal.SIGTERM, _stop)
        return watch(pipeline, args)


if __name__ == "__main__":
    sys.exit(main())
