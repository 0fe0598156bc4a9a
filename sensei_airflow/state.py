"""The state store: rollback run records and migration start marks, on the manifest's ``state`` connection.

The state store is a PostgreSQL database that is never the target being rolled back (assess
refuses that), so what it records survives the rollback it records. Its tables live in the
``sensei`` schema, whose every change is a numbered :class:`SchemaStep` here, applied once
(ADR 0008); the advisory lock keys sensei takes are defined here too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sensei_airflow.status import StatusDocument

#: advisory lock keys (arbitrary constants) on the state store, and on the target for a migration
#: (:func:`change_lock_key`). Every ``pg_advisory_*`` lock sensei takes uses one of these.
SCHEMA_LOCK = 7_346_001
CHAIN_LOCK = 7_346_002


def change_lock_key(migration_id: str) -> int:
    """The advisory lock key of a migration (a signed 64-bit integer, stable across processes)."""
    digest = hashlib.sha256(f"sensei-migration:{migration_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: the append-only protection of the audit trail; run again (as the owner) when found disabled.
_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION sensei.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sensei.audit_events is append-only: % is not allowed', TG_OP;
END $$;
CREATE OR REPLACE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON sensei.audit_events
    FOR EACH ROW EXECUTE FUNCTION sensei.audit_events_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON sensei.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION sensei.audit_events_append_only();
"""
#: the triggers :data:`_APPEND_ONLY` creates.
APPEND_ONLY_TRIGGERS = ("audit_events_no_update", "audit_events_no_truncate")


@dataclass(frozen=True)
class SchemaStep:
    """One numbered change of the ``sensei`` schema, applied once, in order, by :meth:`StateStore.ensure_schema`.

    Each step is written so that it also passes on a store whose tables an earlier release made
    unversioned (``IF NOT EXISTS``, columns added only when missing).
    """

    version: int
    what: str
    ddl: str


SCHEMA_STEPS: tuple[SchemaStep, ...] = (
    SchemaStep(
        1,
        "run records, baselines, the append-only audit trail, the migration lock, halted consumers",
        """
CREATE SCHEMA IF NOT EXISTS sensei;
CREATE TABLE IF NOT EXISTS sensei.schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS sensei.rollback_runs (
    rollback_id      text PRIMARY KEY,
    migration_id     text NOT NULL,
    status           text NOT NULL,
    strategy         text,
    dry_run          boolean NOT NULL DEFAULT false,
    request          jsonb NOT NULL DEFAULT '{}',
    plan             jsonb,
    status_document  jsonb,
    report           jsonb,
    report_markdown  text,
    triggered_by     text,
    reason           text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rollback_runs_by_migration ON sensei.rollback_runs (migration_id, started_at DESC);
CREATE TABLE IF NOT EXISTS sensei.table_baselines (
    migration_id     text NOT NULL,
    target_table     text NOT NULL,
    rows_before      bigint NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, target_table)
);
CREATE TABLE IF NOT EXISTS sensei.audit_events (
    seq              bigint PRIMARY KEY,
    recorded_at      timestamptz NOT NULL,
    rollback_id      text,
    migration_id     text,
    task_id          text,
    try_number       integer,
    step             text NOT NULL,
    action           text NOT NULL,
    actor            text,
    payload          text NOT NULL,
    prev_hash        text NOT NULL,
    hash             text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_events_by_run ON sensei.audit_events (rollback_id, seq);
"""
        + _APPEND_ONLY
        + """
CREATE TABLE IF NOT EXISTS sensei.rollback_locks (
    migration_id     text PRIMARY KEY,
    rollback_id      text NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sensei.consumer_holds (
    id               bigserial PRIMARY KEY,
    migration_id     text NOT NULL,
    rollback_id      text NOT NULL,
    kind             text NOT NULL,
    name             text NOT NULL,
    object           text NOT NULL DEFAULT '',
    detail           jsonb NOT NULL DEFAULT '{}',
    halted_at        timestamptz NOT NULL DEFAULT now(),
    resumed_at       timestamptz,
    resumed_by       text
);
CREATE UNIQUE INDEX IF NOT EXISTS consumer_holds_open
    ON sensei.consumer_holds (migration_id, kind, name, object) WHERE resumed_at IS NULL;
""",
    ),
    SchemaStep(
        2,
        "the link kind of each audit event, and each run's anchor of the chain (audit.py, anchors.py)",
        """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sensei.audit_events'::regclass
                   AND attname = 'hash_kind' AND NOT attisdropped) THEN
        ALTER TABLE sensei.audit_events ADD COLUMN hash_kind text NOT NULL DEFAULT 'sha256';
    END IF;
    ALTER TABLE sensei.rollback_runs
        ADD COLUMN IF NOT EXISTS audit_events bigint,
        ADD COLUMN IF NOT EXISTS audit_head_seq bigint,
        ADD COLUMN IF NOT EXISTS audit_head_hash text;
END $$;
""",
    ),
    SchemaStep(
        3,
        "the fencing token of the migration lock and its heartbeat (lock.py)",
        """
CREATE SEQUENCE IF NOT EXISTS sensei.rollback_lock_tokens;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sensei.rollback_locks'::regclass
                   AND attname = 'token' AND NOT attisdropped) THEN
        ALTER TABLE sensei.rollback_locks
            ADD COLUMN token bigint NOT NULL DEFAULT nextval('sensei.rollback_lock_tokens'),
            ADD COLUMN renewed_at timestamptz;
    END IF;
END $$;
""",
    ),
    SchemaStep(
        4,
        "the backup catalog (backups/catalog.py), window warnings (windows.py) and the restore points "
        "of point-in-time recovery (strategies/point_in_time.py), made on first use before",
        """
CREATE TABLE IF NOT EXISTS sensei.backups (
    backup_id     text PRIMARY KEY,
    migration_id  text NOT NULL,
    kind          text NOT NULL,
    type          text NOT NULL,
    side          text NOT NULL,
    conn_id       text NOT NULL,
    database      text,
    location      text NOT NULL,
    status        text NOT NULL,
    tables        jsonb NOT NULL DEFAULT '[]',
    files         jsonb NOT NULL DEFAULT '{}',
    table_stats   jsonb NOT NULL DEFAULT '{}',
    size_bytes    bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    expires_at    timestamptz NOT NULL,
    verified_at   timestamptz,
    verification  jsonb,
    error         text,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS backups_by_migration ON sensei.backups (migration_id, created_at DESC);
CREATE INDEX IF NOT EXISTS backups_by_expiry ON sensei.backups (expires_at);
CREATE TABLE IF NOT EXISTS sensei.window_warnings (
    migration_id  text NOT NULL,
    strategy      text NOT NULL,
    target_table  text NOT NULL,
    closes_at     timestamptz NOT NULL,
    warned_at     timestamptz NOT NULL,
    check_run_id  text,
    PRIMARY KEY (migration_id, strategy, target_table, closes_at)
);
CREATE TABLE IF NOT EXISTS sensei.pitr_restore_points (
    migration_id     text NOT NULL,
    target_identity  text NOT NULL,
    name             text NOT NULL,
    position         text,
    recorded_at      timestamptz NOT NULL,
    PRIMARY KEY (migration_id, target_identity)
);
""",
    ),
    SchemaStep(
        5,
        "the migration's start mark (mark.py): its moment, per-table counts and checksums, sequences, "
        "column fingerprints, the pre-migration backup and the undo log's handle",
        """
CREATE TABLE IF NOT EXISTS sensei.migration_marks (
    migration_id     text PRIMARY KEY,
    target_identity  text NOT NULL,
    name             text NOT NULL,
    taken_at         timestamptz NOT NULL,
    position         text,
    restore_point    text,
    tables           jsonb NOT NULL DEFAULT '{}',
    sequences        jsonb NOT NULL DEFAULT '[]',
    schema_fingerprints jsonb NOT NULL DEFAULT '{}',
    backup_id        text,
    undo_log         jsonb,
    undo_log_closed_at timestamptz,
    notes            jsonb NOT NULL DEFAULT '[]',
    taken_by         text,
    restarts         integer NOT NULL DEFAULT 0
);
""",
    ),
)

#: the version this sensei-airflow needs: the last step's. A state role that may not run the DDL
#: (it does not own the schema, see ``sensei audit init``) checks that the owner brought it this far.
SCHEMA_VERSION = SCHEMA_STEPS[-1].version

_RUN_COLUMNS = (
    "rollback_id",
    "migration_id",
    "status",
    "strategy",
    "dry_run",
    "request",
    "plan",
    "status_document",
    "report",
    "report_markdown",
    "triggered_by",
    "reason",
    "started_at",
    "finished_at",
)
_JSON_COLUMNS = {"request", "plan", "status_document", "report"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class StateStore:
    """Run records and baselines in the state database (an Airflow ``postgres`` connection)."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._schema_ready = False

    @cached_property
    def hook(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.conn_id)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one committed transaction on the state database."""
        self.ensure_schema()
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        with closing(self.hook.get_conn()) as conn:
            yield conn

    def ensure_schema(self) -> None:
        """Bring the ``sensei`` schema to :data:`SCHEMA_VERSION` (once per store object; safe concurrently).

        Reads the store's version; only when it is older are the missing :data:`SCHEMA_STEPS` run,
        each once, under an advisory lock, with the version recorded in the same transaction. A
        store at the version runs no DDL, so a role that may only use the tables can use it.
        When the audit trail's append-only triggers are found disabled or missing, the owner's
        role restores them, and a dropped audit table is made again, empty; another role leaves
        them for ``sensei audit verify`` to report.

        :raises StateSchemaMissing: the store is older than this sensei-airflow and the state role
            may not upgrade it (it does not own the schema, see ``sensei audit init``).
        """
        if self._schema_ready:
            return
        from psycopg.errors import InsufficientPrivilege

        with self._connect() as conn:
            with conn.transaction(), conn.cursor() as cur:
                found = _schema_state(cur)
            if not found.current:
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        _upgrade(cur)
                except InsufficientPrivilege as exc:
                    # a role that may not restore the append-only triggers leaves them to audit verify
                    if found.version < SCHEMA_VERSION:
                        self._check_schema_made_by_owner(conn, exc)
        self._schema_ready = True

    def _check_schema_made_by_owner(self, conn: Any, refused: Exception) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT current_user, to_regclass('sensei.schema_version') IS NOT NULL")
            role, exists = cur.fetchone()
            version = None
            if exists:
                cur.execute("SELECT max(version) FROM sensei.schema_version")
                version = cur.fetchone()[0]
        if version is None or version < SCHEMA_VERSION:
            found = "missing" if version is None else f"at version {version}"
            first_line = str(refused).splitlines()[0]
            raise StateSchemaMissing(
                f"the sensei schema of state store {self.conn_id} is {found} (this sensei-airflow needs "
                f"version {SCHEMA_VERSION}) and the state role {role} may not create it ({first_line}): "
                f"have its owner run: sensei audit init --conn-id <owner connection> --grant-to {role}"
            ) from None

    def record_audit_anchor(self, rollback_id: str, *, events: int, head_seq: int, head_hash: str) -> None:
        """Store in the run record the audit chain's event count and head as of its document step."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE sensei.rollback_runs SET audit_events = %s, audit_head_seq = %s, "
                "audit_head_hash = %s, updated_at = now() WHERE rollback_id = %s",
                (events, head_seq, head_hash, rollback_id),
            )

    def identity(self) -> str:
        """Same form as :meth:`PostgresEngine.identity`, to compare with the target's."""
        from sensei_airflow.engines.postgres import PostgresEngine

        return PostgresEngine(self.conn_id).identity()

    # -- rollback runs -----------------------------------------------------------------------
    def record_run(
        self,
        rollback_id: str,
        migration_id: str,
        *,
        status: str,
        request: Mapping[str, Any],
        dry_run: bool = False,
        strategy: str | None = None,
        plan: Mapping[str, Any] | None = None,
        triggered_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Create the run record, or refresh it when the task is retried."""
        with self.transaction() as cur:
            cur.execute(
                """
                INSERT INTO sensei.rollback_runs
                    (rollback_id, migration_id, status, strategy, dry_run, request, plan, triggered_by, reason)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (rollback_id) DO UPDATE SET
                    status = EXCLUDED.status, strategy = EXCLUDED.strategy, dry_run = EXCLUDED.dry_run,
                    request = EXCLUDED.request, plan = EXCLUDED.plan, updated_at = now()
                """,
                (
                    rollback_id,
                    migration_id,
                    status,
                    strategy,
                    dry_run,
                    _json(request),
                    _json(plan),
                    triggered_by,
                    reason,
                ),
            )

    def finish_run(
        self, rollback_id: str, *, document: StatusDocument, report: Mapping[str, Any], report_markdown: str
    ) -> None:
        """Store the run's status document (its status too) and report."""
        with self.transaction() as cur:
            cur.execute(
                """
                UPDATE sensei.rollback_runs SET status = %s, status_document = %s, report = %s,
                    report_markdown = %s, finished_at = now(), updated_at = now()
                WHERE rollback_id = %s
                """,
                (
                    document.rollback_status,
                    _json(document.as_json()),
                    _json(report),
                    report_markdown,
                    rollback_id,
                ),
            )
            if cur.rowcount == 0:
                raise LookupError(f"no run record for rollback {rollback_id}")

    def get_run(self, rollback_id: str) -> dict[str, Any] | None:
        return self._one_run("rollback_id = %s", (rollback_id,))

    def latest_run(self, migration_id: str) -> dict[str, Any] | None:
        """The newest rollback of a migration (dry runs included)."""
        return self._one_run("migration_id = %s ORDER BY started_at DESC, rollback_id DESC", (migration_id,))

    def _one_run(self, where: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        columns = ", ".join(_RUN_COLUMNS)
        with self.transaction() as cur:
            cur.execute(f"SELECT {columns} FROM sensei.rollback_runs WHERE {where} LIMIT 1", params)  # noqa: S608
            row = cur.fetchone()
        return None if row is None else dict(zip(_RUN_COLUMNS, row, strict=True))

    # -- halted consumers ------------------------------------------------------------------------
    def record_hold(
        self,
        migration_id: str,
        rollback_id: str,
        kind: str,
        name: str,
        detail: Mapping[str, Any],
        obj: str = "",
    ) -> ConsumerHold:
        """Record that a consumer is about to be halted, before halting it.

        When an open hold for the same consumer already exists (a run crashed before resuming
        it), that record is kept and returned: it knows the state before the first halt.
        """
        with self.transaction() as cur:
            cur.execute(
                """
                INSERT INTO sensei.consumer_holds (migration_id, rollback_id, kind, name, object, detail)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (migration_id, kind, name, object) WHERE resumed_at IS NULL DO NOTHING
                """,
                (migration_id, rollback_id, kind, name, obj, _json(detail)),
            )
            cur.execute(
                f"SELECT {_HOLD_COLUMNS} FROM sensei.consumer_holds "  # noqa: S608
                "WHERE migration_id = %s AND kind = %s AND name = %s AND object = %s AND resumed_at IS NULL",
                (migration_id, kind, name, obj),
            )
            return ConsumerHold(*cur.fetchone())

    def open_holds(self, migration_id: str) -> list[ConsumerHold]:
        """Consumers halted for this migration and not resumed yet, by any run."""
        with self.transaction() as cur:
            cur.execute(
                f"SELECT {_HOLD_COLUMNS} FROM sensei.consumer_holds "  # noqa: S608
                "WHERE migration_id = %s AND resumed_at IS NULL ORDER BY id",
                (migration_id,),
            )
            return [ConsumerHold(*row) for row in cur.fetchall()]

    def holds_of_run(self, rollback_id: str) -> list[ConsumerHold]:
        with self.transaction() as cur:
            cur.execute(
                f"SELECT {_HOLD_COLUMNS} FROM sensei.consumer_holds WHERE rollback_id = %s ORDER BY id",  # noqa: S608
                (rollback_id,),
            )
            return [ConsumerHold(*row) for row in cur.fetchall()]

    def close_hold(self, hold_id: int, resumed_by: str) -> None:
        """Mark a consumer as restored (by the run ``resumed_by``)."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE sensei.consumer_holds SET resumed_at = now(), resumed_by = %s "
                "WHERE id = %s AND resumed_at IS NULL",
                (resumed_by, hold_id),
            )


_HOLD_COLUMNS = "id, migration_id, rollback_id, kind, name, object, detail, halted_at, resumed_at, resumed_by"


@dataclass(frozen=True)
class ConsumerHold:
    """One halted consumer: a DAG (``kind='dag'``) or one role's grants on one table (``'grants'``)."""

    id: int
    migration_id: str
    rollback_id: str
    kind: str
    name: str
    object: str
    detail: dict[str, Any]
    halted_at: datetime
    resumed_at: datetime | None
    resumed_by: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "object": self.object or None,
            "detail": self.detail,
            "halted_by": self.rollback_id,
            "halted_at": self.halted_at.isoformat(),
            "resumed_at": self.resumed_at.isoformat() if self.resumed_at else None,
            "resumed_by": self.resumed_by,
        }


@dataclass(frozen=True)
class _SchemaState:
    """What :meth:`StateStore.ensure_schema` reads before deciding to run any DDL."""

    #: the newest step applied (0: none recorded).
    version: int
    #: ``sensei.audit_events`` exists.
    trail: bool
    #: and its append-only triggers are all there and enabled.
    protected: bool

    @property
    def current(self) -> bool:
        return self.version >= SCHEMA_VERSION and self.protected


def _schema_state(cur: Any) -> _SchemaState:
    cur.execute(
        "SELECT to_regclass('sensei.schema_version') IS NOT NULL, to_regclass('sensei.audit_events') IS NOT NULL, "
        "(SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('sensei.audit_events') "
        "AND tgname = ANY(%s) AND tgenabled <> 'D')",
        (list(APPEND_ONLY_TRIGGERS),),
    )
    versioned, trail, enabled = cur.fetchone()
    version = 0
    if versioned:
        cur.execute("SELECT coalesce(max(version), 0) FROM sensei.schema_version")
        version = cur.fetchone()[0]
    return _SchemaState(version, trail, trail and enabled == len(APPEND_ONLY_TRIGGERS))


def _upgrade(cur: Any) -> None:
    """Run the steps the store lacks, in order, recording each version; restore the append-only triggers.

    A dropped audit table is made again, empty, by running every step again (steps only add, and
    pass on a store that has part of them), so that verify finds it shorter than its anchors. The
    caller holds :data:`SCHEMA_LOCK`, so what is read here is not stale.
    """
    found = _schema_state(cur)
    for step in SCHEMA_STEPS:
        if step.version > found.version or not found.trail:
            cur.execute(step.ddl)
        if step.version > found.version:
            cur.execute("INSERT INTO sensei.schema_version VALUES (%s)", (step.version,))
    if found.trail and not found.protected:
        cur.execute(_APPEND_ONLY)


class StateSchemaMissing(RuntimeError):
    """The state store's tables are missing or outdated and the state role may not create them."""


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)
