"""The reverse migration's bulk apply: foreign keys and indexes set aside for the load, checked once.

Over names as databases hold them (spaces, quotes, reserved words, non-ASCII): the source tables
are emptied, then reverse-migrated with the bulk threshold at zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import hostile_shop
from tests.fixtures import Databases

#: a source-only foreign key the target does not have: "user".quoted must name a quote in the book.
QUOTE_BOOK = '''
CREATE TABLE "Alt Shop"."Zitate ""Buch""" (q text PRIMARY KEY);
INSERT INTO "Alt Shop"."Zitate ""Buch""" SELECT 'q' || g FROM generate_series(1, 30) g;
ALTER TABLE "Alt Shop"."user" ADD CONSTRAINT "user ""quoted"" → Zitat ü"
    FOREIGN KEY (quoted) REFERENCES "Alt Shop"."Zitate ""Buch""" (q);
COMMENT ON CONSTRAINT "user ""quoted"" → Zitat ü" ON "Alt Shop"."user" IS 'kept across the load';
'''
EMPTY_SOURCE = 'TRUNCATE "Alt Shop"."Order.Items", "Alt Shop"."order", "Alt Shop"."user"'
#: every constraint and index of the source tables: name, definition, comment, and its oid.
CONSTRAINTS = """
SELECT con.conname, con.conrelid::regclass::text, pg_get_constraintdef(con.oid),
       obj_description(con.oid, 'pg_constraint'), con.oid::bigint
FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
WHERE n.nspname = 'Alt Shop' ORDER BY 1, 2
"""
INDEXES = """
SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname = 'Alt Shop' ORDER BY 1, 2
"""


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    return ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))


def _plan(manifest: Any) -> Any:
    from datetime import UTC, datetime

    from sensei_airflow.manifest import Strategy
    from sensei_airflow.plan import PlannedTable, RollbackPlan

    strategy = _strategy(manifest)
    return RollbackPlan(
        migration_id=manifest.id,
        rollback_id="manual__bulk_test",
        strategy=Strategy.REVERSE_MIGRATION,
        requested_strategy="reverse_migration",
        scope={"scope": "all"},
        tables=[
            PlannedTable(target=strategy.target.qualify(t.target), source=t.source, phase=1)
            for t in manifest.tables
        ],
        started_at=datetime.now(UTC).isoformat(),
    )


def _execute(manifest: Any) -> Any:
    return _strategy(manifest).execute(_plan(manifest))


STAGING_TABLES = (
    "SELECT count(*) FROM pg_tables WHERE schemaname = 'sensei_staging' AND starts_with(tablename, 'rev_')"
)


def _catalog(databases: Databases) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with databases.connect("source") as conn:
        return hostile_shop.rows(conn, CONSTRAINTS), hostile_shop.rows(conn, INDEXES)


def _without_oids(constraints: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [row[:-1] for row in constraints]


@pytest.fixture
def hostile(databases: Databases, migrations_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The hostile shop migrated forward and changed since; its source emptied, bulk threshold zero."""
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_BULK_ROWS", "0")
    manifest = hostile_shop.write_manifest(migrations_dir)
    hostile_shop.prepare_source(databases)
    with databases.connect("target") as conn:
        hostile_shop.prepare_target(conn)
    hostile_shop.migrate(manifest)
    with databases.connect("target") as conn:
        hostile_shop.change_target(conn)
    return manifest


def test_bulk_apply_fills_empty_tables_and_rebuilds_their_constraints(
    hostile: Any, databases: Databases
) -> None:
    with databases.connect("source") as conn:
        conn.execute(QUOTE_BOOK)
        conn.execute('''INSERT INTO "Alt Shop"."Zitate ""Buch""" VALUES ('new')''')
        conn.execute(EMPTY_SOURCE)
    constraints, indexes = _catalog(databases)
    # the staging tasks have nothing to do: the apply copies straight into the empty tables
    strategy, plan = _strategy(hostile), _plan(hostile)
    assert strategy.staging_groups(plan, tasks=4) == [{"group": 0, "groups": 1}]
    assert strategy.stage(plan, 0, 1)["staged_in"].startswith("the apply task: the source tables are empty")

    execution = _execute(hostile)

    # every key range was copied from the target into its table inside the apply, none staged
    assert all(c["direct"] > 0 and c["staged"] == 0 for c in execution.detail["chunks"].values())
    assert all(
        a["direct_chunks"] > 0 and a["staged_chunks"] == 0 for a in execution.detail["applied"].values()
    )
    assert databases.scalar("source", STAGING_TABLES) == 0
    with databases.connect("source") as source, databases.connect("target") as target:
        for table, query in hostile_shop.SOURCE_ROWS.items():
            expected = hostile_shop.rows(target, hostile_shop.EXPECTED_SOURCE[table])
            assert hostile_shop.rows(source, query) == expected, table
    after, indexes_after = _catalog(databases)
    # the same constraints (names, definitions, comments) and indexes as before the load ...
    assert _without_oids(after) == _without_oids(constraints)
    assert indexes_after == indexes
    # ... built again by the load (new oids): the keys were set aside, not checked row by row
    rebuilt = {row[0] for row in after} - {row[0] for row in constraints if row in after}
    assert {"user_pkey", 'user "quoted" → Zitat ü', "order_user id_fkey"} <= rebuilt
    # the sequences are past the highest keys: the application can insert again
    new_id = databases.scalar(
        "source", """INSERT INTO "Alt Shop"."user" ("Display Name") VALUES ('après') RETURNING id"""
    )
    assert new_id > databases.scalar("target", 'SELECT max(id) FROM "Sales Data"."user"') - 1


def test_a_broken_foreign_key_fails_the_apply_in_one_line_and_changes_nothing(
    hostile: Any, databases: Databases
) -> None:
    from sensei_airflow.plan import RefusedError

    with databases.connect("source") as conn:
        conn.execute(QUOTE_BOOK)  # the target's new user quotes 'new', which the book does not hold
        conn.execute(EMPTY_SOURCE)
    constraints, indexes = _catalog(databases)

    with pytest.raises(RefusedError) as refused:
        _execute(hostile)

    reason = str(refused.value)
    assert "\n" not in reason
    assert reason.startswith(
        'reverse migration: foreign key user "quoted" → Zitat ü of "Alt Shop"."user" does not hold '
        "for the loaded rows"
    ), reason
    assert "(quoted)=(new)" in reason
    assert reason.endswith("nothing was changed")
    # nothing changed: the tables are still empty, every constraint is the very same one
    with databases.connect("source") as conn:
        for table, query in hostile_shop.SOURCE_ROWS.items():
            assert hostile_shop.rows(conn, query) == [], table
    assert _catalog(databases) == (constraints, indexes)

    # the retry redoes the whole copy, once the source can hold the rows: nothing twice, nothing lost
    with databases.connect("source") as conn:
        conn.execute('''INSERT INTO "Alt Shop"."Zitate ""Buch""" VALUES ('new')''')
    _execute(hostile)
    with databases.connect("source") as source, databases.connect("target") as target:
        for table, query in hostile_shop.SOURCE_ROWS.items():
            assert hostile_shop.rows(source, query) == hostile_shop.rows(
                target, hostile_shop.EXPECTED_SOURCE[table]
            )


def test_only_the_empty_tables_are_loaded_in_bulk_the_others_upserted(
    hostile: Any, databases: Databases
) -> None:
    with databases.connect("source") as conn:
        conn.execute('TRUNCATE "Alt Shop"."Order.Items"')  # the parents keep their pre-migration rows
    constraints, indexes = _catalog(databases)

    execution = _execute(hostile)

    with databases.connect("source") as source, databases.connect("target") as target:
        for table, query in hostile_shop.SOURCE_ROWS.items():
            expected = hostile_shop.rows(target, hostile_shop.EXPECTED_SOURCE[table])
            assert hostile_shop.rows(source, query) == expected, table
    applied = execution.detail["applied"]
    assert applied['Alt Shop."Order.Items"']["inserted"] > 0
    assert applied["Alt Shop.user"]["updated"] == 2  # the two changed users, upserted in place
    after, indexes_after = _catalog(databases)
    assert _without_oids(after) == _without_oids(constraints)
    assert indexes_after == indexes
    rebuilt = {row[0] for row in after if row not in constraints}
    assert rebuilt == {"Order.Items_pkey", "Order.Items_Order No_fkey"}  # only the empty table's
