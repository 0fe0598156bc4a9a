"""Snowflake as the target (fakesnow), PostgreSQL as the source: the inverse SELECT read in batches."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import yaml

from tests.integration.engines.conftest import fake_snowflake  # noqa: F401 - the fixture
from tests.integration.reverse.conftest import make_plan


def test_reverse_migration_from_snowflake(databases, migrations_dir, fake_snowflake):  # noqa: F811
    from sensei_airflow.conf import RollbackRequest
    from sensei_airflow.demo import shop
    from sensei_airflow.manifest import load_manifests
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    with databases.connect("source") as conn:
        conn.execute(shop.SOURCE_DDL)
        conn.execute(
            "INSERT INTO public.customers (id, name, email, balance, created_at) VALUES "
            "(1, 'Ann', 'ann@example.com', 10.50, '2026-01-02 03:04:05+00'), "
            "(2, 'Bob', 'bob@example.com', 0, '2026-01-03 00:00:00+00'), "
            "(3, 'Cy', 'cy@example.com', 7.25, '2026-01-04 00:00:00+00')"
        )
        conn.execute(
            "INSERT INTO public.orders (id, customer_id, status, total, ordered_at) VALUES "
            "(1, 1, 'paid', 5.00, '2026-02-01 00:00:00+00'), (2, 3, 'new', 1.25, '2026-02-02 00:00:00+00')"
        )
    # the migrated data on Snowflake, changed since the cutover: Bob's balance, a new customer and
    # order, Cy and his order gone
    fake_snowflake.run(
        "CREATE SCHEMA IF NOT EXISTS SALES",
        "CREATE TABLE CRM.CUSTOMERS (ID INTEGER PRIMARY KEY, NAME TEXT, EMAIL_ADDRESS TEXT, "
        "BALANCE_CENTS INTEGER, CREATED_AT TIMESTAMP_TZ)",
        "CREATE TABLE SALES.ORDERS (ID INTEGER PRIMARY KEY, CUSTOMER_ID INTEGER, STATUS TEXT, "
        "TOTAL NUMBER(12, 2), ORDERED_AT TIMESTAMP_TZ)",
        "INSERT INTO CRM.CUSTOMERS VALUES (1, 'Ann', 'ann@example.com', 1050, '2026-01-02 03:04:05+00:00'), "
        "(2, 'Bob', 'bob@example.com', 999, '2026-01-03 00:00:00+00:00'), "
        "(4, 'Dee', 'dee@example.com', 1, '2026-03-01 00:00:00+00:00')",
        "INSERT INTO SALES.ORDERS VALUES (1, 1, 'shipped', 5.00, '2026-02-01 00:00:00+00:00'), "
        "(3, 4, 'new', 0.01, '2026-03-02 00:00:00+00:00')",
    )
    document = shop.manifest(target_conn_id="snow_target")
    document["phases"] = document["phases"][:2]
    (migrations_dir / "mig_shop_2026.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    manifest = load_manifests().get("mig_shop_2026")
    strategy = ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))

    assessment = strategy.assess(
        manifest.tables, RollbackRequest.parse({"migration_id": manifest.id, "strategy": "reverse_migration"})
    )
    plan = make_plan(manifest, assessment.tables)
    execution = strategy.execute(plan)

    with databases.connect("source") as conn:
        customers = conn.execute(
            "SELECT id, name, email, balance, created_at FROM public.customers ORDER BY id"
        ).fetchall()
        orders = conn.execute(
            "SELECT id, customer_id, status, total FROM public.orders ORDER BY id"
        ).fetchall()
    assert customers == [
        (1, "Ann", "ann@example.com", Decimal("10.50"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (2, "Bob", "bob@example.com", Decimal("9.99"), datetime(2026, 1, 3, tzinfo=UTC)),
        (4, "Dee", "dee@example.com", Decimal("0.01"), datetime(2026, 3, 1, tzinfo=UTC)),
    ]
    assert orders == [(1, 1, "shipped", Decimal("5.00")), (3, 4, "new", Decimal("0.01"))]
    assert execution.rows_affected == {"CRM.CUSTOMERS": 3, "SALES.ORDERS": 3}
    verification = strategy.verify(plan)
    assert verification.status_block() == {
        "source_comparison": "passed",
        "record_counts_match": True,
        "sample_verification": "passed",
    }, verification.failures
