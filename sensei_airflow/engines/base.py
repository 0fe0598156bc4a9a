"""What a strategy may ask of a database engine.

Strategies speak to this interface only; every difference between PostgreSQL, Snowflake,
BigQuery, Oracle and SQL Server lives in the engine modules beside this one. SQL is generated
by pure methods (testable without a server) and run by :meth:`Engine.run_in_transaction`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class ForeignKey:
    """``child`` references ``parent`` (qualified names) through constraint ``name``."""

    name: str
    child: str
    parent: str


@dataclass(frozen=True)
class Statement:
    """One SQL statement with its bind parameters, and what it is for."""

    sql: str
    params: tuple[Any, ...] = ()
    purpose: str = ""


class Engine(ABC):
    """One database, reached through an Airflow connection."""

    #: sqlglot dialect used for quoting identifiers.
    dialect: str
    #: schema assumed for an unqualified table name.
    default_schema: str = "public"

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    # -- names ---------------------------------------------------------------------------
    def qualify(self, table: str) -> str:
        """``orders`` -> ``public.orders``; qualified names are returned unchanged."""
        return table if "." in table else f"{self.default_schema}.{table}"

    def quote_identifier(self, name: str) -> str:
        from sqlglot import exp  # imported on use: sqlglot costs ~0.25 s, too much for DAG parsing

        return exp.to_identifier(name, quoted=True).sql(dialect=self.dialect)

    def quote_table(self, table: str) -> str:
        """Quote a (possibly qualified) table name; every part is quoted, nothing is parsed."""
        return ".".join(self.quote_identifier(part) for part in self.qualify(table).split("."))

    def transpile(self, sql: str) -> str:
        """Render a PostgreSQL-flavoured expression in this engine's dialect."""
        import sqlglot

        return sqlglot.transpile(sql, read="postgres", write=self.dialect)[0]

    # -- catalog ---------------------------------------------------------------------------
    @abstractmethod
    def identity(self) -> str:
        """A string that names this database uniquely (server and database)."""

    @abstractmethod
    def user_tables(self) -> list[str]:
        """Every user table of the database, qualified."""

    @abstractmethod
    def foreign_keys(self) -> list[ForeignKey]:
        """Every foreign key between user tables of the database."""

    @abstractmethod
    def row_counts(self, tables: Iterable[str]) -> dict[str, int]:
        """Exact row counts of the given (qualified) tables."""

    # -- target truncate -----------------------------------------------------------------
    @abstractmethod
    def empty_tables_sql(self, tables: Sequence[str], referenced_from_outside: Iterable[str]) -> list[Statement]:
        """Statements that empty ``tables`` (children first) and reset their sequences.

        ``referenced_from_outside`` names tables of ``tables`` that an empty table outside the
        scope still references: they must be emptied without touching that table.
        """

    @abstractmethod
    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> tuple[list[Statement], dict[str, int]]:
        """Empty the tables in one transaction where the engine allows.

        Returns the statements run and the rows removed from each table (counted under lock).
        """

    @cached_property
    def hook(self) -> Any:
        return self._make_hook()

    @abstractmethod
    def _make_hook(self) -> Any: ...
