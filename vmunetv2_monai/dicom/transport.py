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
    """Where a batch of instances comes from: the hooks the :class:`~.driver.Driver` calls, in this order.

    The defaults suit headers already in memory; transports override what differs. Terms: an *item* is what the
    transport lists (a header, a file path), ``ds`` its header, a *unit* the headers of one SEG
    (:func:`~.units.group_units`) and ``fresh`` the new instances among them.
    """

    def read(self, item: Any) -> Dataset:
        """Read an item.

        Args:
            item: one new instance as the transport lists it.

        Returns:
            Its header (raise to refuse the item; it is then recorded as failed).
        """
        return item

    def key(self, item: Any, ds: Dataset | None) -> str:
        """What an item is recorded under in the summary and the state file.

        Args:
            item: the item.
            ds: its header, None when it could not be read.

        Returns:
            Its SOPInstanceUID by default.
        """
        return str(ds.get("SOPInstanceUID", "")) if ds is not None else str(item)

    def where(self, ds: Dataset | None) -> tuple[str, str]:
        """Where an instance is recorded in the state file.

        Args:
            ds: its header, None when it could not be read.

        Returns:
            ``(StudyInstanceUID, SeriesInstanceUID)``.
        """
        if ds is None:
            return "", ""
        return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))

    def check(self, ds: Dataset, item: Any) -> None:
        """Refuse an instance from its header (raise, e.g. :class:`~.reader.UnsupportedDicomError`).

        Args:
            ds: the header.
            item: the item it was read from.
        """
        check_metadata(ds, self.name([ds]))

    def context(self, accepted: Sequence[Dataset]) -> list[Dataset]:
        """Instances segmented earlier that belong in the units of the batch (a series' slices, for a late one).

        Args:
            accepted: the batch's headers that passed the checks.

        Returns:
            Their headers.
        """
        return []

    def ready(self, unit: Sequence[Dataset], fresh: Sequence[Dataset]) -> bool:
        """Whether to segment a unit now.

        Args:
            unit: the unit.
            fresh: its new instances.

        Returns:
            False when it waits (e.g. for its series to settle).
        """
        return True

    def seg_instance_number(self, unit: Sequence[Dataset]) -> int | None:
        """The Instance Number of a unit's SEG; asked once per unit, before it is segmented.

        Args:
            unit: the unit.

        Returns:
            The number, None for the default.
        """
        return None

    def load(self, unit: Sequence[Dataset]) -> list[Dataset]:
        """The datasets of a unit with their pixel data.

        Args:
            unit: its headers.

        Returns:
            The datasets, in the order of ``unit``.
        """
        return list(unit)

    def name(self, unit: Sequence[Dataset]) -> str:
        """How messages and refusals name a unit.

        Args:
            unit: the unit.

        Returns:
            The name.
        """
        return f"SOPInstanceUID {unit[0].get('SOPInstanceUID', '?')}" if len(unit) == 1 else f"{len(unit)} images"

    def release(self, items: Sequence[Any], outcome: str | None) -> None:
        """What the transport does with items recorded without a SEG (nothing by default).

        Args:
            items: the items.
            outcome: :data:`~.state.SKIPPED`, :data:`~.state.FAILED`, or None (handled in an earlier pass).
        """

    def stored(self, unit: Sequence[Dataset], items: Sequence[Any], result: UnitResult | None) -> None:
        """What the transport does once the SEG of a unit is recorded as done (nothing by default).

        Args:
            unit: the unit.
            items: the items of its new instances.
            result: what was stored; None when the destination already held the SEG.
        """


class Sink:
    """Where results go. The defaults hold nothing and store nothing."""

    def available(self) -> bool:
        """Whether to store now.

        Returns:
            False while stores are to wait (e.g. a destination retried after a back-off).
        """
        return True

    def holds(self, unit: Sequence[Dataset], seg_uid: str) -> bool:
        """Whether the destination already has a unit's SEG (it is then recorded as done without segmenting).

        Args:
            unit: the unit.
            seg_uid: its SEG's SOPInstanceUID.

        Returns:
            True when the SEG is there.
        """
        return False

    def unsent(self, source_uids: Sequence[str]) -> UnitResult | None:
        """A result made earlier for exactly these sources and not stored yet (stored without segmenting again).

        Args:
            source_uids: the unit's SOPInstanceUIDs.

        Returns:
            The result, else None.
        """
        return None

    def store(self, result: UnitResult) -> bool:
        """Store the SR and overlays, then the SEG (raise when that fails).

        Args:
            result: the unit's objects.

        Returns:
            True when stored; False when the result is kept for a later try (nothing is recorded then).
        """
        return True
