"""The undo_log strategy on a real PostgreSQL with wal_level=logical, run through sensei_rollback (dag.test)."""

from __future__ import annotations

from typing import Any

from tests.fixtures import run_dag
from tests.integration.undo.conftest import MIG, MIGRATED, sequence_values, table_rows


def test_undo_log_by_conf_restores_the_tables_in_scope_row_for_row(marked: dict[str, Any]) -> None:
    databases = marked["databases"]
    assert table_rows(databases, MIGRATED) != {t: marked["at_mark"][t] for t in MIGRATED}

    outcome = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "undo_log", "reason": "bad merge"})

    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_undo_log"] == "success"
    document = outcome.xcoms["document"]
    assert document["rollback_status"] == "completed"
    assert document["strategy_used"] == "undo_log"
    now = table_rows(databases)
    for table in MIGRATED:
        assert now[table] == marked["at_mark"][table], table
    # outside the migration: the write after the cutover stays
    assert now["crm.campaigns"] == marked["after"]["crm.campaigns"]
    # the identities follow the keys the tables held at the mark again (not the keys of the undone rows)
    assert sequence_values(databases) == {"crm.customers_id_seq": 900003, "sales.orders_id_seq": 900002}
    from sensei_airflow.state import StateStore

    report = StateStore("sensei_state").get_run(outcome.run_id)["report"]
    assert report["start_mark"]["name"] == marked["mark"].name  # the report says what it went back to
    checks = outcome.xcoms["verify"]["checks"]
    assert any(c["check"] == "checksum at the start mark" and c["ok"] for c in checks)
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]


def test_partial_scope_undoes_only_its_tables(marked: dict[str, Any]) -> None:
    databases = marked["databases"]
    outcome = run_dag(
        "sensei_rollback",
        {"migration_id": MIG, "strategy": "undo_log", "scope": "tables", "tables": ["order_items"]},
    )
    assert outcome.state == "success", outcome.task_states
    now = table_rows(databases)
    assert now["sales.order_items"] == marked["at_mark"]["sales.order_items"]
    for table in ("crm.customers", "sales.orders", "crm.campaigns"):
        assert now[table] == marked["after"][table], table


def test_phase_scope_then_the_rest(marked: dict[str, Any]) -> None:
    """Phase 3 first, then everything: the second rollback still finds every change of the other tables."""
    databases = marked["databases"]
    first = run_dag(
        "sensei_rollback", {"migration_id": MIG, "strategy": "undo_log", "scope": "phase", "phase": 3}
    )
    assert first.state == "success", first.task_states
    assert (
        table_rows(databases, ["sales.order_items"])["sales.order_items"]
        == marked["at_mark"]["sales.order_items"]
    )
    assert table_rows(databases, ["sales.orders"])["sales.orders"] == marked["after"]["sales.orders"]
    second = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "undo_log"})
    assert second.state == "success", second.task_states
    now = table_rows(databases)
    for table in MIGRATED:
        assert now[table] == marked["at_mark"][table], table


def test_dry_run_counts_the_changes_to_undo_per_table_and_kind(marked: dict[str, Any]) -> None:
    databases = marked["databases"]
    outcome = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "undo_log", "dry_run": True})
    assert outcome.state == "success", outcome.task_states
    tables = {t["target"]: t["changes"] for t in outcome.xcoms["assess"]["tables"]}
    # order_items: the migration inserted 40 customers' items (delete them), deleted one row that was there
    # (insert it again); after the cutover one item that was there was deleted (insert) and items updated
    items = tables["sales.order_items"]
    migrated_items = databases.scalar("source", "SELECT count(*) FROM public.order_items")
    assert items["delete"] == migrated_items
    assert items["insert"] == 2  # (900001, 2) by the migration, (900002, 1) after the cutover
    assert items["update"] == 0  # the updated items (order 2) were inserted since the mark: deleted
    assert tables["crm.customers"]["update"] == 1  # 900001, merged by the migration
    assert tables["sales.orders"]["update"] == 1  # 900002 (order 1 was inserted since the mark)
    assert items["sample"] and all("key" in s for s in items["sample"])
    assert table_rows(databases) == marked["after"]  # nothing changed
