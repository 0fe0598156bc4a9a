"""A TRUNCATE of a migrated table since the start mark is undone: its rows were saved by the undo log's trigger."""

from __future__ import annotations

from typing import Any

from tests.fixtures import run_dag
from tests.integration.undo.conftest import MIG, MIGRATED, table_rows


def test_truncated_tables_come_back_with_the_writes_before_and_after_the_truncate_undone(
    marked: dict[str, Any],
) -> None:
    """After the migration and the cutover writes: a TRUNCATE of two tables at once (one cascading to a
    table outside the migration), new rows after it; undo_log brings back each table in scope as at the mark."""
    databases = marked["databases"]
    with databases.connect("target") as conn:
        conn.execute("TRUNCATE sales.orders CASCADE")  # and sales.order_items, which references it
        conn.execute("TRUNCATE crm.campaigns")  # outside the migration: stays empty
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) "
            "VALUES (900001, 900002, 'after the truncate, Ünal''s', 3.00, now())"
        )
        conn.execute("INSERT INTO sales.order_items VALUES (900001, 7, 'Straße | \"quoted\"', 1, 3.00)")
    journals = marked["mark"].undo_log["truncate_journals"]
    saved = databases.scalar(
        "target",
        f"SELECT count(*) FROM {journals['schema']}.{journals['tables']['sales.order_items']}",  # noqa: S608 - names of the mark
    )
    assert saved == len(marked["after"]["sales.order_items"])

    dry = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "undo_log", "dry_run": True})
    assert dry.state == "success", dry.task_states
    changes = {t["target"]: t["changes"] for t in dry.xcoms["assess"]["tables"]}
    assert changes["sales.orders"]["captured"]["truncate"] == len(marked["after"]["sales.orders"])
    assert changes["crm.customers"]["captured"]["truncate"] == 0

    outcome = run_dag(
        "sensei_rollback", {"migration_id": MIG, "strategy": "undo_log", "reason": "bad truncate"}
    )
    assert outcome.state == "success", outcome.task_states
    now = table_rows(databases)
    for table in MIGRATED:
        assert now[table] == marked["at_mark"][table], table
    assert now["crm.campaigns"] == []
    assert all(c["ok"] for c in outcome.xcoms["verify"]["checks"])


def test_the_engines_own_truncate_saves_nothing_into_the_undo_log(marked: dict[str, Any]) -> None:
    """The truncate and backup_restore strategies empty tables without copying them into an open undo log
    (the size of the table, not of the change); undo_log then refuses those tables, naming why."""
    from sensei_airflow.engines.postgres import PostgresEngine
    from tests.integration.undo.test_undo_refusals import _refused

    databases = marked["databases"]
    statements, removed = PostgresEngine("shop_target").empty_tables(["sales.order_items"], [])
    assert removed == {"sales.order_items": len(marked["after"]["sales.order_items"])}
    assert [s.sql for s in statements][-2:] == [
        "SET LOCAL sensei.truncate_capture = off",
        'TRUNCATE TABLE "sales"."order_items" RESTART IDENTITY',
    ]
    journals = marked["mark"].undo_log["truncate_journals"]
    journal = f"{journals['schema']}.{journals['tables']['sales.order_items']}"
    assert databases.scalar("target", f"SELECT count(*) FROM {journal}") == 0  # noqa: S608
    assert "sales.order_items was truncated since the start mark without its rows saved" in _refused(
        marked["manifest"]
    )
