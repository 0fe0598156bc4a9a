"""Airflow Asset URIs of tables, as each database's Airflow provider writes them.

Every engine's provider registers an Asset URI scheme (``asset-uris`` in its provider info) with
a ``sanitize_uri`` that Airflow applies to each Asset a DAG declares. A table's URI is built here
from its connection and exact name parts, each part percent-encoded (an Asset URI is ASCII; a
``/`` inside a name cannot split the path), then passed through that same ``sanitize_uri``, so
it equals what Airflow stored for a DAG scheduled on the table (ADR 0409).

| engine | URI | provider's sanitizer |
|---|---|---|
| PostgreSQL | ``postgres://host:port/database/schema/table`` | postgres ``assets.postgres`` |
| Snowflake | ``snowflake://account/database/schema/table`` | snowflake ``assets.snowflake`` |
| BigQuery | ``bigquery://project/dataset/table`` | google ``assets.bigquery`` |
| Oracle | ``oracle://host:port/service_name/schema/table`` | oracle ``assets.oracle`` |
| SQL Server | ``mssql://host:port/database/schema/table`` | microsoft-mssql ``assets.mssql`` |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol, cast
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit


class Engine(Protocol):
    """What an Asset URI needs of an engine (:class:`sensei_airflow.engines.base.Engine` has it)."""

    dialect: str
    conn_id: str

    @property
    def hook(self) -> Any: ...

    def name_parts(self, table: str) -> tuple[str, ...]: ...


#: where a table lives before its own name parts: (authority, leading path parts); None: unknown.
Location = tuple[str, list[str]] | None


@dataclass(frozen=True)
class AssetForm:
    """One engine's Asset URI: its scheme, the provider's sanitizer, and where its tables live.

    :param scheme: the URI scheme the provider registers.
    :param sanitizer: ``module:function`` of the provider's ``sanitize_uri``.
    :param location: the authority and the path parts before the table's own (schema, table).
    :param name_parts: how many of the table's name parts end the path (BigQuery: dataset, table).
    """

    scheme: str
    sanitizer: str
    location: Callable[[Engine, Any], Location]
    name_parts: int = 2


def _extra(conn: Any, key: str, provider: str) -> Any:
    """An extra field, plain (``account``) or in the old prefixed form (``extra__snowflake__account``)."""
    extra = conn.extra_dejson or {}
    return extra.get(key) or extra.get(f"extra__{provider}__{key}")


def _host_port(conn: Any, default_port: int) -> str | None:
    return f"{conn.host}:{conn.port or default_port}" if conn.host else None


def _postgres(engine: Engine, conn: Any) -> Location:
    authority = _host_port(conn, 5432)
    return (authority, [conn.schema]) if authority and conn.schema else None


def _mssql(engine: Engine, conn: Any) -> Location:
    authority = _host_port(conn, 1433)
    return (authority, [conn.schema]) if authority and conn.schema else None


def _oracle(engine: Engine, conn: Any) -> Location:
    authority = _host_port(conn, 1521)
    service = _extra(conn, "service_name", "oracle")
    return (authority, [str(service)]) if authority and service else None


def _snowflake(engine: Engine, conn: Any) -> Location:
    account = _extra(conn, "account", "snowflake") or conn.host
    database = _extra(conn, "database", "snowflake")
    if not database:
        database = cast(Any, engine).query("SELECT CURRENT_DATABASE()")[0][0]  # a SnowflakeEngine
    return (str(account).lower(), [str(database)]) if account and database else None


def _bigquery(engine: Engine, conn: Any) -> Location:
    project = _extra(conn, "project", "google_cloud_platform") or engine.hook.project_id
    return (str(project), []) if project else None


#: engine dialect -> its Asset URI form.
ASSET_FORM_BY_DIALECT: dict[str, AssetForm] = {
    "postgres": AssetForm("postgres", "airflow.providers.postgres.assets.postgres:sanitize_uri", _postgres),
    "snowflake": AssetForm(
        "snowflake", "airflow.providers.snowflake.assets.snowflake:sanitize_uri", _snowflake
    ),
    "bigquery": AssetForm("bigquery", "airflow.providers.google.assets.bigquery:sanitize_uri", _bigquery),
    "oracle": AssetForm("oracle", "airflow.providers.oracle.assets.oracle:sanitize_uri", _oracle),
    "tsql": AssetForm("mssql", "airflow.providers.microsoft.mssql.assets.mssql:sanitize_uri", _mssql),
}


def build_uri(form: AssetForm, authority: str, path: Sequence[str]) -> str:
    """The URI of these path parts (each percent-encoded), through the provider's ``sanitize_uri``.

    :param form: the engine's Asset form.
    :param authority: host and port, account or project.
    :param path: the database (or service, or nothing) and the table's exact name parts.
    """
    raw = urlsplit(f"{form.scheme}://{authority}/" + "/".join(quote(part, safe="") for part in path))
    module, _, function = form.sanitizer.partition(":")
    sanitize: Callable[[SplitResult], SplitResult] = getattr(import_module(module), function)
    return urlunsplit(sanitize(raw))


def table_asset_uri(engine: Engine, table: str) -> str | None:
    """The Asset URI of ``table`` on ``engine`` (None: the engine has no Asset form, or the
    connection lacks what the URI needs, e.g. a PostgreSQL connection without a database).

    :param engine: the table's engine.
    :param table: a written table name (qualified or not).
    """
    from airflow.sdk import BaseHook

    form = ASSET_FORM_BY_DIALECT.get(engine.dialect)
    if form is None:
        return None
    location = form.location(engine, BaseHook.get_connection(engine.conn_id))
    if location is None:
        return None
    authority, leading = location
    parts = list(engine.name_parts(table))
    if len(parts) > form.name_parts:  # a name that names its own project (BigQuery)
        authority, parts = parts[0], parts[1:]
    return build_uri(form, authority, [*leading, *parts])
