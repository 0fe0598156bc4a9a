"""A PostgreSQL server with ``wal_level=logical`` (the undo log's logical decoding), and the demo shop on it.

The target tables already hold rows before the start mark; the migration inserts, updates and
deletes, and the application writes after the cutover.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable, free_port, new_cluster_dir
from tests.fixtures import Databases, databases_on

MIG = "mig_shop_2026"
MIGRATED = ["crm.customers", "sales.orders", "sales.order_items"]
#: every target table's rows, ordered, to compare row for row.
ROWS = {
    "crm.customers": "SELECT * FROM crm.customers ORDER BY id",
    "sales.orders": "SELECT * FROM sales.orders ORDER BY id",
    "sales.order_items": "SELECT * FROM sales.order_items ORDER BY order_id, line_no",
    "crm.campaigns": "SELECT * FROM crm.campaigns ORDER BY id",
}
LOGICAL = {"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20"}


@pytest.fixture(scope="module")
def logical_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(new_cluster_dir(), free_port(), settings=dict(LOGICAL))
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        pytest.fail(f"PostgreSQL is needed and could not start: {exc}", pytrace=False)
    yield cluster
    cluster.destroy()


@pytest.fixture
def logical_databases(logical_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Databases]:
    """Source, target and state databases on the logical cluster (slots of the target dropped afterwards)."""
    with databases_on(
        logical_cluster,
        monkeypatch,
        before_drop="SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
    ) as made:
        yield made


def write_manifest(migrations_dir: Path, *, undo_log: bool = True, **rollback: Any) -> Any:
    from sensei_airflow.demo import shop
    from sensei_airflow.manifest import load_manifests

    document = shop.manifest()
    document.pop("started_at")  # the start mark is the migration's start
    document["rollback"]["undo_log"] = {"enabled": undo_log}
    document["rollback"].update(rollback)
    (migrations_dir / f"{MIG}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return load_manifests(migrations_dir).get(MIG)


def rows_before(databases: Databases) -> None:
    """What the warehouse held before the migration: rows with names a DBA meets (quotes, non-ASCII)."""
    with databases.connect("target") as conn:
        conn.execute(
            "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) VALUES "
            "(900001, 'Zoë O''Brien', 'zoe@example.com', 100, '2025-01-01T00:00:00Z'), "
            "(900002, '李 雷 | Ltd', 'li@example.com', 200, '2025-01-02T00:00:00Z'), "
            "(900003, 'Ana\tTab', 'ana@example.com', 300, '2025-01-03T00:00:00Z')"
        )
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) VALUES "
            "(900001, 900001, 'paid', 12.50, '2025-02-01T00:00:00Z'), "
            "(900002, 900002, 'new', 7.25, '2025-02-02T00:00:00Z')"
        )
        conn.execute(
            "INSERT INTO sales.order_items VALUES (900001, 1, 'say \"hi\"', 1, 12.50), "
            "(900001, 2, 'lamp', 2, 0.00), (900002, 1, 'Straße', 1, 7.25)"
        )


def migrate(manifest: Any) -> dict[str, int]:
    """The forward migration after the mark: inserts, and updates and deletes of rows that were there."""
    from sensei_airflow.demo.migration import migrate_phase
    from sensei_airflow.engines import get_engine

    source, target = get_engine(manifest.source.conn_id), get_engine(manifest.target.conn_id)
    inserted: dict[str, int] = {}
    for phase in manifest.phases:
        inserted.update(migrate_phase(manifest, phase.phase, source, target))
    with target.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE crm.customers SET name = name || ' (merged)', balance_cents = 999 WHERE id = 900001"
        )
        conn.execute("DELETE FROM sales.order_items WHERE order_id = 900001 AND line_no = 2")
        conn.execute("UPDATE sales.orders SET status = 'shipped' WHERE id = 900002")
    return inserted


def after_cutover(databases: Databases) -> None:
    """The application writes to the migrated tables, and to a table outside the migration."""
    with databases.connect("target") as conn:
        conn.execute(
            "INSERT INTO crm.customers (name, email_address, balance_cents, created_at) "
            "VALUES ('new \"user\"', 'new@example.com', 5, now())"
        )
        conn.execute(
            "INSERT INTO sales.orders (customer_id, status, total, ordered_at) "
            "SELECT max(id), 'new', 1.00, now() FROM crm.customers"
        )
        conn.execute("UPDATE sales.orders SET total = total + 1 WHERE id = 1")
        conn.execute("DELETE FROM sales.order_items WHERE order_id = 900002")
        conn.execute("UPDATE sales.order_items SET qty = qty + 5 WHERE order_id = 2")
        conn.execute("INSERT INTO crm.campaigns VALUES (3, 'after cutover | Ünal')")


def table_rows(databases: Databases, tables: list[str] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    with databases.connect("target") as conn:
        return {
            t: [tuple(r) for r in conn.execute(q).fetchall()]
            for t, q in ROWS.items()
            if not tables or t in tables
        }


def sequence_values(databases: Databases) -> dict[str, int]:
    with databases.connect("target") as conn:
        return {
            s: conn.execute(f"SELECT last_value FROM {s}").fetchone()[0]  # noqa: S608 - test constants
            for s in ("crm.customers_id_seq", "sales.orders_id_seq")
        }


@pytest.fixture
def marked(logical_databases: Databases, migrations_dir: Path, airflow_db: None) -> dict[str, Any]:
    """Target with rows before, start mark with the undo log, the migration, and writes after cutover.

    Returns the manifest, the rows and sequences at the mark, and the rows after the cutover.
    """
    from sensei_airflow.demo.migration import prepare_source, prepare_target
    from sensei_airflow.engines import get_engine
    from sensei_airflow.mark import take_mark

    manifest = write_manifest(migrations_dir)
    prepare_source(get_engine(manifest.source.conn_id), customers=40)
    prepare_target(get_engine(manifest.target.conn_id))
    rows_before(logical_databases)
    at_mark = table_rows(logical_databases)
    sequences = sequence_values(logical_databases)
    mark, taken = take_mark(manifest, actor="test")
    assert taken and mark.undo_log is not None
    migrate(manifest)
    after_cutover(logical_databases)
    return {
        "manifest": manifest,
        "mark": mark,
        "at_mark": at_mark,
        "sequences": sequences,
        "after": table_rows(logical_databases),
        "databases": logical_databases,
    }
