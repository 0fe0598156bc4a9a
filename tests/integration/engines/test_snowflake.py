"""Snowflake engine: catalog and truncate on fakesnow; Time Travel (which fakesnow cannot run) by its SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.engines.base import (
    OutsideRows,
    PointInTimePlan,
    PointInTimeRefused,
    RecoveryTarget,
    Statement,
)
from sensei_airflow.engines.snowflake import SnowflakeEngine, SnowflakeTimeTravel
from tests.integration.engines.conftest import RecordingHook, with_hook

SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS CRM",
    "CREATE TABLE CRM.CUSTOMERS (id int primary key, email varchar)",
    # no FOREIGN KEY here: Snowflake does not enforce them, but DuckDB under fakesnow would
    "CREATE TABLE CRM.ORDERS (id int primary key, customer_id int)",
    "CREATE TABLE CRM.CAMPAIGNS (id int primary key, name varchar)",
    "INSERT INTO CRM.CUSTOMERS VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    "INSERT INTO CRM.ORDERS VALUES (10, 1), (11, 1), (12, 3)",
    "INSERT INTO CRM.CAMPAIGNS VALUES (1, 'spring')",
]


def test_registry_and_names(fake_snowflake):
    engine = get_engine(fake_snowflake.conn_id)
    assert isinstance(engine, SnowflakeEngine)
    assert engine.qualify("crm.customers") == "CRM.CUSTOMERS"
    assert engine.qualify("orders") == "CRM.ORDERS"  # the connection's schema
    # the canonical form keeps the quotes that matter: written bare, MixedCase would fold to MIXEDCASE
    assert engine.qualify('crm."MixedCase"') == 'CRM."MixedCase"'
    assert engine.qualify(engine.qualify('crm."MixedCase"')) == 'CRM."MixedCase"'
    assert engine.quote_table('crm."MixedCase"') == '"CRM"."MixedCase"'
    assert engine.quote_table("crm.customers") == '"CRM"."CUSTOMERS"'


def test_catalog_on_fakesnow(fake_snowflake):
    fake_snowflake.run(*SCHEMA, "CREATE TABLE CRM.ORDER_NOTES (order_id int references CRM.ORDERS(id))")
    engine = get_engine(fake_snowflake.conn_id)
    assert engine.user_tables() == ["CRM.CAMPAIGNS", "CRM.CUSTOMERS", "CRM.ORDERS", "CRM.ORDER_NOTES"]
    [fk] = engine.foreign_keys()
    assert (fk.child, fk.parent) == ("CRM.ORDER_NOTES", "CRM.ORDERS")
    assert engine.row_counts(["crm.customers", "crm.orders"]) == {"CRM.CUSTOMERS": 3, "CRM.ORDERS": 3}
    assert engine.identity() == "snowflake:sensei-test/SHOP"


def test_truncate_empties_only_the_scope_in_one_transaction(fake_snowflake):
    fake_snowflake.run(*SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    tables = ["CRM.ORDERS", "CRM.CUSTOMERS"]
    statements, removed = engine.empty_tables(tables, referenced_from_outside=[])
    assert [s.sql for s in statements] == [
        "BEGIN",
        'TRUNCATE TABLE "CRM"."ORDERS"',
        'TRUNCATE TABLE "CRM"."CUSTOMERS"',
    ]
    assert removed == {"CRM.ORDERS": 3, "CRM.CUSTOMERS": 3}
    assert engine.row_counts([*tables, "CRM.CAMPAIGNS"]) == {
        "CRM.ORDERS": 0,
        "CRM.CUSTOMERS": 0,
        "CRM.CAMPAIGNS": 1,
    }


def test_truncate_counts_the_outside_tables_in_its_transaction(fake_snowflake):
    fake_snowflake.run(*SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    with pytest.raises(OutsideRows, match=r"CRM\.CAMPAIGNS holds 1 rows"):  # as if it referenced the orders
        engine.empty_tables(["CRM.ORDERS"], referenced_from_outside=["CRM.ORDERS"], outside=["CRM.CAMPAIGNS"])
    assert engine.row_counts(["CRM.ORDERS"]) == {"CRM.ORDERS": 3}


def test_truncate_failure_rolls_back_every_table(fake_snowflake):
    fake_snowflake.run(*SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    with pytest.raises(Exception, match=r"(?i)does not exist|not found"):
        engine.empty_tables(["CRM.ORDERS", "CRM.NO_SUCH_TABLE"], referenced_from_outside=[])
    assert engine.row_counts(["CRM.ORDERS", "CRM.CUSTOMERS"]) == {"CRM.ORDERS": 3, "CRM.CUSTOMERS": 3}


def test_clone_and_rename_steps_run_on_fakesnow(fake_snowflake):
    """The steps of a restore that fakesnow can run (CLONE without AT, RENAME) work as generated."""
    fake_snowflake.run(*SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    names = SnowflakeTimeTravel.names("CRM.CUSTOMERS", "T9")
    quote = engine.quote_table
    engine.run_statements(
        [
            Statement(f"CREATE OR REPLACE TABLE {quote(names.restored)} CLONE {quote('CRM.CUSTOMERS')}"),
            SnowflakeTimeTravel(engine).swap_sql("CRM.CUSTOMERS", "T9")[1],
        ],
        transaction=False,
    )
    assert names.kept in engine.user_tables() and names.restored not in engine.user_tables()
    assert engine.row_counts([names.kept]) == {names.kept: 3}


# -- Time Travel: exact SQL and the calls on the hook --------------------------------------------
NOW = datetime(2026, 2, 10, 12, 0, tzinfo=UTC)
POINT = datetime(2026, 2, 2, 7, 59, tzinfo=UTC)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def _retention_rows(days: int = 30, **extra: datetime) -> list[tuple]:
    rows = [("CRM", "CUSTOMERS", days, CREATED), ("CRM", "ORDERS", days, CREATED)]
    rows += [(name.split(".")[0], name.split(".")[1], days, created) for name, created in extra.items()]
    return rows


def _time_travel(hook: RecordingHook) -> SnowflakeTimeTravel:
    engine = with_hook(SnowflakeEngine("snow"), hook)
    return SnowflakeTimeTravel(engine, clock=lambda: NOW)


def test_time_travel_sql_at_timestamp():
    tt = _time_travel(RecordingHook())
    statements = tt.restore_sql(["CRM.CUSTOMERS", "CRM.ORDERS"], "AB12", RecoveryTarget(time=POINT))
    assert [(s.sql, s.params) for s in statements] == [
        (
            'CREATE OR REPLACE TABLE "CRM"."CUSTOMERS__SENSEI_AB12_AT" CLONE "CRM"."CUSTOMERS" '
            "AT(TIMESTAMP => %s::TIMESTAMP_TZ)",
            ("2026-02-02T07:59:00+00:00",),
        ),
        (
            'CREATE OR REPLACE TABLE "CRM"."ORDERS__SENSEI_AB12_AT" CLONE "CRM"."ORDERS" '
            "AT(TIMESTAMP => %s::TIMESTAMP_TZ)",
            ("2026-02-02T07:59:00+00:00",),
        ),
        ('ALTER TABLE "CRM"."ORDERS" SWAP WITH "CRM"."ORDERS__SENSEI_AB12_AT"', ()),
        ('ALTER TABLE "CRM"."ORDERS__SENSEI_AB12_AT" RENAME TO "CRM"."ORDERS__SENSEI_AB12_PRE"', ()),
        ('ALTER TABLE "CRM"."CUSTOMERS" SWAP WITH "CRM"."CUSTOMERS__SENSEI_AB12_AT"', ()),
        ('ALTER TABLE "CRM"."CUSTOMERS__SENSEI_AB12_AT" RENAME TO "CRM"."CUSTOMERS__SENSEI_AB12_PRE"', ()),
    ]


def test_time_travel_sql_before_statement_when_query_id_known():
    tt = _time_travel(RecordingHook())
    target = RecoveryTarget(time=POINT, position="01b2c3d4-0000-1111-0000-00000000abcd")
    [clone, *_] = tt.restore_sql(["CRM.CUSTOMERS"], "AB12", target)
    assert clone.sql.endswith('CLONE "CRM"."CUSTOMERS" BEFORE(STATEMENT => %s)')
    assert clone.params == ("01b2c3d4-0000-1111-0000-00000000abcd",)
    assert [s.sql for s in tt.undo_sql(["CRM.CUSTOMERS"], "AB12")] == [
        'ALTER TABLE "CRM"."CUSTOMERS" SWAP WITH "CRM"."CUSTOMERS__SENSEI_AB12_PRE"'
    ]


@pytest.mark.parametrize(
    ("days", "point", "message"),
    [
        (1, POINT, r"keeps Time Travel for 1 day\(s\) \(DATA_RETENTION_TIME_IN_DAYS\)"),
        (0, POINT, "DATA_RETENTION_TIME_IN_DAYS = 0"),
        (30, NOW + timedelta(minutes=5), "in the future"),
        (8, NOW - timedelta(days=8) + timedelta(minutes=10), "outside it"),
    ],
)
def test_assess_refuses_points_outside_retention(days, point, message):
    hook = RecordingHook(answers={"retention_time": _retention_rows(days)})
    with pytest.raises(PointInTimeRefused, match=message):
        _time_travel(hook).assess(["CRM.CUSTOMERS"], RecoveryTarget(time=point), whole_database=False)
    assert hook.sql("CLONE|SWAP") == []


def test_assess_refuses_a_table_created_after_the_point():
    rows = [("CRM", "CUSTOMERS", 30, POINT + timedelta(hours=1))]
    hook = RecordingHook(answers={"retention_time": rows})
    with pytest.raises(PointInTimeRefused, match=r"created at .* after"):
        _time_travel(hook).assess(["CRM.CUSTOMERS"], RecoveryTarget(time=POINT), whole_database=False)


def test_assess_reads_retention_and_plans_clone_then_swap():
    hook = RecordingHook(answers={"retention_time": _retention_rows(10)})
    plan = _time_travel(hook).assess(
        ["CRM.CUSTOMERS", "CRM.ORDERS"], RecoveryTarget(time=POINT), whole_database=True
    )
    assert hook.sql("retention_time") and hook.sql("CLONE|SWAP") == []
    assert plan.path == "table" and plan.detail["retention_days"] == {"CRM.CUSTOMERS": 10, "CRM.ORDERS": 10}
    token = plan.detail["token"]
    assert [s.split("  --")[0] for s in plan.steps[:1]] == [
        f'CREATE OR REPLACE TABLE "CRM"."CUSTOMERS__SENSEI_{token}_AT" CLONE "CRM"."CUSTOMERS" '
        "AT(TIMESTAMP => %s::TIMESTAMP_TZ)"
    ]
    windows = _time_travel(hook).windows(["CRM.CUSTOMERS"], POINT)
    assert windows[0].closes_at == POINT + timedelta(days=10)


def test_restore_runs_clones_before_any_swap_in_autocommit():
    hook = RecordingHook(
        answers={"retention_time": _retention_rows(), "COUNT": [("CRM.CUSTOMERS", 5), ("CRM.ORDERS", 7)]}
    )
    tt = _time_travel(hook)
    plan = PointInTimePlan(tables=["CRM.CUSTOMERS", "CRM.ORDERS"], detail={"token": "T1"})
    outcome = tt.restore(plan, RecoveryTarget(time=POINT))
    ddl = hook.sql("CLONE|SWAP|RENAME")
    assert all(s.endswith("AT(TIMESTAMP => %s::TIMESTAMP_TZ)") for s in ddl[:2])
    assert [[*s.split()[0:2], s.split()[-1]] for s in ddl[2:]] == [
        ["ALTER", "TABLE", '"CRM"."ORDERS__SENSEI_T1_AT"'],
        ["ALTER", "TABLE", '"CRM"."ORDERS__SENSEI_T1_PRE"'],
        ["ALTER", "TABLE", '"CRM"."CUSTOMERS__SENSEI_T1_AT"'],
        ["ALTER", "TABLE", '"CRM"."CUSTOMERS__SENSEI_T1_PRE"'],
    ]
    assert ("autocommit", True) in hook.calls
    assert outcome.rows_restored == {"CRM.CUSTOMERS": 5, "CRM.ORDERS": 7}


def test_restore_retry_skips_tables_already_swapped():
    later = CREATED + timedelta(days=40)
    rows = [
        ("CRM", "CUSTOMERS", 30, later),  # already swapped: the live table is the clone
        ("CRM", "CUSTOMERS__SENSEI_T1_PRE", 30, CREATED),
        ("CRM", "ORDERS", 30, later),  # swapped, but the run died before the rename
        ("CRM", "ORDERS__SENSEI_T1_AT", 30, CREATED),
    ]
    hook = RecordingHook(answers={"retention_time": rows})
    tt = _time_travel(hook)
    plan = PointInTimePlan(tables=["CRM.CUSTOMERS", "CRM.ORDERS"], detail={"token": "T1"})
    outcome = tt.restore(plan, RecoveryTarget(time=POINT))
    assert hook.sql("CLONE|SWAP") == []
    assert hook.sql("RENAME") == [
        'ALTER TABLE "CRM"."ORDERS__SENSEI_T1_AT" RENAME TO "CRM"."ORDERS__SENSEI_T1_PRE"'
    ]
    assert outcome.detail["already_restored"] == ["CRM.CUSTOMERS"]


def test_hook_is_the_providers_snowflake_hook():
    from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

    hook = SnowflakeEngine("snow_x").hook
    assert isinstance(hook, SnowflakeHook) and hook.snowflake_conn_id == "snow_x"


def test_sequences_cannot_be_reset_and_say_why():
    with pytest.raises(NotImplementedError, match="cannot restart a sequence or an identity column in place"):
        SnowflakeEngine("snow").reset_sequences(["CRM.CUSTOMERS"])


def test_every_attempt_plans_the_same_helper_tables():
    """execute re-plans on each try: the names must not change, or a retry would not find its clones."""
    hook = RecordingHook(answers={"retention_time": _retention_rows()})
    tables, target = ["CRM.CUSTOMERS", "CRM.ORDERS"], RecoveryTarget(time=POINT)
    first = _time_travel(hook).assess(tables, target, whole_database=False)
    second = _time_travel(hook).assess(tables, target, whole_database=False)
    other = _time_travel(hook).assess(
        tables, RecoveryTarget(time=POINT - timedelta(hours=1)), whole_database=False
    )
    assert first.detail["token"] == second.detail["token"] != other.detail["token"]


def test_restore_refuses_a_copy_left_by_an_earlier_rollback_of_a_table_changed_since():
    rows = [
        ("CRM", "CUSTOMERS", 30, CREATED + timedelta(days=35), NOW),  # changed after the earlier rollback
        ("CRM", "CUSTOMERS__SENSEI_T1_PRE", 30, CREATED, NOW - timedelta(days=2)),
    ]
    hook = RecordingHook(answers={"retention_time": rows})
    plan = PointInTimePlan(tables=["CRM.CUSTOMERS"], detail={"token": "T1"})
    with pytest.raises(PointInTimeRefused, match=r"left from an earlier rollback of CRM\.CUSTOMERS"):
        _time_travel(hook).restore(plan, RecoveryTarget(time=POINT))
    assert hook.sql("CLONE|SWAP|RENAME") == []


def test_restore_point_is_a_query_id_used_with_before_statement():
    hook = RecordingHook(answers={"LAST_QUERY_ID": [("01b2-query-id",)]})
    tt = _time_travel(hook)
    assert tt.create_restore_point("sensei_mig_start") == "01b2-query-id"
    assert hook.executed[:2] == [
        ("SELECT %s AS sensei_restore_point", ("sensei_mig_start",)),
        ("SELECT LAST_QUERY_ID()", ()),
    ]
