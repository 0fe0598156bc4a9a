"""Preferred -> fallback strategy, through the whole runbook DAG on real PostgreSQL."""

from __future__ import annotations

import psycopg

from sensei_airflow.audit import AuditTrail
from sensei_airflow.manifest import load_manifests
from sensei_airflow.state import StateStore
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import write_manifest


def _migrated(migrations_dir, **rollback):
    write_manifest(migrations_dir, **rollback)
    return migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"))


def test_a_preferred_point_in_time_that_cannot_apply_falls_back_to_reverse_migration(
    databases, migrations_dir, airflow_db
):
    # no rollback.point_in_time settings: the WAL archive is unknown, so point_in_time cannot apply
    _migrated(migrations_dir, preferred_strategy="point_in_time", fallback_strategy="reverse_migration")

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "reason": "fallback e2e"})

    assert outcome.state == "success", outcome.task_states
    status = outcome.xcoms["document"]
    assert (status["rollback_status"], status["strategy_used"]) == ("completed", "reverse_migration")
    assert outcome.task_states["execute_point_in_time"] == "skipped"
    assert outcome.task_states["execute_reverse_migration"] == "success"
    plan = outcome.xcoms["assess"]
    assert plan["requested_strategy"] == "auto"
    assert any(n.startswith("point_in_time cannot apply:") for n in plan["notes"])
    assert "auto: chose reverse_migration (preferred: point_in_time)" in plan["notes"]
    planned = [
        e for e in AuditTrail(StateStore("sensei_state")).events(outcome.run_id) if e["action"] == "planned"
    ]
    assert planned[0]["detail"]["plan"]["notes"] == plan["notes"]


def test_a_preferred_strategy_that_fails_without_changing_the_target_falls_back(
    databases, migrations_dir, airflow_db, monkeypatch
):
    from sensei_airflow.engines.postgres.reverse import PostgresReverseWriter

    counts = _migrated(migrations_dir, preferred_strategy="reverse_migration", fallback_strategy="truncate")
    # a writer on the source keeps reverse migration from its lock: it fails, the target unchanged
    monkeypatch.setattr(PostgresReverseWriter, "lock_timeout", "300ms")
    with psycopg.connect(databases.cluster.dsn(databases.source)) as writer:
        writer.execute("LOCK TABLE public.orders IN ROW EXCLUSIVE MODE")

        outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026"})

        writer.rollback()

    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_reverse_migration"] == "failed"
    assert outcome.task_states["execute_fallback"] == "success"
    status = outcome.xcoms["document"]
    assert (status["rollback_status"], status["strategy_used"]) == ("completed", "truncate")
    fallback = outcome.xcoms["execute_fallback"]
    assert (fallback["from"], fallback["to"]) == ("reverse_migration", "truncate")
    assert "lock timeout" in fallback["why"]
    assert fallback["execution"]["rows_affected"]["sales.orders"] == counts["sales.orders"]
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") == 0
    events = AuditTrail(StateStore("sensei_state")).events(outcome.run_id)
    falling = [e for e in events if e["action"] == "falling back"]
    assert falling and falling[0]["detail"]["to"] == "truncate"
    run = StateStore("sensei_state").get_run(outcome.run_id)
    assert run["strategy"] == "truncate"
    assert "## Fallback" in run["report_markdown"]
