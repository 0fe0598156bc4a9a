"""Asset URIs of tables on all five engines, through each provider's own ``sanitize_uri``.

No database is asked: the URIs come from the connections and the names alone. Each URI is also
given to Airflow's own ``Asset``, which normalises it with the same provider handler: what a DAG
author's ``Asset(...)`` stores is what halt looks for.
"""

from __future__ import annotations

import json

import pytest

from sensei_airflow.engines import get_engine

CONNECTIONS = {
    "pg_target": {"conn_type": "postgres", "host": "db.example.com", "schema": "Lager Ü"},
    "sf_target": {
        "conn_type": "snowflake",
        "schema": "PUBLIC",
        "extra": {"account": "XY12345", "database": "Shop DB"},
    },
    "bq_target": {"conn_type": "google_cloud_platform", "extra": {"project": "acme-shop"}},
    "ora_target": {
        "conn_type": "oracle",
        "host": "ora.example.com",
        "port": 1522,
        "extra": {"service_name": "SHOPPDB"},
    },
    "ms_target": {"conn_type": "mssql", "host": "sql.example.com", "schema": "Shop"},
}


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    for conn_id, connection in CONNECTIONS.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


@pytest.mark.parametrize(
    ("conn_id", "table", "uri"),
    [
        ("pg_target", "orders", "postgres://db.example.com:5432/Lager%20%C3%9C/public/orders"),
        (
            "pg_target",
            '"Sales Data"."Order.Items"',
            "postgres://db.example.com:5432/Lager%20%C3%9C/Sales%20Data/Order.Items",
        ),
        ("pg_target", 'crm."user"', "postgres://db.example.com:5432/Lager%20%C3%9C/crm/user"),
        (
            "pg_target",
            '"Ünits/2026"."order"',
            "postgres://db.example.com:5432/Lager%20%C3%9C/%C3%9Cnits%2F2026/order",
        ),
        # Snowflake folds the unquoted name; the account is lower-cased as Snowflake's URLs write it
        ("sf_target", "orders", "snowflake://xy12345/Shop%20DB/PUBLIC/ORDERS"),
        (
            "sf_target",
            '"Bestellungen Café"."Order"',
            "snowflake://xy12345/Shop%20DB/Bestellungen%20Caf%C3%A9/Order",
        ),
        ("bq_target", "sales.orders", "bigquery://acme-shop/sales/orders"),
        ("bq_target", '"other-proj"."Daten Ü".order', "bigquery://other-proj/Daten%20%C3%9C/order"),
        (
            "ora_target",
            'SHOP."Kunden Übersicht"',
            "oracle://ora.example.com:1522/SHOPPDB/SHOP/Kunden%20%C3%9Cbersicht",
        ),
        ("ms_target", "orders", "mssql://sql.example.com:1433/Shop/dbo/orders"),
        ("ms_target", '"Sales Data"."user"', "mssql://sql.example.com:1433/Shop/Sales%20Data/user"),
    ],
)
def test_asset_uri_of_each_engine(conn_id: str, table: str, uri: str) -> None:
    from airflow.sdk import Asset

    built = get_engine(conn_id).asset_uri(table)

    assert built == uri
    assert Asset(uri=built).uri == built  # Airflow's own normalisation keeps it as it is


def test_the_providers_sanitizer_fills_in_the_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built through ``sanitize_uri``: a connection without a port gets the provider's default."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_ORA_NO_PORT",
        json.dumps({"conn_type": "oracle", "host": "ora.example.com", "extra": {"service_name": "SHOPPDB"}}),
    )

    assert (
        get_engine("ora_no_port").asset_uri("SHOP.ORDERS")
        == "oracle://ora.example.com:1521/SHOPPDB/SHOP/ORDERS"
    )


def test_no_uri_where_the_connection_lacks_its_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_PG_NO_DB", json.dumps({"conn_type": "postgres", "host": "db.example.com"})
    )

    assert get_engine("pg_no_db").asset_uri("orders") is None
