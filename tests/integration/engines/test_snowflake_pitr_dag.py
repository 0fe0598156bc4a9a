"""The point_in_time strategy, unchanged, through the Snowflake engine in real rollback DAG runs on
fakesnow. fakesnow reads the retention catalog but cannot run Time Travel: the dry run shows the
plan, and a real run shows that the failing clone stops everything before a live table changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from tests.fixtures import run_dag
from tests.integration.engines.test_snowflake_truncate_dag import MANIFEST


def _setup(fake_snowflake, migrations_dir, started_at: datetime) -> None:
    manifest = MANIFEST.format(started_at=started_at.isoformat()).replace(
        "preferred_strategy: truncate", "preferred_strategy: point_in_time"
    )
    (migrations_dir / "mig_snow.yaml").write_text(manifest)
    fake_snowflake.run(
        "CREATE SCHEMA IF NOT EXISTS CRM",
        "CREATE TABLE CRM.CUSTOMERS (id int primary key, email varchar)",
        "CREATE TABLE CRM.ORDERS (id int primary key, customer_id int)",
        "INSERT INTO CRM.CUSTOMERS VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO CRM.ORDERS VALUES (1, 1)",
    )


def test_dry_run_plans_clones_then_swaps_with_the_retention_window(
    fake_snowflake, databases, migrations_dir, airflow_db
):
    started_at = datetime.now(UTC) - timedelta(hours=2)
    _setup(fake_snowflake, migrations_dir, started_at)
    out = run_dag(
        "sensei_rollback", {"migration_id": "mig_snow", "strategy": "point_in_time", "dry_run": True}
    )
    assert out.state == "success", out.task_states
    assert out.xcoms["document"]["rollback_status"] == "planned"
    with psycopg.connect(databases.cluster.dsn(databases.state)) as conn:
        plan = conn.execute(
            "SELECT plan FROM sensei.rollback_runs WHERE migration_id = 'mig_snow'"
        ).fetchone()[0]
    statements = [s.split("  -- params")[0] for s in plan["statements"]]
    kinds = [" ".join(s.split()[:2]) + (" CLONE" if " CLONE " in s else "") for s in statements]
    assert kinds == ["CREATE OR CLONE"] * 2 + ["ALTER TABLE"] * 4
    assert all("AT(TIMESTAMP => %s::TIMESTAMP_TZ)" in s for s in statements[:2])
    assert "SWAP WITH" in statements[2] and "RENAME TO" in statements[3]
    assert any("point_in_time (CRM.CUSTOMERS) open until" in w for w in plan["warnings"])


def test_a_point_outside_the_retention_is_refused_in_assess(
    fake_snowflake, databases, migrations_dir, airflow_db
):
    _setup(fake_snowflake, migrations_dir, datetime.now(UTC) - timedelta(hours=2))
    too_old = (datetime.now(UTC) - timedelta(days=3)).isoformat()  # fakesnow tables keep 1 day
    out = run_dag(
        "sensei_rollback", {"migration_id": "mig_snow", "strategy": "point_in_time", "restore_to": too_old}
    )
    assert out.state == "failed"
    assert out.task_states["assess"] == "failed" and out.task_states["execute_point_in_time"] != "success"
    assert fake_snowflake.scalar("SELECT count(*) FROM CRM.CUSTOMERS") == 2


def test_a_failing_clone_changes_no_live_table(fake_snowflake, databases, migrations_dir, airflow_db):
    _setup(fake_snowflake, migrations_dir, datetime.now(UTC) - timedelta(hours=2))
    fake_snowflake.run("INSERT INTO CRM.CUSTOMERS VALUES (3, 'migrated')")
    out = run_dag("sensei_rollback", {"migration_id": "mig_snow", "strategy": "point_in_time"})
    assert out.state == "failed"
    assert out.task_states["execute_point_in_time"] == "failed"  # fakesnow cannot CLONE ... AT
    assert fake_snowflake.scalar("SELECT count(*) FROM CRM.CUSTOMERS") == 3
    tables = {r[0] for r in fake_snowflake.run("SELECT table_name FROM information_schema.tables")[0]}
    assert tables == {"CUSTOMERS", "ORDERS"}  # no swap happened, no helper table left
