"""The engine registry: one Airflow connection type, one engine module.

Explicit on purpose: a strategy asks :func:`get_engine` for the engine of a connection and
never branches on the database kind itself.
"""

from __future__ import annotations

from importlib import import_module

from sensei_airflow.engines.base import Engine, ForeignKey, Statement

#: Airflow connection type -> "module:Class" of its engine.
ENGINE_BY_CONN_TYPE: dict[str, str] = {
    "postgres": "sensei_airflow.engines.postgres:PostgresEngine",
    "snowflake": "sensei_airflow.engines.snowflake:SnowflakeEngine",
    # the google provider's generic connection type, and BigQueryHook's own
    "google_cloud_platform": "sensei_airflow.engines.bigquery:BigQueryEngine",
    "gcpbigquery": "sensei_airflow.engines.bigquery:BigQueryEngine",
    "oracle": "sensei_airflow.engines.oracle:OracleEngine",
    "mssql": "sensei_airflow.engines.mssql:MsSqlEngine",
}


class UnsupportedEngine(LookupError):
    """The connection's database kind has no engine here."""


def engine_class(conn_type: str) -> type[Engine]:
    try:
        module_name, class_name = ENGINE_BY_CONN_TYPE[conn_type].split(":")
    except KeyError:
        supported = ", ".join(sorted(ENGINE_BY_CONN_TYPE))
        raise UnsupportedEngine(
            f"connection type {conn_type!r} is not supported (supported: {supported})"
        ) from None
    return getattr(import_module(module_name), class_name)


def get_engine(conn_id: str) -> Engine:
    """The engine for an Airflow connection id, chosen by the connection's type."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return engine_class(conn.conn_type or "")(conn_id)


__all__ = ["ENGINE_BY_CONN_TYPE", "Engine", "ForeignKey", "Statement", "UnsupportedEngine", "get_engine"]
