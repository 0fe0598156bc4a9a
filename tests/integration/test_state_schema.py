"""The state store's schema: numbered steps applied once, older stores upgraded in place, no DDL after.

Older stores are made by hand, from the DDL those releases ran (``state_schema_before/``), in a real
PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from psycopg import sql

from sensei_airflow.audit import AuditEvent, AuditTrail
from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.state import SCHEMA_STEPS, SCHEMA_VERSION, StateSchemaMissing, StateStore

#: the DDL older releases ran, frozen as they shipped it.
BEFORE = Path(__file__).parent / "state_schema_before"


MIGRATION = 'mig "Bestellungen" ✓'
ROLLBACK = "manual__2026-02-02 Zürich ✓"


def make_old_store(databases, version: int) -> None:
    with databases.connect("state") as conn:
        conn.execute((BEFORE / "version_1.sql").read_text(encoding="utf-8"))
        if version >= 2:
            conn.execute((BEFORE / "version_2.sql").read_text(encoding="utf-8"))
        conn.execute("INSERT INTO sensei.schema_version VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO sensei.rollback_runs (rollback_id, migration_id, status, request) VALUES (%s, %s, %s, %s)",
            (ROLLBACK, MIGRATION, "completed", json.dumps({"reason": "Kundenstämme doppelt"})),
        )
        conn.execute(
            "INSERT INTO sensei.rollback_locks (migration_id, rollback_id, expires_at) VALUES (%s, %s, now())",
            (MIGRATION, ROLLBACK),
        )


def columns(databases, table: str) -> set[str]:
    with databases.connect("state") as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"sensei.{table}",),
        ).fetchall()
    return {r[0] for r in rows}


def versions(databases) -> list[int]:
    with databases.connect("state") as conn:
        return [r[0] for r in conn.execute("SELECT version FROM sensei.schema_version ORDER BY version")]


def test_the_steps_are_numbered_one_by_one_and_the_version_is_the_last():
    assert [s.version for s in SCHEMA_STEPS] == list(range(1, len(SCHEMA_STEPS) + 1))
    assert SCHEMA_STEPS[-1].version == SCHEMA_VERSION


@pytest.mark.parametrize("old", [1, 2])
def test_an_older_store_is_upgraded_in_place(databases, old):
    make_old_store(databases, old)

    StateStore("sensei_state").ensure_schema()

    assert versions(databases) == [*range(old, SCHEMA_VERSION + 1)]
    assert {"hash_kind"} <= columns(databases, "audit_events")
    assert {"audit_events", "audit_head_seq", "audit_head_hash"} <= columns(databases, "rollback_runs")
    assert {"token", "renewed_at"} <= columns(databases, "rollback_locks")
    for table in ("backups", "window_warnings", "pitr_restore_points"):
        assert databases.scalar("state", "SELECT to_regclass(%s) IS NOT NULL", (f"sensei.{table}",)), table
    # what the old store held is still there, and the old lock row got a fencing token
    record = StateStore("sensei_state").get_run(ROLLBACK)
    assert record is not None and record["request"] == {"reason": "Kundenstämme doppelt"}
    assert databases.scalar("state", "SELECT token FROM sensei.rollback_locks") is not None
    # and it works as a current store: the chain appends and verifies, the lock is taken anew
    trail = AuditTrail(StateStore("sensei_state"), key=None)
    trail.append(AuditEvent(step="assess", action="planned", rollback_id=ROLLBACK, migration_id=MIGRATION))
    assert trail.verify().ok
    acquired = MigrationLocks(StateStore("sensei_state")).acquire(
        MIGRATION, "another run ✓", timedelta(minutes=5)
    )
    assert acquired.took_over is not None and acquired.took_over.rollback_id == ROLLBACK


def test_a_store_made_before_versions_were_recorded_is_brought_to_the_version(databases):
    make_old_store(databases, 1)
    with databases.connect("state") as conn:
        conn.execute("DELETE FROM sensei.schema_version")

    StateStore("sensei_state").ensure_schema()

    assert versions(databases) == [*range(1, SCHEMA_VERSION + 1)]
    assert "hash_kind" in columns(databases, "audit_events")


@contextmanager
def ddl_refused(databases) -> Iterator[None]:
    """Any DDL in the state database fails inside the block (an event trigger, made as superuser)."""
    with databases.connect("state") as conn:
        conn.execute(
            """
            CREATE FUNCTION public.refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'DDL refused in this test: %', tg_tag; END $$;
            CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION public.refuse_ddl();
            """
        )
    try:
        yield
    finally:
        with databases.connect("state") as conn:
            conn.execute("DROP EVENT TRIGGER refuse_ddl")


def test_a_store_at_the_version_runs_no_ddl(databases):
    StateStore("sensei_state").ensure_schema()  # a fresh store is created once

    with ddl_refused(databases):
        store = StateStore("sensei_state")
        store.record_run(ROLLBACK, MIGRATION, status="running", request={"scope": "all"})
        AuditTrail(store, key=None).append(AuditEvent(step="assess", action="planned", rollback_id=ROLLBACK))
        entry = BackupCatalog(store).start(
            backup_id="bkp_0123456789abcdef", migration_id=MIGRATION, kind="manual", type="logical",
            side="target", conn_id="shop_target", database=None, location="file:///backups/Zürich",
            tables=['sales."order"'], retention_days=1,
        )  # fmt: skip
        assert BackupCatalog(StateStore("sensei_state")).require(entry.backup_id).migration_id == MIGRATION


def test_ddl_refused_is_felt_by_a_store_that_needs_an_upgrade(databases):
    """The check above is real: where a step is due, the event trigger stops it."""
    make_old_store(databases, 2)
    with ddl_refused(databases), pytest.raises(Exception, match="DDL refused in this test"):
        StateStore("sensei_state").ensure_schema()


@pytest.fixture
def plain_role(databases, pg_cluster, monkeypatch) -> Iterator[str]:
    """A state role that may use sensei's tables but create nothing: no CREATE on the database or schema."""
    role = f"sensei nutzer ✓ {uuid.uuid4().hex[:6]}"
    with databases.connect("state") as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE_PLAIN", pg_cluster.uri(databases.state, user=role))
    yield role
    with databases.connect("state") as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def grant_use(databases, role: str) -> None:
    grantee = sql.Identifier(role)
    with databases.connect("state") as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA sensei TO {}").format(grantee))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sensei TO {}").format(
                grantee
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA sensei TO {}").format(grantee))


def test_a_role_without_create_uses_an_upgraded_store(databases, plain_role):
    make_old_store(databases, 2)
    StateStore("sensei_state").ensure_schema()  # the owner upgrades it
    grant_use(databases, plain_role)

    store = StateStore("sensei_state_plain")
    store.ensure_schema()
    store.record_run("run 2 ✓", MIGRATION, status="running", request={"scope": "all"})
    AuditTrail(store, key=None).append(AuditEvent(step="assess", action="planned", rollback_id="run 2 ✓"))
    catalog = BackupCatalog(store)
    catalog.start(
        backup_id="bkp_fedcba9876543210", migration_id=MIGRATION, kind="manual", type="logical", side="target",
        conn_id="shop_target", database=None, location="file:///backups/Zürich", tables=['crm."user"'],
        retention_days=1,
    )  # fmt: skip
    assert [e.backup_id for e in catalog.list(MIGRATION)] == ["bkp_fedcba9876543210"]
    assert (
        databases.scalar("state", "SELECT status FROM sensei.rollback_runs WHERE rollback_id = 'run 2 ✓'")
        == "running"
    )


def test_a_role_without_create_is_told_who_must_upgrade_an_older_store(databases, plain_role):
    make_old_store(databases, 2)
    grant_use(databases, plain_role)

    with pytest.raises(StateSchemaMissing) as refused:
        StateStore("sensei_state_plain").ensure_schema()

    assert str(refused.value) == (
        f"the sensei schema of state store sensei_state_plain is at version 2 (this sensei-airflow needs version "
        f"{SCHEMA_VERSION}) and the state role {plain_role} may not create it (permission denied for schema "
        f"sensei): have its owner run: sensei audit init --conn-id <owner connection> --grant-to {plain_role}"
    )
    assert versions(databases) == [2]
