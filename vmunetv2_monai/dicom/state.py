"""Persistent record of processed source instances (SQLite; every change is one committed transaction)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["DONE", "FAILED", "SKIPPED", "Record", "StateDB", "StudyFailure"]

logger = logging.getLogger(__name__)

DONE, FAILED, SKIPPED = "done", "failed", "skipped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'skipped')),
    reason TEXT,
    seg_sop_instance_uid TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_instance_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    n_instances INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    n_instances INTEGER NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failed_studies (
    study_instance_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series_segs (
    seg_sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    instance_number INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_segs_by_series ON series_segs (series_instance_uid)
"""

_UPSERT = """INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, 1, ?)
   ON CONFLICT(sop_instance_uid) DO UPDATE SET status = excluded.status,
   reason = excluded.reason, seg_sop_instance_uid = excluded.seg_sop_instance_uid,
   attempts = instances.attempts + 1, updated = excluded.updated"""


@dataclass(frozen=True)
class StudyFailure:
    """A study that could not be processed as a whole (e.g. its instances cannot be listed).

    Attributes:
        study_instance_uid: the study's StudyInstanceUID.
        reason: why it could not be processed.
        attempts: how many times it has been recorded as failed.
        updated: UTC time of the last failure, ISO 8601 to the second.
    """

    study_instance_uid: str
    reason: str
    attempts: int
    updated: str


@dataclass(frozen=True)
class Record:
    """One row of the state database.

    Attributes:
        sop_instance_uid: the source instance's SOPInstanceUID (the key).
        study_instance_uid: its StudyInstanceUID.
        series_instance_uid: its SeriesInstanceUID.
        status: one of :data:`DONE`, :data:`FAILED`, :data:`SKIPPED`.
        reason: why it failed or was skipped, or the note of a done record; None when there is none.
        seg_sop_instance_uid: SOPInstanceUID of the SEG that covers it (done records); otherwise None.
        attempts: how many times the instance has been recorded.
        updated: UTC time of the last change, ISO 8601 to the second.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    status: str
    reason: str | None
    seg_sop_instance_uid: str | None
    attempts: int
    updated: str


class StateDB:
    """SQLite file of source SOPInstanceUIDs with status done / failed / skipped.

    Args:
        path: the database file; its folder is created when missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, sop_instance_uid: str) -> Record | None:
        """The record of a source instance, or None if never seen.

        Args:
            sop_instance_uid: the source instance's SOPInstanceUID.
        """
        row = self._conn.execute(
            "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return Record(*row) if row else None

    def _put(self, status: str, sop: str, study: str, series: str, reason: str | None, seg: str | None) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._conn:  # one transaction: BEGIN ... COMMIT (rolled back on error)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(_UPSERT, (sop, study, series, status, reason, seg, now))

    def mark_done(self, sop: str, study: str, series: str, seg_uid: str, note: str | None = None) -> None:
        """Record that the SEG ``seg_uid`` of ``sop`` is in the PACS.

        Args:
            sop: the source instance's SOPInstanceUID.
            study: its StudyInstanceUID.
            series: its SeriesInstanceUID.
            seg_uid: SOPInstanceUID of the stored SEG.
            note: an optional note kept in the record's ``reason``.
        """
        self._put(DONE, sop, study, series, note, seg_uid)

    def mark_done_many(self, sops: list[str], study: str, series: str, seg_uid: str, note: str | None = None,
                       seg_instance_number: int | None = None) -> None:
        """Record, in one transaction, that the series SEG ``seg_uid`` covering ``sops`` is in the PACS (and, when
        given, its Instance Number among the SEGs of ``series``: :meth:`seg_instance_numbers`).

        Args:
            sops: SOPInstanceUIDs of the source instances the SEG covers.
            study: their StudyInstanceUID.
            series: their SeriesInstanceUID.
            seg_uid: SOPInstanceUID of the stored SEG.
            note: an optional note kept in each record's ``reason``.
            seg_instance_number: the SEG's Instance Number, recorded for ``series`` when given.
        """
        self._put_many(DONE, sops, study, series, note, seg_uid, seg_instance_number)

    def seg_instance_numbers(self, series: str) -> dict[str, int]:
        """SOPInstanceUID -> Instance Number of the whole-series SEGs recorded for source series ``series``.

        Args:
            series: the source series' SeriesInstanceUID.
        """
        rows = self._conn.execute("SELECT seg_sop_instance_uid, instance_number FROM series_segs "
                                  "WHERE series_instance_uid = ?", (series,)).fetchall()
        return {str(uid): int(number) for uid, number in rows}

    def mark_failed_many(self, sops: list[str], study: str, series: str, reason: str) -> None:
        """Record, in one transaction, that the SEG covering ``sops`` could not be made.

        Args:
            sops: SOPInstanceUIDs of the source instances.
            study: their StudyInstanceUID.
            series: their SeriesInstanceUID.
            reason: why the SEG could not be made.
        """
        self._put_many(FAILED, sops, study, series, reason, None)

    def study_count(self, study: str) -> int | None:
        """Instance count of a study when it was last fully handled, or None.

        Args:
            study: the StudyInstanceUID.
        """
        row = self._conn.execute("SELECT n_instances FROM studies WHERE study_instance_uid = ?", (study,)).fetchone()
        return None if row is None else int(row[0])

    def set_study_count(self, study: str, n_instances: int) -> None:
        """Remember that the study was fully handled at ``n_instances`` instances (the incremental listing).

        Args:
            study: the StudyInstanceUID.
            n_instances: its instance count when fully handled.
        """
        with self._conn:
            self._conn.execute("INSERT INTO studies VALUES (?, ?) ON CONFLICT(study_instance_uid) DO UPDATE SET "
                               "n_instances = excluded.n_instances", (study, n_instances))

    def mark_study_failed(self, study: str, reason: str) -> None:
        """Record that a whole study could not be processed, and why (retried only on request).

        Args:
            study: the StudyInstanceUID.
            reason: why it could not be processed.
        """
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._conn:
            self._conn.execute("INSERT INTO failed_studies VALUES (?, ?, 1, ?) ON CONFLICT(study_instance_uid) DO "
                               "UPDATE SET reason = excluded.reason, attempts = failed_studies.attempts + 1, "
                               "updated = excluded.updated", (study, reason, now))

    def clear_study_failure(self, study: str) -> None:
        """Forget a study's failure (it has now been processed).

        Args:
            study: the StudyInstanceUID.
        """
        with self._conn:
            self._conn.execute("DELETE FROM failed_studies WHERE study_instance_uid = ?", (study,))

    def study_failures(self) -> list[StudyFailure]:
        """Every study recorded as failed as a whole."""
        rows = self._conn.execute("SELECT * FROM failed_studies ORDER BY updated").fetchall()
        return [StudyFailure(*r) for r in rows]

    def series_settled(self, series: str, n_instances: int, settle_s: float, now: float | None = None) -> bool:
        """Stable-series rule: True once the series has had ``n_instances`` for at least ``settle_s`` seconds
        (as seen by successive calls; a new count restarts the clock). ``settle_s <= 0``: always settled.

        Args:
            series: the SeriesInstanceUID.
            n_instances: its instance count now.
            settle_s: how long the count must stay unchanged, in seconds.
            now: the current time (seconds since the epoch); ``time.time()`` when None.

        Returns:
            Whether the series is settled.
        """
        now = time.time() if now is None else now
        row = self._conn.execute("SELECT n_instances, changed FROM series WHERE series_instance_uid = ?",
                                 (series,)).fetchone()
        if row is None or int(row[0]) != n_instances:
            with self._conn:
                self._conn.execute("INSERT INTO series VALUES (?, ?, ?) ON CONFLICT(series_instance_uid) DO UPDATE "
                                   "SET n_instances = excluded.n_instances, changed = excluded.changed",
                                   (series, n_instances, now))
            return settle_s <= 0
        return now - float(row[1]) >= settle_s

    def _put_many(self, status: str, sops: list[str], study: str, series: str, reason: str | None,
                  seg: str | None, seg_instance_number: int | None = None) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(_UPSERT, [(sop, study, series, status, reason, seg, now) for sop in sops])
            if seg is not None and seg_instance_number is not None:
                self._conn.execute("INSERT OR IGNORE INTO series_segs VALUES (?, ?, ?)",
                                   (seg, series, int(seg_instance_number)))

    def mark_failed(self, sop: str, study: str, series: str, reason: str) -> None:
        """Record a failure and its reason (retried only on request).

        Args:
            sop: the source instance's SOPInstanceUID.
            study: its StudyInstanceUID.
            series: its SeriesInstanceUID.
            reason: why it failed.
        """
        self._put(FAILED, sop, study, series, reason, None)

    def mark_skipped(self, sop: str, study: str, series: str, reason: str) -> None:
        """Record an instance that is deliberately not segmented (a SEG, our own output, ...).

        Args:
            sop: the instance's SOPInstanceUID.
            study: its StudyInstanceUID.
            series: its SeriesInstanceUID.
            reason: why it is skipped.
        """
        self._put(SKIPPED, sop, study, series, reason, None)

    def records(self, status: str | None = None) -> list[Record]:
        """All records, or those with one status, oldest change first.

        Args:
            status: :data:`DONE`, :data:`FAILED` or :data:`SKIPPED`; None for all records.
        """
        if status is None:
            rows = self._conn.execute("SELECT * FROM instances ORDER BY updated").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM instances WHERE status = ? ORDER BY updated", (status,)
            ).fetchall()
        return [Record(*r) for r in rows]

    def series_records(self, series: str, status: str | None = None) -> list[Record]:
        """The records of one series' instances, or those with one status, oldest change first.

        Args:
            series: the SeriesInstanceUID.
            status: :data:`DONE`, :data:`FAILED` or :data:`SKIPPED`; None for all of the series' records.
        """
        query, args = "SELECT * FROM instances WHERE series_instance_uid = ?", [series]
        if status is not None:
            query, args = query + " AND status = ?", args + [status]
        return [Record(*r) for r in self._conn.execute(query + " ORDER BY updated", args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Number of records per status."""
        rows = self._conn.execute("SELECT status, COUNT(*) FROM instances GROUP BY status").fetchall()
        return {DONE: 0, FAILED: 0, SKIPPED: 0, **dict(rows)}
