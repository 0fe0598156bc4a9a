"""kill -9 a reverse migration mid-staging, mid-apply and as the fallback; then the rollback again.

The source must show none of the killed run's work (its apply never committed), a dry run and
``sensei migration status`` must report the staging it left, and the rollback started again must
make the source exactly the inverse of the target and leave no staging behind.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from sensei_airflow import cli
from sensei_airflow.engines.postgres import PostgresEngine
from tests.chaos.harness import (
    DEADLINE,
    MIG,
    dsns,
    hold,
    kill_when_blocked,
    release_crashed_lock,
    rows,
    staging,
    start_rollback,
    wait_until_gone,
)
from tests.fixtures import run_dag
from tests.integration.reverse.conftest import SOURCE_ROWS, assert_source_is_inverse_of_target, change_target
from tests.integration.runbook.support import write_manifest

pytestmark = pytest.mark.e2e
SOURCE_TABLES = list(SOURCE_ROWS)
TARGET_TABLES = ["crm.customers", "sales.orders", "sales.order_items", "crm.campaigns"]


def chunks_done(databases) -> int:
    with databases.connect("source") as conn:
        if conn.execute("SELECT to_regclass('sensei_staging.reverse_chunks')").fetchone()[0] is None:
            return 0
        return conn.execute(
            "SELECT count(*) FROM sensei_staging.reverse_chunks WHERE state <> 'pending'"
        ).fetchone()[0]


def wait_for_chunks(databases, n: int, alive: Any) -> None:
    deadline = time.monotonic() + DEADLINE
    while chunks_done(databases) < n:
        assert alive(), "the reverse migration ended before the fault could be injected"
        assert time.monotonic() < deadline, "no chunk was staged"
        time.sleep(0.02)


def migration_status(capsys) -> str:
    assert cli.main(["migration", "status", MIG]) == 0
    return capsys.readouterr().out


def kill_reverse_at(
    databases, lock_sql: str, chunks: int, what: str, conf: dict[str, Any], **child: Any
) -> str:
    """Start the rollback, hold ``lock_sql`` on the source once ``chunks`` chunks are staged, kill it
    when a session waits for it; returns the killed run's id (it still holds the lock)."""
    from sensei_airflow.lock import MigrationLocks
    from sensei_airflow.state import StateStore

    process = start_rollback(conf, **child)
    try:
        wait_for_chunks(databases, chunks, process.alive)
        with hold(databases.cluster.dsn(databases.source), lock_sql) as held:
            held.blocked(process.alive, what)
            crashed = MigrationLocks(StateStore("sensei_state")).holder(MIG).rollback_id
            process.kill()
    finally:
        process.stop()
    wait_until_gone(*dsns(databases))
    return crashed


def assert_done_and_clean(databases, outcome: Any) -> None:
    assert outcome.state == "success", outcome.task_states
    assert_source_is_inverse_of_target(databases)
    assert staging(databases) == []
    with databases.connect("source") as conn:
        assert conn.execute("SELECT count(*) FROM sensei_staging.reverse_chunks").fetchone()[0] == 0


def test_killed_mid_staging_then_run_again(changed, databases):
    before = rows(databases, "source", SOURCE_TABLES)
    target = rows(databases, "target", TARGET_TABLES)
    conf = {"migration_id": MIG, "strategy": "reverse_migration"}
    crashed = kill_reverse_at(
        databases,
        "LOCK TABLE sensei_staging.reverse_chunks IN ACCESS EXCLUSIVE MODE",
        4,
        "a checkpoint",
        conf,
    )

    assert rows(databases, "source", SOURCE_TABLES) == before  # the apply never committed
    assert rows(databases, "target", TARGET_TABLES) == target
    left = staging(databases)
    assert left and all(f'"rollback_id": "{crashed}"' in (c or "") for _, c in left)
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert_done_and_clean(databases, outcome)
    assert rows(databases, "target", TARGET_TABLES) == target
    assert outcome.xcoms["execute_reverse_migration"]["detail"]["staging_dropped"]


def test_killed_mid_apply_then_run_again_leaves_no_staging(changed, databases, capsys):
    """A user's report: killed mid-apply and re-run, it completed but left ~10 staging tables behind."""
    before = rows(databases, "source", SOURCE_TABLES)
    conf = {"migration_id": MIG, "strategy": "reverse_migration"}
    crashed = kill_reverse_at(
        databases,
        "LOCK TABLE sensei_staging.reverse_applied IN ACCESS EXCLUSIVE MODE",
        1,
        "the apply's last statement before commit",
        conf,
    )

    assert rows(databases, "source", SOURCE_TABLES) == before
    left = staging(databases)
    assert left and all(f'"rollback_id": "{crashed}"' in (c or "") for _, c in left)
    status = migration_status(capsys)
    assert f"held by rollback {crashed}" in status
    assert (
        f"holds {len(left)} staging tables" in status
        and f"of rollback {crashed}, which is running now" in status
    )
    release_crashed_lock()
    status = migration_status(capsys)
    assert "lock: free" in status
    assert f"holds {len(left)} staging tables" in status
    assert f"left by rollback {crashed}, which no longer holds the lock" in status
    plan = run_dag("sensei_rollback", {**conf, "dry_run": True}).xcoms["assess"]
    assert any(f"left by rollback {crashed}, which no longer holds the lock" in w for w in plan["warnings"])
    assert len(staging(databases)) == len(left)  # a dry run changes nothing

    outcome = run_dag("sensei_rollback", conf)

    assert_done_and_clean(databases, outcome)
    assert f"staging: none on the source {PostgresEngine('shop_source').conn_id}" in migration_status(capsys)


#: the source's constraints and indexes: a direct copy sets them aside inside its transaction.
SOURCE_CATALOG = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2
"""


def test_killed_mid_direct_copy_then_run_again(changed, databases, monkeypatch):
    """Empty source tables are filled inside the apply, straight from the target. Killed after every
    range was copied, with the keys set aside, the source is still empty with every constraint, nothing
    was staged; the rerun copies it all again, once."""
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_BULK_ROWS", "0")
    with databases.connect("source") as conn:
        conn.execute("TRUNCATE public.order_items, public.orders, public.customers")
        catalog = conn.execute(SOURCE_CATALOG).fetchall()
    target = rows(databases, "target", TARGET_TABLES)
    conf = {"migration_id": MIG, "strategy": "reverse_migration"}
    writer = PostgresEngine("shop_source").reverse_writer(chunk_rows=200)
    with writer._session() as conn, conn.transaction():
        writer.ensure_staging(conn)
    # the apply records its result (an INSERT: ROW EXCLUSIVE) after the copies, just before its commit;
    # the earlier reads of that table (ACCESS SHARE) go on beside this SHARE lock
    kill_when_blocked(
        databases.cluster.dsn(databases.source),
        ["LOCK TABLE sensei_staging.reverse_applied IN SHARE MODE"],
        conf,
        "the apply's record of its result, after the direct copies",
    )
    wait_until_gone(*dsns(databases))

    assert all(not r for r in rows(databases, "source", SOURCE_TABLES).values())
    with databases.connect("source") as conn:
        assert conn.execute(SOURCE_CATALOG).fetchall() == catalog
    assert staging(databases) == []
    assert rows(databases, "target", TARGET_TABLES) == target
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert_done_and_clean(databases, outcome)
    applied = outcome.xcoms["execute_reverse_migration"]["detail"]["applied"]
    assert all(a["direct_chunks"] > 0 and a["staged_chunks"] == 0 for a in applied.values()), applied


def test_killed_in_the_fallback_then_run_again(databases, migrations_dir, airflow_db, monkeypatch):
    """Truncate cannot lock the target (a writer holds it) and fails; the fallback reverse migration is killed."""
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "200")
    write_manifest(migrations_dir, preferred_strategy="truncate", fallback_strategy="reverse_migration")
    from sensei_airflow.manifest import load_manifests
    from tests.fixtures import migrate_demo as migrate_forward

    migrate_forward(load_manifests(migrations_dir).get(MIG))
    change_target(databases)
    before = rows(databases, "source", SOURCE_TABLES)
    target = rows(databases, "target", TARGET_TABLES)
    conf = {"migration_id": MIG, "reason": "auto: truncate, else reverse"}
    with hold(databases.cluster.dsn(databases.target), "LOCK TABLE sales.order_items IN ROW EXCLUSIVE MODE"):
        crashed = kill_reverse_at(
            databases,
            "LOCK TABLE sensei_staging.reverse_applied IN ACCESS EXCLUSIVE MODE",
            1,
            "the fallback's apply",
            conf,
            lock_timeout="1s",
        )
        assert rows(databases, "source", SOURCE_TABLES) == before
        assert rows(databases, "target", TARGET_TABLES) == target
        assert staging(databases)
        assert release_crashed_lock() == crashed
        monkeypatch.setattr(PostgresEngine, "lock_timeout", "1s")

        outcome = run_dag("sensei_rollback", conf)

    assert outcome.task_states["execute_truncate"] == "failed"
    assert outcome.task_states["execute_fallback"] == "success"
    assert_done_and_clean(databases, outcome)
    assert rows(databases, "target", TARGET_TABLES) == target
