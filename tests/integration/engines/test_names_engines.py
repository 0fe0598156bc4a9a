"""Names as real schemas hold them, on the engines other than PostgreSQL.

Snowflake on fakesnow (catalog, truncate, clone and rename run for real); Oracle and SQL Server
through the SQL they generate and the calls on a recording hook; BigQuery on bqemulator where it
takes such names, and through its generated SQL. The folding rule (names.py): Snowflake and Oracle
upper-case an unquoted plain identifier, every other part is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.engines.base import RecoveryTarget, Statement
from sensei_airflow.engines.bigquery import BigQueryEngine, BigQueryTimeTravel
from sensei_airflow.engines.mssql import MsSqlEngine, MsSqlRestoreCopy
from sensei_airflow.engines.oracle import OracleEngine, OracleFlashback
from sensei_airflow.engines.snowflake import SnowflakeTimeTravel
from tests.integration.engines.conftest import RecordingHook, with_hook

POINT = datetime(2026, 2, 2, 7, 59, tzinfo=UTC)

SNOWFLAKE_SCHEMA = [
    'CREATE SCHEMA IF NOT EXISTS "Sales Data"',
    'CREATE TABLE "Sales Data"."Order Items" ("Line #" int, "Display Name" varchar, id int)',
    'CREATE TABLE "Sales Data"."orders" (id int)',  # lower case: exists only quoted
    "CREATE TABLE CRM.CUSTOMERS (id int)",
    """INSERT INTO "Sales Data"."Order Items" VALUES (1, 'Zoë | Ünal', 1), (2, 'O''Brien', 2)""",
    """INSERT INTO "Sales Data"."orders" VALUES (1), (2), (3)""",
    "INSERT INTO CRM.CUSTOMERS VALUES (1)",
]


def test_snowflake_catalog_names_compare_equal_to_manifest_names(fake_snowflake):
    fake_snowflake.run("CREATE SCHEMA IF NOT EXISTS CRM", *SNOWFLAKE_SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    tables = engine.user_tables()
    assert tables == ["CRM.CUSTOMERS", "Sales Data.Order Items", 'Sales Data."orders"']
    # as a manifest writes them: the quoted lower-case table, the spaced one with or without quotes
    for written in [
        '"Sales Data"."Order Items"',
        "Sales Data.Order Items",
        'Sales Data."orders"',
        "crm.customers",
    ]:
        assert engine.qualify(written) in tables, written
    assert engine.row_counts(['"Sales Data"."Order Items"', 'Sales Data."orders"']) == {
        "Sales Data.Order Items": 2,
        'Sales Data."orders"': 3,
    }
    # columns: the catalog answers exact names; a manifest's unquoted id is ID there
    assert engine.reverse_column_types("Sales Data.Order Items") == {
        "Line #": "NUMBER(38, 0)",
        "Display Name": "TEXT",
        "ID": "NUMBER(38, 0)",
    }
    assert engine.column_name("id") == "ID" and engine.column_name('"Line #"') == "Line #"
    assert engine.quote_column("Display Name") == '"Display Name"'


def test_snowflake_truncates_such_tables_in_one_transaction(fake_snowflake):
    fake_snowflake.run("CREATE SCHEMA IF NOT EXISTS CRM", *SNOWFLAKE_SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    tables = [engine.qualify('"Sales Data"."Order Items"'), engine.qualify('Sales Data."orders"')]
    statements, removed = engine.empty_tables(tables, referenced_from_outside=[])
    assert [s.sql for s in statements] == [
        "BEGIN",
        'TRUNCATE TABLE "Sales Data"."Order Items"',
        'TRUNCATE TABLE "Sales Data"."orders"',
    ]
    assert removed == {"Sales Data.Order Items": 2, 'Sales Data."orders"': 3}
    assert engine.row_counts([*tables, "CRM.CUSTOMERS"]) == {
        "Sales Data.Order Items": 0,
        'Sales Data."orders"': 0,
        "CRM.CUSTOMERS": 1,
    }


def test_snowflake_time_travel_helper_tables_keep_the_exact_name(fake_snowflake):
    fake_snowflake.run("CREATE SCHEMA IF NOT EXISTS CRM", *SNOWFLAKE_SCHEMA)
    engine = get_engine(fake_snowflake.conn_id)
    table = 'Sales Data."orders"'
    names = SnowflakeTimeTravel.names(table, "T9")
    assert names.restored == 'Sales Data."orders__SENSEI_T9_AT"'
    assert names.kept == 'Sales Data."orders__SENSEI_T9_PRE"'
    travel = SnowflakeTimeTravel(engine)
    clone = travel.clone_sql(table, "T9", RecoveryTarget(time=POINT))
    assert clone.sql == (
        'CREATE OR REPLACE TABLE "Sales Data"."orders__SENSEI_T9_AT" CLONE "Sales Data"."orders" '
        "AT(TIMESTAMP => %s::TIMESTAMP_TZ)"
    )
    swap, rename = travel.swap_sql(table, "T9")
    assert swap.sql == 'ALTER TABLE "Sales Data"."orders" SWAP WITH "Sales Data"."orders__SENSEI_T9_AT"'
    assert rename.purpose.endswith("(orders__SENSEI_T9_PRE)")
    # what fakesnow runs (no AT, no SWAP): the clone and the rename, under the exact names
    engine.run_statements(
        [
            Statement(
                f"CREATE OR REPLACE TABLE {engine.quote_table(names.restored)} CLONE {engine.quote_table(table)}"
            ),
            rename,
        ],
        transaction=False,
    )
    assert names.kept in engine.user_tables() and names.restored not in engine.user_tables()
    assert engine.row_counts([names.kept]) == {names.kept: 3}


# -- Oracle: generated SQL, calls on a recording hook -----------------------------------------------
ORACLE_FKS = [
    ("FK Items", "Sales Data", "Order Items", "Sales Data", "orders", "ENABLED"),
    ("FK_ORDERS", "Sales Data", "orders", "APP", "CUSTOMERS", "ENABLED"),
]
ORACLE_IDENTITY = {
    ("Sales Data", "Order Items"): [("Line #", "BY DEFAULT", "NO", "START WITH: 1, INCREMENT BY: 1")]
}


def oracle() -> tuple[OracleEngine, RecordingHook]:
    hook = RecordingHook(
        answers={
            "CURRENT_SCHEMA": [("APP",)],
            "all_tab_identity_cols": lambda sql, p: ORACLE_IDENTITY.get(tuple(p), []),
            "constraint_type = 'R'": ORACLE_FKS,
            "FROM all_tables t JOIN": [
                ("APP", "CUSTOMERS"),
                ("Sales Data", "Order Items"),
                ("Sales Data", "orders"),
            ],
            "row_movement": lambda sql, p: [(p[0], p[1], "ENABLED")],
            "v\\$parameter": [(86400,)],
        }
    )
    return with_hook(OracleEngine("ora"), hook), hook


def test_oracle_names_fold_and_quote():
    engine, _ = oracle()
    assert engine.user_tables() == ["APP.CUSTOMERS", "Sales Data.Order Items", 'Sales Data."orders"']
    assert engine.qualify("customers") == "APP.CUSTOMERS"
    assert engine.qualify('"Sales Data"."orders"') == 'Sales Data."orders"'
    [items, orders] = engine.foreign_keys()
    assert (items.child, items.parent) == ("Sales Data.Order Items", 'Sales Data."orders"')
    assert (orders.child, orders.parent) == ('Sales Data."orders"', "APP.CUSTOMERS")
    assert engine.name_problems('app."say ""hi"""') == [
        'table app."say ""hi""": the table name holds a double quote character, which Oracle does not allow '
        "in a name"
    ]


def test_oracle_truncate_and_identity_restart_of_such_tables():
    engine, hook = oracle()
    tables = ["Sales Data.Order Items", 'Sales Data."orders"']  # children first
    statements = engine.empty_tables_sql(tables, [])
    # orders is referenced by an enabled foreign key: DELETE in one transaction, children first
    assert [s.sql for s in statements] == [
        'DELETE FROM "Sales Data"."Order Items"',
        'DELETE FROM "Sales Data"."orders"',
        "COMMIT",
        'ALTER TABLE "Sales Data"."Order Items" MODIFY ("Line #" GENERATED BY DEFAULT AS IDENTITY (START WITH 1))',
    ]
    # the catalog was asked for the exact names, as bind parameters
    assert ("Sales Data", "Order Items") in [p for s, p in hook.executed if "all_tab_identity_cols" in s]
    assert engine.lock_sql(tables)[0].sql == (
        'LOCK TABLE "Sales Data"."Order Items", "Sales Data"."orders" IN EXCLUSIVE MODE WAIT 30'
    )


def test_oracle_flashback_of_such_tables():
    engine, hook = oracle()
    flashback = OracleFlashback(engine, clock=lambda: POINT.replace(day=3))
    tables = ["APP.CUSTOMERS", "Sales Data.Order Items"]
    statement = flashback.flashback_sql(tables, RecoveryTarget(time=POINT, position="42"))
    assert statement.sql == 'FLASHBACK TABLE "APP"."CUSTOMERS", "Sales Data"."Order Items" TO SCN 42'
    flashback.check(tables, RecoveryTarget(time=POINT), POINT.replace(day=3))
    asked = [p for s, p in hook.executed if "row_movement" in s]
    assert asked == [("APP", "CUSTOMERS"), ("Sales Data", "Order Items")]


# -- SQL Server: generated SQL, calls on a recording hook -----------------------------------------
MSSQL_FKS = [("FK items", "Sales Data", "Order.Items", "dbo", "it's")]
MSSQL_COLUMNS = {
    "[Sales Data].[Order.Items]": [("Line #", False), ("a]b", False)],
    "[dbo].[it's]": [("id", True)],
}


def mssql() -> tuple[MsSqlEngine, RecordingHook]:
    hook = RecordingHook(
        answers={
            "sys.foreign_keys": MSSQL_FKS,
            "FROM sys.tables t JOIN": [("dbo", "it's"), ("Sales Data", "Order.Items")],
            "sys.identity_columns WHERE object_id = OBJECT_ID\\(%s\\)": lambda s, p: (
                [(1, 1)] if "it's" in p[0] else []
            ),
            "is_computed": lambda s, p: MSSQL_COLUMNS.get(p[0], []),
        }
    )
    return with_hook(MsSqlEngine("ms"), hook), hook


def test_sql_server_truncate_of_such_tables():
    engine, hook = mssql()
    assert engine.user_tables() == ["dbo.it's", 'Sales Data."Order.Items"']
    tables = ['Sales Data."Order.Items"', "dbo.it's"]  # children first
    assert [s.sql for s in engine.empty_tables_sql(tables, [])] == [
        "TRUNCATE TABLE [Sales Data].[Order.Items]",
        "DELETE FROM [dbo].[it's]",
        "IF EXISTS (SELECT 1 FROM sys.identity_columns WHERE object_id = OBJECT_ID(N'[dbo].[it''s]') "
        "AND last_value IS NOT NULL) DBCC CHECKIDENT (N'[dbo].[it''s]', RESEED, 0)",
    ]
    # catalog lookups get the quoted name as a parameter, never pasted
    assert ("[dbo].[it's]",) in [p for s, p in hook.executed if "OBJECT_ID(%s)" in s]


def test_sql_server_copy_back_of_such_tables():
    engine, _ = mssql()
    restore = MsSqlRestoreCopy(engine)
    tables = ["dbo.it's", 'Sales Data."Order.Items"']  # parents first
    columns = {t: restore._columns(t) for t in tables}
    statements = [s.sql for s in restore.copy_back_sql("shop__sensei_pitr", tables, columns)]
    assert statements == [
        "SET XACT_ABORT ON",
        "BEGIN TRANSACTION",
        "DELETE FROM [Sales Data].[Order.Items]",
        "DELETE FROM [dbo].[it's]",
        "SET IDENTITY_INSERT [dbo].[it's] ON",
        "INSERT INTO [dbo].[it's] ([id]) SELECT [id] FROM [shop__sensei_pitr].[dbo].[it's]",
        "SET IDENTITY_INSERT [dbo].[it's] OFF",
        "INSERT INTO [Sales Data].[Order.Items] ([Line #], [a]]b]) SELECT [Line #], [a]]b] FROM "
        "[shop__sensei_pitr].[Sales Data].[Order.Items]",
        "COMMIT TRANSACTION",
    ]


# -- BigQuery ------------------------------------------------------------------------------------------
def test_bigquery_sql_of_such_tables():
    engine = BigQueryEngine("bq")
    table = "shop_ds.Order Items"
    assert engine.qualify('"shop_ds"."Order Items"') == table
    assert engine.quote_table(table) == "`shop_ds`.`Order Items`"
    assert [s.sql for s in engine.empty_tables_sql([table, "shop_ds.Straße"], [])] == [
        "BEGIN TRANSACTION;\nTRUNCATE TABLE `shop_ds`.`Order Items`;\nTRUNCATE TABLE `shop_ds`.`Straße`;\n"
        "COMMIT TRANSACTION;"
    ]
    travel = BigQueryTimeTravel(engine)
    assert travel.staged(table, "ab12") == "shop_ds.Order Items__sensei_ab12"
    assert travel.stage_sql(table, "ab12", RecoveryTarget(time=POINT)).sql == (
        "CREATE OR REPLACE TABLE `shop_ds`.`Order Items__sensei_ab12` AS SELECT * FROM `shop_ds`.`Order Items` "
        "FOR SYSTEM_TIME AS OF TIMESTAMP '2026-02-02 07:59:00.000000+00:00'"
    )
    assert engine.dotted('"proj-1".shop_ds."Order Items"') == "proj-1.shop_ds.Order Items"


@pytest.fixture
def names_dataset(bigquery_conn, bq_emulator):
    import uuid

    client = bq_emulator.client()
    name = f"names_{uuid.uuid4().hex[:8]}"
    client.create_dataset(name)
    for sql in [
        "CREATE TABLE `DS`.`order` (`Straße` INT64, note STRING)",
        "INSERT INTO `DS`.`order` VALUES (1, 'a'), (2, 'b')",
        "CREATE TABLE `DS`.campaigns (id INT64)",
        "INSERT INTO `DS`.campaigns VALUES (1)",
    ]:
        client.query(sql.replace("DS", name)).result()
    yield name
    client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def test_bigquery_catalog_and_truncate_on_the_emulator(names_dataset, bigquery_conn):
    # the emulator takes reserved words and non-ASCII columns, not yet spaces in table ids
    engine = get_engine(bigquery_conn)
    table = f"{names_dataset}.order"
    assert table in engine.user_tables()
    assert engine.row_counts([f'"{names_dataset}"."order"']) == {table: 2}
    statements, removed = engine.empty_tables([table], [])
    assert [s.sql for s in statements] == [
        f"BEGIN TRANSACTION;\nTRUNCATE TABLE `{names_dataset}`.`order`;\nCOMMIT TRANSACTION;"
    ]
    assert removed == {table: 2}
    assert engine.row_counts([table, f"{names_dataset}.campaigns"]) == {
        table: 0,
        f"{names_dataset}.campaigns": 1,
    }
