"""The truncate strategy, unchanged, through the Snowflake engine: a real rollback DAG run whose
target is fakesnow (patched into the connector the SnowflakeHook uses) and whose state store and
audit trail are on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from tests.fixtures import run_dag

MANIFEST = """
id: mig_snow
description: shop to Snowflake
source: {{conn_id: shop_source}}
target: {{conn_id: snow_target}}
state: {{conn_id: sensei_state}}
started_at: "{started_at}"
phases:
  - phase: 1
    tables:
      - {{source: public.customers, target: crm.customers, key: [id]}}
  - phase: 2
    tables:
      - {{source: public.orders, target: crm.orders, key: [id]}}
rollback:
  preferred_strategy: truncate
  verify_rollback: true
"""


def _migrated(fake_snowflake, migrations_dir) -> None:
    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    (migrations_dir / "mig_snow.yaml").write_text(MANIFEST.format(started_at=started))
    fake_snowflake.run(
        "CREATE SCHEMA IF NOT EXISTS CRM",
        "CREATE TABLE CRM.CUSTOMERS (id int primary key, email varchar)",
        "CREATE TABLE CRM.ORDERS (id int primary key, customer_id int)",
        "CREATE TABLE CRM.CAMPAIGNS (id int primary key, name varchar)",
        "INSERT INTO CRM.CUSTOMERS SELECT range, 'c' || range FROM range(1, 41)",
        "INSERT INTO CRM.ORDERS SELECT range, 1 + range % 40 FROM range(1, 121)",
        "INSERT INTO CRM.CAMPAIGNS VALUES (1, 'spring'), (2, 'loyalty')",
    )


def _counts(fake_snowflake) -> dict[str, int]:
    tables = ("CUSTOMERS", "ORDERS", "CAMPAIGNS")
    return {t: fake_snowflake.scalar(f"SELECT count(*) FROM CRM.{t}") for t in tables}  # noqa: S608


def test_truncate_rollback_of_one_phase_then_all(fake_snowflake, databases, migrations_dir, airflow_db):
    _migrated(fake_snowflake, migrations_dir)

    phase = run_dag(
        "sensei_rollback", {"migration_id": "mig_snow", "strategy": "truncate", "scope": "phase", "phase": 2}
    )
    assert phase.state == "success", phase.task_states
    assert _counts(fake_snowflake) == {"CUSTOMERS": 40, "ORDERS": 0, "CAMPAIGNS": 2}
    status = phase.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["scope"]["tables"] == ["CRM.ORDERS"]

    everything = run_dag("sensei_rollback", {"migration_id": "mig_snow", "strategy": "truncate"})
    assert everything.state == "success", everything.task_states
    assert _counts(fake_snowflake) == {"CUSTOMERS": 0, "ORDERS": 0, "CAMPAIGNS": 2}
    status = everything.xcoms["document"]
    assert status["strategy_used"] == "truncate" and status["verification"]["record_counts_match"] is True
    assert status["scope"]["tables"] == ["CRM.ORDERS", "CRM.CUSTOMERS"]

    # the state store (real PostgreSQL) recorded both runs and the truncate statements
    with psycopg.connect(databases.cluster.dsn(databases.state)) as conn:
        runs = conn.execute(
            "SELECT status, plan->'statements' FROM sensei.rollback_runs WHERE migration_id = 'mig_snow' "
            "ORDER BY started_at"
        ).fetchall()
    assert [r[0] for r in runs] == ["completed", "completed"]
    assert runs[1][1] == ['TRUNCATE TABLE "CRM"."ORDERS"', 'TRUNCATE TABLE "CRM"."CUSTOMERS"']


def test_dry_run_changes_nothing(fake_snowflake, databases, migrations_dir, airflow_db):
    _migrated(fake_snowflake, migrations_dir)
    out = run_dag("sensei_rollback", {"migration_id": "mig_snow", "strategy": "truncate", "dry_run": True})
    assert out.state == "success", out.task_states
    assert out.xcoms["document"]["rollback_status"] == "planned"
    assert _counts(fake_snowflake) == {"CUSTOMERS": 40, "ORDERS": 120, "CAMPAIGNS": 2}
