"""What the DB-API engines (Snowflake, Oracle, SQL Server) share: queries and transactions on a hook.

Each engine builds its provider's hook (a ``DbApiHook``) and this base runs SQL through
``hook.get_conn()``: queries are read and rolled back, a list of :class:`Statement` runs in one
transaction. Only what every DB-API driver does is used here, so a recording fake hook can
stand in for the real one in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any

from sensei_airflow.engines.base import Engine, Statement


class DbApiEngine(Engine):
    """An engine reached through a DB-API 2 connection from its provider's hook."""

    #: placeholder of a positional bind parameter in this driver (``%s`` or ``:1``-style).
    paramstyle: str = "format"

    def placeholder(self, position: int) -> str:
        """The bind placeholder for the ``position``-th parameter (1-based) of a statement."""
        return f":{position}" if self.paramstyle == "numeric" else "%s"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A DB-API connection, closed on exit (the caller decides on transactions)."""
        with closing(self.hook.get_conn()) as conn:
            yield conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query, read and rolled back."""
        with self.connect() as conn:
            cur = conn.cursor()
            try:
                if params:
                    cur.execute(sql, tuple(params))
                else:
                    cur.execute(sql)
                rows = [tuple(row) for row in cur.fetchall()]
            finally:
                cur.close()
            conn.rollback()
        return rows

    def begin_sql(self) -> list[Statement]:
        """What opens an explicit transaction (nothing where the driver opens one implicitly)."""
        return []

    def open_transaction(self, conn: Any, cur: Any) -> None:
        """Make what follows one transaction: autocommit off, or an explicit ``BEGIN`` where the
        driver works in autocommit mode (Snowflake)."""
        begin = self.begin_sql()
        if not begin:
            self.hook.set_autocommit(conn, False)
        for statement in begin:
            cur.execute(statement.sql)

    @contextmanager
    def transaction(self) -> Iterator[tuple[Any, Any]]:
        """``(connection, cursor)`` in one open transaction: committed when the block ends, rolled
        back when it raises."""
        with self.connect() as conn:
            cur = conn.cursor()
            try:
                self.open_transaction(conn, cur)
                yield conn, cur
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()

    def run_statements(self, statements: Sequence[Statement], *, transaction: bool = True) -> None:
        """Run ``statements`` in order: in one transaction committed at the end, or each on its own
        in autocommit mode (for statements no transaction may hold, e.g. ``RESTORE``)."""
        if transaction:
            with self.transaction() as (_, cur):
                _execute_all(cur, statements)
            return
        with self.connect() as conn:
            self.hook.set_autocommit(conn, True)
            with closing(conn.cursor()) as cur:
                _execute_all(cur, statements)

    def counts_sql(self, tables: Sequence[str]) -> Statement:
        """One query answering ``(table, rows)`` for each table."""
        union = " UNION ALL ".join(
            f"SELECT {self.placeholder(i)}, COUNT(*) FROM {self.quote_table(t)}"  # noqa: S608 - quoted
            for i, t in enumerate(tables, start=1)
        )
        return Statement(union, tuple(tables), purpose="count rows")

    def row_counts(self, tables: Iterable[str]) -> dict[str, int]:
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        statement = self.counts_sql(names)
        return {str(name): int(count) for name, count in self.query(statement.sql, statement.params)}


def _execute_all(cur: Any, statements: Sequence[Statement]) -> None:
    for statement in statements:
        if statement.params:
            cur.execute(statement.sql, tuple(statement.params))
        else:
            cur.execute(statement.sql)
