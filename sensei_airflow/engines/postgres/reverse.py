"""Reverse migration on PostgreSQL: read a table through its inverse expressions, write it back.

Two halves, used by :mod:`sensei_airflow.strategies.reverse`:

* :class:`PostgresRowSource` reads one table as rows of the *source's* columns: on the target
  through the inverse expressions (each cast to the source column's type, so both sides
  render values alike), on the source as the plain columns. It computes counts and
  order-independent checksums in the database, cuts key ranges, samples keys, and produces the
  ``COPY (SELECT ...) TO STDOUT`` of a key range.
* :class:`PostgresReverseWriter` writes the source: each table is staged chunk by chunk (a
  chunk = a key range) into an unlogged staging table in schema ``sensei_staging``, one source
  transaction per chunk that also records the chunk as done (the checkpoint), so a retry
  continues where the last try stopped. When every table is staged, one transaction applies
  them all (upserts parents first, deletions children first, sequences past the highest key)
  and drops the staging tables: readers of the source see the old tables or the new ones,
  never half of one.

Between two PostgreSQL databases rows are not decoded: binary ``COPY`` blocks from the target
are merged into ~128 KiB writes to the source (ADR 0201). From another engine the reader hands
over batches of rows, written with ``COPY ... FROM STDIN`` row by row.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql as pgsql

from sensei_airflow.engines.base import INTEGER_TYPES, ReverseTable, integer_cuts
from sensei_airflow.engines.postgres import bulk, catalog
from sensei_airflow.engines.postgres.copy import relay_copy, session
from sensei_airflow.verify import KeyRange, KeyValues, both, split_range

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine

STAGING_SCHEMA = "sensei_staging"
_LOCK_KEY = 7_346_201

_STAGING_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STAGING_SCHEMA};
CREATE UNLOGGED TABLE IF NOT EXISTS {STAGING_SCHEMA}.reverse_chunks (
    rollback_id   text NOT NULL,
    source_table  text NOT NULL,
    chunk         integer NOT NULL,
    lo            text[],
    hi            text[],
    state         text NOT NULL DEFAULT 'pending',
    rows          bigint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollback_id, source_table, chunk)
);
CREATE TABLE IF NOT EXISTS {STAGING_SCHEMA}.reverse_applied (
    rollback_id   text PRIMARY KEY,
    result        jsonb NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now()
);
"""


def range_predicate(
    keys: Sequence[str], key_types: Sequence[str], key_range: KeyRange
) -> tuple[str, list[str]]:
    """``WHERE`` text (quoted key columns, typed placeholders) and params for a key range."""
    row = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"

    def typed() -> str:
        values = [f"%s::{t}" for t in key_types]
        return values[0] if len(values) == 1 else f"({', '.join(values)})"

    parts, params = [], []
    if key_range.lo is not None:
        parts.append(f"{row} > {typed()}")
        params += list(key_range.lo)
    if key_range.hi is not None:
        parts.append(f"{row} <= {typed()}")
        params += list(key_range.hi)
    return (" AND ".join(parts) or "true"), params


@dataclass
class PostgresRowSource:
    """One table read as source rows: ``exprs`` (already cast) over ``table``, keyed by ``keys``.

    :param table: quoted, qualified table.
    :param exprs: one SQL expression per compared column, rendering the source's type.
    :param keys: quoted key expressions, in key order.
    :param key_types: the key columns' types (placeholders are cast to them).
    """

    engine: PostgresEngine
    table: str
    columns: list[str]
    exprs: list[str]
    keys: list[str]
    key_types: list[str]
    #: checksums of two sources compare only when they hash rows the same way.
    hash_family: str = "postgres:hashtext(row::text)"

    def _where(self, key_range: KeyRange) -> tuple[str, list[str]]:
        return range_predicate(self.keys, self.key_types, key_range)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with session(self.engine) as conn:
            rows = conn.execute(sql, params or None).fetchall()
            conn.rollback()
            return rows

    def _sample_percent(self, n: int) -> float:
        """The ``TABLESAMPLE`` percentage that yields about ``3 n`` rows (all rows when never analysed)."""
        with session(self.engine) as conn:
            rows = catalog.estimated_rows(conn, self.table)
            conn.rollback()
        return 100.0 if rows <= 0 else min(100.0, 100.0 * 3 * n / rows)

    def row_sql(self) -> str:
        return "ROW(" + ", ".join(self.exprs) + ")::text"

    def checksum(self, key_range: KeyRange) -> tuple[int, int]:
        where, params = self._where(key_range)
        sql = (
            f"SELECT count(*), coalesce(sum(hashtext({self.row_sql()})), 0) "  # noqa: S608 - quoted identifiers
            f"FROM {self.table} WHERE {where}"
        )
        count, total = self._query(sql, params)[0]
        return int(count), int(total)

    def _count_sql(self, where: str) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE {where}"  # noqa: S608 - quoted identifiers

    def count_rows(self, key_range: KeyRange) -> int:
        where, params = self._where(key_range)
        return int(self._query(self._count_sql(where), params)[0][0])

    def row_hashes(self, key_range: KeyRange) -> dict[KeyValues, int]:
        """Key -> ``hashtext`` of the row as :meth:`checksum` renders it, for the rows in the range."""
        where, params = self._where(key_range)
        texts = ", ".join(f"{k}::text" for k in self.keys)
        sql = f"SELECT {texts}, hashtext({self.row_sql()}) FROM {self.table} WHERE {where}"  # noqa: S608
        n = len(self.keys)
        return {tuple(r[:n]): int(r[n]) for r in self._query(sql, params)}

    def boundaries(self, key_range: KeyRange, parts: int) -> list[KeyValues]:
        """Up to ``parts - 1`` ascending cuts: the last key of each of ``parts`` equal parts of the range.

        A single integer key is cut arithmetically. Otherwise, where an index gives the keys in
        order, walk it: each cut is ``OFFSET`` a part's size past the previous one (one pass over the
        index, no sort); without such an index, number the rows in one sorted scan.
        """
        if parts < 2:
            return []
        where, params = self._where(key_range)
        if len(self.keys) == 1 and self.key_types[0] in INTEGER_TYPES:
            return integer_cuts(self._query, self.table, self.keys[0], (where, params), parts)
        with session(self.engine) as conn:  # one connection: bisection cuts many ranges
            total = int(conn.execute(self._count_sql(where), params).fetchone()[0])
            size = math.ceil(total / parts)
            if total < 2 or size >= total:
                cuts: list[KeyValues] = []
            elif self._index_ordered(conn, where, params):
                cuts = self._walk_index(conn, key_range, size, total)
            else:
                cuts = self._number_rows(conn, where, params, size, total)
            conn.rollback()
        return cuts

    def _number_rows(
        self, conn: Any, where: str, params: Sequence[Any], size: int, total: int
    ) -> list[KeyValues]:
        key_list = ", ".join(self.keys)
        texts = ", ".join(f"{k}::text" for k in self.keys)
        numbered = conn.execute(
            f"SELECT {texts} FROM (SELECT {key_list}, row_number() OVER (ORDER BY {key_list}) AS n "  # noqa: S608
            f"FROM {self.table} WHERE {where}) s WHERE n %% %s = 0 AND n < %s ORDER BY n",
            [*params, size, total],
        ).fetchall()
        return [tuple(r) for r in numbered]

    def _next_cut_sql(self, where: str) -> str:
        # ordered by the qualified columns: an unqualified name would mean the ``::text`` output
        texts = ", ".join(f"walk.{k}::text" for k in self.keys)
        return (
            f"SELECT {texts} FROM {self.table} AS walk WHERE {where} "  # noqa: S608 - quoted identifiers
            f"ORDER BY {', '.join(f'walk.{k}' for k in self.keys)} OFFSET %s LIMIT 1"
        )

    def _index_ordered(self, conn: Any, where: str, params: Sequence[Any]) -> bool:
        """Whether the planner reads the keys in order from an index (no sort) for the walk."""
        (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + self._next_cut_sql(where), [*params, 0]).fetchone()

        def sorts(node: dict[str, Any]) -> bool:
            return "Sort" in node["Node Type"] or any(sorts(child) for child in node.get("Plans", []))

        return not sorts(plan[0]["Plan"])

    def _walk_index(self, conn: Any, key_range: KeyRange, size: int, total: int) -> list[KeyValues]:
        cuts: list[KeyValues] = []
        lo, wanted = key_range.lo, math.ceil(total / size) - 1
        while len(cuts) < wanted:
            where, params = range_predicate(self.keys, self.key_types, KeyRange(lo, key_range.hi))
            row = conn.execute(self._next_cut_sql(where), [*params, size - 1]).fetchone()
            if row is None:  # rows deleted since the count: fewer, larger parts
                break
            cuts.append(tuple(row))
            lo = cuts[-1]
        return cuts

    def sample_keys(self, n: int) -> list[KeyValues]:
        percent = self._sample_percent(n)
        texts = ", ".join(f"{k}::text" for k in self.keys)
        sql = f"SELECT {texts} FROM {self.table} TABLESAMPLE BERNOULLI (%s) LIMIT %s"  # noqa: S608
        return [tuple(r) for r in self._query(sql, (percent, n))]

    def rows(self, keys: Sequence[KeyValues]) -> dict[KeyValues, tuple[str | None, ...]]:
        if not keys:
            return {}
        arrays = [[k[i] for k in keys] for i in range(len(self.keys))]
        unnest = ", ".join(f"%s::{t}[]" for t in self.key_types)
        key_row = self.keys[0] if len(self.keys) == 1 else f"({', '.join(self.keys)})"
        texts = ", ".join(f"{k}::text" for k in self.keys)
        values = ", ".join(f"({e})::text" for e in self.exprs)
        sql = (
            f"SELECT {texts}, {values} FROM {self.table} "  # noqa: S608
            f"WHERE {key_row} IN (SELECT * FROM unnest({unnest}))"
        )
        n = len(self.keys)
        return {tuple(r[:n]): tuple(r[n:]) for r in self._query(sql, arrays)}

    def round_trip(
        self, forwards: Sequence[Any], target_types: dict[str, str], n: int
    ) -> tuple[dict[str, Any] | None, int]:
        """Inverse then forward on about ``n`` sampled target rows: the first row that does not come back.

        ``self.exprs`` are the inverse expressions, named after the source columns in an inner
        query; each forward expression (over source columns, cast to the target column's type)
        must equal the stored target value. Returns ``(failure or None, rows checked)``.
        """
        q = self.engine.quote_identifier
        inner_cols = [f"{k}::text AS {q(f'__sensei_k{i}')}" for i, k in enumerate(self.keys)]
        inner_cols += [
            f"{self.engine.quote_column(f.target)} AS {q(f'__sensei_t{i}')}" for i, f in enumerate(forwards)
        ]
        inner_cols += [f"{e} AS {q(c)}" for c, e in zip(self.columns, self.exprs, strict=True)]
        percent = self._sample_percent(n)
        inner = f"SELECT {', '.join(inner_cols)} FROM {self.table} TABLESAMPLE BERNOULLI (%s) LIMIT %s"  # noqa: S608
        back = [f"CAST(({f.forward}) AS {target_types[f.target]})" for f in forwards]
        kept = [q(f"__sensei_t{i}") for i in range(len(forwards))]
        outer = ", ".join(
            f"{kept[i]}::text, ({back[i]})::text, {kept[i]} IS DISTINCT FROM {back[i]}"
            for i in range(len(forwards))
        )
        keys = ", ".join(q(f"__sensei_k{i}") for i in range(len(self.keys)))
        sql = f"SELECT {keys}, {outer} FROM ({inner}) s"  # noqa: S608
        try:
            found = self._query(sql, (percent, n))
        except Exception as exc:  # a lossy cast or a bad expression fails inside the database
            message = str(exc).splitlines()[0]
            return {"column": "(expression)", "key": None, "target": message, "round_trip": "error"}, 0
        nk = len(self.keys)
        for row in found:
            for i, forward in enumerate(forwards):
                kept_text, back_text, differs = row[nk + 3 * i : nk + 3 * i + 3]
                if differs:
                    key = row[0] if nk == 1 else list(row[:nk])
                    return {
                        "column": forward.target,
                        "key": key,
                        "target": kept_text,
                        "round_trip": back_text,
                    }, len(found)
        return None, len(found)

    def copy_select(self, key_range: KeyRange, *, cast: bool = True) -> tuple[str, list[str]]:
        """``SELECT`` of the range's rows (no order: they land in a staging table)."""
        where, params = self._where(key_range)
        return f"SELECT {', '.join(self.exprs)} FROM {self.table} WHERE {where}", params  # noqa: S608


@dataclass
class TableApplied:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged_chunks: int = 0
    staged_chunks: int = 0
    #: chunks copied from the target straight into the (empty) table, inside the apply
    direct_chunks: int = 0
    sequences: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagingOwner:
    """The migration and rollback a staging table belongs to (stored as the table's comment)."""

    migration_id: str | None
    rollback_id: str | None

    def label(self, source_table: str, chunk: int) -> str:
        return json.dumps(
            {
                "sensei": "reverse staging",
                "migration_id": self.migration_id,
                "rollback_id": self.rollback_id,
                "source_table": source_table,
                "chunk": chunk,
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def parse(cls, comment: str | None) -> StagingOwner | None:
        try:
            found = json.loads(comment or "")
        except ValueError:
            return None
        if not isinstance(found, dict) or found.get("sensei") != "reverse staging":
            return None
        return cls(found.get("migration_id"), found.get("rollback_id"))


@dataclass
class StagingLeftover:
    """The staging tables one rollback left in ``sensei_staging`` (a crashed run's, or a running one's)."""

    migration_id: str | None
    rollback_id: str | None
    names: list[str] = field(default_factory=list)
    bytes: int = 0
    #: the rollback holds its migration's lock now (it is running: its staging is in use).
    holds_lock: bool = False

    @property
    def tables(self) -> int:
        return len(self.names)

    def describe(self, where: str) -> str:
        """One line for a plan warning or a status listing."""
        whose = f"rollback {self.rollback_id}" if self.rollback_id else "an unknown rollback"
        size = _size(self.bytes)
        if self.holds_lock:
            return f"{where} holds {self.tables} staging tables ({size}) of {whose}, which is running now"
        return (
            f"{where} holds {self.tables} staging tables ({size}) left by {whose}, which no longer holds the "
            "lock (it crashed or was stopped); the next completed reverse migration of the migration drops them"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "rollback_id": self.rollback_id,
            "tables": self.tables,
            "bytes": self.bytes,
            "holds_lock": self.holds_lock,
            "names": list(self.names),
        }


def _size(n: int) -> str:
    size = float(n)
    for unit in ("kB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            return f"{n} bytes" if n < 1024 else f"{size:.1f} {unit}"
    return f"{n} bytes"


def stage_name(rollback_id: str, source_table: str, chunk: int) -> str:
    """The staging table of one chunk (a short, stable name: identifiers stop at 63 bytes)."""
    digest = hashlib.sha1(f"{rollback_id}\0{source_table}".encode()).hexdigest()[:20]
    return f"rev_{digest}_{chunk}"


class PostgresReverseWriter:
    """Writes reverse-migrated rows into a PostgreSQL source: staging, checkpoints, one apply.

    Every connection it opens (and the target connections of the COPY relay) runs with a
    ``lock_timeout``: a lock held elsewhere (a target table, the staging DDL's advisory lock)
    fails the try with ``LockNotAvailable`` instead of leaving the apply transaction idle with
    the source tables locked; the retry resumes from the checkpoints (ADR 0204).

    :param chunk_rows: rows per key range (the unit a retry resumes from).
    """

    #: how long any of the writer's statements waits for a lock before the try fails.
    lock_timeout = "30s"
    #: from about this many rows to move, the apply loads empty source tables with their foreign
    #: keys and indexes set aside and checks them once before commit (measured: ADR 0200).
    bulk_rows = 50_000

    def __init__(self, engine: PostgresEngine, *, chunk_rows: int = 100_000) -> None:
        self.engine = engine
        self.chunk_rows = chunk_rows
        self.q = engine.quote_identifier

    def _session(self) -> Any:
        """A source session whose lock waits end after :attr:`lock_timeout`."""
        return session(self.engine, lock_timeout=self.lock_timeout)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._session() as conn:
            rows = conn.execute(sql, params or None).fetchall()
            conn.rollback()
            return rows

    # -- catalog and checks ----------------------------------------------------------------
    def _read(self, ask: Any, *args: Any) -> Any:
        """One catalog question (a function of :mod:`.catalog`) on a source session, rolled back."""
        with self._session() as conn:
            try:
                return ask(conn, *args)
            finally:
                conn.rollback()

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> type of a source table, in column order (empty when it does not exist)."""
        return dict(self._read(catalog.columns, self.engine.quote_table(table)))

    def unique_keys(self, table: str) -> list[set[str]]:
        """Column sets of the table's primary key and unique indexes (no expressions, no predicates)."""
        return list(self._read(catalog.unique_keys, self.engine.quote_table(table)))

    def writability(self, tables: Sequence[str]) -> list[str]:
        """Why the source cannot take the reverse migration's writes (empty when it can).

        Asks the server: recovery (a standby), read-only transactions, and the privileges to
        write the tables and to create the staging schema.
        """
        problems: list[str] = []
        with self._session() as conn:
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return ["the source server is a standby in recovery (read-only)"]
            if conn.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "on":
                problems.append("the source session is read-only (default_transaction_read_only is on)")
            staging_ok = conn.execute(
                "SELECT CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE') "
                "ELSE has_schema_privilege(n.oid, 'CREATE') END "
                "FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s",
                (STAGING_SCHEMA,),
            ).fetchone()[0]
            if not staging_ok:
                problems.append(f"the source login may not create the staging schema {STAGING_SCHEMA}")
            for table in tables:
                quoted = self.engine.quote_table(table)
                missing = [
                    p
                    for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
                    if not conn.execute("SELECT has_table_privilege(%s, %s)", (quoted, p)).fetchone()[0]
                ]
                if missing:
                    problems.append(f"the source login lacks {', '.join(missing)} on {table}")
            conn.rollback()
        return problems

    def existing_tables(self, tables: Sequence[str]) -> set[str]:
        by_quoted = {self.engine.quote_table(t): t for t in tables}
        return {by_quoted[q] for q in self._read(catalog.existing_tables, list(by_quoted))}

    # -- staging -----------------------------------------------------------------------------
    def ensure_staging(self, conn: Any) -> None:
        """Create the staging schema and checkpoint tables, in the caller's transaction on ``conn``.

        The check runs on ``conn`` itself (not on a second connection that could race with the
        DDL); only when the tables are missing is the advisory lock taken, and its wait is
        bounded by the session's ``lock_timeout`` like any other lock.
        """
        present = "SELECT to_regclass('sensei_staging.reverse_applied') IS NOT NULL"
        if conn.execute(present).fetchone()[0]:
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_STAGING_DDL)

    def applied_result(self, rollback_id: str) -> dict[str, Any] | None:
        """The recorded outcome if this rollback's apply already committed (a retry after it)."""
        rows = (
            self._query(
                "SELECT result FROM sensei_staging.reverse_applied WHERE rollback_id = %s "
                "AND to_regclass('sensei_staging.reverse_applied') IS NOT NULL",
                (rollback_id,),
            )
            if self._has_staging()
            else []
        )
        return rows[0][0] if rows else None

    def _has_staging(self) -> bool:
        return bool(self._read(catalog.exists, f"{STAGING_SCHEMA}.reverse_applied"))

    def chunks(self, rollback_id: str, table: ReverseTable) -> list[tuple[int, KeyRange, str, int | None]]:
        if not self._has_staging():
            return []
        rows = self._query(
            "SELECT chunk, lo, hi, state, rows FROM sensei_staging.reverse_chunks "
            "WHERE rollback_id = %s AND source_table = %s ORDER BY chunk",
            (rollback_id, table.source),
        )
        return [
            (n, KeyRange(tuple(lo) if lo else None, tuple(hi) if hi else None), state, rows_)
            for n, lo, hi, state, rows_ in rows
        ]

    def plan_chunks(
        self, rollback_id: str, table: ReverseTable, reader: Any
    ) -> list[tuple[int, KeyRange, str, int | None]]:
        """The table's chunks: those recorded by an earlier try, else cut now from the target's keys."""
        existing = self.chunks(rollback_id, table)
        if existing:
            return existing
        total = reader.count_rows(KeyRange())
        parts = max(1, math.ceil(total / self.chunk_rows))
        ranges = [KeyRange()] if parts == 1 else split_range(KeyRange(), reader.boundaries(KeyRange(), parts))
        with self._session() as conn, conn.transaction():
            self.ensure_staging(conn)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO sensei_staging.reverse_chunks (rollback_id, source_table, chunk, lo, hi) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [
                        (
                            rollback_id,
                            table.source,
                            i,
                            list(r.lo) if r.lo else None,
                            list(r.hi) if r.hi else None,
                        )
                        for i, r in enumerate(ranges)
                    ],
                )
        return self.chunks(rollback_id, table)

    def expected_rows(self, readers: Any) -> int:
        """About how many rows the readers hold, without reading a row.

        On PostgreSQL the planner's estimate (``reltuples``: no lock on the table, so a table
        locked elsewhere still fails where the staging reads it, within the lock timeout); a
        table never analysed counts as empty. Other engines count their rows.
        """
        total = 0
        for reader in readers:
            if isinstance(reader, PostgresRowSource):
                with session(reader.engine) as conn:
                    total += int(catalog.estimated_rows(conn, reader.table))
                    conn.rollback()
            else:
                total += reader.count_rows(KeyRange())
        return total

    def loads_directly(self, tables: Sequence[ReverseTable], readers: dict[str, Any]) -> bool:
        """Whether the apply will copy every pending chunk straight from the target (ADR 0200):
        every source table empty, a bulk-sized move, and a PostgreSQL target to relay from.

        A prediction for the staging tasks, read without locks; the apply decides again under its
        locks, and stages itself whatever a wrong prediction left unstaged.
        """
        if not all(isinstance(readers[t.source], PostgresRowSource) for t in tables):
            return False
        with self._session() as conn:
            empty = not any(catalog.has_rows(conn, self.engine.quote_table(t.source)) for t in tables)
            conn.rollback()
        return empty and self.expected_rows(readers.values()) >= self.bulk_rows

    def source_reader(self, table: ReverseTable) -> PostgresRowSource:
        """The source side of the table, read as its plain columns."""
        return PostgresRowSource(
            self.engine,
            self.engine.quote_table(table.source),
            list(table.columns),
            [self.q(c) for c in table.columns],
            [self.q(k) for k in table.source_key],
            list(table.key_types),
        )

    def stage_path(self, rollback_id: str, table: ReverseTable, chunk: int) -> str:
        return f"{STAGING_SCHEMA}.{self.q(stage_name(rollback_id, table.source, chunk))}"

    def migrate(
        self,
        rollback_id: str,
        tables: Sequence[ReverseTable],
        readers: dict[str, Any],
        *,
        skip_unchanged: bool = True,
        migration_id: str | None = None,
    ) -> tuple[dict[str, TableApplied], dict[str, dict[str, int]]]:
        """Stage every table chunk by chunk while one transaction applies the staged chunks.

        ``tables`` are parents first. The stager (this thread) commits each chunk with its
        checkpoint; the applier (a second connection) holds the source tables' locks and one
        open transaction, upserts each chunk as soon as it is staged, then deletes the rows gone
        from the target (children first), sets the sequences, records the outcome, drops the
        staging and commits. Moving and applying overlap; a failure anywhere rolls the apply back
        and keeps the staged chunks for the retry, which re-applies them from the staging tables.

        Each staging table's comment names ``migration_id`` and ``rollback_id``, so what a crashed
        run left behind can be found and dropped later (:meth:`leftover_staging`).

        Returns the applied rows per source table and the chunk outcomes per target table.
        """
        with self._session() as conn, conn.transaction():
            self.ensure_staging(conn)
        applier = _Applier(self, rollback_id, list(tables), self.expected_rows(readers.values()))
        applier.readers = dict(readers)
        applier.start()
        outcomes: dict[str, dict[str, int]] = {}
        try:
            for table in tables:
                outcomes[table.target] = self._stage_table(
                    StagingOwner(migration_id, rollback_id),
                    rollback_id,
                    table,
                    readers[table.source],
                    applier,
                    skip_unchanged=skip_unchanged,
                )
        except BaseException as exc:
            applier.abort()
            applier.join()
            if isinstance(exc, _Aborted) and applier.error is not None:
                raise applier.error from None
            raise
        applier.finish()
        applier.join()
        if applier.error is not None:
            raise applier.error
        return applier.results, outcomes

    def _stage_table(
        self,
        owner: StagingOwner,
        rollback_id: str,
        table: ReverseTable,
        reader: Any,
        applier: _Applier,
        *,
        skip_unchanged: bool,
    ) -> dict[str, int]:
        relayed = isinstance(reader, PostgresRowSource)
        applier.ready.wait()  # which source tables are empty: the apply holds them locked from then on
        applier.check()
        chunks: list[tuple[int, KeyRange, str, int | None]]
        if applier.direct and relayed and not self.chunks(rollback_id, table):
            # copied inside the apply, which a retry redoes whole: one range, nothing to checkpoint
            chunks = [(0, KeyRange(), "pending", None)]
        else:
            chunks = self.plan_chunks(rollback_id, table, reader)
        shape = self.column_types(table.source)
        with ExitStack() as stack:
            run = _TableRun(
                owner=owner,
                rollback_id=rollback_id,
                table=table,
                reader=reader,
                applier=applier,
                conn=stack.enter_context(self._session()),
                source_conn=stack.enter_context(session(reader.engine)) if relayed else None,
                compare=skip_unchanged and relayed and not applier.empty[table.source],
                shape=shape,
                source_side=self.source_reader(table),
            )
            for number, key_range, state, _rows in chunks:
                self._stage_chunk(run, number, key_range, state)
        return run.outcome

    def _stage_chunk(self, run: _TableRun, number: int, key_range: KeyRange, state: str) -> None:
        """Stage one chunk (or mark it unchanged) and hand it to the applier."""
        table, reader, applier, outcome, conn = run.table, run.reader, run.applier, run.outcome, run.conn
        applier.check()
        if state == "pending" and applier.direct and run.source_conn is not None:
            outcome["direct"] += 1
            applier.put(table, number, key_range, "direct")
            return
        if state != "pending":
            outcome["resumed"] += 1
            applier.put(table, number, key_range, state)
            return
        if run.compare:
            left, right = both(
                lambda: run.source_side.checksum(key_range), lambda: reader.checksum(key_range)
            )
            if left == right:
                self._mark(run.rollback_id, table, number, "same", left[0])
                outcome["same"] += 1
                applier.put(table, number, key_range, "same")
                return
        stage = self.stage_path(run.rollback_id, table, number)
        # the staging table's shape from the catalog, not from the source table: the bulk apply
        # may hold that locked ACCESS EXCLUSIVE already
        columns = ", ".join(f"{self.q(c)} {run.shape[c]}" for c in table.columns)
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {stage}")
            conn.execute(f"CREATE UNLOGGED TABLE {stage} ({columns})")
            label = run.owner.label(table.source, number)
            conn.execute(
                pgsql.SQL("COMMENT ON TABLE {} IS {}").format(pgsql.SQL(stage), pgsql.Literal(label))
            )
            moved = self._copy_range(conn, stage, table, reader, key_range, run.source_conn)
            conn.execute(
                "UPDATE sensei_staging.reverse_chunks SET state = 'staged', rows = %s, "
                "updated_at = now() WHERE rollback_id = %s AND source_table = %s AND chunk = %s",
                (moved, run.rollback_id, table.source, number),
            )
        outcome["staged"] += 1
        applier.put(table, number, key_range, "staged")

    def _mark(self, rollback_id: str, table: ReverseTable, chunk: int, state: str, rows: int) -> None:
        with self._session() as conn, conn.transaction():
            conn.execute(
                "UPDATE sensei_staging.reverse_chunks SET state = %s, rows = %s, updated_at = now() "
                "WHERE rollback_id = %s AND source_table = %s AND chunk = %s",
                (state, rows, rollback_id, table.source, chunk),
            )

    def _copy_range(
        self, conn: Any, stage: str, table: ReverseTable, reader: Any, key_range: KeyRange, source_conn: Any
    ) -> int:
        """The rows of ``key_range`` from ``reader`` into ``stage`` (a staging table, or the source table
        itself) on ``conn``: relayed as binary COPY from a PostgreSQL target read on ``source_conn``."""
        columns = ", ".join(self.q(c) for c in table.columns)
        if isinstance(reader, PostgresRowSource):
            select, params = reader.copy_select(key_range)
            with source_conn.cursor() as src, conn.cursor() as dst:
                moved = relay_copy(
                    src,
                    dst,
                    f"COPY ({select}) TO STDOUT (FORMAT binary)",
                    f"COPY {stage} ({columns}) FROM STDIN (FORMAT binary)",
                    params,
                )
            source_conn.rollback()
            return moved
        moved = 0
        with conn.cursor() as cur, cur.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy_in:
            for batch in reader.batches(key_range):
                for row in batch:
                    copy_in.write_row(row)
                moved += len(batch)
        return moved

    def upsert_chunk(self, conn: Any, stage: str, table: ReverseTable, empty: bool) -> tuple[int, int]:
        """Insert or update the source rows from one staged chunk: (inserted, updated)."""
        source = self.engine.quote_table(table.source)
        columns = ", ".join(self.q(c) for c in table.columns)
        if empty:
            insert = f"INSERT INTO {source} ({columns}) SELECT {columns} FROM {stage}"  # noqa: S608
            return max(conn.execute(insert).rowcount, 0), 0
        keys = ", ".join(self.q(k) for k in table.source_key)
        others = [c for c in table.columns if c not in table.source_key]
        if others:
            sets = ", ".join(f"{self.q(c)} = EXCLUDED.{self.q(c)}" for c in others)
            mine = ", ".join(f"{source}.{self.q(c)}" for c in others)
            theirs = ", ".join(f"EXCLUDED.{self.q(c)}" for c in others)
            action = f"DO UPDATE SET {sets} WHERE ({mine}, NULL) IS DISTINCT FROM ({theirs}, NULL)"
        else:
            action = "DO NOTHING"
        row = conn.execute(
            f"WITH up AS (INSERT INTO {source} ({columns}) SELECT {columns} FROM {stage} "  # noqa: S608
            f"ON CONFLICT ({keys}) {action} RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"
        ).fetchone()
        return int(row[0]), int(row[1])

    def delete_missing(self, conn: Any, stage: str, table: ReverseTable, key_range: KeyRange) -> int:
        """Delete the source rows of the chunk's key range that its staged rows do not hold."""
        source = self.engine.quote_table(table.source)
        match = " AND ".join(f"st.{self.q(k)} = s.{self.q(k)}" for k in table.source_key)
        keys = [f"s.{self.q(k)}" for k in table.source_key]
        where, params = range_predicate(keys, table.key_types, key_range)
        sql = (
            f"DELETE FROM {source} s WHERE {where} "  # noqa: S608
            f"AND NOT EXISTS (SELECT 1 FROM {stage} st WHERE {match})"
        )
        return max(conn.execute(sql, params).rowcount, 0)

    def _advance_sequences(self, conn: Any, table: ReverseTable) -> dict[str, int]:
        """Set each sequence owned by a column of the table past the column's highest value."""
        quoted = self.engine.quote_table(table.source)
        done = {}
        for sequence, column, _start in catalog.sequence_columns(conn, quoted):
            highest = f"(SELECT coalesce(max({self.q(column)}), 0) FROM {quoted})"  # noqa: S608
            value = conn.execute(
                f"SELECT setval(%s::regclass, greatest({highest}, "
                "coalesce(pg_sequence_last_value(%s::regclass), 0), 1))",
                (sequence, sequence),
            ).fetchone()[0]
            done[sequence] = int(value)
        return done

    def sequence_positions(self, table: ReverseTable) -> list[tuple[str, int, int]]:
        """``(sequence, its last value, the column's highest value)`` for each sequence the table owns."""
        quoted = self.engine.quote_table(table.source)
        found = []
        for sequence, column, _start in self._read(catalog.sequence_columns, quoted):
            last, highest = self._query(
                f"SELECT coalesce(pg_sequence_last_value(%s::regclass), 0), "  # noqa: S608
                f"(SELECT coalesce(max({self.q(column)}), 0) FROM {quoted})",
                (sequence,),
            )[0]
            found.append((sequence, int(last), int(highest)))
        return found

    def leftover_staging(self) -> list[StagingLeftover]:
        """The staging tables in ``sensei_staging`` now, by the migration and rollback that made them.

        Attributed by each table's comment; a table without one (staged by an older version) is
        matched to its rollback through the checkpoints when they still name it, else reported
        with neither id.
        """
        if not self._read(catalog.schema_exists, STAGING_SCHEMA):
            return []
        rows = self._read(catalog.tables_in_schema, STAGING_SCHEMA, "rev_")
        by_name: dict[str, str] = {}
        if any(StagingOwner.parse(comment) is None for _, comment, _ in rows) and self._has_staging():
            for rollback_id, source_table, chunk in self._query(
                "SELECT rollback_id, source_table, chunk FROM sensei_staging.reverse_chunks"
            ):
                by_name[stage_name(rollback_id, source_table, chunk)] = rollback_id
        found: dict[tuple[str | None, str | None], StagingLeftover] = {}
        for name, comment, size in rows:
            owner = StagingOwner.parse(comment) or StagingOwner(None, by_name.get(name))
            leftover = found.setdefault(
                (owner.migration_id, owner.rollback_id),
                StagingLeftover(owner.migration_id, owner.rollback_id),
            )
            leftover.names.append(name)
            leftover.bytes += int(size)
        return list(found.values())

    def drop_leftover_staging(self, leftovers: Sequence[StagingLeftover]) -> list[str]:
        """Drop these staging tables and their runs' checkpoints, in one transaction; the tables dropped."""
        dropped: list[str] = []
        if not leftovers:
            return dropped
        with self._session() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for leftover in leftovers:
                for name in leftover.names:
                    conn.execute(f"DROP TABLE IF EXISTS {STAGING_SCHEMA}.{self.q(name)}")
                    dropped.append(f"{STAGING_SCHEMA}.{name}")
                if leftover.rollback_id is not None and self._has_staging():
                    conn.execute(
                        "DELETE FROM sensei_staging.reverse_chunks WHERE rollback_id = %s",
                        (leftover.rollback_id,),
                    )
        return dropped

    def discard(self, rollback_id: str) -> None:
        """Drop a rollback's staging tables and checkpoints (to start over)."""
        if not self._has_staging():
            return
        with self._session() as conn, conn.transaction():
            self._drop_staging(conn, rollback_id)

    def _drop_staging(self, conn: Any, rollback_id: str) -> None:
        for name, chunk in conn.execute(
            "SELECT source_table, chunk FROM sensei_staging.reverse_chunks WHERE rollback_id = %s",
            (rollback_id,),
        ).fetchall():
            conn.execute(
                f"DROP TABLE IF EXISTS {STAGING_SCHEMA}.{self.q(stage_name(rollback_id, name, chunk))}"
            )
        conn.execute("DELETE FROM sensei_staging.reverse_chunks WHERE rollback_id = %s", (rollback_id,))


@dataclass
class _TableRun:
    """One table being staged: who it is staged for, its reader, its connections and its tallies."""

    owner: StagingOwner
    rollback_id: str
    table: ReverseTable
    reader: Any
    applier: _Applier
    conn: Any
    source_conn: Any
    compare: bool
    source_side: PostgresRowSource
    #: source column -> its type (``format_type``): the staging table's columns.
    shape: dict[str, str]
    outcome: dict[str, int] = field(
        default_factory=lambda: {"staged": 0, "same": 0, "resumed": 0, "direct": 0}
    )


_DONE = object()
_ABORT = object()


class _Aborted(Exception):
    """The stager failed: the apply transaction is rolled back."""


class _Applier(threading.Thread):
    """The apply transaction of :meth:`PostgresReverseWriter.migrate`, fed chunk by chunk."""

    def __init__(
        self, writer: PostgresReverseWriter, rollback_id: str, tables: list[ReverseTable], expected_rows: int
    ) -> None:
        super().__init__(name="sensei-reverse-apply", daemon=True)
        self.writer = writer
        #: about how many rows the staging will move (decides the bulk load).
        self.expected_rows = expected_rows
        self.rollback_id = rollback_id
        self.tables = tables
        self.queue: queue.Queue[Any] = queue.Queue()
        #: set once the apply holds the source tables and knows which were empty (:attr:`empty`).
        self.ready = threading.Event()
        self.empty: dict[str, bool] = {}
        #: set with :attr:`ready`: pending chunks are copied from the target inside the apply
        #: (every source table empty and locked, keys set aside), never staged
        self.direct = False
        self.readers: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.results: dict[str, TableApplied] = {t.source: TableApplied() for t in tables}

    def put(self, table: ReverseTable, chunk: int, key_range: KeyRange, state: str) -> None:
        self.queue.put((table, chunk, key_range, state))

    def check(self) -> None:
        """Stop staging as soon as the apply failed (its error is raised by ``migrate``)."""
        if self.error is not None:
            raise _Aborted("the apply transaction failed") from self.error

    def finish(self) -> None:
        self.queue.put(_DONE)

    def abort(self) -> None:
        self.queue.put(_ABORT)

    def run(self) -> None:
        try:
            self._apply()
        except _Aborted:
            pass
        except BaseException as exc:  # handed to the stager's thread
            self.error = exc
        finally:
            self.ready.set()  # a stager still waiting sees the error

    def _apply(self) -> None:
        with ExitStack() as stack:
            conn = stack.enter_context(self.writer._session())
            stack.enter_context(conn.transaction())
            self._apply_in(conn, stack)

    def _apply_in(self, conn: Any, stack: ExitStack) -> None:
        """The apply transaction's work on ``conn``; ``stack`` closes the target session it opens."""
        writer, engine = self.writer, self.writer.engine
        staged: list[tuple[ReverseTable, int, KeyRange]] = []
        target_conn = None
        quoted = ", ".join(engine.quote_table(t.source) for t in self.tables)
        conn.execute(f"LOCK TABLE {quoted} IN EXCLUSIVE MODE")
        empty = {t.source: not catalog.has_rows(conn, engine.quote_table(t.source)) for t in self.tables}
        load_empty = [t for t in self.tables if empty[t.source]]
        in_bulk = bool(load_empty) and self.expected_rows >= writer.bulk_rows
        aside = None
        if in_bulk and len(load_empty) == len(self.tables):
            # every table empty: the stager reads none of them (no compare), so set the keys
            # aside now and load each chunk as it is staged, moving and applying overlapped
            aside, in_bulk = self._set_aside(conn, load_empty), False
            # and copy each pending chunk from the target straight into its table: every row
            # written once, not into staging and again into the table (ADR 0200)
            self.direct = True
        self.empty = empty
        self.ready.set()
        deferred: list[tuple[ReverseTable, int, KeyRange, str]] = []
        while True:
            item = self.queue.get()
            if item is _DONE:
                break
            if item is _ABORT:
                raise _Aborted
            if item[3] == "direct":
                if target_conn is None:
                    target_conn = stack.enter_context(session(self.readers[item[0].source].engine))
                self._copy_directly(conn, target_conn, *item[:3])
                continue
            if in_bulk:  # the stager compares non-empty tables: lock the empty ones once it is done
                deferred.append(item)
            else:
                staged += self._upsert(conn, *item, empty=empty[item[0].source])
        if in_bulk:
            aside = self._set_aside(conn, load_empty)
        for item in deferred:
            staged += self._upsert(conn, *item, empty=empty[item[0].source])
        for table in reversed(self.tables):  # children first
            if empty[table.source]:
                continue
            for chunk_table, chunk, key_range in staged:
                if chunk_table.source == table.source:
                    stage = writer.stage_path(self.rollback_id, table, chunk)
                    self.results[table.source].deleted += writer.delete_missing(conn, stage, table, key_range)
        if aside is not None:
            try:
                bulk.put_back(conn, engine, aside)
            except bulk.ForeignKeyBroken as exc:
                from sensei_airflow.plan import RefusedError

                raise RefusedError(f"reverse migration: {exc}") from None
        for table in self.tables:
            self.results[table.source].sequences = writer._advance_sequences(conn, table)
        conn.execute(
            "INSERT INTO sensei_staging.reverse_applied (rollback_id, result) VALUES (%s, %s) "
            "ON CONFLICT (rollback_id) DO NOTHING",
            (self.rollback_id, json.dumps({name: vars(r) for name, r in self.results.items()})),
        )
        writer._drop_staging(conn, self.rollback_id)

    def _copy_directly(
        self, conn: Any, target_conn: Any, table: ReverseTable, chunk: int, key_range: KeyRange
    ) -> None:
        """One chunk from the target into its empty source table, inside the apply transaction."""
        source = self.writer.engine.quote_table(table.source)
        moved = self.writer._copy_range(
            conn, source, table, self.readers[table.source], key_range, target_conn
        )
        result = self.results[table.source]
        result.inserted += moved
        result.direct_chunks += 1

    def _upsert(
        self, conn: Any, table: ReverseTable, chunk: int, key_range: KeyRange, state: str, *, empty: bool
    ) -> list[tuple[ReverseTable, int, KeyRange]]:
        """Apply one staged chunk (insert or upsert); the chunk, for the deletes, when it was staged."""
        result = self.results[table.source]
        if state != "staged":
            result.unchanged_chunks += 1
            return []
        result.staged_chunks += 1
        stage = self.writer.stage_path(self.rollback_id, table, chunk)
        inserted, updated = self.writer.upsert_chunk(conn, stage, table, empty)
        result.inserted += inserted
        result.updated += updated
        return [(table, chunk, key_range)]

    def _set_aside(self, conn: Any, empty: list[ReverseTable]) -> bulk.SetAside:
        """Bulk load (ADR 0200): set aside the foreign keys and indexes of the tables empty at the start.

        Used where it pays (:attr:`PostgresReverseWriter.bulk_rows` rows or more to move), and only
        for empty tables: they take plain ``INSERT``s (no upsert needs their key's index) and lose
        no row to a delete, so no ``ON DELETE`` action of a dropped key is skipped. The tables are
        locked ``ACCESS EXCLUSIVE`` first: until commit nobody sees them without their constraints.
        When every table is empty this happens before the first chunk is loaded; otherwise once
        every chunk is staged (the stager compares the other tables with the target).
        """
        quoted = [self.writer.engine.quote_table(t.source) for t in empty]
        conn.execute(f"LOCK TABLE {', '.join(quoted)} IN ACCESS EXCLUSIVE MODE")
        return bulk.set_aside(conn, self.writer.engine, quoted)
