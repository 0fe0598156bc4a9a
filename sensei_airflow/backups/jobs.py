"""What the backup tasks do, per migration manifest: take, verify, restore-test and prune backups.

Plain Python over the manifest, the catalog and storage; the operators in
:mod:`sensei_airflow.operators.backup` wrap these into tasks and audit events.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sensei_airflow.backups.catalog import BackupCatalog, BackupEntry, BackupKind
from sensei_airflow.backups.storage import storage_for
from sensei_airflow.manifest import Manifest
from sensei_airflow.redaction import redact_error
from sensei_airflow.state import StateStore, utcnow

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = "@daily"


@dataclass(frozen=True)
class BackupSettings:
    """A manifest's backup configuration, merged from ``rollback`` and ``rollback.pre_migration_backup``.

    ``pre_migration_backup`` wins where both say something (it is the newer, more specific block).
    """

    before_start: bool
    scheduled: bool
    type: str
    location: str | None
    retention_days: int
    schedule: str

    @classmethod
    def of(cls, manifest: Manifest) -> BackupSettings:
        rollback = manifest.rollback
        block = rollback.pre_migration_backup
        return cls(
            before_start=rollback.backup_before_start or block.enabled,
            scheduled=block.enabled,
            type=block.type if block.enabled else rollback.backup_type,
            location=block.storage or rollback.backup_location,
            retention_days=block.retention_days,
            schedule=block.schedule or DEFAULT_SCHEDULE,
        )

    def require_location(self, manifest: Manifest) -> str:
        if not self.location:
            raise ValueError(
                f"migration {manifest.id} asks for backups but names no location: set "
                "rollback.pre_migration_backup.storage (or rollback.backup_location)"
            )
        return self.location


def catalog_of(manifest: Manifest) -> BackupCatalog:
    return BackupCatalog(StateStore(manifest.state.conn_id))


def conn_id_of(manifest: Manifest, side: str) -> str:
    if side not in ("target", "source"):
        raise ValueError(f"side must be target or source, not {side!r}")
    return manifest.target.conn_id if side == "target" else manifest.source.conn_id


def tables_of(manifest: Manifest, side: str) -> list[str]:
    return [t.target if side == "target" else t.source for t in manifest.tables]


def backup_migration(
    manifest: Manifest,
    *,
    kind: BackupKind,
    side: str = "target",
    backup_type: str | None = None,
    catalog: BackupCatalog | None = None,
) -> BackupEntry:
    """Back up one side of a migration as its manifest configures (logical: its tables; physical: the cluster)."""
    from sensei_airflow.engines import get_engine

    settings = BackupSettings.of(manifest)
    location = settings.require_location(manifest)
    catalog = catalog or catalog_of(manifest)
    chosen = backup_type or settings.type
    conn_id = conn_id_of(manifest, side)
    if chosen == "physical":
        from sensei_airflow.backups.physical import take_base_backup

        return take_base_backup(
            conn_id, location, catalog, migration_id=manifest.id, kind=kind,
            retention_days=settings.retention_days, side=side,
        )  # fmt: skip
    from sensei_airflow.backups.logical import take_logical_backup

    return take_logical_backup(
        engine=get_engine(conn_id), tables=tables_of(manifest, side), location=location, catalog=catalog,
        migration_id=manifest.id, kind=kind, side=side, retention_days=settings.retention_days,
    )  # fmt: skip


def verify_backup(entry: BackupEntry, catalog: BackupCatalog, *, restore_test: bool) -> dict[str, Any]:
    """Re-read every file against its sha256; for a logical backup, optionally restore it into a scratch database.

    Records the outcome in the catalog (``verified`` or ``failed``) and returns it.
    """
    from sensei_airflow.backups import logical

    result: dict[str, Any] = {"backup_id": entry.backup_id, "files_checked": len(entry.files)}
    problems = logical.check_files(entry)
    result["restore_test"] = None
    if not problems and restore_test and entry.type == "logical":
        from sensei_airflow.engines import get_engine

        test = logical.restore_test(entry, get_engine(entry.conn_id))
        result["restore_test"] = test
        problems += test["problems"]
    result["problems"] = problems
    result["ok"] = not problems
    catalog.record_verification(entry.backup_id, result["ok"], result)
    return result


def restore_test_sample(backup_ids: list[str], mode: str, fraction: float) -> set[str]:
    """The backups to restore-test: ``all``, ``none``, or a random ``sample`` of ``fraction`` (at least one).

    :param backup_ids: the new logical backups (physical ones are not restore-tested).
    """
    if mode == "all":
        return set(backup_ids)
    if mode == "none" or not backup_ids:
        return set()
    return set(random.sample(backup_ids, max(1, math.ceil(len(backup_ids) * fraction))))


def prune_expired(catalog: BackupCatalog, now: datetime | None = None) -> list[dict[str, Any]]:
    """Delete expired backups, files first and then their entry; finish prunes left half-done.

    A backup whose files cannot all be deleted keeps its entry (status ``pruning``), so the
    next prune retries; the others go on.

    :returns: one record per backup handled: ``{"backup_id", "files", "pruned", "error"}``.
    """
    done = []
    for entry in catalog.prunable(now):
        record: dict[str, Any] = {"backup_id": entry.backup_id, "migration_id": entry.migration_id,
                                  "files": sorted(entry.files), "pruned": False, "error": None}  # fmt: skip
        try:
            catalog.mark_pruning(entry.backup_id)
            storage = storage_for(entry.location)
            leftovers = storage.list("")  # partial or unlisted files of the same backup folder too
            storage.delete(sorted(set(entry.files) | set(leftovers)))
            storage.discard()
            catalog.delete(entry.backup_id)
            record["pruned"] = True
        except Exception as exc:
            log.exception("could not prune backup %s", entry.backup_id)
            record["error"] = redact_error(exc)
        done.append(record)
    return done


def fire_times(schedule: str, start: datetime, end: datetime) -> list[datetime]:
    """The times a cron expression (or preset) fires in ``(start, end]`` (at most 1000)."""
    from croniter import croniter

    expression = _PRESETS.get(schedule, schedule)
    found: list[datetime] = []
    iterator = croniter(expression, start)
    while len(found) < 1000:
        moment = iterator.get_next(datetime)
        if moment > end:
            break
        found.append(moment)
    return found


_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def is_due(schedule: str, last_backup_at: datetime | None, now: datetime) -> bool:
    """Whether the schedule fired since the last backup (always, when there is none)."""
    if last_backup_at is None:
        return True
    return bool(fire_times(schedule, last_backup_at, now)[:1])


def shortest_interval(schedule: str, now: datetime | None = None) -> timedelta:
    """The shortest gap between two firings of a schedule, over the next few dozen."""
    start = now or utcnow()
    times = fire_times(schedule, start, start + timedelta(days=400))[:50]
    if len(times) < 2:
        return timedelta(days=365)
    return min(b - a for a, b in itertools.pairwise(times))


#: the tick of the backup DAG when manifests disagree: the coarsest that still serves the finest schedule.
_TICKS = [
    (timedelta(minutes=5), "*/5 * * * *"),
    (timedelta(minutes=15), "*/15 * * * *"),
    (timedelta(hours=1), "@hourly"),
    (timedelta(days=1), "@daily"),
]


def dag_schedule(schedules: list[str]) -> str:
    """The one schedule of the ``sensei_backup`` DAG for all the manifests' schedules (ADR 0102).

    All the same (or none): that one (default daily). Different: a tick no coarser than the
    shortest of them; each migration's task then checks whether its own schedule is due.
    """
    distinct = sorted(set(schedules)) or [DEFAULT_SCHEDULE]
    if len(distinct) == 1:
        return distinct[0]
    shortest = min(shortest_interval(s) for s in distinct)
    for interval, tick in reversed(_TICKS):
        if interval <= shortest:
            return tick
    return _TICKS[0][1]
