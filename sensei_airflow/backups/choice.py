"""Which backup a rollback may use by default, and why every other catalogued backup may not.

The default is the newest backup of the target that is usable now (completed or verified, not
expired), was taken from the very database the manifest names now (the identity recorded in the
catalog when it was taken), finished at or before the migration's start (so it cannot hold a row
the migration wrote), and covers the tables asked for, whatever its kind (pre-migration,
scheduled or manual). Pure functions over catalog entries, so the rules read and test alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sensei_airflow.backups.catalog import BackupEntry

#: candidates named in one refusal line; the rest are counted.
LISTED = 8


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def describe_identity(recorded: str, current: str) -> str:
    """Where a backup came from, said without hosts: ``database shop on another server``."""
    recorded_server, _, recorded_db = recorded.rpartition("/")
    current_server, _, _ = current.rpartition("/")
    where = "the same server" if recorded_server == current_server else "another server"
    return f"database {recorded_db or recorded} on {where}"


def identity_problem(entry: BackupEntry, identity: str) -> str | None:
    """Why the backup is not known to be of the database with ``identity`` (None: it is)."""
    if entry.database is None:
        return (
            "its catalog entry does not record which database it was taken from (taken before sensei "
            "recorded it)"
        )
    if entry.database != identity:
        return f"taken from {describe_identity(entry.database, identity)}, not from this target"
    return None


def timing_problem(entry: BackupEntry, start: datetime) -> str | None:
    """Why the backup may hold rows written after ``start`` (None: it finished by then)."""
    if entry.created_at > start:
        return f"taken after the migration's start ({_iso(start)})"
    finished = entry.completed_at or entry.created_at
    if finished > start:
        return f"still being taken when the migration started ({_iso(start)}; it finished {_iso(finished)})"
    return None


def problem(
    entry: BackupEntry, *, identity: str, start: datetime, now: datetime, tables: Sequence[str] = ()
) -> str | None:
    """The first reason ``entry`` cannot be restored by default, or None when it can.

    :param identity: the identity of the target database now (``Engine.identity()``).
    :param start: the migration's start (:func:`sensei_airflow.start.migration_start`).
    :param now: the moment expiry is judged at.
    :param tables: qualified target tables the backup must hold.
    """
    if entry.status == "running":
        return "still being taken"
    if entry.status == "pruning":
        return "being pruned"
    if entry.status == "failed":
        return "failed"
    if entry.expired(now):
        return f"expired at {_iso(entry.expires_at)}"
    if entry.type != "logical":
        return "a physical (whole-cluster) backup: point_in_time restores those"
    found = identity_problem(entry, identity) or timing_problem(entry, start)
    if found:
        return found
    missing = [t for t in tables if t not in entry.tables]
    if missing:
        return f"does not cover {missing[0]}"
    return None


@dataclass(frozen=True)
class Candidate:
    """A catalogued backup of the target, with the reason it cannot be the default (None: it can)."""

    entry: BackupEntry
    problem: str | None

    def describe(self) -> str:
        e = self.entry
        return f"{e.backup_id} ({e.kind}, taken {_iso(e.created_at)}): {self.problem or 'usable'}"


def candidates(
    entries: Iterable[BackupEntry],
    *,
    identity: str,
    start: datetime,
    now: datetime,
    tables: Sequence[str] = (),
) -> list[Candidate]:
    """Every backup of the target among ``entries``, newest first, each judged by :func:`problem`."""
    of_target = sorted((e for e in entries if e.side == "target"), key=lambda e: e.created_at, reverse=True)
    return [
        Candidate(e, problem(e, identity=identity, start=start, now=now, tables=tables)) for e in of_target
    ]


def default_backup(found: Sequence[Candidate]) -> BackupEntry | None:
    """The newest usable candidate."""
    return next((c.entry for c in found if c.problem is None), None)


def refusal(found: Sequence[Candidate], *, migration_id: str, start: datetime, catalog_of: str) -> str:
    """One line: no backup can be the default, and why each candidate cannot."""
    if not found:
        return (
            f"no backup of the target of migration {migration_id} is in the backup catalog of {catalog_of}; "
            "take one, or choose another strategy"
        )
    listed = "; ".join(c.describe() for c in found[:LISTED])
    more = f"; and {len(found) - LISTED} older" if len(found) > LISTED else ""
    return (
        f"no backup of this target taken at or before the migration's start ({_iso(start)}) can be used: "
        f"{listed}{more}; name one with backup_id or choose another strategy"
    )
