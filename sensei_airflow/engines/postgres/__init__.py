"""PostgreSQL, through the postgres provider's ``PostgresHook`` (psycopg 3).

:class:`PostgresEngine` is the facade; the work lives in the modules beside it:
:mod:`.catalog` (every ``pg_catalog`` query), :mod:`.client` (the PostgreSQL programs and their
credentials), :mod:`.copy` (the binary COPY relay, replacing tables from a recovered copy),
:mod:`.reverse` (reverse migration), :mod:`.backup` (logical backups), :mod:`.basebackup`
(base backups, shared by physical backups and PITR), :mod:`.wal`, :mod:`.cluster` and
:mod:`.pitr` (point-in-time recovery from a WAL archive) and :mod:`.rds` (RDS/Aurora PITR).

The modules depend on :mod:`.catalog`, :mod:`.client`, :mod:`.copy` and ``engines/base.py``
only, except :mod:`.pitr`, which composes :mod:`.basebackup`, :mod:`.wal` and :mod:`.cluster`.
None of them imports this facade (its type only, for annotations), so every import here is at
module level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from sensei_airflow.engines.base import (
    ChangeLockHeld,
    Engine,
    ForeignKey,
    Grant,
    PointInTimeRefused,
    ReverseTable,
    SequenceReset,
    Statement,
    check_outside_empty,
    checksum_kind,
)
from sensei_airflow.engines.postgres import backup, basebackup, catalog
from sensei_airflow.engines.postgres import undo as undo_module
from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery
from sensei_airflow.engines.postgres.rds import RdsRecovery
from sensei_airflow.engines.postgres.reverse import PostgresReverseWriter, PostgresRowSource

T = TypeVar("T")


class PostgresEngine(Engine):
    dialect = "postgres"
    engine_title = "PostgreSQL"
    default_schema = "public"
    #: PostgreSQL silently truncates a longer name (NAMEDATALEN - 1).
    max_identifier_bytes = 63
    keeps_undo_log = True
    #: how long the rollback waits for its table locks before giving up (and retrying).
    lock_timeout = "30s"

    def _make_hook(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.conn_id)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A psycopg 3 connection, closed on exit (the caller decides on transactions)."""
        with closing(self.hook.get_conn()) as conn:
            yield conn

    def read(self, ask: Callable[..., T], *args: Any) -> T:
        """One catalog question (a function of :mod:`.catalog`) on its own connection, rolled back."""
        with self.connect() as conn:
            try:
                return ask(conn, *args)
            finally:
                conn.rollback()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            rows = cur.fetchall()
            conn.rollback()
            return rows

    # -- one rollback per migration ----------------------------------------------------------
    @contextmanager
    def hold_change_lock(self, key: int, holder: str, *, shared: bool = False) -> Iterator[None]:
        """A session advisory lock on this database, on its own connection, while the block runs.

        ``pg_try_advisory_lock`` never waits: a second holder is refused at once, naming the
        session that holds it (its ``application_name`` is ``holder``). ``shared`` takes it with
        ``pg_try_advisory_lock_shared`` (the mapped staging tasks of one run hold it together).
        """
        mode = "_shared" if shared else ""
        with self.connect() as conn:
            conn.autocommit = True
            conn.execute("SELECT set_config('application_name', %s, false)", (holder[:63],))
            if not conn.execute(f"SELECT pg_try_advisory_lock{mode}(%s)", (key,)).fetchone()[0]:
                row = catalog.advisory_lock_holder(conn, key)
                who = (
                    f"session {row[0]} ({row[1] or 'no application name'}, connected since {row[2].isoformat()})"
                    if row
                    else "another session"
                )
                raise ChangeLockHeld(f"its change lock is held by {who}")
            try:
                yield
            finally:
                with suppress(Exception):  # the connection may be gone; closing it releases the lock anyway
                    conn.execute(f"SELECT pg_advisory_unlock{mode}(%s)", (key,))

    # -- catalog ---------------------------------------------------------------------------
    def identity(self) -> str:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            database = cur.fetchone()[0]
            try:
                server = catalog.system_identifier(cur)
            except Exception:  # the function is restricted on some managed services
                conn.rollback()
                cur.execute("SELECT coalesce(host(inet_server_addr()), 'local') || ':' || inet_server_port()")
                server = cur.fetchone()[0]
            conn.rollback()
        return f"postgres:{server}/{database}"

    def user_tables(self) -> list[str]:
        return [self.table_name(schema, name) for schema, name in self.read(catalog.user_tables)]

    def foreign_keys(self) -> list[ForeignKey]:
        return [
            ForeignKey(name=con, child=self.table_name(cs, cn), parent=self.table_name(ps, pn))
            for con, cs, cn, ps, pn in self.read(catalog.foreign_keys)
        ]

    def row_counts(self, tables: Iterable[str]) -> dict[str, int]:
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        union = " UNION ALL ".join(
            f"SELECT %s, count(*) FROM {self.quote_table(name)}"  # noqa: S608 - quoted identifiers
            for name in names
        )
        return {name: int(count) for name, count in self.query(union, names)}

    def columns(self, table: str) -> list[str]:
        """Column names of a table, in order."""
        return self.read(catalog.column_names, self.quote_table(table))

    def owned_sequences(self, table: str) -> list[str]:
        """Sequences owned by the table's serial and identity columns."""
        return self.read(catalog.owned_sequences, self.quote_table(table))

    # -- reverse migration (reverse.py) --------------------------------------------------------
    def reverse_column_types(self, table: str) -> dict[str, str]:
        return dict(self.read(catalog.columns, self.quote_table(table)))

    def reverse_reader(self, table: ReverseTable) -> PostgresRowSource:
        return PostgresRowSource(
            self,
            self.quote_table(table.target),
            list(table.columns),
            [f"CAST(({e}) AS {t})" for e, t in zip(table.inverses, table.types, strict=True)],
            [self.quote_column(k) for k in table.target_key],
            list(table.key_types),
        )

    def reverse_writer(self, *, chunk_rows: int) -> PostgresReverseWriter:
        return PostgresReverseWriter(self, chunk_rows=chunk_rows)

    def reverse_stager(self, writer: Any) -> Any:
        from sensei_airflow.engines.postgres.staging import PostgresChunkStager

        return PostgresChunkStager(writer)

    # -- target truncate -----------------------------------------------------------------
    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> list[Statement]:
        if not tables:
            return []
        if not set(referenced_from_outside):
            quoted = ", ".join(self.quote_table(t) for t in tables)
            return [
                # an open undo log would otherwise copy every emptied row into its journal (undo.py)
                Statement("SET LOCAL sensei.truncate_capture = off", purpose="no copy into an undo log"),
                Statement(f"TRUNCATE TABLE {quoted} RESTART IDENTITY", purpose="empty tables"),
            ]
        # A table outside the scope still references one of these (it is empty, or assess
        # would have refused): TRUNCATE would need CASCADE or would fail, so delete row by
        # row, children first, and let the foreign keys guard against a concurrent insert.
        statements = [
            Statement(f"DELETE FROM {self.quote_table(t)}", purpose=f"empty {t}")  # noqa: S608
            for t in tables
        ]
        for table in tables:
            statements.extend(
                Statement(f"ALTER SEQUENCE {sequence} RESTART", purpose=f"reset sequence of {table}")
                for sequence in self.owned_sequences(table)
            )
        return statements

    def _lock_statements(self, tables: Sequence[str], mode: str, purpose: str) -> list[Statement]:
        """``LOCK TABLE`` in ``mode``, its wait bounded by :attr:`lock_timeout` (nothing for no tables)."""
        if not tables:
            return []
        quoted = ", ".join(self.quote_table(t) for t in tables)
        return [
            Statement(f"SET LOCAL lock_timeout = '{self.lock_timeout}'", purpose="bound the wait for locks"),
            Statement(f"LOCK TABLE {quoted} IN {mode} MODE", purpose=purpose),
        ]

    def lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        return self._lock_statements(tables, "ACCESS EXCLUSIVE", "lock tables in scope")

    def guard_sql(self, outside: Sequence[str]) -> list[Statement]:
        """``SHARE`` locks on the outside tables: readers go on, writers wait until the commit."""
        return self._lock_statements(
            outside, "SHARE", "keep writers out of the tables outside the scope that reference it"
        )

    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Lock, count and empty the tables in one transaction; the SQL run and rows removed each.

        The outside tables are locked first (children before parents, the order an inserting
        client takes its locks in) and must be empty under that lock, else nothing is changed.
        """
        guard = self.guard_sql(outside)
        locks = self.lock_sql(tables)
        work = self.empty_tables_sql(tables, referenced_from_outside)
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            for statement in guard:
                cur.execute(statement.sql)
            if outside:
                check_outside_empty(self._count(cur, outside))
            for statement in locks:
                cur.execute(statement.sql)
            removed = self._count(cur, tables)
            for statement in work:
                cur.execute(statement.sql, statement.params or None)
        return [*guard, *locks, *work], removed

    def _count(self, cur: Any, tables: Sequence[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table in tables:
            cur.execute(f"SELECT count(*) FROM {self.quote_table(table)}")  # noqa: S608
            counts[table] = int(cur.fetchone()[0])
        return counts

    # -- sequences, consumers' privileges, fingerprints -----------------------------------
    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """``setval`` each owned sequence (serial and identity columns) to follow the column's maximum.

        An empty table's sequence starts over at its start value.
        """
        resets: list[SequenceReset] = []
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            for table in tables:
                for sequence, column, start in catalog.sequence_columns(cur, self.quote_table(table)):
                    cur.execute(
                        f"SELECT setval(%s::regclass, coalesce(max({self.quote_identifier(column)}), %s), "  # noqa: S608
                        f"max({self.quote_identifier(column)}) IS NOT NULL) FROM {self.quote_table(table)}",
                        (sequence, start),
                    )
                    # the sequence name is a regclass from the catalog, quoted where needed
                    next_sql = (
                        f"SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM {sequence}"  # noqa: S608
                    )
                    cur.execute(next_sql)
                    next_value = int(cur.fetchone()[0])
                    resets.append(SequenceReset(self.qualify(table), column, sequence, next_value))
        return resets

    def table_grants(self, roles: Sequence[str], tables: Sequence[str]) -> list[Grant]:
        quoted = [self.quote_table(t) for t in tables]
        return [
            Grant(
                role=role, table=self.table_name(schema, name), privilege=privilege, grantable=bool(grantable)
            )
            for role, schema, name, privilege, grantable in self.read(
                catalog.table_grants, list(roles), quoted
            )
        ]

    def _grant_sql(self, grants: Sequence[Grant], revoke: bool) -> list[Statement]:
        statements: list[Statement] = []
        by_target: dict[tuple[str, str, bool], list[str]] = {}
        for grant in grants:
            by_target.setdefault((grant.table, grant.role, grant.grantable and not revoke), []).append(
                grant.privilege
            )
        for (table, role, with_option), privileges in sorted(by_target.items()):
            listed = ", ".join(sorted(set(privileges)))
            if revoke:
                sql = f"REVOKE {listed} ON TABLE {self.quote_table(table)} FROM {self.quote_identifier(role)}"
            else:
                sql = f"GRANT {listed} ON TABLE {self.quote_table(table)} TO {self.quote_identifier(role)}"
                if with_option:
                    sql += " WITH GRANT OPTION"
            action = "suspend" if revoke else "restore"
            statements.append(Statement(sql, purpose=f"{action} {role} on {table}"))
        return statements

    def _run_statements(self, statements: Sequence[Statement]) -> list[Statement]:
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement.sql, statement.params or None)
        return list(statements)

    def revoke_grants(self, grants: Sequence[Grant]) -> list[Statement]:
        return self._run_statements(self._grant_sql(grants, revoke=True))

    def restore_grants(self, grants: Sequence[Grant]) -> list[Statement]:
        return self._run_statements(self._grant_sql(grants, revoke=False))

    def role_exists(self, role: str) -> bool:
        return self.read(catalog.role_exists, role)

    def table_fingerprints(self, tables: Iterable[str]) -> dict[str, str]:
        """Row count and an order-independent sum of row hashes, computed in the database."""
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        union = " UNION ALL ".join(
            f"SELECT %s, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "  # noqa: S608
            f"FROM {self.quote_table(name)} AS t"
            for name in names
        )
        return {name: f"rows={count};sum={digest}" for name, count, digest in self.query(union, names)}

    def row_source(self, table: str, key: Sequence[str]) -> PostgresRowSource | None:
        """The table's key columns, read through the reverse migration's ``PostgresRowSource``."""
        types = dict(self.read(catalog.columns, self.quote_table(table)))
        exact = [self.column_name(k) for k in key]
        quoted = [self.quote_identifier(k) for k in exact]
        return PostgresRowSource(
            engine=self,
            table=self.quote_table(table),
            columns=exact,
            exprs=quoted,
            keys=quoted,
            key_types=[types[k] for k in exact],
        )

    # -- point-in-time recovery -----------------------------------------------------------
    def point_in_time(self, settings: Any) -> Any:
        """RDS/Aurora PITR with an ``rds`` block, WAL-archive PITR with a ``postgres`` block."""
        if settings.rds is not None:
            return RdsRecovery(self, settings)
        if settings.postgres is not None:
            return PostgresWalRecovery(self, settings)
        raise PointInTimeRefused(
            f"the manifest does not say where {self.conn_id}'s WAL archive and base backups are: add "
            "rollback.point_in_time.postgres (wal_archive, base_backups), or rollback.point_in_time.rds"
        )

    # -- backups (the work is in backup.py and basebackup.py) ------------------------------------
    def table_checksums(self, tables: Iterable[str], like: dict[str, Any] | None = None) -> dict[str, Any]:
        quoted = {self.qualify(t): self.quote_table(t) for t in tables}
        kinds = {self.qualify(t): checksum_kind(c) for t, c in (like or {}).items()}
        with self.connect() as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            result = backup.table_checksums(cur, quoted, kinds)
            cur.execute("ROLLBACK")
        return result

    def column_signature(self, table: str) -> list[list[str]]:
        with self.connect() as conn, conn.cursor() as cur:
            signature = backup.column_signature(cur, self.quote_table(table))
            conn.rollback()
        return signature

    def dump_tables(self, tables: Sequence[str], write: Any) -> dict[str, Any]:
        return backup.dump_tables(self, tables, write)

    def dump_schema(self, tables: Sequence[str], path: Any) -> None:
        backup.dump_schema(self, tables, path)

    def restore_tables(
        self,
        tables: Sequence[str],
        states: dict[str, Any],
        open_data: Any,
        referenced_from_outside: Iterable[str],
    ) -> tuple[list[str], dict[str, int], dict[str, int]]:
        return backup.restore_tables(self, tables, states, open_data, referenced_from_outside)

    def restore_test(
        self, tables: Sequence[str], states: dict[str, Any], schema_archive: Any, open_data: Any
    ) -> Any:
        return backup.restore_test(self, tables, states, schema_archive, open_data)

    def base_backup(self, directory: Any) -> list[Any]:
        return basebackup.tar_backup(self.hook, Path(directory))

    # -- the start mark and the undo log (the work is in undo.py) -----------------------
    def take_mark(self, name: str, tables: Sequence[str], *, undo_log: bool, slot: str) -> Any:
        return undo_module.take_mark(self, name, tables, undo_log=undo_log, slot=slot)

    def undo_log_problems(
        self, undo: dict[str, Any], tables: Sequence[Any], schema: dict[str, str]
    ) -> list[str]:
        return undo_module.problems(self, undo, tables, schema)

    def undo_summary(self, undo: dict[str, Any], tables: Sequence[Any], sample: int = 5) -> Any:
        return undo_module.summary(self, undo, tables, sample)

    def apply_undo(
        self, undo: dict[str, Any], tables: Sequence[Any], sequences: Sequence[dict[str, Any]]
    ) -> tuple[list[str], dict[str, int], dict[str, Any]]:
        return undo_module.apply(self, undo, tables, sequences)

    def undo_log_retained(self, undo: dict[str, Any]) -> dict[str, Any]:
        return undo_module.retained(self, undo)

    def close_undo_log(self, undo: dict[str, Any]) -> list[str]:
        return undo_module.close(self, undo)
