"""The start mark's moment on the engines that cannot run here: the SQL asked, the position kept, and the
undo log refused at mark time naming the engine and the alternatives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sensei_airflow.engines.base import MarkRefused
from tests.integration.engines.test_mssql import mssql
from tests.integration.engines.test_oracle import oracle


def test_oracle_marks_by_scn_and_utc_time():
    engine, hook = oracle(GET_SYSTEM_CHANGE_NUMBER=[(4_799_999, datetime(2026, 2, 2, 7, 59))])
    moment = engine.take_mark("sensei_mig", ["CRM.CUSTOMERS", "SALES.ORDERS"], undo_log=False, slot="")
    assert moment.position == "4799999"
    assert moment.at == datetime(2026, 2, 2, 7, 59, tzinfo=UTC)
    assert {t: v["rows"] for t, v in moment.tables.items()} == {"CRM.CUSTOMERS": 7, "SALES.ORDERS": 7}
    assert hook.sql("GET_SYSTEM_CHANGE_NUMBER") == [
        "SELECT DBMS_FLASHBACK.GET_SYSTEM_CHANGE_NUMBER, SYS_EXTRACT_UTC(SYSTIMESTAMP) FROM dual"
    ]


MARK_NAME = "sensei_mig_shop_2026_20260202T075900000000Z"


def test_sql_server_marks_by_a_marked_transaction_that_writes_only_its_own_table():
    engine, hook = mssql(**{"FROM sensei.start_marks": [(datetime(2026, 2, 2, 7, 59),)]})
    moment = engine.take_mark(MARK_NAME, ["crm.customers", "sales.orders"], undo_log=False, slot="")
    mark = moment.restore_point
    assert mark is not None and len(mark) <= 32 and mark.startswith("sensei_")  # SQL Server's limit: 32
    assert moment.at == datetime(2026, 2, 2, 7, 59, tzinfo=UTC)
    sql = hook.sql()
    begin = sql.index(f"BEGIN TRANSACTION {mark} WITH MARK N'{MARK_NAME}'")
    assert sql[begin - 1 : begin + 3] == [
        "SET XACT_ABORT ON",
        f"BEGIN TRANSACTION {mark} WITH MARK N'{MARK_NAME}'",
        "INSERT INTO sensei.start_marks (mark_name, description) VALUES (%s, %s)",
        f"COMMIT TRANSACTION {mark}",
    ]
    assert "CREATE TABLE sensei.start_marks" in sql[begin - 2]
    # the statements are the transaction: autocommit, nothing written to a migrated table
    assert ("autocommit", True) in hook.calls
    assert not hook.sql(r"INSERT INTO \[|UPDATE |DELETE ")
    # another mark gets another name: a restore stops at the first mark of a name
    other = engine.take_mark(MARK_NAME.replace("0759", "0800"), ["crm.customers"], undo_log=False, slot="")
    assert other.restore_point != mark


def test_sql_server_marks_by_time_where_the_role_may_not_write_the_mark():
    engine, hook = mssql(SYSUTCDATETIME=[(datetime(2026, 2, 2, 7, 59),)])
    hook.fail["CREATE TABLE sensei.start_marks"] = RuntimeError(
        "CREATE SCHEMA permission denied in database 'shop'"
    )
    moment = engine.take_mark(MARK_NAME, ["crm.customers"], undo_log=False, slot="")
    assert moment.restore_point is None
    assert moment.at == datetime(2026, 2, 2, 7, 59, tzinfo=UTC)
    assert moment.notes == [
        "no marked transaction (CREATE SCHEMA permission denied in database 'shop'): SQL Server marks "
        f"{MARK_NAME} by time (STOPAT)"
    ]


def test_an_undo_log_on_sql_server_is_refused_at_mark_time():
    engine, _ = mssql()
    with pytest.raises(MarkRefused) as refused:
        engine.take_mark("sensei_mig", ["crm.customers"], undo_log=True, slot="sensei_undo_mig")
    assert str(refused.value) == (
        "SQL Server keeps no undo log here: disable rollback.undo_log and roll back with point_in_time or "
        "backup_restore"
    )


def test_undo_log_is_refused_in_assess_naming_the_engine_and_the_alternatives(migrations_dir):
    from sensei_airflow.conf import RollbackRequest
    from sensei_airflow.plan import RefusedError, resolve_scope
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.undo_log import UndoLogStrategy
    from tests.fixtures import write_demo_manifest

    manifest = write_demo_manifest(migrations_dir, target_conn_id="mssql")
    strategy = UndoLogStrategy(manifest, StateStore("sensei_state"))
    strategy.__dict__["target"] = mssql()[0]  # no SQL Server here: the engine answers from a recording hook
    request = RollbackRequest.parse({"migration_id": manifest.id, "strategy": "undo_log"})
    with pytest.raises(RefusedError) as refused:
        strategy.assess(resolve_scope(manifest, request), request)
    assert str(refused.value) == (
        "SQL Server keeps no undo log here (mssql): roll back mig_shop_2026 with point_in_time (the engine's own "
        "history) or backup_restore"
    )
