"""Fixtures for the reverse-migration tests: the demo shop migrated forward, and a strategy to roll it back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import Databases


def migrate_demo(
    databases: Databases,
    migrations_dir: Path,
    *,
    customers: int = 200,
    manifest: dict[str, Any] | None = None,
) -> Any:
    """Write the demo manifest, create and fill the source, and run the forward migration (no Airflow run)."""
    import yaml

    from sensei_airflow.demo import shop
    from sensei_airflow.demo.migration import migrate_phase, prepare_source, prepare_target
    from sensei_airflow.engines import get_engine
    from sensei_airflow.manifest import load_manifests
    from sensei_airflow.mark import take_mark

    document = manifest or shop.manifest()
    (migrations_dir / f"{document['id']}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    loaded = load_manifests().get(document["id"])
    source, target = get_engine(loaded.source.conn_id), get_engine(loaded.target.conn_id)
    prepare_source(source, customers=customers)
    prepare_target(target)
    take_mark(loaded)
    for phase in loaded.phases:
        migrate_phase(loaded, phase.phase, source, target)
    return loaded


def change_target(databases: Databases) -> None:
    """What the application did on the target after cutover: inserts, updates, deletes, in parents and children."""
    with databases.connect("target") as conn:
        conn.execute(
            "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) "
            "VALUES (100001, 'New One', 'new1@example.com', 1234, now()), "
            "(100002, 'New Two', 'new2@example.com', 0, now())"
        )
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) VALUES (900001, 100001, 'new', 12.34, now())"
        )
        conn.execute(
            "INSERT INTO sales.order_items (order_id, line_no, product, qty, price) VALUES (900001, 1, 'lamp', 2, 6.17)"
        )
        conn.execute(
            "UPDATE crm.customers SET balance_cents = balance_cents + 500, name = name || ' (vip)' WHERE id IN (3, 4)"
        )
        conn.execute("UPDATE sales.orders SET status = 'cancelled' WHERE id = 5")
        conn.execute("UPDATE sales.order_items SET qty = qty + 1 WHERE order_id = 6")
        # customer 7 leaves with all their orders
        conn.execute(
            "DELETE FROM sales.order_items WHERE order_id IN (SELECT id FROM sales.orders WHERE customer_id = 7)"
        )
        conn.execute("DELETE FROM sales.orders WHERE customer_id = 7")
        conn.execute("DELETE FROM crm.customers WHERE id = 7")
        # one line item of order 8 removed
        conn.execute("DELETE FROM sales.order_items WHERE order_id = 8 AND line_no = 1")


EXPECTED_SOURCE = {
    "public.customers": "SELECT id, name, email_address, (balance_cents / 100.0)::numeric(12,2), created_at FROM crm.customers",
    "public.orders": "SELECT id, customer_id, status, total, ordered_at FROM sales.orders",
    "public.order_items": "SELECT order_id, line_no, product, qty, price FROM sales.order_items",
}
SOURCE_ROWS = {
    "public.customers": "SELECT id, name, email, balance, created_at FROM public.customers",
    "public.orders": "SELECT id, customer_id, status, total, ordered_at FROM public.orders",
    "public.order_items": "SELECT order_id, line_no, product, qty, price FROM public.order_items",
}


def table_rows(databases: Databases, which: str, sql: str) -> list[tuple[Any, ...]]:
    with databases.connect(which) as conn:
        return sorted(conn.execute(sql).fetchall())


def assert_source_is_inverse_of_target(databases: Databases, tables: list[str] | None = None) -> None:
    for table in tables or list(EXPECTED_SOURCE):
        expected = table_rows(databases, "target", EXPECTED_SOURCE[table])
        actual = table_rows(databases, "source", SOURCE_ROWS[table])
        assert actual == expected, f"{table}: {len(actual)} source rows vs {len(expected)} expected"


def _source_of(manifest: Any, target: str) -> str:
    return next(t.source for t in manifest.tables if t.target.lower() == target.lower())


def make_plan(manifest: Any, tables: list[str], rollback_id: str = "manual__reverse_test") -> Any:
    from sensei_airflow.manifest import Strategy
    from sensei_airflow.plan import PlannedTable, RollbackPlan

    return RollbackPlan(
        migration_id=manifest.id,
        rollback_id=rollback_id,
        strategy=Strategy.REVERSE_MIGRATION,
        requested_strategy="reverse_migration",
        scope={"scope": "all"},
        tables=[PlannedTable(target=t, source=_source_of(manifest, t), phase=1) for t in tables],
        started_at=datetime.now(UTC).isoformat(),
    )


@pytest.fixture
def demo(databases: Databases, migrations_dir: Path) -> Any:
    """The demo migration done forward; returns the loaded manifest."""
    return migrate_demo(databases, migrations_dir)
