"""Truncate fails on a lock held on the target; reverse migration then runs as the fallback and finishes."""

from __future__ import annotations

import psycopg
import pytest

from sensei_airflow.manifest import load_manifests
from tests.fixtures import migrate_demo, run_dag
from tests.integration.reverse.conftest import assert_source_is_inverse_of_target, change_target
from tests.integration.runbook.support import write_manifest


@pytest.mark.timeout(240)
def test_reverse_migration_as_the_fallback_of_a_truncate_stopped_by_a_lock_completes(
    databases, migrations_dir, airflow_db, monkeypatch
):
    from sensei_airflow.engines.postgres import PostgresEngine

    write_manifest(migrations_dir, preferred_strategy="truncate", fallback_strategy="reverse_migration")
    migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"))
    change_target(databases)
    monkeypatch.setattr(PostgresEngine, "lock_timeout", "300ms")
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "200")  # several chunks per table
    with psycopg.connect(databases.cluster.dsn(databases.target)) as holder:
        # a writer on the target: truncate cannot take its lock; reading the table still works
        holder.execute("LOCK TABLE sales.order_items IN ROW EXCLUSIVE MODE")

        outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026"})

        holder.rollback()

    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_truncate"] == "failed"
    assert outcome.task_states["execute_fallback"] == "success"
    fallback = outcome.xcoms["execute_fallback"]
    assert (fallback["from"], fallback["to"]) == ("truncate", "reverse_migration")
    assert "lock timeout" in fallback["why"]
    assert outcome.xcoms["document"]["strategy_used"] == "reverse_migration"
    assert_source_is_inverse_of_target(databases)
    with databases.connect("source") as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'"
        ).fetchone()[0]
    assert left == 0, "a source session was left open after the run"
