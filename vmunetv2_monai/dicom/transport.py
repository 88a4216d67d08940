"""What a transport gives the shared :class:`~.driver.Driver`: a :class:`Source` of instances (how to read, check,
load and name them, when a unit is ready, what to do with them once recorded) and a :class:`Sink` for the results;
and what a pass reports (:class:`RunSummary`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from .reader import check_metadata
from .units import UnitResult

__all__ = ["RunSummary", "Sink", "Source", "backoff_delay"]


def backoff_delay(failures: int, interval: float, max_backoff: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures to reach a PACS or destination.

    Args:
        failures: consecutive failures so far (1 for the first).
        interval: the first wait (at least 1 s is used).
        max_backoff: the longest wait.

    Returns:
        ``interval`` doubled ``failures - 1`` times, capped at ``max_backoff``.
    """
    return min(max(interval, 1.0) * 2.0 ** (failures - 1), max_backoff)


@dataclass
class RunSummary:
    """What one pass did, by source instance (SOPInstanceUID, or file path for local files).

    Args:
        stored: instances whose SEG was stored.
        already_in_pacs: instances whose SEG the destination already held.
        failed: instance -> reason.
        skipped: number of instances skipped by the skip rule.
        seen_before: number of instances the state file records as handled.
        waiting: number of instances whose series has not settled.
    """

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


class Source:
    """Where a batch of instances comes from. The defaults suit headers already in memory (each item is its
    dataset); transports override what differs."""

    def read(self, item: Any) -> Dataset:
        """The header of ``item`` (raise to refuse it)."""
        return item

    def key(self, item: Any, ds: Dataset | None) -> str:
        """What ``item`` is recorded under (``ds``: its header, None when it could not be read)."""
        return str(ds.get("SOPInstanceUID", "")) if ds is not None else str(item)

    def where(self, ds: Dataset | None) -> tuple[str, str]:
        """``(StudyInstanceUID, SeriesInstanceUID)`` recorded with ``ds`` in the state file."""
        if ds is None:
            return "", ""
        return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))

    def check(self, ds: Dataset, item: Any) -> None:
        """Refuse ``ds`` from its header (raise :class:`~.reader.UnsupportedDicomError`)."""
        check_metadata(ds, self.name([ds]))

    def context(self, accepted: Sequence[Dataset]) -> list[Dataset]:
        """Headers of instances already segmented that belong in the units of ``accepted`` (late slices)."""
        return []

    def ready(self, unit: Sequence[Dataset], fresh: Sequence[Dataset]) -> bool:
        """Whether ``unit`` (with the new instances ``fresh``) is to be segmented now."""
        return True

    def seg_instance_number(self, unit: Sequence[Dataset]) -> int | None:
        """Instance Number of the SEG of ``unit`` (None: the default); asked once per unit, before it is segmented."""
        return None

    def load(self, unit: Sequence[Dataset]) -> list[Dataset]:
        """The datasets of ``unit`` with their pixel data."""
        return list(unit)

    def name(self, unit: Sequence[Dataset]) -> str:
        """How ``unit`` is named in messages and refusals."""
        return f"SOPInstanceUID {unit[0].get('SOPInstanceUID', '?')}" if len(unit) == 1 else f"{len(unit)} images"

    def release(self, items: Sequence[Any], outcome: str | None) -> None:
        """Once items are recorded as ``outcome`` (:data:`~.state.SKIPPED`, :data:`~.state.FAILED`, or None: handled
        earlier) before any SEG: what the transport does with them."""

    def stored(self, unit: Sequence[Dataset], items: Sequence[Any], result: UnitResult | None) -> None:
        """Once the SEG of ``unit`` is recorded as done (``items``: its new instances; ``result`` None when the
        destination already held it)."""


class Sink:
    """Where results go. The defaults hold nothing and store nothing."""

    def available(self) -> bool:
        """False while stores are to wait (e.g. a destination being retried after a back-off)."""
        return True

    def holds(self, unit: Sequence[Dataset], seg_uid: str) -> bool:
        """Whether the destination already has the SEG ``seg_uid`` of ``unit``."""
        return False

    def unsent(self, source_uids: Sequence[str]) -> UnitResult | None:
        """A result made earlier for exactly these sources and not stored yet (stored without segmenting again)."""
        return None

    def store(self, result: UnitResult) -> bool:
        """Store the SR and overlays, then the SEG; False when the result is kept for a later try (nothing is
        recorded then)."""
        return True
