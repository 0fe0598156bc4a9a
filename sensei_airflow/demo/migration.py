"""The demo's forward migration: source tables copied to the target through the manifest's mappings.

Each table is streamed with COPY through a staging table and inserted by key, so a retried
task neither duplicates nor loses rows. Before the first write the demo DAG takes the
migration's public start mark (:class:`~sensei_airflow.operators.mark.MigrationStartOperator`).
"""

from __future__ import annotations

import io
from typing import Any

from sensei_airflow.demo.shop import SOURCE_DDL, TARGET_DDL, generate
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.manifest import Manifest, TableMapping


def prepare_source(source: PostgresEngine, customers: int = 1000) -> dict[str, int]:
    """Create and fill the source shop, unless it already holds data."""
    with source.connect() as conn, conn.transaction():
        conn.execute(SOURCE_DDL)
        if conn.execute("SELECT count(*) FROM public.customers").fetchone()[0] == 0:
            for table, rows in generate(customers).items():
                with conn.cursor().copy(f"COPY public.{table} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            for table in ("customers", "orders"):
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('public.{table}', 'id'), max(id)) FROM public.{table}"  # noqa: S608
                )
    return source.row_counts(["public.customers", "public.orders", "public.order_items"])


def prepare_target(target: PostgresEngine) -> None:
    with target.connect() as conn, conn.transaction():
        conn.execute(TARGET_DDL)


def select_forward(table: TableMapping, source: PostgresEngine) -> tuple[str, list[str]]:
    """The SELECT that reads the source table as the target expects it, and the (exact) target columns."""
    if table.columns:
        pairs = [
            (c.forward or source.quote_column(c.source), source.column_name(c.target)) for c in table.columns
        ]
    else:
        pairs = [(source.quote_identifier(c), c) for c in source.columns(table.source)]
    select = ", ".join(f"{expr} AS {source.quote_identifier(target)}" for expr, target in pairs)
    return f"SELECT {select} FROM {source.quote_table(table.source)}", [t for _, t in pairs]  # noqa: S608


def copy_table(table: TableMapping, source: PostgresEngine, target: PostgresEngine) -> int:
    """Copy one table forward; returns the rows inserted (rows already there by key are kept)."""
    select, columns = select_forward(table, source)
    quoted_columns = ", ".join(target.quote_identifier(c) for c in columns)
    keys = ", ".join(target.quote_column(k) for k in table.key)
    destination = target.quote_table(table.target)
    with source.connect() as src, target.connect() as dst, dst.transaction():
        dst.execute(
            f"CREATE TEMP TABLE sensei_stage ON COMMIT DROP AS SELECT {quoted_columns} FROM {destination} WITH NO DATA"  # noqa: S608
        )
        with dst.cursor().copy(f"COPY sensei_stage ({quoted_columns}) FROM STDIN") as copy_in:
            with src.cursor().copy(f"COPY ({select}) TO STDOUT") as copy_out:
                buffer = io.BytesIO()
                for block in copy_out:
                    buffer.write(block)
                    if buffer.tell() >= 1 << 17:
                        copy_in.write(buffer.getvalue())
                        buffer = io.BytesIO()
                copy_in.write(buffer.getvalue())
            src.rollback()
        inserted = dst.execute(
            f"INSERT INTO {destination} ({quoted_columns}) SELECT {quoted_columns} FROM sensei_stage "  # noqa: S608
            f"ON CONFLICT ({keys}) DO NOTHING"
        ).rowcount
        for sequence_column in _identity_columns(dst, destination):
            dst.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({target.quote_identifier(sequence_column)}), 1)) "  # noqa: S608
                f"FROM {destination}",
                (destination, sequence_column),
            )
    return max(inserted, 0)


def _identity_columns(conn: Any, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND (attidentity <> '' OR pg_get_serial_sequence(%s, attname) IS NOT NULL)",
        (table, table),
    ).fetchall()
    return [row[0] for row in rows]


def migrate_phase(
    manifest: Manifest, phase: int, source: PostgresEngine, target: PostgresEngine
) -> dict[str, int]:
    """Copy every table of one phase; rows inserted per target table."""
    selected = manifest.phase(phase)
    if selected is None:
        raise ValueError(f"migration {manifest.id} has no phase {phase}")
    return {t.target: copy_table(t, source, target) for t in selected.tables}
