"""What a strategy may ask of a database engine.

Strategies speak to this interface only; every difference between PostgreSQL, Snowflake,
BigQuery, Oracle and SQL Server lives in the engine modules beside this one. SQL is generated
by pure methods (testable without a server) and run by :meth:`Engine.run_in_transaction`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class ForeignKey:
    """``child`` references ``parent`` (qualified names) through constraint ``name``."""

    name: str
    child: str
    parent: str


@dataclass(frozen=True)
class Grant:
    """One privilege of one role on one (qualified) table."""

    role: str
    table: str
    privilege: str
    grantable: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "table": self.table,
            "privilege": self.privilege,
            "grantable": self.grantable,
        }


@dataclass(frozen=True)
class SequenceReset:
    """A sequence (or identity) of a table column set so its next value is ``next_value``."""

    table: str
    column: str
    sequence: str
    next_value: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "column": self.column,
            "sequence": self.sequence,
            "next_value": self.next_value,
        }


@dataclass(frozen=True)
class Statement:
    """One SQL statement with its bind parameters, and what it is for."""

    sql: str
    params: tuple[Any, ...] = ()
    purpose: str = ""


class ChangeLockHeld(Exception):
    """Another session holds the migration's change lock on this database (it is changing it now)."""


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

    # -- one rollback per migration (lock.py's fence) ----------------------------------------
    def hold_change_lock(self, key: int, holder: str) -> AbstractContextManager[None]:
        """Hold the migration's change lock on this database for as long as the block runs.

        Where the engine has session-scoped advisory locks (PostgreSQL), a dedicated connection
        holds one keyed by ``key``; it ends with that connection, also when the process dies.
        Engines without such locks return a no-op (the state store's fence alone applies).

        :param key: the migration's lock key (:func:`sensei_airflow.lock.change_lock_key`).
        :param holder: who holds it, shown to a second holder (``sensei <rollback id>``).
        :raises ChangeLockHeld: when another session holds it.
        """
        return nullcontext()

    # -- target truncate -----------------------------------------------------------------
    @abstractmethod
    def lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        """Statements that lock ``tables`` against writers for the rest of the transaction
        (empty where the engine has no table locks)."""

    @abstractmethod
    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> list[Statement]:
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

    # -- point-in-time recovery -----------------------------------------------------------
    def point_in_time(self, settings: Any) -> PointInTimeRecovery:
        """This target's point-in-time recovery, configured by the manifest's ``rollback.point_in_time``.

        :param settings: the manifest's :class:`~sensei_airflow.manifest.PointInTimeSettings`.
        :raises PointInTimeRefused: when the engine (or this configuration) has none.
        """
        raise PointInTimeRefused(f"point-in-time recovery is not available for {self.dialect} targets here")

    # -- sequences, consumers' privileges, fingerprints (defaults: not supported) --------------
    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """Set every sequence / identity of ``tables`` so the next value follows the highest key.

        Run after any strategy: rows removed or restored leave sequences behind or ahead.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot reset sequences yet")

    def table_grants(self, roles: Sequence[str], tables: Sequence[str]) -> list[Grant]:
        """The privileges granted directly to ``roles`` on ``tables`` (not through other roles)."""
        raise NotImplementedError(f"{type(self).__name__} cannot suspend database roles' privileges yet")

    def revoke_grants(self, grants: Sequence[Grant]) -> list[Statement]:
        """Revoke these grants in one transaction; returns the statements run."""
        raise NotImplementedError(f"{type(self).__name__} cannot suspend database roles' privileges yet")

    def restore_grants(self, grants: Sequence[Grant]) -> list[Statement]:
        """Grant exactly these privileges again (with their grant option); returns the statements run."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore database roles' privileges yet")

    def role_exists(self, role: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} cannot look up database roles yet")

    def table_fingerprints(self, tables: Iterable[str]) -> dict[str, str]:
        """A value per table that changes when its rows change (default: the row count)."""
        return {t: f"rows={n}" for t, n in self.row_counts(tables).items()}

    def asset_uri(self, table: str) -> str | None:
        """The Airflow Asset URI of a table, as the engine's provider writes it (None: no such form)."""
        return None

    def row_source(self, table: str, key: Sequence[str]) -> Any | None:
        """The table's key columns as a :class:`sensei_airflow.verify.RowSource` (None: not available).

        Investigate uses it to locate, by bisection, the key ranges of rows that should not be there.
        """
        return None

    # -- reverse migration (strategies/reverse.py; defaults: not supported) -------------------
    def reverse_quote_column(self, name: str) -> str:
        """A manifest column name as this engine's SQL must spell it (case folding included)."""
        return self.quote_identifier(name)

    def reverse_column_types(self, table: str) -> dict[str, str]:
        """Column name -> type of a table, in column order (empty when the table does not exist)."""
        raise NotImplementedError(f"{type(self).__name__} cannot take part in a reverse migration yet")

    def reverse_reader(self, table: Any) -> Any:
        """Read a target table as source rows through the inverse expressions of ``table`` (a ReverseTable)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be read by a reverse migration yet")

    def reverse_writer(self, *, chunk_rows: int) -> Any:
        """The writer that stages and applies reverse-migrated rows on this (source) database."""
        raise NotImplementedError(f"{type(self).__name__} cannot be written by a reverse migration yet")

    # -- backups (backups/, strategies/backup_restore.py; defaults: not supported) -------------
    def table_checksums(self, tables: Iterable[str]) -> dict[str, Any]:
        """Row count and an order-independent checksum per (qualified) table, computed in the database.

        :returns: table -> ``TableChecksum`` (``rows``, ``checksum``).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot checksum tables for backups yet")

    def column_signature(self, table: str) -> list[list[str]]:
        """``[name, type]`` of each column in order: what a backup's data needs to load back."""
        raise NotImplementedError(f"{type(self).__name__} cannot describe tables for backups yet")

    def dump_tables(self, tables: Sequence[str], write: Any) -> dict[str, Any]:
        """Stream each table's data, all from one snapshot, to ``write(table, readable)``.

        :returns: table -> ``TableState`` (rows, checksum, columns, sequences, foreign keys).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot take logical backups yet")

    def dump_schema(self, tables: Sequence[str], path: Any) -> None:
        """Write the tables' definitions (no data) to the file ``path``, in the engine's archive format."""
        raise NotImplementedError(f"{type(self).__name__} cannot take logical backups yet")

    def restore_tables(
        self,
        tables: Sequence[str],
        states: dict[str, Any],
        open_data: Any,
        referenced_from_outside: Iterable[str],
    ) -> tuple[list[str], dict[str, int], dict[str, int]]:
        """Replace the rows of ``tables`` (parents first) with a backup's, atomically where the engine allows.

        :returns: the SQL run, rows removed and rows restored per table.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot restore logical backups yet")

    def restore_test(
        self, tables: Sequence[str], states: dict[str, Any], schema_archive: Any, open_data: Any
    ) -> Any:
        """Restore a backup into a scratch database and return the restored tables' checksums."""
        raise NotImplementedError(f"{type(self).__name__} cannot test-restore logical backups yet")

    def base_backup(self, directory: Any) -> list[Any]:
        """A physical backup of the whole database cluster into a local folder; returns its files."""
        raise NotImplementedError(f"{type(self).__name__} cannot take physical backups")

    @cached_property
    def hook(self) -> Any:
        return self._make_hook()

    @abstractmethod
    def _make_hook(self) -> Any: ...


# -- point-in-time recovery ---------------------------------------------------------------
# A strategy asks ``engine.point_in_time(settings)`` for the engine's recovery mechanism and
# speaks only to :class:`PointInTimeRecovery`; see docs/adr/0500-point-in-time-engine-interface.md.


class PointInTimeRefused(Exception):
    """Point-in-time recovery cannot be done safely; the message says why, in one line a DBA understands.

    Raised by :meth:`PointInTimeRecovery.assess` (and by :meth:`PointInTimeRecovery.restore` when
    it finds the same before changing anything). The strategy turns it into a refusal.
    """


@dataclass(frozen=True)
class RecoveryTarget:
    """The point a recovery restores to.

    ``time`` is always timezone-aware (a naive time would be read in the server's zone and
    silently recover to the wrong point). ``restore_point`` (a named marker the migration tool
    recorded, e.g. ``pg_create_restore_point``) and ``position`` (an engine-specific exact
    position: an LSN, an SCN, a Snowflake query id) are preferred over ``time`` by engines that
    have them; ``time`` is still what the status document reports.
    """

    time: datetime
    restore_point: str | None = None
    position: str | None = None
    #: keep a transaction that committed exactly at the target (PostgreSQL's default).
    inclusive: bool = True

    def __post_init__(self) -> None:
        if getattr(self.time, "tzinfo", None) is None or self.time.utcoffset() is None:
            raise PointInTimeRefused(
                f"restore_to {self.time!s} has no UTC offset: it would be read in the server's time zone; "
                "give it with an explicit offset (e.g. 2026-02-02T07:59:00+00:00)"
            )

    def describe(self) -> str:
        if self.restore_point:
            return f"restore point {self.restore_point!r} (recorded at {self.time.isoformat()})"
        if self.position:
            return f"position {self.position} ({self.time.isoformat()})"
        return self.time.isoformat()


@dataclass(frozen=True)
class RecoveryWindow:
    """How far back a mechanism can restore, now, and until when a given point stays restorable.

    ``table`` None means every table of the target. ``closes_at`` None means nothing known
    bounds it (e.g. no retention configured).
    """

    mechanism: str
    table: str | None
    earliest: datetime | None = None  # oldest restorable point now
    latest: datetime | None = None  # newest restorable point now
    closes_at: datetime | None = None  # when the point asked about stops being restorable
    limit: str = ""  # what sets closes_at: "WAL archive retention", "Time Travel retention", ...


@dataclass
class PointInTimePlan:
    """What :meth:`PointInTimeRecovery.assess` found: how the tables will be restored.

    ``tables`` are the qualified tables to restore, parents first. ``path`` is ``"table"`` (only
    those tables are replaced) or ``"database"`` (the whole database/cluster is swapped).
    ``steps`` are the statements or actions, as shown in the plan. ``detail`` must be
    JSON-serialisable; :meth:`PointInTimeRecovery.restore` receives it back unchanged.
    """

    tables: list[str]
    path: str = "table"
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PointInTimeOutcome:
    """What :meth:`PointInTimeRecovery.restore` did: the statements run and the rows each table now holds."""

    statements: list[str]
    rows_restored: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)


class PointInTimeRecovery(ABC):
    """One engine's database-native point-in-time recovery, for the point_in_time strategy.

    Contract, for every engine:

    - :meth:`assess` changes nothing. It checks the prerequisites (retention window, archive,
      privileges, row movement, recovery model, ...) and refuses with
      :class:`PointInTimeRefused` when ``target`` cannot be reached for every table.
    - :meth:`restore` makes the tables in scope hold exactly their content at ``target``, and
      changes nothing outside them (the ``"database"`` path only when assess chose it). Where the
      engine allows, the live tables change in one transaction, and everything that can fail
      (missing WAL, expired retention) fails before the live tables change. It is safe to retry:
      a second call restores again to the same point. Scratch resources (clusters, instances,
      clone tables) are removed also when it fails.
    - :meth:`windows` says, per table, until when ``point`` stays restorable.
    """

    mechanism: str = "point-in-time recovery"

    @abstractmethod
    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        """Check that ``tables`` (qualified) can be restored to ``target`` and plan how.

        :param whole_database: the manifest allows restoring the whole database/cluster (scope
            ``all`` of a migration whose target holds nothing else); the engine may still choose
            the table path.
        :raises PointInTimeRefused: if it cannot be done safely.
        """

    @abstractmethod
    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        """Restore the plan's tables to ``target``.

        :raises PointInTimeRefused: for a problem found before anything changed.
        """

    def create_restore_point(self, name: str) -> str | None:
        """Mark the present as a named point to recover to later (the migration tool calls this as it starts).

        Returns the engine's exact position of the mark (an LSN, an SCN), or None where the engine
        has no such marks (then the time is used).
        """
        return None

    @abstractmethod
    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        """Until when ``point`` stays restorable, per table (or one entry for all)."""
