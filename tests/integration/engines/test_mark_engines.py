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
