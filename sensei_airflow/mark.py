"""The migration's start mark: what the target held, and where its history stood, before the migration wrote.

Taken once, before the forward migration writes anything (``MigrationStartOperator``, ``sensei
migration start``, ``POST /sensei/v1/migrations/{id}/start``). It records, in the state store and
the audit trail:

- the moment, as the target's engine knows it (PostgreSQL: a restore point and its LSN);
- per target table, the row count and the in-database checksum verify uses;
- the sequence / identity values, and a fingerprint of each table's columns;
- the pre-migration backup, taken just before the moment when the manifest asks for one;
- the undo log's handle when ``rollback.undo_log.enabled`` (opened at exactly the moment).

A second mark keeps the first; ``restart`` replaces it (the old undo log is closed), audited.
Once a mark exists it is the migration's start (:func:`sensei_airflow.start.migration_start`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sensei_airflow.manifest import Manifest
from sensei_airflow.redaction import redact_error
from sensei_airflow.state import StateStore, utcnow

_COLUMNS = (
    "migration_id",
    "target_identity",
    "name",
    "taken_at",
    "position",
    "restore_point",
    "tables",
    "sequences",
    "schema_fingerprints",
    "backup_id",
    "undo_log",
    "undo_log_closed_at",
    "notes",
    "taken_by",
    "restarts",
)


class StartMark(BaseModel):
    """One migration's start mark, as recorded in the state store."""

    model_config = ConfigDict(frozen=True)

    migration_id: str
    target_identity: str
    name: str
    taken_at: datetime
    position: str | None = None
    restore_point: str | None = None
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sequences: list[dict[str, Any]] = Field(default_factory=list)
    schema_fingerprints: dict[str, str] = Field(default_factory=dict)
    backup_id: str | None = None
    undo_log: dict[str, Any] | None = None
    undo_log_closed_at: datetime | None = None
    notes: list[str] = Field(default_factory=list)
    taken_by: str | None = None
    restarts: int = 0

    def rows(self) -> dict[str, int]:
        """Rows each target table held at the mark."""
        return {t: int(v["rows"]) for t, v in self.tables.items()}

    def checksums(self) -> dict[str, str | None]:
        return {t: v.get("checksum") for t, v in self.tables.items()}

    @property
    def undo_log_open(self) -> bool:
        return self.undo_log is not None and self.undo_log_closed_at is None

    def summary(self) -> dict[str, Any]:
        """The mark in a few JSON fields (status, audit trail, report)."""
        return {
            "name": self.name,
            "taken_at": self.taken_at.isoformat(),
            "position": self.position,
            "restore_point": self.restore_point,
            "tables": self.tables,
            "sequences": len(self.sequences),
            "backup_id": self.backup_id,
            "undo_log": (self.undo_log or {}).get("slot"),
            "undo_log_open": self.undo_log_open,
            "restarts": self.restarts,
            "notes": self.notes,
        }


def slot_name(migration_id: str) -> str:
    """The undo log's replication slot: ``sensei_undo_<id>`` ([a-z0-9_], at most 63 bytes, unique per id)."""
    name = f"sensei_undo_{migration_id}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(migration_id.encode()).hexdigest()[:10]
    return f"{name[: 63 - 11]}_{digest}"


def mark_name(migration_id: str, at: datetime) -> str:
    """``sensei_<id>_<UTC time>``: unique, since recovery stops at the *first* restore point of a name."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    prefix = f"sensei_{migration_id}"
    return f"{prefix[: 62 - len(stamp)]}_{stamp}"


def load_mark(state: StateStore, migration_id: str) -> StartMark | None:
    """The migration's start mark, or None when none was taken."""
    with state.transaction() as cur:
        cur.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM sensei.migration_marks WHERE migration_id = %s",  # noqa: S608
            (migration_id,),
        )
        row = cur.fetchone()
    return None if row is None else StartMark.model_validate(dict(zip(_COLUMNS, row, strict=True)))


def take_mark(
    manifest: Manifest,
    *,
    restart: bool = False,
    actor: str | None = None,
    reason: str | None = None,
    state: StateStore | None = None,
) -> tuple[StartMark, bool]:
    """Take the migration's start mark, unless one exists (then it is returned as it stands).

    With ``restart`` an existing mark is replaced: its undo log is closed, a new backup is taken
    when the manifest asks for one, and the audit trail says who restarted it and why.

    :returns: the mark, and whether it was taken now.
    :raises sensei_airflow.engines.base.MarkRefused: when the undo log cannot be opened (one line).
    """
    from sensei_airflow.audit import AuditEvent, AuditTrail
    from sensei_airflow.backups.jobs import BackupSettings, backup_migration
    from sensei_airflow.engines import get_engine

    state = state or StateStore(manifest.state.conn_id)
    existing = load_mark(state, manifest.id)
    if existing is not None and not restart:
        return existing, False
    target = get_engine(manifest.target.conn_id)
    closed: list[str] = []
    if existing is not None and existing.undo_log_open:
        closed = target.close_undo_log(existing.undo_log or {})
    backup_id = None
    if BackupSettings.of(manifest).before_start:  # before the moment: the backup holds the pre-migration rows
        backup_id = backup_migration(manifest, kind="pre_migration").backup_id
    now = utcnow()
    tables = [target.qualify(t.target) for t in manifest.tables]
    moment = target.take_mark(
        mark_name(manifest.id, now),
        tables,
        undo_log=manifest.rollback.undo_log.enabled,
        slot=slot_name(manifest.id),
    )
    mark = StartMark(
        migration_id=manifest.id,
        target_identity=target.identity(),
        name=mark_name(manifest.id, now),
        taken_at=moment.at,
        position=moment.position,
        restore_point=moment.restore_point,
        tables=moment.tables,
        sequences=moment.sequences,
        schema_fingerprints=moment.schema,
        backup_id=backup_id,
        undo_log=moment.undo_log,
        notes=moment.notes,
        taken_by=actor,
        restarts=existing.restarts + 1 if existing is not None else 0,
    )
    _record(state, mark)
    AuditTrail(state).append(
        AuditEvent(
            step="mark",
            action="start mark restarted" if existing is not None else "start marked",
            migration_id=manifest.id,
            actor=actor,
            reason=reason,
            detail={
                "mark": mark.summary(),
                **({"replaced": existing.summary(), "closed": closed} if existing is not None else {}),
            },
        )
    )
    return mark, True


def _record(state: StateStore, mark: StartMark) -> None:
    values = mark.model_dump(mode="json")
    json_columns = {"tables", "sequences", "schema_fingerprints", "undo_log", "notes"}
    params = [_as_json(values[c]) if c in json_columns else values[c] for c in _COLUMNS]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c != "migration_id")
    with state.transaction() as cur:
        cur.execute(
            f"INSERT INTO sensei.migration_marks ({', '.join(_COLUMNS)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) ON CONFLICT (migration_id) DO UPDATE SET {updates}",
            params,
        )


def _as_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


def close_undo_log(manifest: Manifest, state: StateStore, mark: StartMark, why: str) -> list[str]:
    """Drop the mark's undo log (slot) and restore the tables' replica identity; audited."""
    from sensei_airflow.audit import AuditEvent, AuditTrail
    from sensei_airflow.engines import get_engine

    if not mark.undo_log_open:
        return []
    done = get_engine(manifest.target.conn_id).close_undo_log(mark.undo_log or {})
    with state.transaction() as cur:
        cur.execute(
            "UPDATE sensei.migration_marks SET undo_log_closed_at = now() WHERE migration_id = %s",
            (manifest.id,),
        )
    AuditTrail(state).append(
        AuditEvent(
            step="mark",
            action="undo log closed",
            migration_id=manifest.id,
            reason=why,
            detail={"slot": (mark.undo_log or {}).get("slot"), "done": done},
        )
    )
    return done


def start_mark_summary(state: StateStore, migration_id: str) -> dict[str, Any] | None:
    """The start mark for a rollback's report (what the rollback went back to), or why it could not be read.

    :param state: the migration's state store.
    :param migration_id: the migration.
    """
    try:
        mark = load_mark(state, migration_id)
    except Exception as exc:  # the report is written whatever the state store says
        return {"error": redact_error(exc)}
    return mark.summary() if mark is not None else None
