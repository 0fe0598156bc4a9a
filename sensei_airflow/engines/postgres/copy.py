"""Moving rows between PostgreSQL connections: the binary COPY relay, and replacing tables from a copy.

Rows are never decoded: binary ``COPY ... TO STDOUT`` blocks from one connection are merged
into writes of about :data:`WRITE_BYTES` into ``COPY ... FROM STDIN`` on the other (ADR 0201),
so memory stays flat whatever the table's size. The reverse migration relays each chunk into
its staging; point-in-time recovery (a scratch cluster, a restored RDS instance) replaces the
tables in scope on the live target with :func:`replace_tables_from`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sensei_airflow.engines.base import (
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    Statement,
    dependency_order,
)
from sensei_airflow.engines.postgres import catalog

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.manifest import PointInTimeSettings

#: merged write size of the COPY relay.
WRITE_BYTES = 1 << 17
#: session settings that make both sides render values (checksums, samples) the same way.
SESSION_SETTINGS = (
    "SET TimeZone TO 'UTC'",
    "SET DateStyle TO 'ISO, MDY'",
    "SET IntervalStyle TO 'postgres'",
    "SET extra_float_digits TO 3",
)


@contextmanager
def session(engine: PostgresEngine, *, lock_timeout: str | None = None) -> Iterator[Any]:
    """A connection with :data:`SESSION_SETTINGS` applied and every lock wait bounded.

    :param lock_timeout: how long any statement may wait for a lock (table, row or advisory);
        the engine's ``lock_timeout`` when not given. A wait longer than that fails with
        ``LockNotAvailable`` instead of hanging behind another session's lock.
    """
    timeout = lock_timeout or getattr(engine, "lock_timeout", None)
    with engine.connect() as conn:
        for statement in SESSION_SETTINGS:
            conn.execute(statement)
        if timeout:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (str(timeout),))
        conn.commit()
        yield conn


def relay_copy(
    src_cur: Any, dst_cur: Any, copy_out_sql: str, copy_in_sql: str, params: Sequence[Any] = ()
) -> int:
    """Binary ``copy_out_sql`` on one cursor into ``copy_in_sql`` on another; the rows copied.

    Blocks are merged into writes of about :data:`WRITE_BYTES`; rows are never decoded.

    :param params: bind parameters of ``copy_out_sql``.
    """
    with dst_cur.copy(copy_in_sql) as copy_in, src_cur.copy(copy_out_sql, params or None) as copy_out:
        pending = bytearray()
        for block in copy_out:
            pending += block
            if len(pending) >= WRITE_BYTES:
                copy_in.write(bytes(pending))
                pending.clear()
        if pending:
            copy_in.write(bytes(pending))
    return max(int(dst_cur.rowcount), 0)


# -- replacing tables with their content in a recovered copy --------------------------------
def replacement_scope(engine: PostgresEngine, tables: Sequence[str]) -> tuple[list[str], set[str]]:
    """Check that ``tables`` can be replaced alone on the live target; parents-first order and the
    tables in scope that an (empty) table outside the scope references.

    :raises PointInTimeRefused: for a missing table, or a table outside the scope with rows that
        references one in scope (replacing its parent alone could break it).
    """
    existing = set(engine.user_tables())
    missing = [t for t in tables if t not in existing]
    if missing:
        raise PointInTimeRefused(f"target table {missing[0]} does not exist on {engine.conn_id}")
    foreign_keys = engine.foreign_keys()
    outside = [fk for fk in foreign_keys if fk.parent in tables and fk.child not in tables]
    counts = engine.row_counts({fk.child for fk in outside})
    for fk in outside:
        if counts[fk.child] > 0:
            raise PointInTimeRefused(
                f"{fk.child} (outside the scope) references {fk.parent} through {fk.name} and holds "
                f"{counts[fk.child]} rows: replacing {fk.parent} alone could break it; add it to the scope"
            )
    return dependency_order(list(tables), foreign_keys), {fk.parent for fk in outside}


def replace_statements(
    engine: PostgresEngine, ordered: Sequence[str], referenced_from_outside: set[str]
) -> list[Statement]:
    """Lock and empty the tables in scope (the engine's own truncate rules), children first."""
    children_first = list(reversed(ordered))
    return [
        *engine.lock_sql(children_first),
        *engine.empty_tables_sql(children_first, referenced_from_outside),
    ]


def replace_tables_from(
    engine: PostgresEngine, source: Any, ordered: Sequence[str], statements: Sequence[Statement]
) -> tuple[list[str], dict[str, int]]:
    """Replace ``ordered`` (parents first) on the live target with their content in ``source``.

    One transaction on the live target: ``statements`` (lock, empty), then a binary COPY relay
    per table and its sequences set to the recovered values. Checked before anything changes:
    every table exists in ``source`` with the same columns.

    :param source: a psycopg connection to the recovered copy (scratch cluster, restored instance).
    :returns: the statements run and the rows copied per table.
    """
    run: list[str] = [s.sql for s in statements]
    rows: dict[str, int] = {}
    source.read_only = True
    with source.cursor() as src, engine.connect() as live, live.cursor() as check:
        for table in ordered:
            name = engine.quote_table(table)
            if not catalog.exists(src, name):
                raise PointInTimeRefused(f"{table} did not exist at the recovery target; nothing was changed")
            recovered = catalog.column_names(src, name)
            current = catalog.column_names(check, name)
            if recovered != current:
                raise PointInTimeRefused(
                    f"{table} has columns {current} now but had {recovered} at the target: nothing was changed"
                )
        live.rollback()
        with live.transaction(), live.cursor() as dst:
            for statement in statements:
                dst.execute(statement.sql, statement.params or None)
            for table in ordered:
                name = engine.quote_table(table)
                quoted = ", ".join(engine.quote_identifier(c) for c in catalog.column_names(dst, name))
                copy_in = f"COPY {name} ({quoted}) FROM STDIN (FORMAT binary)"
                rows[table] = relay_copy(
                    src, dst, f"COPY {name} ({quoted}) TO STDOUT (FORMAT binary)", copy_in
                )
                run.append(copy_in)
                for sequence in catalog.owned_sequences(dst, name):
                    last_value, is_called = catalog.sequence_state(src, sequence)
                    dst.execute("SELECT setval(%s::regclass, %s, %s)", (sequence, last_value, is_called))
                    run.append(f"SELECT setval('{sequence}', {last_value}, {is_called})")
    source.rollback()
    return run, rows


Config = TypeVar("Config")


class CopyBackRecovery(PointInTimeRecovery, Generic[Config]):
    """A PostgreSQL point-in-time recovery that recovers into a copy (a scratch cluster, a restored
    RDS instance) and copies the tables in scope back from it (the ``table`` path).

    ``config`` is the block of the manifest's ``rollback.point_in_time`` named by :attr:`block`.
    """

    #: the manifest block under ``rollback.point_in_time`` that configures this recovery.
    block: str

    def __init__(self, engine: PostgresEngine, settings: PointInTimeSettings) -> None:
        config = getattr(settings, self.block)
        assert config is not None, f"rollback.point_in_time.{self.block} is not set"
        self.engine = engine
        self.settings = settings
        self.config: Config = config

    def assessed(
        self,
        ordered: list[str],
        referenced: set[str],
        path: str,
        steps: list[str],
        warnings: list[str],
        detail: dict[str, Any],
    ) -> PointInTimePlan:
        """The plan of an assessment: ``detail`` plus the mechanism and the tables referenced from outside."""
        detail = {"mechanism": self.mechanism, **detail, "referenced_from_outside": sorted(referenced)}
        return PointInTimePlan(tables=ordered, path=path, steps=steps, warnings=warnings, detail=detail)

    def copy_back_from(self, source: Any, plan: PointInTimePlan) -> tuple[list[str], dict[str, int]]:
        """Replace the plan's tables on the live target with their content in ``source``, in one transaction.

        :param source: a psycopg connection to the recovered copy.
        """
        referenced = set(plan.detail.get("referenced_from_outside", []))
        statements = replace_statements(self.engine, plan.tables, referenced)
        return replace_tables_from(self.engine, source, plan.tables, statements)
