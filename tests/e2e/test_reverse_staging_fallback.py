"""A reverse migration whose staging fails falls back like one whose apply fails (ADR 0208, 0403)."""

from __future__ import annotations

import psycopg

from sensei_airflow.manifest import load_manifests
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import write_manifest


def test_a_failed_staging_task_lets_the_fallback_run_on_the_unchanged_target(
    databases, migrations_dir, airflow_db, monkeypatch
):
    from sensei_airflow.engines.postgres.reverse import _LOCK_KEY, PostgresReverseWriter

    write_manifest(migrations_dir, preferred_strategy="reverse_migration", fallback_strategy="truncate")
    counts = migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"))
    # another session holds the staging schema's DDL lock: cutting the ranges (the first staging
    # task) cannot create the checkpoint table and fails after its lock wait; nothing was written
    monkeypatch.setattr(PostgresReverseWriter, "lock_timeout", "300ms")
    with psycopg.connect(databases.cluster.dsn(databases.source), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))

        outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026"})

    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_reverse_migration_chunks"] == "failed"
    assert outcome.task_states["execute_reverse_migration"] == "upstream_failed"
    fallback = outcome.xcoms["execute_fallback"]
    assert (fallback["from"], fallback["to"]) == ("reverse_migration", "truncate")
    assert fallback["why"].startswith(
        "reverse_migration failed after its retries without changing the target"
    )
    assert "lock timeout" in fallback["why"]
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") == 0
    assert counts["sales.orders"] > 0
