"""The grammar of written names, their canonical form, and how each engine folds and quotes them."""

from __future__ import annotations

import itertools

import pytest

from sensei_airflow.engines.base import Engine
from sensei_airflow.engines.bigquery import BigQueryEngine
from sensei_airflow.engines.mssql import MsSqlEngine
from sensei_airflow.engines.oracle import OracleEngine
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.snowflake import SnowflakeEngine
from sensei_airflow.names import (
    Part,
    canonical_part,
    canonical_table,
    file_stem,
    format_name,
    last_part,
    markdown_cell,
    parse_name,
    split_list,
)

#: exact names a real schema holds (SQL Server, Oracle, Access and spreadsheet migrations).
HOSTILE = [
    "orders",
    "ORDERS",
    "Orders",
    "order",
    "user",
    "select",
    "Display Name",
    "Order Items",
    "Sales Data",
    "Straße",
    "Ümlaut.Straße",
    "Order.Items",
    'a"b',
    '"',
    '""quoted""',
    " leading",
    "trailing ",
    "🦄 unicorns",
    "商品",
    "a,b",
    "a|b",
    "../x",
    "a/b",
    "x;DROP TABLE y",
    "$dollar",
    "_under",
    "tab\there",
    "it's",
    "[brackets]",
    "`backtick`",
]


@pytest.mark.parametrize(
    ("written", "parts"),
    [
        ("sales.orders", (Part("sales"), Part("orders"))),
        ("orders", (Part("orders"),)),
        ("Sales Data.Order Items", (Part("Sales Data"), Part("Order Items"))),
        ('"Sales Data"."Order.Items"', (Part("Sales Data", True), Part("Order.Items", True))),
        ('public."a""b"', (Part("public"), Part('a"b', True))),
        ('"a""b"', (Part('a"b', True),)),
        ('" leading"', (Part(" leading", True),)),
        ("Straße.Ümlaut", (Part("Straße"), Part("Ümlaut"))),
        ("public.order", (Part("public"), Part("order"))),
        ("user", (Part("user"),)),
        ("🦄.商品", (Part("🦄"), Part("商品"))),
        ('"x"."y"', (Part("x", True), Part("y", True))),
        ("a,b.c|d", (Part("a,b"), Part("c|d"))),
    ],
)
def test_grammar_reads_parts(written, parts):
    assert parse_name(written) == parts


@pytest.mark.parametrize(
    ("written", "max_parts", "message"),
    [
        (
            "x.y.z",
            2,
            "'x.y.z' has 3 dot-separated parts, but a table name is table or schema.table: a part holding a "
            'dot must be quoted ("x.y".z or x."y.z")',
        ),
        (
            "Order.Items",
            1,
            "'Order.Items' has 2 dot-separated parts, but a column, key or role name is one part: quote it "
            'to keep the dot: "Order.Items"',
        ),
        (
            'say "hi"',
            2,
            """part 'say "hi"' of 'say "hi"' holds a double quote: quote the part and write the quote twice: """
            '"say ""hi"""',
        ),
        (
            " orders",
            2,
            """part ' orders' of ' orders' starts or ends with whitespace: quote it to keep the spaces """
            """(" orders"), or remove them""",
        ),
        ('"abc', 2, """'"abc' has an unterminated quote: close the quoted part with " (a " inside it is"""),
        (
            '"a"b',
            2,
            """'"a"b' has text after a closing quote: a quoted part ends with " and is followed by""",
        ),
        ("a..b", 2, "'a..b' has an empty part: each dot-separated part needs a name"),
        ("sales.", 2, "'sales.' ends with a dot"),
        (".orders", 2, "'.orders' has an empty part"),
        ('""', 2, """'""' has an empty quoted part"""),
        ("", 2, "the table name is empty"),
        (
            "tab\there",
            2,
            "holds the control character U+0009: quote it if the database really holds that name",
        ),
        ('"nul\0"', 2, "holds a NUL character, which no database holds in a name"),
    ],
)
def test_grammar_refuses_with_what_is_wrong_and_how_to_write_it(written, max_parts, message):
    with pytest.raises(ValueError) as raised:
        parse_name(written, max_parts)
    assert message in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("sales.orders", "sales.orders"),  # plain names never change
        ("crm.customers", "crm.customers"),
        ("ventes.commandes_été", "ventes.commandes_été"),
        ('"Sales Data"."Order Items"', "Sales Data.Order Items"),  # quotes that change nothing drop
        ('"Sales Data"."Order.Items"', 'Sales Data."Order.Items"'),
        ('"ORDERS"', "ORDERS"),  # upper case: the same on every engine
        ('"orders"', '"orders"'),  # on Snowflake and Oracle, unquoted orders would be ORDERS
        ('public."a""b"', 'public."a""b"'),
        ('" leading"', '" leading"'),
        ('"tab\there"', '"tab\there"'),
    ],
)
def test_canonical_form(written, canonical):
    assert canonical_table(written) == canonical
    assert canonical_table(canonical) == canonical


def test_a_column_is_one_part_written_the_same_way():
    assert canonical_part('"Display Name"') == canonical_part("Display Name") == "Display Name"
    assert canonical_part('"a.b"') == '"a.b"'
    assert last_part('"Sales Data"."Order.Items"') == '"Order.Items"'
    assert last_part("sales.orders") == "orders"


@pytest.mark.parametrize("folds", [False, True])
def test_any_exact_name_round_trips_through_its_canonical_form(folds):
    for schema, table in itertools.product(HOSTILE, repeat=2):
        written = format_name([schema, table], folds=folds)
        parsed = parse_name(written)
        exact = tuple(p.text.upper() if folds and not p.quoted and _plain(p.text) else p.text for p in parsed)
        assert exact == (schema, table), written
        assert format_name(exact, folds=folds) == written


def _plain(text: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", text) is not None


def engines() -> list[Engine]:
    oracle = OracleEngine("ora")
    oracle.__dict__["default_schema"] = "SHOP"  # otherwise read from the session
    snowflake = SnowflakeEngine("snow")
    snowflake.__dict__["default_schema"] = "PUBLIC"
    return [PostgresEngine("pg"), snowflake, oracle, MsSqlEngine("ms"), BigQueryEngine("bq")]


@pytest.mark.parametrize("engine", engines(), ids=lambda e: e.dialect)
def test_qualify_is_idempotent_and_keeps_the_exact_names(engine):
    written_forms = [format_name(p) for p in itertools.product(HOSTILE, repeat=2)]
    written_forms += [
        "sales.orders",
        '"Sales Data"."Order.Items"',
        'crm."MixedCase"',
        "orders",
        '"Order Items"',
    ]
    for written in written_forms:
        once = engine.qualify(written)
        assert engine.qualify(once) == once, written
        assert engine.name_parts(once) == engine.name_parts(written), written
        assert engine.quote_table(once) == engine.quote_table(written), written


def test_folding_per_engine():
    pg, snowflake, oracle, mssql, bigquery = engines()
    for exact_engine in (pg, mssql):
        assert exact_engine.name_parts("Sales.Orders") == ("Sales", "Orders")
        assert exact_engine.name_parts('"Sales"."Orders"') == ("Sales", "Orders")
    assert pg.qualify("orders") == "public.orders"
    assert mssql.qualify("orders") == "dbo.orders"
    assert bigquery.qualify("my_dataset.Order Items") == "my_dataset.Order Items"
    assert bigquery.name_parts("proj-1.ds.t") == ("proj-1", "ds", "t")
    for folding in (snowflake, oracle):
        assert folding.name_parts("crm.customers") == ("CRM", "CUSTOMERS")
        assert folding.name_parts('crm."customers"') == ("CRM", "customers")
        # not a plain identifier: it can only exist quoted, so it is exact
        assert folding.name_parts("Sales Data.Straße") == ("Sales Data", "Straße")
        assert folding.qualify('crm."customers"') == 'CRM."customers"'
        assert folding.qualify("crm.customers") == "CRM.CUSTOMERS"
        assert folding.column_name("id") == "ID"
        assert folding.column_name('"id"') == "id"
        assert folding.column_name("Display Name") == "Display Name"
    assert snowflake.qualify("orders") == "PUBLIC.ORDERS"
    assert oracle.qualify("orders") == "SHOP.ORDERS"


def test_every_engine_quotes_every_part_and_pastes_nothing():
    pg, snowflake, oracle, mssql, bigquery = engines()
    table = '"Sales Data"."Order.Items"'
    assert pg.quote_table(table) == '"Sales Data"."Order.Items"'
    assert snowflake.quote_table(table) == '"Sales Data"."Order.Items"'
    assert oracle.quote_table(table) == '"Sales Data"."Order.Items"'
    assert mssql.quote_table(table) == "[Sales Data].[Order.Items]"
    assert bigquery.quote_table(table) == "`Sales Data`.`Order.Items`"
    assert pg.quote_table('public."a""b"') == '"public"."a""b"'
    assert mssql.quote_table("dbo.x]y") == "[dbo].[x]]y]"
    assert pg.quote_table("sales.orders; DROP TABLE x") == '"sales"."orders; DROP TABLE x"'
    assert pg.quote_column('"Display Name"') == pg.quote_column("Display Name") == '"Display Name"'
    assert pg.quote_column("select") == '"select"'
    assert snowflake.quote_column("select") == '"SELECT"'
    assert oracle.quote_column('"Quoted"') == '"Quoted"'


def test_catalog_names_compare_equal_to_qualified_manifest_names():
    pg, snowflake, *_ = engines()
    assert pg.table_name("Sales Data", "Order.Items") == pg.qualify('"Sales Data"."Order.Items"')
    assert pg.table_name("sales", "orders") == pg.qualify("sales.orders") == "sales.orders"
    assert snowflake.table_name("CRM", "CUSTOMERS") == snowflake.qualify("crm.customers")
    assert snowflake.table_name("CRM", "customers") == snowflake.qualify('crm."customers"')


def test_postgres_refuses_a_name_it_would_truncate():
    pg = PostgresEngine("pg")
    fits = "é" * 31 + "x"  # 63 bytes
    too_long = "é" * 32  # 64 bytes, 32 characters
    assert pg.identifier_problem(fits) is None
    assert pg.identifier_problem(too_long) == (
        "is 64 bytes long, PostgreSQL holds at most 63 (a longer name would be cut or refused)"
    )
    assert pg.name_problems(f"sales.{too_long}") == [
        f"table sales.{too_long}: the table name is 64 bytes long, PostgreSQL holds at most 63 "
        "(a longer name would be cut or refused)"
    ]
    assert pg.name_problems(f'"{too_long}".orders') == [
        f'table "{too_long}".orders: the schema {too_long} is 64 bytes long, PostgreSQL holds at most 63 '
        "(a longer name would be cut or refused)"
    ]
    assert pg.name_problems("sales.orders", ["id", f'"{too_long}"']) == [
        f"table sales.orders: column {too_long} is 64 bytes long, PostgreSQL holds at most 63 "
        "(a longer name would be cut or refused)"
    ]
    assert pg.name_problems("sales.orders", ["id", "Display Name"]) == []


def test_other_engines_limits():
    _, snowflake, oracle, mssql, bigquery = engines()
    assert (
        oracle.identifier_problem('a"b')
        == "holds a double quote character, which Oracle does not allow in a name"
    )
    assert oracle.identifier_problem("x" * 129) is not None and oracle.identifier_problem("x" * 128) is None
    assert mssql.identifier_problem("x" * 129) == "is 129 characters long, SQL Server holds at most 128"
    assert (
        snowflake.identifier_problem("x" * 256) is not None
        and snowflake.identifier_problem("x" * 255) is None
    )
    assert bigquery.identifier_problem("a`b") is not None


def test_file_stems_are_safe_and_unique():
    stems = {file_stem(name) for name in ["public.../x", "public.a/b", "public.a b", "public.a_b", "a.b"]}
    assert len(stems) == 5
    for stem in stems:
        assert "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith(".")
    assert file_stem("sales.orders").startswith("sales.orders-")
    assert file_stem('Sales Data."Order.Items"').startswith("Sales_Data._Order.Items-")
    assert file_stem("商品.🦄").startswith("table-")


def test_comma_separated_lists_keep_quoted_commas():
    assert split_list('orders, "Sales, EU".items,,sales."a""b,c"') == [
        "orders",
        '"Sales, EU".items',
        'sales."a""b,c"',
    ]


def test_markdown_cells_never_break_a_table():
    assert markdown_cell("a|b") == "a\\|b"
    assert markdown_cell("two\nlines") == "two lines"
    assert markdown_cell(None) == ""
