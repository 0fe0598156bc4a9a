"""undo_log over names as databases hold them: spaces, dots, quotes, reserved words, non-ASCII."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import hostile_shop
from tests.fixtures import Databases, run_dag


def test_undo_log_with_hostile_names(
    logical_databases: Databases, migrations_dir: Path, airflow_db: None
) -> None:
    document = hostile_shop.manifest(undo_log={"enabled": True})
    manifest = hostile_shop.write_manifest(migrations_dir, document)
    hostile_shop.prepare_source(logical_databases)
    with logical_databases.connect("target") as conn:
        hostile_shop.prepare_target(conn, rows_before=True)
        at_mark = hostile_shop.target_state(conn)
    hostile_shop.migrate(manifest)  # takes the start mark (with the undo log) first
    with logical_databases.connect("target") as conn:
        hostile_shop.change_target(conn)
        conn.execute("""INSERT INTO "Sales Data"."Länder | Countries" VALUES ('FR', 'République')""")
        conn.execute("""UPDATE "Sales Data"."user" SET "select" = 'it''s changed' WHERE id = 900001""")
        # the undo log's TRUNCATE trigger saves the rows of tables named like these
        conn.execute('TRUNCATE "Sales Data"."order", "Straße.Ümlaut"."Order Items, 2026"')
        changed: dict[str, Any] = hostile_shop.target_state(conn)

    outcome = run_dag("sensei_rollback", {"migration_id": hostile_shop.MIGRATION_ID, "strategy": "undo_log"})

    assert outcome.state == "success", outcome.task_states
    with logical_databases.connect("target") as conn:
        now = hostile_shop.target_state(conn)
    for table in hostile_shop.TARGET_ROWS:
        assert now[table] == at_mark[table], table
    assert now[hostile_shop.OUTSIDE] == changed[hostile_shop.OUTSIDE]  # outside the migration: kept
