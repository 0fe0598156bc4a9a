"""Every strategy, end to end through ``sensei_rollback``, on tables and columns named as real schemas name them.

Real PostgreSQL source, target and state (tests/hostile_shop.py: spaces, dots, a comma, a pipe, a
double quote, reserved words, non-ASCII letters, a composite key with a spaced column, foreign
keys between such tables, identity and serial columns); Airflow runs the DAG with ``dag.test``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.state import StateStore
from tests import hostile_shop as shop
from tests.fixtures import run_dag
from tests.integration.pitr.clusters import ArchivingCluster, archiving_cluster

pytestmark = pytest.mark.e2e
ROLLBACK = "sensei_rollback"


def error_of(outcome: Any, task_id: str = "assess") -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=ROLLBACK, run_id=outcome.run_id, task_id=task_id, key="error")
            .one()
        )
        return XComModel.deserialize_value(row)["error"]


def migrated_shop(
    databases: Any, migrations_dir: Path, document: dict[str, Any] | None = None, **target: Any
) -> Any:
    """Write the manifest, build and fill the source, create the target, migrate forward; the manifest."""
    loaded = shop.write_manifest(migrations_dir, document)
    shop.prepare_source(databases)
    with databases.connect("target") as conn:
        shop.prepare_target(conn, **target)
    inserted = shop.migrate(loaded)
    # keyed by the manifest's targets in canonical form: "user" keeps the quotes it was written with
    # (on Snowflake or Oracle, unquoted user would be USER)
    assert inserted == {
        'Sales Data."user"': 30,
        "Sales Data.order": 60,
        '"Straße.Ümlaut".Order Items, 2026': 120,
    }
    return loaded


def assert_completed(outcome: Any, strategy: str) -> dict[str, Any]:
    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states[f"execute_{strategy}"] == "success"
    assert outcome.task_states["execute_sequences"] == "success"
    status = outcome.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["strategy_used"] == strategy
    return status


def report_markdown(databases: Any, run_id: str) -> str:
    record = StateStore("sensei_state").get_run(run_id)
    assert record is not None
    return str(record["report_markdown"])


def test_truncate_with_the_conf_naming_tables_in_every_written_form(databases, migrations_dir, airflow_db):
    migrated_shop(databases, migrations_dir)
    with databases.connect("target") as conn:
        outside_before = shop.rows(conn, shop.OUTSIDE_ROWS)

    outcome = run_dag(
        ROLLBACK,
        {
            "migration_id": shop.MIGRATION_ID,
            "strategy": "truncate",
            "scope": "tables",
            # quoted and qualified; unqualified; quoted parts that need no quotes
            "tables": ['"Straße.Ümlaut"."Order Items, 2026"', "order", '"Sales Data"."user"'],
            "reason": "names as they are",
        },
    )

    status = assert_completed(outcome, "truncate")
    assert status["scope"] == {"scope": "tables", "tables": list(reversed(shop.TARGETS))}  # children first
    assert status["verification"]["record_counts_match"] is True
    with databases.connect("target") as conn:
        assert all(shop.rows(conn, q) == [] for q in shop.TARGET_ROWS.values())
        assert shop.rows(conn, shop.OUTSIDE_ROWS) == outside_before
        # the identities start over (the runbook's sequence step)
        new = conn.execute(
            """INSERT INTO "Sales Data"."user" ("Display Name") VALUES ('first') RETURNING id"""
        )
        assert new.fetchone()[0] == 1
    statements = outcome.xcoms["execute_truncate"]["statements"]
    assert (
        'TRUNCATE TABLE "Straße.Ümlaut"."Order Items, 2026", "Sales Data"."order", "Sales Data"."user" '
        "RESTART IDENTITY" in statements
    )
    markdown = report_markdown(databases, outcome.run_id)
    # the outside table's check is a row of a Markdown table: its "|" is escaped, the row keeps 5 cells
    [outside_row] = [line for line in markdown.splitlines() if "Länder" in line and line.startswith("| ")]
    assert "Sales Data.Länder \\| Countries" in outside_row
    assert outside_row.replace("\\|", "").count("|") == 6


def test_reverse_migration_with_a_renamed_column_and_an_expression_over_a_spaced_column(
    databases, migrations_dir, airflow_db
):
    migrated_shop(databases, migrations_dir)
    with databases.connect("target") as conn:
        shop.change_target(conn)

    outcome = run_dag(
        ROLLBACK, {"migration_id": shop.MIGRATION_ID, "strategy": "reverse_migration", "verify_after": True}
    )

    status = assert_completed(outcome, "reverse_migration")
    assert status["scope"]["tables"] == shop.TARGETS
    assert status["verification"] == {
        "source_comparison": "passed",
        "record_counts_match": True,
        "sample_verification": "passed",
    }
    with databases.connect("target") as target, databases.connect("source") as source:
        for table, expected in shop.EXPECTED_SOURCE.items():
            assert shop.rows(source, shop.SOURCE_ROWS[table]) == shop.rows(target, expected), table
        # the serial columns continue past the rows written back
        assert source.execute("""SELECT max(id) FROM "Alt Shop"."user\"""").fetchone()[0] == 31
        new = source.execute(
            """INSERT INTO "Alt Shop"."user" ("Display Name") VALUES ('after') RETURNING id"""
        )
        assert new.fetchone()[0] == 32
    plan = outcome.xcoms["assess"]
    assert {k: plan["tables"][1][k] for k in ("target", "source", "phase", "rows")} == {
        "target": "Sales Data.order",
        "source": "Alt Shop.order",
        "phase": 2,
        "rows": 61,
    }


@pytest.fixture(scope="module")
def archiving() -> Iterator[ArchivingCluster]:
    with archiving_cluster("sensei-names-pitr-") as cluster:
        cluster.base_backup()
        yield cluster


def test_point_in_time_restores_the_tables_as_they_were(
    databases, archiving, migrations_dir, airflow_db, monkeypatch
):
    database = f"{databases.target}_wal"
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_TARGET", archiving.cluster.create_database(database))
    with archiving.connect(database) as conn:
        shop.prepare_target(conn, rows_before=True)
        before = shop.target_state(conn)
    started_at = archiving.now(database)
    document = shop.manifest(
        started_at,
        preferred_strategy="point_in_time",
        point_in_time={"postgres": archiving.settings()},
    )
    shop.write_manifest(migrations_dir, document)
    shop.prepare_source(databases)
    shop.migrate(shop.write_manifest(migrations_dir, document))
    with archiving.connect(database) as conn:
        shop.change_target(conn)
        conn.execute("""INSERT INTO "Sales Data"."Länder | Countries" VALUES ('FR', 'France')""")  # outside

    outcome = run_dag(ROLLBACK, {"migration_id": shop.MIGRATION_ID, "strategy": "point_in_time"})

    status = assert_completed(outcome, "point_in_time")
    assert status["scope"]["tables"] == shop.TARGETS
    assert status["verification"]["record_counts_match"] is True
    with archiving.connect(database) as conn:
        now = shop.target_state(conn)
    for table in shop.TARGETS:
        assert now[table] == before[table], table
    assert now[shop.OUTSIDE] == sorted([*before[shop.OUTSIDE], ("FR", "France")])  # outside: untouched
    assert archiving.scratch_leftovers() == []


def test_backup_restore_from_a_logical_backup_of_such_tables(databases, migrations_dir, airflow_db, tmp_path):
    from sensei_airflow.backups import jobs, logical

    location = tmp_path / "backups"
    document = shop.manifest(
        preferred_strategy="backup_restore",
        pre_migration_backup={"enabled": True, "storage": str(location), "retention_days": 2},
    )
    loaded = shop.write_manifest(migrations_dir, document)
    shop.prepare_source(databases)
    with databases.connect("target") as conn:
        shop.prepare_target(conn, rows_before=True)
        before = shop.target_state(conn)
    catalog = jobs.catalog_of(loaded)
    entry = jobs.backup_migration(loaded, kind="pre_migration")
    # the restore test (pg_dump -t patterns, pg_restore with the FK to the outside table left out)
    verified = jobs.verify_backup(entry, catalog, restore_test=True)
    assert verified["ok"], verified["problems"]
    assert sorted(entry.tables) == sorted(shop.TARGETS)
    files = sorted(entry.table_stats[t]["file"] for t in entry.tables)
    assert files == sorted(logical.data_file(t) for t in shop.TARGETS)
    assert all((location / shop.MIGRATION_ID / entry.backup_id / f).is_file() for f in files)
    # the migration starts after its pre-migration backup (the default backup is one taken before)
    document["started_at"] = datetime.now(UTC).isoformat()
    loaded = shop.write_manifest(migrations_dir, document)
    shop.migrate(loaded)
    with databases.connect("target") as conn:
        shop.change_target(conn)

    outcome = run_dag(ROLLBACK, {"migration_id": shop.MIGRATION_ID, "strategy": "backup_restore"})

    status = assert_completed(outcome, "backup_restore")
    assert status["scope"]["tables"] == shop.TARGETS
    assert status["verification"]["record_counts_match"] is True
    with databases.connect("target") as conn:
        assert shop.target_state(conn) == before


def test_a_name_postgres_would_truncate_is_refused_in_assess(databases, migrations_dir, airflow_db):
    too_long = "Ü" * 32  # 64 bytes: PostgreSQL would cut it to 63 and act on another table
    document = shop.manifest()
    document["phases"][2]["tables"][0]["target"] = f'"Straße.Ümlaut"."{too_long}"'
    shop.write_manifest(migrations_dir, document)

    outcome = run_dag(ROLLBACK, {"migration_id": shop.MIGRATION_ID, "strategy": "truncate"})

    assert outcome.state == "failed"
    assert outcome.task_states["assess"] == "failed"
    assert error_of(outcome) == (
        f'RefusedError: target table "Straße.Ümlaut".{too_long}: the table name is 64 bytes long, PostgreSQL '
        "holds at most 63 (a longer name would be cut or refused): the database cannot hold it; correct the manifest"
    )


def test_the_api_plan_takes_such_names_repeated_or_comma_separated(
    databases, migrations_dir, airflow_db, monkeypatch
):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    from tests.e2e.test_api_inprocess import _sync_dags, _token

    migrated_shop(databases, migrations_dir)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    _sync_dags()
    url = f"/sensei/v1/migrations/{shop.MIGRATION_ID}/rollback/plan"
    with TestClient(create_app()) as api:

        def plan(*tables: str) -> Any:
            params = [("strategy", "truncate"), ("scope", "tables"), *(("tables", t) for t in tables)]
            return api.get(url, params=params, headers=_token("admin"))

        # repeated: each value is one name, commas and all
        repeated = plan("Order Items, 2026", "Sales Data.order")
        assert repeated.status_code == 200, repeated.text
        assert [t["target"] for t in repeated.json()["tables"]] == [shop.TARGETS[2], shop.TARGETS[1]]
        assert repeated.json()["dry_run"] is True
        # one comma-separated list: a comma inside a quoted part does not split
        listed = plan('"Straße.Ümlaut"."Order Items, 2026", order')
        assert listed.status_code == 200, listed.text
        assert [t["target"] for t in listed.json()["tables"]] == [shop.TARGETS[2], shop.TARGETS[1]]
        # the same name unquoted in a list is two names, and the refusal says which is unknown
        split = plan("Order Items, 2026")
        assert split.status_code == 409, split.text
        assert split.json()["detail"].startswith(
            f"table 'Order Items' is not part of migration {shop.MIGRATION_ID} (its tables: "
        )
    with databases.connect("target") as conn:  # a plan changes nothing
        assert [len(shop.rows(conn, q)) for q in shop.TARGET_ROWS.values()] == [30, 60, 120]
