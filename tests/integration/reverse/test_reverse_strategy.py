"""Reverse migration against real PostgreSQL source and target databases (strategy level)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration.reverse.conftest import (
    SOURCE_ROWS,
    assert_source_is_inverse_of_target,
    change_target,
    make_plan,
    migrate_demo,
    table_rows,
)


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    return ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))


def _request(manifest: Any) -> Any:
    from sensei_airflow.conf import RollbackRequest

    return RollbackRequest.parse({"migration_id": manifest.id, "strategy": "reverse_migration"})


def _source_snapshot(databases: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: table_rows(databases, "source", sql) for t, sql in SOURCE_ROWS.items()}


def test_source_becomes_inverse_of_changed_target(demo, databases):
    change_target(databases)
    strategy = _strategy(demo)
    assessment = strategy.assess(demo.tables, _request(demo))
    assert assessment.tables == ["crm.customers", "sales.orders", "sales.order_items"]
    assert assessment.detail["round_trip_rows_checked"]["crm.customers"] > 0
    plan = make_plan(demo, assessment.tables)

    before = _source_snapshot(databases)
    assert (
        strategy.assess(demo.tables, _request(demo)).changes == assessment.changes
    )  # assess changes nothing
    assert _source_snapshot(databases) == before

    execution = strategy.execute(plan)

    assert_source_is_inverse_of_target(databases)
    applied = execution.detail["applied"]
    assert applied["public.customers"]["inserted"] == 2
    assert applied["public.customers"]["deleted"] == 1
    # the plan counted exactly what the apply did, table by table
    assert assessment.changes == {
        target: {"insert": applied[source]["inserted"], "update": applied[source]["updated"],
                 "delete": applied[source]["deleted"], "exact": True}
        for target, source in (("crm.customers", "public.customers"), ("sales.orders", "public.orders"),
                               ("sales.order_items", "public.order_items"))
    }  # fmt: skip
    assert assessment.changes["crm.customers"] == {"insert": 2, "update": 2, "delete": 1, "exact": True}
    assert applied["public.order_items"]["deleted"] >= 2
    # staging is gone, and the application can insert again: sequences are past the highest key
    assert (
        databases.scalar(
            "source",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'sensei_staging' "
            "AND starts_with(tablename, 'rev_')",
        )
        == 0
    )
    verification = strategy.verify(plan)
    assert verification.passed, verification.failures
    new_id = databases.scalar(
        "source",
        "INSERT INTO public.customers (name, email, balance, created_at) "
        "VALUES ('after', 'after@example.com', 1, now()) RETURNING id",
    )
    assert new_id > 100002


def test_verify_passes_then_localises_a_corrupted_row(demo, databases):
    change_target(databases)
    strategy = _strategy(demo)
    plan = make_plan(demo, strategy.assess(demo.tables, _request(demo)).tables)
    strategy.execute(plan)
    passed = strategy.verify(plan)
    assert passed.status_block() == {
        "source_comparison": "passed",
        "record_counts_match": True,
        "sample_verification": "passed",
    }
    with databases.connect("source") as conn:
        conn.execute("UPDATE public.orders SET status = 'tampered' WHERE id = 150")

    failed = strategy.verify(plan)

    assert failed.source_comparison == "failed"
    assert failed.record_counts_match is True
    checksum = next(
        c for c in failed.failures if c.table == "public.orders" and c.check.startswith("checksum")
    )
    ranges = checksum.actual["differing_key_ranges"]
    assert ranges, "bisection found no differing range"
    assert all(r["source_rows"] <= 64 for r in ranges)
    assert any(
        (r["after"] is None or int(r["after"][0]) < 150) and (r["up_to"] is None or int(r["up_to"][0]) >= 150)
        for r in ranges
    )


def test_partial_scope_touches_only_its_tables_and_fails_whole(demo, databases):
    import psycopg

    change_target(databases)
    items_only = [demo.resolve_table("order_items")]
    before = _source_snapshot(databases)
    strategy = _strategy(demo)
    tables = strategy.assess(items_only, _request(demo)).tables
    assert tables == ["sales.order_items"]
    # the target's new item belongs to a new order the source does not have: the apply fails on the
    # source's foreign key, and the source is left exactly as it was
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        strategy.execute(make_plan(demo, tables, rollback_id="manual__items_1"))
    assert _source_snapshot(databases) == before

    with databases.connect("target") as conn:
        conn.execute("DELETE FROM sales.order_items WHERE order_id = 900001")
    strategy.execute(make_plan(demo, tables, rollback_id="manual__items_2"))
    after = _source_snapshot(databases)
    assert after["public.customers"] == before["public.customers"]
    assert after["public.orders"] == before["public.orders"]
    assert_source_is_inverse_of_target(databases, ["public.order_items"])


def test_unchanged_chunks_are_not_moved(databases, migrations_dir, monkeypatch):
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "500")
    manifest = migrate_demo(databases, migrations_dir, customers=1500)
    with databases.connect("target") as conn:
        conn.execute("UPDATE sales.order_items SET qty = qty + 10 WHERE order_id = 42")
    strategy = _strategy(manifest)
    plan = make_plan(manifest, strategy.assess(manifest.tables, _request(manifest)).tables)
    execution = strategy.execute(plan)
    chunks = execution.detail["chunks"]["sales.order_items"]
    assert chunks["staged"] == 1 and chunks["same"] >= 5
    assert execution.rows_affected["sales.order_items"] == databases.scalar(
        "target", "SELECT count(*) FROM sales.order_items WHERE order_id = 42"
    )
    assert_source_is_inverse_of_target(databases)


# -- refusals: before anything is written --------------------------------------------------------


def _manifest_with(column: dict[str, Any]) -> dict[str, Any]:
    from sensei_airflow.demo import shop

    document = shop.manifest()
    columns = document["phases"][0]["tables"][0]["columns"]
    document = copy.deepcopy(document)
    document["phases"][0]["tables"][0]["columns"] = [
        c if c["source"] != column["source"] else column for c in columns
    ]
    return document


def test_refuses_an_irreversible_column(databases, migrations_dir):
    from sensei_airflow.plan import RefusedError

    manifest = migrate_demo(
        databases,
        migrations_dir,
        manifest=_manifest_with({"source": "name", "target": "name", "forward": "upper(name)"}),
    )
    before = _source_snapshot(databases)
    with pytest.raises(
        RefusedError, match=r"crm\.customers\.name .*not reversible.*backup_restore or point_in_time"
    ):
        _strategy(manifest).assess(manifest.tables, _request(manifest))
    assert _source_snapshot(databases) == before


def test_refuses_a_mapping_that_does_not_round_trip(databases, migrations_dir):
    from sensei_airflow.plan import RefusedError

    lossy = {
        "source": "balance",
        "target": "balance_cents",
        "forward": "(balance * 100)::bigint",
        "inverse": "round(balance_cents / 100.0)",
    }
    manifest = migrate_demo(databases, migrations_dir, manifest=_manifest_with(lossy))
    with pytest.raises(
        RefusedError, match=r"balance_cents does not round-trip: key \d+ holds '\d+', inverse then forward"
    ):
        _strategy(manifest).assess(manifest.tables, _request(manifest))


def test_refuses_a_read_only_source(demo, databases):
    from sensei_airflow.plan import RefusedError

    with databases.connect("source") as conn:
        conn.execute(f'ALTER DATABASE "{databases.source}" SET default_transaction_read_only = on')
    with pytest.raises(RefusedError, match="source is not writable: the source session is read-only"):
        _strategy(demo).assess(demo.tables, _request(demo))


def test_refuses_a_source_without_the_key(demo, databases):
    from sensei_airflow.plan import RefusedError

    with databases.connect("source") as conn:
        conn.execute("ALTER TABLE public.order_items DROP CONSTRAINT order_items_pkey")
    with pytest.raises(
        RefusedError, match=r"public\.order_items has no primary key or unique index on \(order_id, line_no\)"
    ):
        _strategy(demo).assess(demo.tables, _request(demo))


def test_refuses_a_many_to_one_value_map(databases, migrations_dir):
    from sensei_airflow.manifest import parse_manifest
    from sensei_airflow.plan import RefusedError

    document = _manifest_with(
        {"source": "name", "target": "name", "transform": {"map": {"a": "x", "b": "x"}}}
    )
    import yaml

    manifest = parse_manifest(yaml.safe_dump(document), "mig.yaml")
    with pytest.raises(RefusedError, match=r"crm\.customers\.name \(its map sends both 'a' and 'b' to 'x'\)"):
        _strategy(manifest).assess(manifest.tables, _request(manifest))


def test_refuses_a_source_login_that_may_only_read(demo, databases, monkeypatch):
    from sensei_airflow.plan import RefusedError

    role = f"reader_{databases.source}"
    with databases.connect("source") as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_SOURCE", databases.cluster.uri(databases.source, user=role))
    try:
        with pytest.raises(
            RefusedError,
            match=r"may not create the staging schema sensei_staging; the source login lacks INSERT, UPDATE, DELETE on public\.",
        ):
            _strategy(demo).assess(demo.tables, _request(demo))
    finally:
        with databases.connect("source") as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
