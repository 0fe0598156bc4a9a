"""Reverse migration through the whole runbook DAG (dag.test), on real PostgreSQL source, target and state."""

from __future__ import annotations

import copy
from decimal import Decimal

import yaml

from sensei_airflow.demo import shop
from tests.fixtures import run_dag
from tests.integration.reverse.conftest import (
    EXPECTED_SOURCE,
    SOURCE_ROWS,
    assert_source_is_inverse_of_target,
    change_target,
    table_rows,
)


def _migrate(databases, migrations_dir, manifest=None) -> None:
    document = manifest or shop.manifest()
    (migrations_dir / "mig_shop_2026.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    outcome = run_dag("sensei_demo_migration")
    assert outcome.state == "success", outcome.task_states


def test_reverse_migration_after_changes_on_the_target(databases, migrations_dir, airflow_db):
    _migrate(databases, migrations_dir)
    change_target(databases)
    source_before = {t: table_rows(databases, "source", sql) for t, sql in SOURCE_ROWS.items()}

    # the dry run says how many source rows each table will gain, change and lose, changing nothing
    dry = run_dag(
        "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "reverse_migration", "dry_run": True}
    )
    assert dry.state == "success", dry.task_states
    planned = {t["source"]: t["changes"] for t in dry.xcoms["assess"]["tables"]}
    assert {t: table_rows(databases, "source", sql) for t, sql in SOURCE_ROWS.items()} == source_before
    assert any("insert 2, update 2, delete 1 source rows" in s for s in dry.xcoms["assess"]["statements"])

    outcome = run_dag(
        "sensei_rollback",
        {
            "migration_id": "mig_shop_2026",
            "strategy": "reverse_migration",
            "verify_after": True,
            "reason": "e2e",
        },
    )

    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_reverse_migration"] == "success"
    assert outcome.task_states["execute_truncate"] == "skipped"
    # the ranges (one per small table) were shared among mapped staging tasks: never more groups
    # than ranges, and the apply found every range staged
    assert outcome.task_states["execute_reverse_migration_stage"] == "success"
    assert outcome.xcoms["execute_reverse_migration_chunks"] == [{"group": i, "groups": 3} for i in range(3)]
    assert all(
        c["staged"] == 0 for c in outcome.xcoms["execute_reverse_migration"]["detail"]["chunks"].values()
    )
    status = outcome.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["strategy_used"] == "reverse_migration"
    assert status["verification"] == {
        "source_comparison": "passed",
        "record_counts_match": True,
        "sample_verification": "passed",
    }
    assert status["scope"]["tables"] == ["crm.customers", "sales.orders", "sales.order_items"]
    assert_source_is_inverse_of_target(databases)
    applied = outcome.xcoms["execute_reverse_migration"]["detail"]["applied"]
    assert planned == {
        table: {
            "insert": done["inserted"],
            "update": done["updated"],
            "delete": done["deleted"],
            "exact": True,
        }
        for table, done in applied.items()
    }
    # the strategy writes the source too (its written_sides): the sequences of both sides were set
    assert {s["side"] for s in outcome.xcoms["execute_sequences"]["sequences"]} == {"target", "source"}
    # the target is left as it is, and the application can insert into the source again
    assert databases.scalar("target", "SELECT count(*) FROM crm.customers WHERE id = 100001") == 1
    with databases.connect("source") as conn:
        conn.execute(
            "INSERT INTO public.orders (customer_id, status, total, ordered_at) VALUES (1, 'new', 1, now())"
        )


def test_reverse_migration_of_one_phase(databases, migrations_dir, airflow_db):
    _migrate(databases, migrations_dir)
    with databases.connect("target") as conn:
        conn.execute("UPDATE sales.orders SET status = 'refunded' WHERE id <= 10")
        conn.execute("UPDATE crm.customers SET name = 'renamed' WHERE id = 1")
    customers_before = table_rows(databases, "source", SOURCE_ROWS["public.customers"])

    outcome = run_dag(
        "sensei_rollback",
        {"migration_id": "mig_shop_2026", "strategy": "reverse_migration", "scope": "phase", "phase": 2},
    )

    assert outcome.state == "success", outcome.task_states
    assert outcome.xcoms["document"]["scope"] == {"scope": "phase", "phase": 2, "tables": ["sales.orders"]}
    assert outcome.xcoms["execute_reverse_migration"]["rows_affected"] == {"sales.orders": 10}
    assert_source_is_inverse_of_target(databases, ["public.orders"])
    assert table_rows(databases, "source", SOURCE_ROWS["public.customers"]) == customers_before


def test_reverse_migration_of_listed_tables(databases, migrations_dir, airflow_db):
    _migrate(databases, migrations_dir)
    with databases.connect("target") as conn:
        conn.execute("UPDATE crm.customers SET balance_cents = 123456 WHERE id = 2")
        conn.execute("DELETE FROM sales.order_items WHERE order_id = 3")

    outcome = run_dag(
        "sensei_rollback",
        {
            "migration_id": "mig_shop_2026",
            "strategy": "reverse_migration",
            "scope": "tables",
            "tables": ["customers", "order_items"],
        },
    )

    assert outcome.state == "success", outcome.task_states
    assert outcome.xcoms["document"]["scope"]["tables"] == ["crm.customers", "sales.order_items"]
    assert databases.scalar("source", "SELECT balance FROM public.customers WHERE id = 2") == Decimal(
        "1234.56"
    )
    assert_source_is_inverse_of_target(databases, ["public.customers", "public.order_items"])
    assert table_rows(databases, "source", SOURCE_ROWS["public.customers"]) == table_rows(
        databases, "target", EXPECTED_SOURCE["public.customers"]
    )


def test_irreversible_mapping_is_refused_in_assess(databases, migrations_dir, airflow_db):
    document = copy.deepcopy(shop.manifest())
    columns = document["phases"][0]["tables"][0]["columns"]
    columns[1] = {"source": "name", "target": "name", "forward": "upper(name)"}
    _migrate(databases, migrations_dir, document)
    before = table_rows(databases, "source", SOURCE_ROWS["public.customers"])

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "reverse_migration"})

    assert outcome.state == "failed"
    assert outcome.task_states["assess"] == "failed"
    assert outcome.task_states["execute_reverse_migration"] != "success"
    assert outcome.xcoms["document"]["rollback_status"] == "failed"
    assert table_rows(databases, "source", SOURCE_ROWS["public.customers"]) == before
    from tests.e2e.test_truncate_e2e import assess_error

    message = assess_error(outcome)
    assert "crm.customers.name" in message and "backup_restore or point_in_time" in message
