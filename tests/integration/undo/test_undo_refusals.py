"""Each refusal of the undo log, in one line that names the cause, before anything is changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.plan import RefusedError
from sensei_airflow.runbook import RunContext, assess
from sensei_airflow.state import utcnow
from tests.fixtures import Databases
from tests.integration.undo.conftest import MIG, table_rows, write_manifest


def _assess(manifest: Any, **conf: Any) -> Any:
    request = RollbackRequest.parse({"migration_id": MIG, "strategy": "undo_log", "dry_run": True, **conf})
    return assess(manifest, request, RunContext(rollback_id="refusal-test", actor="test", now=utcnow()))


def _refused(manifest: Any, **conf: Any) -> str:
    with pytest.raises(RefusedError) as refused:
        _assess(manifest, **conf)
    text = str(refused.value)
    assert "\n" not in text
    return text


def test_no_mark(logical_databases: Databases, migrations_dir: Path, airflow_db: None) -> None:
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines import get_engine

    document = write_manifest(migrations_dir)
    prepare_target(get_engine(document.target.conn_id))
    assert _refused(document) == (
        f"migration {MIG} has no start mark and no started_at: take the mark before it writes "
        f"(sensei migration start {MIG}) or set started_at in its manifest"
    )


def test_no_mark_with_started_at(
    logical_databases: Databases, migrations_dir: Path, airflow_db: None
) -> None:
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines import get_engine

    manifest = write_manifest(migrations_dir)
    manifest = manifest.model_copy(update={"started_at": utcnow()})
    prepare_target(get_engine(manifest.target.conn_id))
    assert "has no start mark: the undo log opens with it" in _refused(manifest)


def test_undo_log_not_enabled(marked: dict[str, Any], migrations_dir: Path) -> None:
    manifest = write_manifest(migrations_dir, undo_log=False)
    assert _refused(manifest) == (
        f"undo_log: the undo log is not enabled for {MIG}: set rollback.undo_log.enabled in its manifest before "
        "the start mark is taken"
    )


def test_slot_dropped(marked: dict[str, Any]) -> None:
    databases = marked["databases"]
    with databases.connect("target") as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (marked["mark"].undo_log["slot"],))
    text = _refused(marked["manifest"])
    assert "the undo log is gone: replication slot sensei_undo_mig_shop_2026 no longer exists" in text
    assert "roll back with backup_restore or point_in_time" in text


def test_ddl_since_the_mark(marked: dict[str, Any]) -> None:
    with marked["databases"].connect("target") as conn:
        conn.execute('ALTER TABLE sales.orders ADD COLUMN "Notiz" text')
    assert "sales.orders changed its columns since the start mark (DDL)" in _refused(marked["manifest"])


def test_table_without_key(marked: dict[str, Any]) -> None:
    with marked["databases"].connect("target") as conn:
        conn.execute("ALTER TABLE sales.order_items DROP CONSTRAINT order_items_pkey")
    text = _refused(marked["manifest"], scope="tables", tables=["order_items"])
    assert "sales.order_items has no primary key or unique index on (order_id, line_no)" in text


def test_replica_identity_changed(marked: dict[str, Any]) -> None:
    with marked["databases"].connect("target") as conn:
        conn.execute("ALTER TABLE crm.customers REPLICA IDENTITY DEFAULT")
    text = _refused(marked["manifest"])
    assert "crm.customers has replica identity DEFAULT since the start mark (the undo log needs FULL)" in text


def test_truncate_whose_rows_were_not_saved(marked: dict[str, Any]) -> None:
    """Our own rollbacks' TRUNCATEs save nothing into an open undo log (a whole table's copy)."""
    with marked["databases"].connect("target") as conn, conn.transaction():
        conn.execute("SET LOCAL sensei.truncate_capture = off")
        conn.execute("TRUNCATE sales.order_items")
    text = _refused(marked["manifest"])
    assert "sales.order_items was truncated since the start mark without its rows saved" in text
    assert "roll back with backup_restore or point_in_time" in text


def test_a_failing_journal_never_fails_the_users_truncate_and_the_undo_refuses(
    marked: dict[str, Any],
) -> None:
    databases = marked["databases"]
    journals = marked["mark"].undo_log["truncate_journals"]
    journal = f"{journals['schema']}.{journals['tables']['crm.customers']}"
    with databases.connect("target") as conn:
        conn.execute(f"ALTER TABLE {journal} DROP COLUMN email_address")  # the saving INSERT now fails
        conn.execute("TRUNCATE crm.customers CASCADE")  # succeeds all the same, with a warning
    assert databases.scalar("target", "SELECT count(*) FROM crm.customers") == 0
    assert "crm.customers was truncated since the start mark without its rows saved" in _refused(
        marked["manifest"]
    )


def test_a_key_referenced_from_outside_the_scope_refuses_without_changing_anything(
    marked: dict[str, Any],
) -> None:
    """Undoing orders alone would delete orders that kept items (outside the scope) point at."""
    from sensei_airflow.strategies.undo_log import UndoLogStrategy

    databases = marked["databases"]
    plan = _assess(marked["manifest"], scope="tables", tables=["orders"]).model_copy(
        update={"dry_run": False}
    )
    before = table_rows(databases)
    strategy = UndoLogStrategy(marked["manifest"], _state(marked))
    with pytest.raises(RefusedError) as refused:
        strategy.execute(plan)
    assert "undoing the changes would break a constraint" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert table_rows(databases) == before


def _state(marked: dict[str, Any]) -> Any:
    from sensei_airflow.state import StateStore

    return StateStore(marked["manifest"].state.conn_id)


def test_wal_level_not_logical_refuses_the_mark(
    databases: Databases, migrations_dir: Path, airflow_db: None
) -> None:
    """On a server with wal_level=replica the mark with the undo log is refused, naming the setting and the restart."""
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines import get_engine
    from sensei_airflow.engines.base import MarkRefused
    from sensei_airflow.mark import load_mark, take_mark
    from sensei_airflow.state import StateStore

    manifest = write_manifest(migrations_dir)
    prepare_target(get_engine(manifest.target.conn_id))
    with pytest.raises(MarkRefused) as refused:
        take_mark(manifest)
    assert str(refused.value) == (
        "the undo log needs wal_level=logical on shop_target (it is replica): set wal_level = logical in "
        "postgresql.conf and restart the server, or disable rollback.undo_log"
    )
    assert load_mark(StateStore(manifest.state.conn_id), MIG) is None


def test_slot_invalidated_by_max_slot_wal_keep_size(marked: dict[str, Any]) -> None:
    """More WAL than max_slot_wal_keep_size since the mark: PostgreSQL invalidates the slot (wal_status lost)."""
    import time

    import psycopg

    databases = marked["databases"]
    slot = marked["mark"].undo_log["slot"]
    with psycopg.connect(databases.cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 120
        with databases.connect("target") as conn:
            while (
                conn.execute(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()[0]
                != "lost"
            ):
                assert time.monotonic() < deadline, "the slot was never invalidated"
                conn.execute(
                    "INSERT INTO crm.campaigns SELECT g, 'wal ' || g FROM generate_series(1000, 1500) g"
                )
                conn.execute("DELETE FROM crm.campaigns WHERE id >= 1000")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
        text = _refused(marked["manifest"])
        assert (
            f"the undo log was invalidated: replication slot {slot} lost WAL it needed (wal_status lost"
            in text
        )
    finally:
        with psycopg.connect(databases.cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            admin.execute("SELECT pg_reload_conf()")
