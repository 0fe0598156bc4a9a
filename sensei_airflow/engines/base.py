"""What a strategy may ask of a database engine.

Strategies speak to this interface only; every difference between PostgreSQL, Snowflake,
BigQuery, Oracle and SQL Server lives in the engine modules beside this one. SQL is generated
by pure methods (testable without a server) and run by :meth:`Engine.run_in_transaction`.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from sensei_airflow.names import exact_part, format_name, parse_name

if TYPE_CHECKING:
    from sensei_airflow.verify import KeyRange, KeyValues


@dataclass(frozen=True)
class ForeignKey:
    """``child`` references ``parent`` (qualified names) through constraint ``name``."""

    name: str
    child: str
    parent: str


def dependency_order(tables: Sequence[str], foreign_keys: Iterable[ForeignKey]) -> list[str]:
    """Order tables parents first; ties (and cycles) keep the given order.

    Only foreign keys between the given tables count. A cycle is broken at the table that comes
    first in the given order, so the result always holds every table once.
    """
    position = {t: i for i, t in enumerate(tables)}
    parents: dict[str, set[str]] = {t: set() for t in tables}
    children: dict[str, set[str]] = {t: set() for t in tables}
    for fk in foreign_keys:
        if fk.child in position and fk.parent in position and fk.child != fk.parent:
            parents[fk.child].add(fk.parent)
            children[fk.parent].add(fk.child)
    waiting = {t: len(p) for t, p in parents.items()}
    ready = [position[t] for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    done: set[str] = set()
    while len(ordered) < len(tables):
        if not ready:  # a cycle: release the earliest table still waiting
            heapq.heappush(ready, min(position[t] for t in tables if t not in done))
        table = tables[heapq.heappop(ready)]
        if table in done:
            continue
        ordered.append(table)
        done.add(table)
        for child in sorted(children[table], key=position.__getitem__):
            waiting[child] -= 1
            if waiting[child] == 0 and child not in done:
                heapq.heappush(ready, position[child])
    return ordered


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


class OutsideRows(Exception):
    """Tables outside the scope that reference it hold rows: found inside the emptying transaction,
    which was rolled back (nothing changed)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = {table: rows for table, rows in counts.items() if rows > 0}
        super().__init__("; ".join(f"{t} holds {n} rows" for t, n in self.counts.items()))


def check_outside_empty(counts: dict[str, int]) -> None:
    """:raises OutsideRows: when one of the counted tables holds a row."""
    if any(rows > 0 for rows in counts.values()):
        raise OutsideRows(counts)


@dataclass(frozen=True)
class Statement:
    """One SQL statement with its bind parameters, and what it is for."""

    sql: str
    params: tuple[Any, ...] = ()
    purpose: str = ""


# -- reverse migration: what a strategy hands to and gets from the engines -------------------
@dataclass(frozen=True)
class ReverseTable:
    """One table of a reverse migration, resolved against both catalogs.

    ``source`` and ``target`` are qualified written names; ``columns`` and ``source_key`` the
    source's exact column names; ``target_key`` and ``written_columns`` the manifest's written
    names (an engine turns them into its own spelling with ``quote_column``).
    """

    source: str
    target: str
    columns: list[str]
    types: list[str]
    inverses: list[str]
    source_key: list[str]
    target_key: list[str]
    key_types: list[str]
    unique_key: bool = True
    #: the source columns as the manifest writes them (aliases of the inverse expressions on the target).
    written_columns: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "columns": [
                {"column": c, "type": t, "inverse": e}
                for c, t, e in zip(self.columns, self.types, self.inverses, strict=True)
            ],
            "key": self.source_key,
        }


class ReverseReader(Protocol):
    """A target table read as source rows through its inverse expressions (``Engine.reverse_reader``).

    It is also one side of a verification (:class:`sensei_airflow.verify.RowSource`).
    """

    columns: list[str]

    @property
    def hash_family(self) -> str:
        """Checksums of two readers compare only when they hash rows the same way."""

    def count_rows(self, key_range: KeyRange) -> int: ...

    def checksum(self, key_range: KeyRange) -> tuple[int, int]: ...

    def boundaries(self, key_range: KeyRange, parts: int) -> list[KeyValues]: ...

    def sample_keys(self, n: int) -> list[KeyValues]: ...

    def rows(self, keys: Sequence[KeyValues]) -> dict[KeyValues, tuple[str | None, ...]]: ...

    def round_trip(
        self, forwards: Sequence[Any], target_types: dict[str, str], n: int
    ) -> tuple[dict[str, Any] | None, int]:
        """Inverse then forward on about ``n`` target rows: the first row that does not come back."""


#: integer types whose key ranges are cut arithmetically (between the lowest and highest key).
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


def integer_cuts(
    query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]],
    table: str,
    key: str,
    where: tuple[str, Sequence[Any]],
    parts: int,
) -> list[KeyValues]:
    """Up to ``parts - 1`` ascending cuts of a single integer key, evenly between its lowest and
    highest value in the range.

    :param query: runs a query on the reader's database and returns its rows.
    :param table: the quoted table; ``key`` its quoted key column.
    :param where: the range's predicate and its bind parameters.
    """
    predicate, params = where
    low, high = query(f"SELECT min({key}), max({key}) FROM {table} WHERE {predicate}", params)[0]  # noqa: S608
    if low is None or high <= low:
        return []
    step = (high - low) / parts
    return [(str(c),) for c in sorted({low + int(step * i) for i in range(1, parts)}) if low <= c < high]


class BatchReader(Protocol):
    """What a writer needs from a target it cannot relay COPY blocks from: the range's rows in batches."""

    def batches(self, key_range: KeyRange) -> Iterator[Sequence[tuple[Any, ...]]]: ...


class ReverseWriter(Protocol):
    """The source side of a reverse migration (``Engine.reverse_writer``): checks, staging, one apply."""

    #: from about this many rows to move, empty source tables are loaded in bulk (ADR 0200).
    bulk_rows: int

    def column_types(self, table: str) -> dict[str, str]: ...

    def unique_keys(self, table: str) -> list[set[str]]: ...

    def writability(self, tables: Sequence[str]) -> list[str]: ...

    def existing_tables(self, tables: Sequence[str]) -> set[str]: ...

    def source_reader(self, table: ReverseTable) -> Any: ...

    def applied_result(self, rollback_id: str) -> dict[str, Any] | None: ...

    def loads_directly(self, tables: Sequence[ReverseTable], readers: dict[str, Any]) -> bool: ...

    def migrate(
        self,
        rollback_id: str,
        tables: Sequence[ReverseTable],
        readers: dict[str, Any],
        *,
        skip_unchanged: bool = True,
        migration_id: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, dict[str, int]]]: ...

    def sequence_positions(self, table: ReverseTable) -> list[tuple[str, int, int]]: ...

    def leftover_staging(self) -> list[Any]: ...

    def drop_leftover_staging(self, leftovers: Sequence[Any]) -> list[str]: ...


@dataclass(frozen=True)
class TableChecksum:
    """Rows of a table and an order-independent checksum of their contents, computed in its database."""

    rows: int
    checksum: str


#: the prefix of a checksum computed with PostgreSQL's record hash (ADR 0101); a checksum without it
#: is of the engine's other kind (on PostgreSQL the hash of each row's text)
RECORD_CHECKSUM = "record:"


def checksum_kind(checksum: object) -> str:
    """``record`` or ``text``: how a recorded checksum was computed, so that a table is checksummed
    the same way to be compared with it."""
    return "record" if str(checksum or "").startswith(RECORD_CHECKSUM) else "text"


@dataclass
class MarkMoment:
    """What the engine recorded when it took a migration's start mark (see ``sensei_airflow/mark.py``).

    ``tables``: per qualified table ``{"rows": int, "checksum": str | None}``, all read at the
    moment itself where the engine can (one snapshot). ``sequences``: the sequence / identity
    values to set back (engine-specific dicts). ``schema``: a fingerprint of each table's columns,
    to tell DDL since the mark. ``undo_log``: the engine's handle of the open undo log (None:
    not opened), JSON-serialisable.
    """

    at: datetime
    position: str | None = None
    restore_point: str | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    sequences: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    undo_log: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


class MarkRefused(Exception):
    """The start mark cannot be taken as asked (e.g. the undo log needs a server setting); one line."""


class UndoLogRefused(Exception):
    """The undo log cannot undo this safely; the message says why in one line (nothing was changed)."""


@dataclass(frozen=True)
class UndoTable:
    """One table an undo applies to: its qualified name and the key that tells its rows apart."""

    table: str
    key: tuple[str, ...]


@dataclass
class UndoSummary:
    """What an undo would do, per table: ``{"insert": n, "update": n, "delete": n}`` (the inverse
    statements' row counts, from the net effect of the captured changes), a few sample keys, and the
    captured changes counted by kind."""

    per_table: dict[str, dict[str, int]] = field(default_factory=dict)
    captured: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    retained_bytes: int | None = None


class ChangeLockHeld(Exception):
    """Another session holds the migration's change lock on this database (it is changing it now)."""


class Engine(ABC):
    """One database, reached through an Airflow connection."""

    #: sqlglot dialect used for quoting identifiers.
    dialect: str
    #: the database's name in messages.
    engine_title: str = "the database"
    #: schema assumed for an unqualified table name.
    default_schema: str = "public"

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    # -- names ---------------------------------------------------------------------------
    # Table names travel as their canonical written form (sensei_airflow/names.py): every
    # name given to or returned by an engine goes through these methods, never through a
    # split on ".", so a name read from the catalog compares equal to a qualified manifest name.

    #: Snowflake and Oracle fold an unquoted plain identifier to upper case (see names.py).
    folds_unquoted: bool = False
    #: how many parts a table name may have here (BigQuery: project.dataset.table).
    max_name_parts: int = 2
    #: longest name the engine holds, in bytes (UTF-8) and in characters (None: no known limit).
    max_identifier_bytes: int | None = None
    max_identifier_chars: int | None = None
    #: characters no name may hold here, with why (e.g. Oracle: a double quote).
    forbidden_name_chars: dict[str, str] = {"\0": "NUL"}

    def _written_parts(self, table: str) -> tuple[str, ...]:
        """The exact parts of a written table name, as written (no default schema added)."""
        return tuple(exact_part(p, folds=self.folds_unquoted) for p in parse_name(table, self.max_name_parts))

    def name_parts(self, table: str) -> tuple[str, ...]:
        """The exact parts of a (possibly unqualified) written table name, schema first.

        ``orders`` -> ``("public", "orders")``; ``"Sales Data"."Order.Items"`` ->
        ``("Sales Data", "Order.Items")``; case folded as the engine folds (Snowflake, Oracle).

        :raises ValueError: for a name that does not follow the grammar of names.py.
        """
        parts = self._written_parts(table)
        if len(parts) == 1 and self.default_schema:
            return (self.default_schema, *parts)
        return parts

    def table_name(self, *parts: str) -> str:
        """The canonical written form of exact name parts (what catalog methods return)."""
        return format_name(parts, folds=self.folds_unquoted)

    def qualify(self, table: str) -> str:
        """The canonical written form of the fully qualified exact name: ``orders`` -> ``public.orders``.

        Idempotent: ``qualify(qualify(x)) == qualify(x)``; plain names keep their form.
        """
        return self.table_name(*self.name_parts(table))

    def identifier(self, written: str) -> str:
        """The exact name of a one-part written name (a column, a key, a role), folded as the engine folds."""
        return exact_part(parse_name(written, 1)[0], folds=self.folds_unquoted)

    def column_name(self, written: str) -> str:
        """The exact name of a manifest column (``"Display Name"`` and ``Display Name`` alike)."""
        return self.identifier(written)

    def quote_column(self, written: str) -> str:
        """A manifest column name as this engine's SQL spells it: exact, folded where the engine folds, quoted."""
        return self.quote_identifier(self.identifier(written))

    def quote_identifier(self, name: str) -> str:
        """Quote an exact name (nothing is parsed or folded)."""
        from sqlglot import exp  # imported on use: sqlglot costs ~0.25 s, too much for DAG parsing

        return exp.to_identifier(name, quoted=True).sql(dialect=self.dialect)

    def quote_table(self, table: str) -> str:
        """Quote a (possibly qualified) written table name: each exact part quoted, nothing pasted."""
        return ".".join(self.quote_identifier(part) for part in self.name_parts(table))

    def identifier_problem(self, exact: str) -> str | None:
        """Why this engine cannot hold ``exact`` as a name (None when it can)."""
        for char, why in self.forbidden_name_chars.items():
            if char in exact:
                return f"holds a {why} character, which {self.engine_title} does not allow in a name"
        size = len(exact.encode("utf-8"))
        if self.max_identifier_bytes is not None and size > self.max_identifier_bytes:
            return (
                f"is {size} bytes long, {self.engine_title} holds at most {self.max_identifier_bytes} "
                "(a longer name would be cut or refused)"
            )
        if self.max_identifier_chars is not None and len(exact) > self.max_identifier_chars:
            return (
                f"is {len(exact)} characters long, {self.engine_title} holds at most "
                f"{self.max_identifier_chars}"
            )
        return None

    def name_problems(self, table: str, columns: Iterable[str] = ()) -> list[str]:
        """Why this engine cannot hold a written table name or its written columns: one line each."""
        problems: list[str] = []
        try:
            parts = self._written_parts(table)
            labels = ["project", "schema", "table name"][-len(parts) :] if len(parts) > 1 else ["table name"]
            for label, part in zip(labels, parts, strict=True):
                problem = self.identifier_problem(part)
                if problem:
                    shown = "" if label == "table name" else f" {self.table_name(part)}"
                    problems.append(f"table {table}: the {label}{shown} {problem}")
            for column in columns:
                exact = self.identifier(column)
                problem = self.identifier_problem(exact)
                if problem:
                    problems.append(f"table {table}: column {self.table_name(exact)} {problem}")
        except ValueError as exc:
            problems.append(f"table {table}: {exc}")
        return problems

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
    def hold_change_lock(
        self, key: int, holder: str, *, shared: bool = False
    ) -> AbstractContextManager[None]:
        """Hold the migration's change lock on this database for as long as the block runs.

        Where the engine has session-scoped advisory locks (PostgreSQL), a dedicated connection
        holds one keyed by ``key``; it ends with that connection, also when the process dies.
        Engines without such locks return a no-op (the state store's fence alone applies).

        :param key: the migration's lock key (:func:`sensei_airflow.state.change_lock_key`).
        :param holder: who holds it, shown to a second holder (``sensei <rollback id>``).
        :param shared: held in share mode: other shared holders (the mapped staging tasks of one
            run) pass, an exclusive holder (an apply) is refused, and the other way round.
        :raises ChangeLockHeld: when another session holds it (in a conflicting mode).
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

    def guard_sql(self, outside: Sequence[str]) -> list[Statement]:
        """Statements that keep writers out of ``outside`` for the rest of the transaction.

        ``outside`` are the tables outside the scope that reference a table being emptied; they
        must stay empty from the check that they are until the commit (empty list where the
        engine has no table locks: the check inside the transaction is all there is).
        """
        return []

    @abstractmethod
    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Empty the tables in one transaction where the engine allows.

        :param outside: tables outside the scope that reference ``tables``: locked first
            (:meth:`guard_sql`) and counted inside the same transaction; if one holds a row,
            :class:`OutsideRows` is raised and nothing is changed.
        :returns: the statements run and the rows removed from each table (counted under lock).
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
        """The Airflow Asset URI of a table, as the engine's provider writes it (None: no such form).

        Built by :mod:`sensei_airflow.engines.assets` with the provider's own ``sanitize_uri``.
        """
        from sensei_airflow.engines.assets import table_asset_uri

        return table_asset_uri(self, table)

    def row_source(self, table: str, key: Sequence[str]) -> Any | None:
        """The table's key columns as a :class:`sensei_airflow.verify.RowSource` (None: not available).

        Investigate uses it to locate, by bisection, the key ranges of rows that should not be there.
        """
        return None

    # -- reverse migration (strategies/reverse.py; defaults: not supported) -------------------
    def reverse_quote_column(self, name: str) -> str:
        """A manifest column name as this engine's SQL must spell it (case folding included)."""
        return self.quote_column(name)

    def reverse_column_types(self, table: str) -> dict[str, str]:
        """Column name -> type of a table, in column order (empty when the table does not exist)."""
        raise NotImplementedError(f"{type(self).__name__} cannot take part in a reverse migration yet")

    def reverse_reader(self, table: ReverseTable) -> ReverseReader:
        """Read a target table as source rows through the inverse expressions of ``table``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be read by a reverse migration yet")

    def reverse_writer(self, *, chunk_rows: int) -> ReverseWriter:
        """The writer that stages and applies reverse-migrated rows on this (source) database."""
        raise NotImplementedError(f"{type(self).__name__} cannot be written by a reverse migration yet")

    def reverse_stager(self, writer: Any) -> Any | None:
        """What stages a share of a reverse migration's chunks, for several tasks at once (ADR 0208).

        :param writer: this engine's :meth:`reverse_writer`.
        :returns: an object with ``plan(rollback_id, tables, readers) -> chunks`` and
            ``stage(rollback_id, tables, readers, group=, groups=, migration_id=)``; None where
            the engine stages in its apply task only (the staging tasks then do nothing).
        """
        return None

    # -- backups (backups/, strategies/backup_restore.py; defaults: not supported) -------------
    def table_checksums(self, tables: Iterable[str], like: dict[str, Any] | None = None) -> dict[str, Any]:
        """Row count and an order-independent checksum per (qualified) table, computed in the database.

        :param like: table -> a checksum recorded earlier: the table is checksummed the same way
            (:func:`checksum_kind`), so the two compare; the engine's best way otherwise.
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

    # -- the migration's start mark and the undo log (mark.py, strategies/undo_log.py) ----------
    #: the engine keeps an undo log from the start mark (PostgreSQL: logical decoding).
    keeps_undo_log: bool = False

    def take_mark(self, name: str, tables: Sequence[str], *, undo_log: bool, slot: str) -> MarkMoment:
        """Record the present moment of the target (a restore point, an LSN, an SCN, a timestamp),
        with each table's rows and checksum and the sequence maxima, all from that moment.

        :param name: a name for the moment (restore point, marked transaction), unique per mark.
        :param tables: the migration's target tables, qualified.
        :param undo_log: also open the undo log, from exactly this moment.
        :param slot: the name of the undo log's handle (a replication slot on PostgreSQL).
        :raises MarkRefused: when the undo log is asked for and this engine or its settings cannot keep one.
        """
        if undo_log:
            raise MarkRefused(
                f"{self.engine_title} keeps no undo log here: disable rollback.undo_log and roll back with "
                "point_in_time or backup_restore"
            )
        moment = self.mark_moment(name)
        counts = self.row_counts(tables)
        try:
            sums = self.table_checksums(tables)
        except NotImplementedError:
            sums = {}
        moment.tables = {
            t: {"rows": counts[t], "checksum": getattr(sums.get(t), "checksum", None)} for t in tables
        }
        return moment

    def mark_moment(self, name: str) -> MarkMoment:
        """The engine's own position of the present (default: none; subclasses give one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot mark a migration's start yet")

    def undo_log_problems(
        self, undo: dict[str, Any], tables: Sequence[UndoTable], schema: dict[str, str]
    ) -> list[str]:
        """Why the undo log cannot undo ``tables`` now (lost, DDL since the mark, no key): one line each."""
        return [f"{self.engine_title} keeps no undo log here; use point_in_time or backup_restore"]

    def undo_summary(self, undo: dict[str, Any], tables: Sequence[UndoTable], sample: int = 5) -> UndoSummary:
        """What undoing ``tables`` would do (nothing is changed)."""
        raise UndoLogRefused(
            f"{self.engine_title} keeps no undo log here; use point_in_time or backup_restore"
        )

    def apply_undo(
        self, undo: dict[str, Any], tables: Sequence[UndoTable], sequences: Sequence[dict[str, Any]]
    ) -> tuple[list[str], dict[str, int], dict[str, Any]]:
        """Undo every captured change to ``tables`` (parents first) since the mark, in one transaction.

        Idempotent: the tables' touched rows are set to their values at the mark, so a retry after
        a crash (before or after the commit) changes nothing more. The undo log keeps every change
        (it is never advanced): the oldest change of a key is what tells its row at the mark.

        :returns: the SQL run, rows changed per table, and detail (the position read up to).
        :raises UndoLogRefused: for a problem found before anything changed.
        """
        raise UndoLogRefused(
            f"{self.engine_title} keeps no undo log here; use point_in_time or backup_restore"
        )

    def undo_log_retained(self, undo: dict[str, Any]) -> dict[str, Any]:
        """How much the undo log retains on the target now (e.g. WAL bytes), and its status."""
        return {}

    def close_undo_log(self, undo: dict[str, Any]) -> list[str]:
        """Drop the undo log and restore what opening it changed; returns what was done."""
        return []

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


@dataclass(frozen=True)
class RecoveryCheck:
    """One fact verify checks about a recovery beyond row counts (e.g. which instance is live now)."""

    what: str
    check: str
    expected: Any
    actual: Any
    ok: bool


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
    #: the rollback this recovery works for: set by the strategy before it executes (None while
    #: assessing). Engines that leave named resources behind tag them with it, so a retry of the
    #: same rollback recognises its own work and another rollback does not mistake it for its own.
    rollback_id: str | None = None

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

    def verify_restore(self, detail: dict[str, Any]) -> list[RecoveryCheck]:
        """Checks beyond row counts that the restore is in place, from the detail :meth:`restore`
        returned (default: none)."""
        return []

    def create_restore_point(self, name: str) -> str | None:
        """Mark the present as a named point to recover to later (the migration tool calls this as it starts).

        Returns the engine's exact position of the mark (an LSN, an SCN), or None where the engine
        has no such marks (then the time is used).
        """
        return None

    @abstractmethod
    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        """Until when ``point`` stays restorable, per table (or one entry for all)."""
