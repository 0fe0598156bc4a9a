"""The point_in_time strategy, unchanged, through the BigQuery engine: a rollback DAG run whose
target is bqemulator (real FOR SYSTEM_TIME AS OF) and whose state store is real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from tests.fixtures import run_dag

MANIFEST = """
id: mig_bq
description: shop to BigQuery
source: {{conn_id: shop_source}}
target: {{conn_id: bq_target}}
state: {{conn_id: sensei_state}}
started_at: "{started_at}"
phases:
  - phase: 1
    tables:
      - {{source: public.customers, target: {dataset}.customers, key: [id]}}
  - phase: 2
    tables:
      - {{source: public.orders, target: {dataset}.orders, key: [id]}}
rollback:
  preferred_strategy: point_in_time
  verify_rollback: true
"""


def _rows(client, table: str) -> list[tuple]:
    return sorted(tuple(r.values()) for r in client.query(f"SELECT * FROM {table}").result())  # noqa: S608


def test_point_in_time_rollback_of_one_phase(
    bigquery_conn, bq_emulator, databases, migrations_dir, airflow_db
):
    client = bq_emulator.client()
    dataset = f"dw_{uuid.uuid4().hex[:8]}"
    client.create_dataset(dataset)
    setup = [
        "CREATE TABLE DS.customers (id INT64, email STRING)",
        "CREATE TABLE DS.orders (id INT64, customer_id INT64)",
        "CREATE TABLE DS.campaigns (id INT64, name STRING)",
        "INSERT INTO DS.customers VALUES (1, 'kept')",
        "INSERT INTO DS.orders VALUES (1, 1)",
    ]
    for sql in setup:
        client.query(sql.replace("DS.", f"{dataset}.")).result()
    time.sleep(1.1)
    started_at = datetime.now(UTC)
    time.sleep(1.1)
    migration = [
        "INSERT INTO DS.customers VALUES (2, 'migrated'), (3, 'migrated')",
        "INSERT INTO DS.orders VALUES (2, 2), (3, 3), (4, 3)",
        "UPDATE DS.orders SET customer_id = 3 WHERE id = 1",
        "INSERT INTO DS.campaigns VALUES (1, 'not in the migration')",
    ]
    for sql in migration:
        client.query(sql.replace("DS.", f"{dataset}.")).result()
    manifest = MANIFEST.format(started_at=started_at.isoformat(), dataset=dataset)
    (migrations_dir / "mig_bq.yaml").write_text(manifest)

    out = run_dag(
        "sensei_rollback",
        {"migration_id": "mig_bq", "strategy": "point_in_time", "scope": "phase", "phase": 2},
    )

    assert out.state == "success", out.task_states
    status = out.xcoms["document"]
    assert status["rollback_status"] == "completed" and status["strategy_used"] == "point_in_time"
    assert status["restored_to"] == started_at.isoformat()
    assert status["scope"]["tables"] == [f"{dataset}.orders"]
    assert _rows(client, f"{dataset}.orders") == [(1, 1)]  # back to the point
    assert _rows(client, f"{dataset}.customers") == [
        (1, "kept"),
        (2, "migrated"),
        (3, "migrated"),
    ]  # other phase
    assert _rows(client, f"{dataset}.campaigns") == [(1, "not in the migration")]  # outside the migration
    tables = [t.table_id for t in client.list_tables(dataset)]
    assert sorted(tables) == ["campaigns", "customers", "orders"]  # staged copies removed
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
