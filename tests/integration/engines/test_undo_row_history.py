"""The undo log on Snowflake (change tracking read through Time Travel) and Oracle (Flashback Query).

No server of either runs here, and fakesnow has neither ``CHANGES`` nor ``AT``: the provider hook is
a recording fake that answers catalog queries with the rows each test states. What is shown: the
exact statements (hostile names quoted by the engine, the mark's moment written as a literal from
the recorded value), the order across tables, the one transaction, what the mark turns on and
closing turns off again, and each refusal's line. Whether a server accepts the statements is not.
"""

# ruff: noqa: S608 - the f-strings are the SQL expected, not queries built from input
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sensei_airflow.engines.base import MarkRefused, UndoLogRefused, UndoTable
from sensei_airflow.engines.oracle import OracleEngine
from sensei_airflow.engines.row_history import columns_fingerprint
from sensei_airflow.engines.snowflake import SnowflakeEngine
from tests.integration.engines.conftest import RecordingHook, one_line, with_hook

MARK = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
AT = f"AT(TIMESTAMP => '{MARK.isoformat()}'::TIMESTAMP_TZ)"
SHOW_COLUMNS = ["created_on", "name", "database_name", "schema_name", "change_tracking"]

# "Sales Data"."Order Items": key "Order ID"; a column with a quote and a non-ASCII letter, and one
# named by a reserved word
SF_TABLE = "Sales Data.Order Items"  # as the engine writes it: quotes only where a part needs them
SF_COLUMNS = [("Order ID", "NUMBER", 38, 0), ('Zoë "Q"', "TEXT", None, None), ("order", "TEXT", None, None)]


def snowflake(**answers) -> tuple[SnowflakeEngine, RecordingHook]:
    hook = RecordingHook(
        answers={
            "information_schema.columns": lambda sql, p: (
                SF_COLUMNS if p == ("Sales Data", "Order Items") else []
            ),
            **answers,
        },
        columns={"SHOW TABLES": SHOW_COLUMNS},
    )
    engine = with_hook(SnowflakeEngine("snow"), hook)
    engine.__dict__["default_schema"] = "PUBLIC"
    return engine, hook


def sf_undo(**extra) -> dict:
    return {
        "kind": "snowflake_changes",
        "at": MARK.isoformat(),
        "tracked": [SF_TABLE],
        "enabled": [],
        **extra,
    }


def show(tracking: str):
    return lambda sql, p: [(MARK, "Order Items", "DB", "Sales Data", tracking)]


def test_snowflake_mark_turns_change_tracking_on_before_the_moment_and_records_it():
    engine, hook = snowflake(
        **{
            "SHOW TABLES": show("OFF"),
            "CURRENT_TIMESTAMP": [(MARK.replace(tzinfo=None),)],
            "COUNT": lambda sql, p: [(p[0], 3, "-4711")] if "HASH_AGG" in sql else [(p[0], 3)],
        }
    )
    moment = engine.take_mark("sensei_mig", [SF_TABLE], undo_log=True, slot="unused")

    statements = [one_line(s) for s, _ in hook.executed]
    assert statements[0] == "SHOW TABLES LIKE 'Order Items' IN SCHEMA \"Sales Data\""
    turn_on = statements.index('ALTER TABLE "Sales Data"."Order Items" SET CHANGE_TRACKING = TRUE')
    moment_read = next(i for i, s in enumerate(statements) if "CURRENT_TIMESTAMP" in s)
    assert turn_on < moment_read  # CHANGES reads only from when tracking was on
    assert moment.undo_log == {
        "kind": "snowflake_changes",
        "tracked": [SF_TABLE],
        "enabled": [SF_TABLE],
        "at": MARK.isoformat(),
    }
    assert moment.tables == {SF_TABLE: {"rows": 3, "checksum": "-4711"}}
    assert moment.schema == {SF_TABLE: columns_fingerprint({c: t for c, t, *_ in _types(SF_COLUMNS)})}


def _types(rows):
    return [(c, f"{t}({p}, {s})" if t == "NUMBER" else t) for c, t, p, s in rows]


def test_snowflake_mark_leaves_tracking_that_was_on_alone_and_close_turns_off_only_its_own():
    engine, hook = snowflake(
        **{
            "SHOW TABLES": show("ON"),
            "CURRENT_TIMESTAMP": [(MARK.replace(tzinfo=None),)],
            "COUNT": lambda sql, p: [(p[0], 3, "1")] if "HASH_AGG" in sql else [(p[0], 3)],
        }
    )
    moment = engine.take_mark("sensei_mig", [SF_TABLE], undo_log=True, slot="unused")
    assert moment.undo_log["enabled"] == []
    assert not hook.sql("CHANGE_TRACKING")
    assert engine.close_undo_log(moment.undo_log) == []

    engine, hook = snowflake(**{"SHOW TABLES": show("ON")})
    assert engine.close_undo_log(sf_undo(enabled=[SF_TABLE])) == [
        "change tracking off again on Sales Data.Order Items"
    ]
    assert hook.sql("ALTER") == ['ALTER TABLE "Sales Data"."Order Items" SET CHANGE_TRACKING = FALSE']


def test_snowflake_undo_is_one_merge_per_table_from_the_table_at_the_mark():
    engine, hook = snowflake(**{"retention_time": [("Sales Data", "Order Items", 30, MARK, MARK)]})
    hook.rowcounts["MERGE"] = 12
    table = UndoTable(SF_TABLE, ('"Order ID"',))
    statements, changed, detail = engine.apply_undo(sf_undo(), [table], [])

    changes = (
        f'SELECT DISTINCT "Order ID" FROM "Sales Data"."Order Items" CHANGES(INFORMATION => DEFAULT) {AT}'
    )
    assert statements == [
        'MERGE INTO "Sales Data"."Order Items" t USING (SELECT c."Order ID" AS "sensei$key_1", m."Order ID", '
        f'm."Zoë ""Q""", m."order" FROM ({changes}) c LEFT JOIN "Sales Data"."Order Items" {AT} m '
        'ON m."Order ID" = c."Order ID") s ON (t."Order ID" = s."sensei$key_1") '
        'WHEN MATCHED AND s."Order ID" IS NULL THEN DELETE '
        'WHEN MATCHED THEN UPDATE SET "Zoë ""Q""" = s."Zoë ""Q""", "order" = s."order" '
        'WHEN NOT MATCHED AND s."Order ID" IS NOT NULL THEN INSERT ("Order ID", "Zoë ""Q""", "order") '
        'VALUES (s."Order ID", s."Zoë ""Q""", s."order")'
    ]
    assert changed == {SF_TABLE: 12}
    assert detail["history"] == "snowflake_changes" and detail["at"] == MARK.isoformat()
    # one transaction: BEGIN, the MERGE, commit
    events = [
        e
        for e in hook.events()
        if not e.startswith(("execute SELECT", "execute SHOW", "rollback", "close", "connect"))
    ]
    assert events == ["execute BEGIN", 'execute MERGE INTO "Sales', "commit"]


def test_snowflake_dry_run_counts_the_changed_keys_by_what_the_undo_does():
    engine, hook = snowflake(
        **{
            "retention_time": [("Sales Data", "Order Items", 30, MARK, MARK)],
            "FETCH FIRST": [(7, "delete"), (3, "update")],
            "COUNT\\(\\*\\), COUNT\\(CASE": [(65, 5, 10, 50)],
        }
    )
    summary = engine.undo_summary(sf_undo(), [UndoTable(SF_TABLE, ('"Order ID"',))], sample=2)
    assert summary.per_table == {SF_TABLE: {"insert": 5, "update": 10, "delete": 50}}
    assert summary.captured == {SF_TABLE: {"changed keys": 65}}
    assert summary.samples == {
        SF_TABLE: [{"undo": "delete", "key": {"Order ID": 7}}, {"undo": "update", "key": {"Order ID": 3}}]
    }
    [counts] = hook.sql("COUNT\\(CASE")[:1]
    assert one_line(counts) == (
        'SELECT COUNT(*), COUNT(CASE WHEN m."Order ID" IS NOT NULL AND n."Order ID" IS NULL THEN 1 END), '
        'COUNT(CASE WHEN m."Order ID" IS NOT NULL AND n."Order ID" IS NOT NULL THEN 1 END), '
        'COUNT(CASE WHEN m."Order ID" IS NULL AND n."Order ID" IS NOT NULL THEN 1 END) '
        f'FROM (SELECT DISTINCT "Order ID" FROM "Sales Data"."Order Items" CHANGES(INFORMATION => DEFAULT) {AT}) c '
        f'LEFT JOIN "Sales Data"."Order Items" {AT} m ON m."Order ID" = c."Order ID" '
        'LEFT JOIN "Sales Data"."Order Items" n ON n."Order ID" = c."Order ID"'
    )
    assert hook.sql("FETCH FIRST 2 ROWS ONLY")


@pytest.mark.parametrize(
    ("undo", "retention", "schema", "reason"),
    [
        (
            sf_undo(tracked=[]),
            30,
            {},
            "Sales Data.Order Items was not in the migration when the start mark was taken: no change "
            "tracking reaches back to it; roll back with backup_restore or point_in_time",
        ),
        (
            sf_undo(at=(datetime.now(UTC) - timedelta(days=2)).isoformat()),
            1,
            {},
            "the undo log of Sales Data.Order Items is gone: its Time Travel retention (1 d) no longer "
            "reaches the start mark",
        ),
        (
            sf_undo(),
            30,
            {SF_TABLE: "fingerprint-at-the-mark"},
            "Sales Data.Order Items changed its columns since the start mark (DDL): its history cannot be "
            "read across it; roll back with backup_restore or point_in_time",
        ),
    ],
    ids=["not-tracked", "retention-ended", "ddl-since-the-mark"],
)
def test_snowflake_refusals_say_why_in_one_line(undo, retention, schema, reason):
    now = datetime.now(UTC)
    engine, hook = snowflake(**{"retention_time": [("Sales Data", "Order Items", retention, now, now)]})
    table = UndoTable(SF_TABLE, ('"Order ID"',))
    problems = engine.undo_log_problems(undo, [table], schema)
    assert len(problems) == 1 and reason in problems[0]
    if not schema:  # the undo itself checks again (the strategy checks the columns before it)
        with pytest.raises(UndoLogRefused) as refused:
            engine.apply_undo(undo, [table], [])
        assert str(refused.value) == problems[0]
    assert not hook.sql("MERGE|BEGIN")


# -- Oracle -------------------------------------------------------------------------------------
ORA_COLUMNS = {
    ("CRM", "CUSTOMERS"): [("ID", "NUMBER"), ("Display Name", "VARCHAR2")],
    ("SALES", "ORDER LINES"): [("ORDER_ID", "NUMBER"), ("Line No", "NUMBER"), ("QTY", "NUMBER")],
}
ORA_UNDO = {
    "kind": "oracle_flashback",
    "scn": 4_799_999,
    "at": MARK.isoformat(),
    "undo_retention_seconds": 900,
}


def oracle(**answers) -> tuple[OracleEngine, RecordingHook]:
    hook = RecordingHook(
        answers={
            "CURRENT_SCHEMA": [("SHOP",)],
            "all_tab_columns WHERE": lambda sql, p: ORA_COLUMNS.get(tuple(p), []),
            "all_tab_identity_cols": [],
            "undo_retention": [("86400",)],
            **answers,
        }
    )
    return with_hook(OracleEngine("ora"), hook), hook


PARENT = UndoTable("CRM.CUSTOMERS", ("id",))
CHILD = UndoTable('SALES."ORDER LINES"', ("order_id", '"Line No"'))
VERSIONS = "VERSIONS BETWEEN SCN 4799999 AND MAXVALUE WHERE VERSIONS_STARTSCN IS NOT NULL OR VERSIONS_ENDSCN IS NOT NULL"


def test_oracle_undo_merges_parents_first_then_deletes_children_first_in_one_locked_transaction():
    engine, hook = oracle()
    hook.rowcounts.update({"MERGE": 4, "DELETE": 2})
    statements, changed, _ = engine.apply_undo(ORA_UNDO, [PARENT, CHILD], [])

    child_keys = f'SELECT DISTINCT "ORDER_ID", "Line No" FROM "SALES"."ORDER LINES" {VERSIONS}'
    assert statements == [
        'LOCK TABLE "CRM"."CUSTOMERS", "SALES"."ORDER LINES" IN EXCLUSIVE MODE WAIT 30',
        'MERGE INTO "CRM"."CUSTOMERS" t USING (SELECT m."ID", m."Display Name" FROM "CRM"."CUSTOMERS" AS OF SCN '
        f'4799999 m WHERE (m."ID") IN (SELECT DISTINCT "ID" FROM "CRM"."CUSTOMERS" {VERSIONS})) s ON (t."ID" = s."ID") '
        'WHEN MATCHED THEN UPDATE SET t."Display Name" = s."Display Name" '
        'WHEN NOT MATCHED THEN INSERT ("ID", "Display Name") VALUES (s."ID", s."Display Name")',
        'MERGE INTO "SALES"."ORDER LINES" t USING (SELECT m."ORDER_ID", m."Line No", m."QTY" FROM '
        f'"SALES"."ORDER LINES" AS OF SCN 4799999 m WHERE (m."ORDER_ID", m."Line No") IN ({child_keys})) s '
        'ON (t."ORDER_ID" = s."ORDER_ID" AND t."Line No" = s."Line No") WHEN MATCHED THEN UPDATE SET t."QTY" = s."QTY" '
        'WHEN NOT MATCHED THEN INSERT ("ORDER_ID", "Line No", "QTY") VALUES (s."ORDER_ID", s."Line No", s."QTY")',
        f'DELETE FROM "SALES"."ORDER LINES" WHERE ("ORDER_ID", "Line No") IN ({child_keys} MINUS SELECT "ORDER_ID", '
        '"Line No" FROM "SALES"."ORDER LINES" AS OF SCN 4799999)',
        'DELETE FROM "CRM"."CUSTOMERS" WHERE ("ID") IN (SELECT DISTINCT "ID" FROM "CRM"."CUSTOMERS" '
        f'{VERSIONS} MINUS SELECT "ID" FROM "CRM"."CUSTOMERS" AS OF SCN 4799999)',
    ]
    assert changed == {"CRM.CUSTOMERS": 6, 'SALES."ORDER LINES"': 6}
    tail = [
        e
        for e in hook.events()
        if e.startswith(("autocommit", "execute LOCK", "execute MERGE", "execute DELETE", "commit"))
    ]
    assert tail == [
        "autocommit False",
        'execute LOCK TABLE "CRM"."CUSTOMERS",',
        'execute MERGE INTO "CRM"."CUSTOMERS"',
        'execute MERGE INTO "SALES"."ORDER',
        'execute DELETE FROM "SALES"."ORDER',
        'execute DELETE FROM "CRM"."CUSTOMERS"',
        "commit",
    ]


def test_oracle_mark_keeps_the_scn_and_the_undo_retention():
    engine, _ = oracle(
        GET_SYSTEM_CHANGE_NUMBER=[(4_799_999, MARK.replace(tzinfo=None))], COUNT=lambda s, p: [(p[0], 7)]
    )
    moment = engine.take_mark("sensei_mig", ["CRM.CUSTOMERS"], undo_log=True, slot="unused")
    assert moment.undo_log == {
        "kind": "oracle_flashback",
        "undo_retention_seconds": 86400,
        "scn": 4_799_999,
        "at": MARK.isoformat(),
    }
    assert moment.schema == {
        "CRM.CUSTOMERS": columns_fingerprint({"ID": "NUMBER", "Display Name": "VARCHAR2"})
    }


def test_oracle_mark_is_refused_when_the_undo_retention_cannot_be_read():
    engine, hook = oracle()
    hook.fail["v\\$parameter"] = RuntimeError("ORA-00942: table or view does not exist")
    with pytest.raises(MarkRefused) as refused:
        engine.take_mark("sensei_mig", ["CRM.CUSTOMERS"], undo_log=True, slot="unused")
    assert str(refused.value) == (
        "cannot read UNDO_RETENTION on ora (RuntimeError): grant SELECT on V_$PARAMETER to the connection's user, "
        "or disable rollback.undo_log"
    )


def test_oracle_refuses_a_mark_older_than_the_undo_retention_and_an_always_identity():
    engine, hook = oracle(
        undo_retention=[("900",)],
        all_tab_identity_cols=lambda s, p: (
            [("ID", "ALWAYS", "NO", "START WITH: 1", "ISEQ$$_1")] if p == ("CRM", "CUSTOMERS") else []
        ),
    )
    old = {**ORA_UNDO, "at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    problems = engine.undo_log_problems(old, [PARENT, CHILD], {})
    assert problems[0].startswith(
        "the undo log may be gone: Oracle keeps row history for UNDO_RETENTION = 900 s and the start mark ("
    )
    assert problems[0].endswith(") is older; roll back with backup_restore")
    assert problems[1] == (
        "CRM.CUSTOMERS.ID is GENERATED ALWAYS AS IDENTITY: deleted rows cannot be inserted again with their "
        "values; make it GENERATED BY DEFAULT for the rollback, or use point_in_time"
    )
    with pytest.raises(UndoLogRefused) as refused:
        engine.apply_undo(old, [PARENT, CHILD], [])
    assert str(refused.value) == problems[0]
    assert not hook.sql("MERGE|DELETE|LOCK")


def test_a_table_without_a_key_or_gone_is_refused():
    engine, _ = oracle()
    problems = engine.undo_log_problems(
        ORA_UNDO, [UndoTable("CRM.CUSTOMERS", ()), UndoTable("CRM.GONE", ("id",))], {}
    )
    assert problems == [
        "CRM.CUSTOMERS has no key in the manifest: the undo log cannot tell its rows apart; roll back with "
        "backup_restore or point_in_time",
        "CRM.GONE no longer exists (DDL since the start mark); roll back with backup_restore or point_in_time",
    ]


def test_a_key_whose_name_holds_braces_is_quoted_not_read_as_a_placeholder():
    engine, hook = oracle(**{"COUNT\\(\\*\\), COUNT\\(CASE": [(2, 1, 0, 1)], "FETCH FIRST": [(7, "insert")]})
    ORA_COLUMNS[("CRM", "BRACES")] = [("{mark} Nr", "NUMBER")]
    try:
        summary = engine.undo_summary(ORA_UNDO, [UndoTable("CRM.BRACES", ('"{mark} Nr"',))], sample=1)
    finally:
        del ORA_COLUMNS[("CRM", "BRACES")]
    assert summary.per_table == {"CRM.BRACES": {"insert": 1, "update": 0, "delete": 1}}
    assert summary.samples == {"CRM.BRACES": [{"undo": "insert", "key": {"{mark} Nr": 7}}]}
    [sampled] = hook.sql("FETCH FIRST")
    assert sampled.startswith(
        'SELECT c."{mark} Nr", CASE WHEN m."{mark} Nr" IS NULL AND n."{mark} Nr" IS NOT NULL'
    )
