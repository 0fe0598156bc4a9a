"""The backup catalog: every backup sensei took, in the state store (``sensei.backups``).

A backup's files are trusted only through its catalog entry: the sha256 and size of every file,
and the row count and checksum of every table, recorded when it was taken. An entry moves
``running`` -> ``completed`` -> ``verified`` (or ``failed``); pruning marks it ``pruning``,
deletes its files, then deletes the entry, so an entry never outlives its files silently and
files never outlive their entry (a prune interrupted half-way is finished by the next one).
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sensei_airflow.state import StateStore, utcnow

BackupKind = Literal["pre_migration", "scheduled", "manual"]
BackupType = Literal["logical", "physical"]
BackupStatus = Literal["running", "completed", "verified", "failed", "pruning"]
#: statuses of a backup that may be restored from.
USABLE = ("completed", "verified")

_COLUMNS = (
    "backup_id", "migration_id", "kind", "type", "side", "conn_id", "database", "location", "status",
    "tables", "files", "table_stats", "size_bytes", "created_at", "completed_at", "expires_at",
    "verified_at", "verification", "error", "detail",
)  # fmt: skip
_JSON = {"tables", "files", "table_stats", "verification", "detail"}


def new_backup_id() -> str:
    """``bkp_`` and 16 random hex digits."""
    return f"bkp_{secrets.token_hex(8)}"


class FileRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    size: int
    sha256: str


class BackupEntry(BaseModel):
    """One catalogued backup."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    migration_id: str
    kind: BackupKind
    type: BackupType
    side: Literal["target", "source"] = "target"
    conn_id: str
    database: str | None = None
    location: str = Field(description="the backup's own folder (URL), its files' names are relative to it")
    status: BackupStatus = "running"
    tables: list[str] = Field(default_factory=list)
    files: dict[str, FileRecord] = Field(default_factory=dict)
    table_stats: dict[str, dict[str, Any]] = Field(default_factory=dict)
    size_bytes: int = 0
    created_at: datetime
    completed_at: datetime | None = None
    expires_at: datetime
    verified_at: datetime | None = None
    verification: dict[str, Any] | None = None
    error: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())

    def usable(self, now: datetime | None = None) -> bool:
        return self.status in USABLE and not self.expired(now)

    def display_status(self, now: datetime | None = None) -> str:
        return "expired" if self.expired(now) and self.status in USABLE else self.status

    def row_counts(self) -> dict[str, int]:
        return {t: int(s["rows"]) for t, s in self.table_stats.items()}

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready view (XCom, audit events, CLI)."""
        return {
            "backup_id": self.backup_id,
            "migration_id": self.migration_id,
            "kind": self.kind,
            "type": self.type,
            "side": self.side,
            "status": self.display_status(),
            "location": self.location,
            "tables": self.tables,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


class BackupCatalog:
    """Read and write ``sensei.backups`` in a state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _cursor(self) -> Any:
        return self.store.transaction()

    # -- writing -----------------------------------------------------------------------------------
    def start(
        self,
        *,
        backup_id: str,
        migration_id: str,
        kind: BackupKind,
        type: BackupType,
        side: str,
        conn_id: str,
        database: str | None,
        location: str,
        tables: list[str],
        retention_days: float,
        now: datetime | None = None,
    ) -> BackupEntry:
        """Record a backup as ``running`` before its first byte is written (so a crash leaves a trace)."""
        created = now or utcnow()
        entry = BackupEntry(
            backup_id=backup_id, migration_id=migration_id, kind=kind, type=type, side=side,  # type: ignore[arg-type]
            conn_id=conn_id, database=database, location=location, tables=tables,
            created_at=created, expires_at=created + timedelta(days=retention_days),
        )  # fmt: skip
        with self._cursor() as cur:
            cur.execute(
                """
                INSERT INTO sensei.backups (backup_id, migration_id, kind, type, side, conn_id, database,
                    location, status, tables, created_at, expires_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, %s)
                """,
                (backup_id, migration_id, kind, type, side, conn_id, database, location,
                 json.dumps(tables), entry.created_at, entry.expires_at),
            )  # fmt: skip
        return entry

    def complete(
        self,
        backup_id: str,
        *,
        files: Mapping[str, FileRecord],
        table_stats: Mapping[str, Mapping[str, Any]],
        detail: Mapping[str, Any] | None = None,
    ) -> BackupEntry:
        size = sum(f.size for f in files.values())
        with self._cursor() as cur:
            cur.execute(
                """
                UPDATE sensei.backups SET status = 'completed', files = %s, table_stats = %s, size_bytes = %s,
                    completed_at = now(), detail = detail || %s
                WHERE backup_id = %s AND status = 'running'
                """,
                (
                    json.dumps({n: f.model_dump() for n, f in files.items()}),
                    json.dumps(table_stats, default=str),
                    size,
                    json.dumps(dict(detail or {}), default=str),
                    backup_id,
                ),
            )
            if cur.rowcount != 1:
                raise LookupError(f"backup {backup_id} is not running: cannot complete it")
        return self.require(backup_id)

    def fail(self, backup_id: str, error: str, *, files: Mapping[str, FileRecord] | None = None) -> None:
        """Mark a backup failed (its files, if any were written, stay listed so pruning removes them)."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE sensei.backups SET status = 'failed', error = %s, files = files || %s WHERE backup_id = %s",
                (error[:4000], json.dumps({n: f.model_dump() for n, f in (files or {}).items()}), backup_id),
            )

    def record_verification(self, backup_id: str, ok: bool, verification: Mapping[str, Any]) -> None:
        """``verified`` with the evidence, or ``failed`` with the first problem."""
        problems = verification.get("problems") or []
        with self._cursor() as cur:
            cur.execute(
                """
                UPDATE sensei.backups SET status = %s, verified_at = now(), verification = %s,
                    error = CASE WHEN %s THEN error ELSE %s END
                WHERE backup_id = %s AND status IN ('completed', 'verified', 'failed')
                """,
                ("verified" if ok else "failed", json.dumps(verification, default=str), ok,
                 "; ".join(problems)[:4000] or None, backup_id),
            )  # fmt: skip

    def mark_pruning(self, backup_id: str) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE sensei.backups SET status = 'pruning' WHERE backup_id = %s", (backup_id,))

    def delete(self, backup_id: str) -> None:
        with self._cursor() as cur:
            cur.execute(
                "DELETE FROM sensei.backups WHERE backup_id = %s AND status = 'pruning'", (backup_id,)
            )
            if cur.rowcount != 1:
                raise LookupError(f"backup {backup_id} is not being pruned: its entry stays")

    # -- reading -----------------------------------------------------------------------------------
    def get(self, backup_id: str) -> BackupEntry | None:
        found = self._select("backup_id = %s", (backup_id,))
        return found[0] if found else None

    def require(self, backup_id: str) -> BackupEntry:
        entry = self.get(backup_id)
        if entry is None:
            raise LookupError(f"no backup {backup_id} in the catalog")
        return entry

    def list(self, migration_id: str | None = None) -> builtins.list[BackupEntry]:
        """Every entry, newest first (of one migration if given)."""
        if migration_id is None:
            return self._select("true", ())
        return self._select("migration_id = %s", (migration_id,))

    def prunable(self, now: datetime | None = None) -> builtins.list[BackupEntry]:
        """Entries past their expiry, and entries whose pruning was interrupted."""
        return self._select("expires_at <= %s OR status = 'pruning'", (now or utcnow(),))

    def last_created(self, migration_id: str, kind: str) -> datetime | None:
        """When the newest backup of this kind (any status but failed) was started."""
        found = self._select(
            "migration_id = %s AND kind = %s AND status <> 'failed'", (migration_id, kind), limit=1
        )
        return found[0].created_at if found else None

    def _select(
        self, where: str, params: tuple[Any, ...], limit: int | None = None
    ) -> builtins.list[BackupEntry]:
        columns = ", ".join(_COLUMNS)
        sql = f"SELECT {columns} FROM sensei.backups WHERE {where} ORDER BY created_at DESC, backup_id DESC"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [_entry(dict(zip(_COLUMNS, row, strict=True))) for row in rows]


def _entry(row: dict[str, Any]) -> BackupEntry:
    for name in _JSON:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    if row.get("verification") is None:
        row.pop("verification")
    return BackupEntry.model_validate(row)


def render_listing(entries: list[BackupEntry], now: datetime | None = None) -> str:
    """A plain-text table of backups: id, migration, kind, type, status, size, created, expires."""
    moment = now or utcnow()
    header = ("backup_id", "migration", "kind", "type", "status", "size", "tables", "created", "expires")
    rows = [header]
    for e in entries:
        left = e.expires_at - moment
        expiry = f"{e.expires_at:%Y-%m-%d %H:%M} ({'expired' if left.total_seconds() <= 0 else f'in {left.days}d'})"
        rows.append((e.backup_id, e.migration_id, e.kind, e.type, e.display_status(moment), _size(e.size_bytes),
                     str(len(e.tables)) if e.type == "logical" else "cluster", f"{e.created_at:%Y-%m-%d %H:%M}",
                     expiry))  # fmt: skip
    if len(rows) == 1:
        return "no backups"
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
