"""BigQuery engine against bqemulator: catalog, truncate in one transaction, and a real time-travel restore."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.engines.base import PointInTimeRefused, RecoveryTarget
from sensei_airflow.engines.bigquery import BigQueryEngine, BigQueryTimeTravel


@pytest.fixture
def dataset(bigquery_conn, bq_emulator):
    """A fresh dataset with customers and orders, plus a table outside any scope."""
    client = bq_emulator.client()
    name = f"crm_{uuid.uuid4().hex[:8]}"
    client.create_dataset(name)
    for sql in [
        "CREATE TABLE DS.customers (id INT64, email STRING)",
        "CREATE TABLE DS.orders (id INT64, customer_id INT64)",
        "CREATE TABLE DS.campaigns (id INT64, name STRING)",
        "INSERT INTO DS.customers VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "INSERT INTO DS.orders VALUES (10, 1), (11, 2)",
        "INSERT INTO DS.campaigns VALUES (1, 'spring')",
    ]:
        client.query(sql.replace("DS.", f"{name}.")).result()
    yield name
    client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def test_catalog(dataset, bigquery_conn):
    engine = get_engine(bigquery_conn)
    assert isinstance(engine, BigQueryEngine)
    assert {f"{dataset}.customers", f"{dataset}.orders", f"{dataset}.campaigns"} <= set(engine.user_tables())
    assert engine.foreign_keys() == []
    assert engine.row_counts([f"{dataset}.customers", f"{dataset}.orders"]) == {
        f"{dataset}.customers": 3,
        f"{dataset}.orders": 2,
    }
    assert engine.identity() == "bigquery:sensei-test"


def test_truncate_in_one_transaction(dataset, bigquery_conn):
    engine = get_engine(bigquery_conn)
    tables = [f"{dataset}.orders", f"{dataset}.customers"]
    statements, removed = engine.empty_tables(tables, referenced_from_outside=[])
    assert [s.sql for s in statements] == [
        f"BEGIN TRANSACTION;\nTRUNCATE TABLE `{dataset}`.`orders`;\nTRUNCATE TABLE `{dataset}`.`customers`;\n"
        "COMMIT TRANSACTION;"
    ]
    assert removed == {f"{dataset}.orders": 2, f"{dataset}.customers": 3}
    assert engine.row_counts([*tables, f"{dataset}.campaigns"]) == {
        f"{dataset}.orders": 0,
        f"{dataset}.customers": 0,
        f"{dataset}.campaigns": 1,
    }


def test_time_travel_restores_the_tables_to_the_point(dataset, bigquery_conn, bq_emulator):
    engine = get_engine(bigquery_conn)
    client = bq_emulator.client()
    time.sleep(1.1)
    point = datetime.now(UTC)
    time.sleep(1.1)
    for sql in [  # the "migration", after the point
        "INSERT INTO DS.customers VALUES (4, 'd'), (5, 'e')",
        "DELETE FROM DS.orders WHERE id = 10",
        "UPDATE DS.customers SET email = 'changed' WHERE id = 1",
        "INSERT INTO DS.campaigns VALUES (2, 'later')",
    ]:
        client.query(sql.replace("DS.", f"{dataset}.")).result()
    tables = [f"{dataset}.customers", f"{dataset}.orders"]
    pitr = engine.point_in_time(None)
    target = RecoveryTarget(time=point)
    plan = pitr.assess(tables, target, whole_database=False)
    assert plan.detail["time_travel_hours"] == {dataset: 168}
    token = plan.detail["token"]
    assert plan.steps[0] == (
        f"CREATE OR REPLACE TABLE `{dataset}`.`customers__sensei_{token}` AS SELECT * FROM `{dataset}`.`customers` "  # noqa: S608
        f"FOR SYSTEM_TIME AS OF TIMESTAMP '{point.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"
    )

    outcome = pitr.restore(plan, target)
    assert outcome.rows_restored == {f"{dataset}.customers": 3, f"{dataset}.orders": 2}
    query = f"SELECT id, email FROM {dataset}.customers"  # noqa: S608
    rows = sorted(tuple(r.values()) for r in client.query(query).result())
    assert rows == [(1, "a"), (2, "b"), (3, "c")]
    # outside the scope: untouched; the staged copies: gone
    assert engine.row_counts([f"{dataset}.campaigns"]) == {f"{dataset}.campaigns": 2}
    assert not [t for t in engine.user_tables() if "__sensei_" in t]

    # a retry restores again to the same point (the tables' history still reaches it)
    again = pitr.restore(plan, target)
    assert again.rows_restored == outcome.rows_restored


def test_assess_refuses_outside_the_window(dataset, bigquery_conn):
    engine = get_engine(bigquery_conn)
    pitr = BigQueryTimeTravel(engine)
    tables = [f"{dataset}.customers"]
    with pytest.raises(PointInTimeRefused, match=r"keeps 168 h of time travel \(max_time_travel_hours\)"):
        pitr.assess(tables, RecoveryTarget(time=datetime.now(UTC) - timedelta(days=8)), whole_database=False)
    with pytest.raises(PointInTimeRefused, match="in the future"):
        pitr.assess(tables, RecoveryTarget(time=datetime.now(UTC) + timedelta(hours=1)), whole_database=False)
    with pytest.raises(PointInTimeRefused, match=r"created .* after"):
        pitr.assess(tables, RecoveryTarget(time=datetime.now(UTC) - timedelta(days=1)), whole_database=False)
    with pytest.raises(PointInTimeRefused, match="does not exist"):
        pitr.assess([f"{dataset}.nope"], RecoveryTarget(time=datetime.now(UTC)), whole_database=False)
    window = pitr.windows(tables, datetime(2026, 1, 1, tzinfo=UTC))[0]
    assert window.closes_at == datetime(2026, 1, 8, tzinfo=UTC)


def test_hook_construction(bigquery_conn):
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    hook = BigQueryEngine(bigquery_conn).hook
    assert (
        isinstance(hook, BigQueryHook) and hook.gcp_conn_id == bigquery_conn and hook.use_legacy_sql is False
    )
