"""SQL Server engine: no server can run here, so the exact SQL per scope and the calls on the hook
(replaced by a recording fake that answers the catalog and msdb queries) are what is tested."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from sensei_airflow.engines import engine_class
from sensei_airflow.engines.base import OutsideRows, PointInTimeRefused, RecoveryTarget
from sensei_airflow.engines.mssql import Backup, MsSqlEngine, MsSqlRestoreCopy, restore_chain
from tests.integration.engines.conftest import RecordingHook, with_hook

# crm.customers <- sales.orders <- sales.order_items (which also references itself)
FKS = [
    ("FK_orders_customers", "sales", "orders", "crm", "customers"),
    ("FK_items_orders", "sales", "order_items", "sales", "orders"),
    ("FK_items_self", "sales", "order_items", "sales", "order_items"),
]
IDENTITY = {"[crm].[customers]": [(1, 1)], "[sales].[orders]": [(100, 10)]}
SEQUENCES = {"[sales].[order_items]": [("sales", "line_seq")]}


def mssql(**extra) -> tuple[MsSqlEngine, RecordingHook]:
    """An engine on a recording hook; ``extra`` answers are tried before the catalog's."""
    answers = {
        **extra,
        "sys.foreign_keys": FKS,
        "sys.identity_columns WHERE object_id = OBJECT_ID\\(%s\\)": lambda s, p: IDENTITY.get(p[0], []),
        "sys.default_constraints": lambda s, p: SEQUENCES.get(p[0], []),
        "COUNT_BIG": lambda s, p: [(name, 4) for name in p],
    }
    hook = RecordingHook(answers=answers)
    return with_hook(MsSqlEngine("mssql"), hook), hook


def test_registry_names_and_hook():
    from airflow.providers.microsoft.mssql.hooks.mssql import MsSqlHook

    assert engine_class("mssql") is MsSqlEngine
    engine, _ = mssql()
    assert engine.qualify("orders") == "dbo.orders"
    assert engine.quote_table("sales.orders") == "[sales].[orders]"
    real = MsSqlEngine("mssql_x").hook
    assert isinstance(real, MsSqlHook) and real.mssql_conn_id == "mssql_x"


def test_missing_provider_names_the_extra(monkeypatch):
    from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException

    monkeypatch.setitem(sys.modules, "airflow.providers.microsoft.mssql.hooks.mssql", None)
    with pytest.raises(AirflowOptionalProviderFeatureException, match=r"sensei-airflow\[mssql\]"):
        _ = MsSqlEngine("mssql").hook


def test_referenced_tables_are_deleted_and_reseeded_the_rest_truncated_in_one_transaction():
    engine, hook = mssql()
    tables = ["sales.order_items", "sales.orders", "crm.customers"]
    statements, removed = engine.empty_tables(tables, [])
    assert [(s.sql, s.params) for s in statements] == [
        ("SET LOCK_TIMEOUT 30000", ()),
        (
            "SELECT %s, COUNT_BIG(*) FROM [sales].[order_items] WITH (TABLOCKX, HOLDLOCK) UNION ALL "
            "SELECT %s, COUNT_BIG(*) FROM [sales].[orders] WITH (TABLOCKX, HOLDLOCK) UNION ALL "
            "SELECT %s, COUNT_BIG(*) FROM [crm].[customers] WITH (TABLOCKX, HOLDLOCK)",
            tuple(tables),
        ),
        # only a self-reference points at order_items: TRUNCATE is allowed (and resets identity)
        ("TRUNCATE TABLE [sales].[order_items]", ()),
        ("DELETE FROM [sales].[orders]", ()),
        (
            "IF EXISTS (SELECT 1 FROM sys.identity_columns WHERE object_id = OBJECT_ID(N'[sales].[orders]') "
            "AND last_value IS NOT NULL) DBCC CHECKIDENT (N'[sales].[orders]', RESEED, 90)",
            (),
        ),
        ("DELETE FROM [crm].[customers]", ()),
        (
            "IF EXISTS (SELECT 1 FROM sys.identity_columns WHERE object_id = OBJECT_ID(N'[crm].[customers]') "
            "AND last_value IS NOT NULL) DBCC CHECKIDENT (N'[crm].[customers]', RESEED, 0)",
            (),
        ),
        ("ALTER SEQUENCE [sales].[line_seq] RESTART", ()),
    ]
    assert removed == dict.fromkeys(tables, 4)
    events = hook.events()
    # one connection, one commit at the very end, nothing committed between statements
    work = events[events.index("execute SET LOCK_TIMEOUT 30000") :]
    assert work.count("commit") == 1 and work[-2:] == ["commit", "close"]
    assert events.index("autocommit False") < events.index("execute SET LOCK_TIMEOUT 30000")


def test_outside_tables_are_locked_by_counting_and_a_row_there_rolls_back():
    engine, hook = mssql(**{r"\[sales\]\.\[notes\]": [("sales.notes", 2)]})
    with pytest.raises(OutsideRows, match=r"sales\.notes holds 2 rows"):
        engine.empty_tables(["sales.orders", "crm.customers"], ["sales.orders"], outside=["sales.notes"])
    assert hook.sql("COUNT_BIG") == ["SELECT %s, COUNT_BIG(*) FROM [sales].[notes] WITH (TABLOCKX, HOLDLOCK)"]
    assert not hook.sql("^(DELETE|TRUNCATE)")
    assert "rollback" in hook.events() and "commit" not in hook.events()


def test_unreferenced_scope_is_only_truncated():
    engine, _ = mssql()
    statements = engine.empty_tables_sql(["sales.order_items", "dbo.campaigns"], [])
    assert [s.sql for s in statements] == [
        "TRUNCATE TABLE [sales].[order_items]",
        "TRUNCATE TABLE [dbo].[campaigns]",
        "ALTER SEQUENCE [sales].[line_seq] RESTART",
    ]


def test_failure_rolls_back_everything():
    engine, hook = mssql()
    hook.fail["DELETE FROM \\[crm\\]"] = RuntimeError(
        "547: The DELETE statement conflicted with the REFERENCE"
    )
    with pytest.raises(RuntimeError, match="547"):
        engine.empty_tables(["sales.orders", "crm.customers"], [])
    assert "rollback" in hook.events() and "commit" not in hook.events()


# -- point-in-time restore -----------------------------------------------------------------------
def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 2, 2, hour, minute)  # server local time, as msdb stores it


FULL = (1, "D", 1000, 2000, _at(1), _at(1, 10), "/var/opt/mssql/backup/shop_full.bak")
LOG1 = (2, "L", 1500, 3000, _at(6), _at(6, 1), "/var/opt/mssql/backup/shop_log1.trn")
LOG2 = (3, "L", 3000, 4000, _at(9), _at(9, 1), "/var/opt/mssql/backup/shop_log2.trn")
LOG2_STRIPED = (3, "L", 3000, 4000, _at(9), _at(9, 1), "/var/opt/mssql/backup/shop_log2b.trn")
FILES = [("shop", "/var/opt/mssql/data/shop.mdf", "D"), ("shop_log", "/var/opt/mssql/data/shop_log.ldf", "L")]
COLUMNS = {
    "[crm].[customers]": [("id", True), ("email", False)],
    "[sales].[orders]": [("id", True), ("customer_id", False), ("total", False)],
}
NOW = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)
# the server runs at UTC+1: 07:59 UTC is 08:59 on its clock
POINT = datetime(2026, 2, 2, 7, 59, tzinfo=UTC)


def restore_copy(history=(FULL, LOG1, LOG2, LOG2_STRIPED), model="FULL", offset=60):
    engine, hook = mssql(
        **{
            "recovery_model_desc": [("shop", model)],
            "DATEDIFF": [(offset,)],
            "msdb.dbo.backupset": list(history),
            "msdb.dbo.backupfile": FILES,
            "sys.columns": lambda s, p: COLUMNS.get(p[0], []),
        }
    )
    return MsSqlRestoreCopy(engine, clock=lambda: NOW), hook


def test_restore_sql_with_stopat_in_server_time():
    rc, hook = restore_copy()
    tables = ["crm.customers", "sales.orders"]
    plan = rc.assess(tables, RecoveryTarget(time=POINT), whole_database=False)
    assert plan.detail["stop_at_server_time"] == "2026-02-02T08:59:00"
    assert plan.steps == [
        "RESTORE DATABASE [shop__sensei_pitr] FROM DISK = %s WITH MOVE %s TO %s, MOVE %s TO %s, NORECOVERY, REPLACE",
        "RESTORE LOG [shop__sensei_pitr] FROM DISK = %s WITH NORECOVERY, STOPAT = %s",
        "RESTORE LOG [shop__sensei_pitr] FROM DISK = %s, DISK = %s WITH NORECOVERY, STOPAT = %s",
        "RESTORE DATABASE [shop__sensei_pitr] WITH RECOVERY",
        "SET XACT_ABORT ON",
        "BEGIN TRANSACTION",
        "DELETE FROM [sales].[orders]",
        "DELETE FROM [crm].[customers]",
        "SET IDENTITY_INSERT [crm].[customers] ON",
        "INSERT INTO [crm].[customers] ([id], [email]) SELECT [id], [email] FROM [shop__sensei_pitr].[crm].[customers]",
        "SET IDENTITY_INSERT [crm].[customers] OFF",
        "SET IDENTITY_INSERT [sales].[orders] ON",
        "INSERT INTO [sales].[orders] ([id], [customer_id], [total]) SELECT [id], [customer_id], [total] "
        "FROM [shop__sensei_pitr].[sales].[orders]",
        "SET IDENTITY_INSERT [sales].[orders] OFF",
        "COMMIT TRANSACTION",
        "IF DB_ID(%s) IS NOT NULL DROP DATABASE [shop__sensei_pitr]",
    ]
    assert hook.sql("RESTORE|INSERT|DELETE FROM") == []  # assess changes nothing
    assert any(
        w.startswith("sales.order_items (outside the scope) references sales.orders") for w in plan.warnings
    )


def test_restore_runs_restores_in_autocommit_and_drops_the_copy():
    rc, hook = restore_copy()
    plan = rc.assess(["crm.customers"], RecoveryTarget(time=POINT), whole_database=False)
    rc.restore(plan, RecoveryTarget(time=POINT))
    restores = [(s, p) for s, p in hook.executed if s.startswith("RESTORE")]
    assert restores[0][1] == (
        "/var/opt/mssql/backup/shop_full.bak",
        "shop", "/var/opt/mssql/data/shop__sensei_pitr.mdf",
        "shop_log", "/var/opt/mssql/data/shop_log__sensei_pitr.ldf",
    )  # fmt: skip
    assert restores[1][1] == ("/var/opt/mssql/backup/shop_log1.trn", "2026-02-02T08:59:00.000")
    assert restores[2][1] == (
        "/var/opt/mssql/backup/shop_log2.trn",
        "/var/opt/mssql/backup/shop_log2b.trn",
        "2026-02-02T08:59:00.000",
    )
    assert ("autocommit", True) in hook.calls
    sql = [s for s, _ in hook.executed]
    drop = sql.index("IF DB_ID(%s) IS NOT NULL DROP DATABASE [shop__sensei_pitr]")
    assert drop > max(i for i, s in enumerate(sql) if s.startswith(("RESTORE", "INSERT", "COMMIT")))


MARK = "sensei_0123456789abcdef012345678"


def test_a_start_mark_recorded_by_msdb_is_restored_to_exactly_with_stopatmark():
    """The marked transaction's own time (msdb, server time) picks the log chain; each log stops at the mark."""
    rc, hook = restore_copy()
    hook.answers = {"msdb.dbo.logmarkhistory": [(_at(8, 30),)], **hook.answers}
    target = RecoveryTarget(time=POINT, restore_point=MARK)
    plan = rc.assess(["crm.customers"], target, whole_database=False)
    assert plan.detail["stop_at_mark"] == MARK
    assert plan.steps[1:3] == [
        "RESTORE LOG [shop__sensei_pitr] FROM DISK = %s WITH NORECOVERY, STOPATMARK = %s",
        "RESTORE LOG [shop__sensei_pitr] FROM DISK = %s, DISK = %s WITH NORECOVERY, STOPATMARK = %s",
    ]
    rc.restore(plan, target)
    logs = [p for s, p in hook.executed if s.startswith("RESTORE LOG")]
    assert [p[-1] for p in logs] == [MARK, MARK]
    assert hook.executed[[s for s, _ in hook.executed].index(hook.sql("logmarkhistory")[0])][1] == (MARK,)


def test_a_mark_msdb_never_recorded_is_not_a_stop_the_restore_would_run_past():
    """STOPATMARK at a mark absent from the log would replay every log to its end: stop by time instead."""
    rc, _ = restore_copy()
    plan = rc.assess(["crm.customers"], RecoveryTarget(time=POINT, restore_point=MARK), whole_database=False)
    assert plan.detail["stop_at_mark"] is None
    assert plan.steps[1] == "RESTORE LOG [shop__sensei_pitr] FROM DISK = %s WITH NORECOVERY, STOPAT = %s"
    assert plan.warnings[0] == (
        f"the marked transaction {MARK} is not in msdb.dbo.logmarkhistory: the restore stops at "
        "2026-02-02T08:59:00 (server time) instead"
    )


def test_copy_is_dropped_when_the_restore_fails():
    rc, hook = restore_copy()
    plan = rc.assess(["crm.customers"], RecoveryTarget(time=POINT), whole_database=False)
    hook.fail["RESTORE LOG"] = RuntimeError("4305: The log in this backup set begins at LSN ...")
    with pytest.raises(RuntimeError, match="4305"):
        rc.restore(plan, RecoveryTarget(time=POINT))
    assert hook.sql("DROP DATABASE") and hook.sql("INSERT INTO") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "SIMPLE"}, "uses the SIMPLE recovery model: point-in-time restore needs FULL"),
        (
            {"history": (FULL, (2, "L", 2500, 3000, _at(6), _at(6, 1), "l1"))},
            "log chain is broken after the full",
        ),
        (
            {"history": (FULL, LOG1, (3, "L", 3100, 4000, _at(9), _at(9, 1), "l2"))},
            r"log chain is broken between .* \(LSN 3000 -> 3100\)",
        ),
        ({"history": (FULL, LOG1)}, r"no log backup taken after 2026-02-02T08:59:00 \(server time\) yet"),
        ({"history": (LOG1, LOG2)}, "no full backup finished before"),
    ],
)
def test_assess_refuses(kwargs, message):
    rc, hook = restore_copy(**kwargs)
    with pytest.raises(PointInTimeRefused, match=message):
        rc.assess(["crm.customers"], RecoveryTarget(time=POINT), whole_database=False)
    assert hook.sql("RESTORE") == []


def test_naive_point_is_not_a_target():
    with pytest.raises(PointInTimeRefused, match="no UTC offset"):
        RecoveryTarget(time=datetime(2026, 2, 2, 7, 59))


def test_chain_starts_from_the_newest_full_before_the_point():
    newer_full = Backup(9, "D", 2900, 3000, _at(7), _at(7, 5), ("f2",))
    backups = [Backup(b[0], b[1], b[2], b[3], b[4], b[5], (b[6],)) for b in (FULL, LOG1, LOG2)] + [newer_full]
    full, logs = restore_chain(sorted(backups, key=lambda b: b.finished), _at(8, 59))
    assert full.backup_set_id == 9 and [b.backup_set_id for b in logs] == [3]


def test_windows_start_at_the_full_backup():
    rc, _ = restore_copy()
    [window] = rc.windows(["crm.customers"], POINT)
    assert window.earliest == datetime(2026, 2, 2, 0, 10, tzinfo=UTC) and window.closes_at is None
    assert window.latest == NOW


def test_reset_sequences_reseeds_identities_and_restarts_default_sequences():
    engine, hook = mssql(
        **{
            "FROM sys.identity_columns c": lambda s, p: {"[crm].[customers]": [("id", 1, 1)]}.get(p[0], []),
            "JOIN sys.columns c ON": lambda s, p: (
                [("sales", "line_seq", "line_no", 1, 1)] if p[0] == "[sales].[order_items]" else []
            ),
            r"MAX\(\[id\]\) FROM \[crm\]": [(57,)],
            r"MAX\(\[line_no\]\)": [(None,)],
        }
    )
    resets = engine.reset_sequences(["crm.customers", "sales.order_items"])
    assert [(r.table, r.column, r.next_value) for r in resets] == [
        ("crm.customers", "id", 58),
        ("sales.order_items", "line_no", 1),
    ]
    assert hook.sql("DBCC|ALTER SEQUENCE") == [
        "DBCC CHECKIDENT (N'[crm].[customers]', RESEED, 57)",
        "ALTER SEQUENCE [sales].[line_seq] RESTART WITH 1",
    ]
    events = hook.events()
    assert events[-2:] == ["commit", "close"]  # one transaction
