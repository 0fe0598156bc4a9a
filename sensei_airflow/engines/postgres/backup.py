"""PostgreSQL logical backups: table data out and back in, table checksums, schema archives.

Called through thin methods of :class:`~sensei_airflow.engines.postgres.PostgresEngine`. What
this module produces are raw byte streams (binary ``COPY`` data, a ``pg_dump`` custom-format
schema archive); compressing, hashing and storing them is the business of
:mod:`sensei_airflow.backups`. Physical (base) backups are :mod:`.basebackup`'s.

Why these tools (measured, 5M rows; see ``benchmarks/backup.py`` and ADR 0101):

- data out: ``psql`` running ``COPY ... TO STDOUT (FORMAT binary)`` inside a transaction that
  imports one exported snapshot, so every table is read at the same instant, and read in large
  chunks (psycopg's own ``COPY`` reader yields one message per row and was 1.7x slower than
  ``pg_dump``);
- data in: psycopg ``COPY ... FROM STDIN (FORMAT binary)`` in large writes, in one transaction
  with the ``TRUNCATE``, so a restore commits whole or not at all and keeps every constraint,
  index, trigger and grant of the existing table (``pg_restore -t`` drops keys; ``--clean``
  cannot drop a parent while a child references it);
- checksums: an order-independent in-database aggregate, computed on a second connection in
  the same snapshot while the data streams out.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql

from sensei_airflow.engines.base import RECORD_CHECKSUM, TableChecksum, checksum_kind
from sensei_airflow.engines.postgres import bulk, catalog
from sensei_airflow.engines.postgres.client import (
    ClientLogin,
    client_login,
    connection_params,
    find_program,
    run,
)

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine

#: relay chunk between psql and the caller, and between the caller and COPY FROM.
CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class TableState:
    """What a logical backup records of one table, besides its data."""

    rows: int
    checksum: str
    columns: list[list[str]]  # [name, type] in table order: binary COPY needs the same on restore
    sequences: list[dict[str, Any]] = field(default_factory=list)  # {name, last_value, is_called}
    foreign_keys: list[dict[str, str]] = field(default_factory=list)  # {name, parent}


# -- catalog ----------------------------------------------------------------------------------
def column_signature(cur: Any, quoted_table: str) -> list[list[str]]:
    """``[name, type]`` of each column in order: what binary COPY data needs to load back."""
    return [[name, type_] for name, type_ in catalog.columns(cur, quoted_table)]


def _table_state(cur: Any, quoted_table: str, table_name: Callable[..., str]) -> TableState:
    columns = column_signature(cur, quoted_table)
    sequences = []
    for sequence in catalog.owned_sequences(cur, quoted_table):
        last_value, is_called = catalog.sequence_state(cur, sequence)
        sequences.append({"name": sequence, "last_value": last_value, "is_called": is_called})
    foreign_keys = [
        {"name": name, "parent": table_name(schema, parent)}
        for name, schema, parent in catalog.foreign_key_parents(cur, quoted_table)
    ]
    return TableState(rows=0, checksum="", columns=columns, sequences=sequences, foreign_keys=foreign_keys)


def checksum_sql(quoted_table: str, kind: str = "record") -> str:
    """Row count and an order-independent checksum: the sum of a 64-bit hash of each row.

    Summing makes it independent of physical order (a restored table has a new one); the
    numeric sum cannot overflow. Two kinds (ADR 0101), equal on two tables of the same server
    version when their rows are equal:

    - ``record`` (``record:<sum>``): ``hash_record_extended`` hashes each value with its type's
      own hash function, without rendering it as text (half the CPU of ``text``; PostgreSQL 14+,
      every column type hashable);
    - ``text`` (a bare number, what every checksum recorded before the record kind is): the hash
      of each row's text form, for any type.
    """
    if kind == "record":
        return (
            f"SELECT count(*), '{RECORD_CHECKSUM}' || coalesce(sum(hash_record_extended(t, 0)), 0)::text "  # noqa: S608
            f"FROM {quoted_table} AS t"
        )
    return (
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "  # noqa: S608
        f"FROM {quoted_table} AS t"
    )


def record_hash_works(cur: Any, quoted_table: str) -> bool:
    """Whether ``hash_record_extended`` takes the table's rows: the server has it (14+) and every
    column type has an extended hash function. Tried on a row of nulls, inside a savepoint of the
    caller's transaction (the hash functions are looked up for every column, null or not)."""
    import psycopg

    cur.execute("SAVEPOINT sensei_checksum_kind")
    try:
        cur.execute(f"SELECT hash_record_extended(json_populate_record(NULL::{quoted_table}, '{{}}'), 0)")
    except psycopg.Error:
        cur.execute("ROLLBACK TO SAVEPOINT sensei_checksum_kind")
        return False
    cur.execute("RELEASE SAVEPOINT sensei_checksum_kind")
    return True


def table_checksums(
    cur: Any, quoted: dict[str, str], kinds: dict[str, str] | None = None
) -> dict[str, TableChecksum]:
    """Checksums of tables (``name -> quoted name``) on a cursor in an open transaction, in its snapshot.

    :param kinds: name -> ``record`` or ``text``, to compare with checksums recorded that way;
        otherwise ``record`` where :func:`record_hash_works`, else ``text``.
    """
    result = {}
    for name, quoted_name in quoted.items():
        works = record_hash_works(cur, quoted_name)
        kind = (kinds or {}).get(name) or ("record" if works else "text")
        if kind == "record" and not works:  # recorded so, but a column's type has changed since
            cur.execute(f"SELECT count(*) FROM {quoted_name}")  # noqa: S608 - quoted
            result[name] = TableChecksum(
                int(cur.fetchone()[0]), f"{RECORD_CHECKSUM}none (a column type has no hash)"
            )
            continue
        cur.execute(checksum_sql(quoted_name, kind))
        rows, checksum = cur.fetchone()
        result[name] = TableChecksum(rows=int(rows), checksum=str(checksum))
    return result


# -- logical backup: data out --------------------------------------------------------------------
def dump_tables(
    engine: PostgresEngine,
    tables: Sequence[str],
    write: Callable[[str, Readable], None],
) -> dict[str, TableState]:
    """Stream each table's binary COPY data to ``write(table, stream)``, all from one snapshot.

    Checksums and row counts are taken in the same snapshot, on a second connection, while the
    data streams. Returns each table's state (rows, checksum, columns, sequences, foreign keys).
    """
    psql = find_program("psql")
    quoted = {t: engine.quote_table(t) for t in tables}
    with client_login(engine.hook) as login, closing(engine.hook.get_conn()) as holder:
        holder.autocommit = True  # explicit BEGIN below: the snapshot needs REPEATABLE READ
        with holder.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            states = {t: _table_state(cur, quoted[t], engine.table_name) for t in tables}
        checksums: dict[str, TableChecksum] = {}
        errors: list[BaseException] = []

        def checksum_worker() -> None:
            try:
                with closing(engine.hook.get_conn()) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                        checksums.update(table_checksums(cur, quoted))
                        cur.execute("ROLLBACK")
            except BaseException as exc:  # surfaced after the dump
                errors.append(exc)

        worker = threading.Thread(target=checksum_worker, name="sensei-backup-checksums", daemon=True)
        worker.start()
        try:
            for table in tables:
                _dump_one(psql, login, snapshot, quoted[table], functools.partial(write, table))
        finally:
            worker.join()
        holder.execute("ROLLBACK")
    if errors:
        raise errors[0]
    for table, state in states.items():
        state.rows, state.checksum = checksums[table].rows, checksums[table].checksum
    return states


def _dump_one(
    psql: Path, login: ClientLogin, snapshot: str, quoted_table: str, consume: Callable[[Readable], None]
) -> None:
    args = [
        str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", login.conninfo,
        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "-c", f"SET TRANSACTION SNAPSHOT '{snapshot}'",
        "-c", f"COPY {quoted_table} TO STDOUT (FORMAT binary)",
        "-c", "COMMIT",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, env=login.env)
        assert process.stdout is not None
        try:
            consume(process.stdout)
            # drain what the consumer left (it must not stop early, but never leave psql blocked)
            while process.stdout.read(CHUNK):
                pass
        finally:
            process.stdout.close()
            code = process.wait()
        if code != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
            raise RuntimeError(f"reading {quoted_table} failed (psql exit {code}): {message[-2000:]}")


def dump_schema(engine: PostgresEngine, tables: Sequence[str], path: Path) -> None:
    """Write a ``pg_dump`` custom-format archive of the tables' definitions (no data) to ``path``."""
    args = [str(find_program("pg_dump")), "--schema-only", "--format=custom", "--no-owner", "--no-privileges",
            "-f", str(path)]  # fmt: skip
    for table in tables:
        schema, name = engine.name_parts(table)
        args += ["-t", f"{_pattern_quote(schema)}.{_pattern_quote(name)}"]
    with client_login(engine.hook) as login:
        run([*args, "-d", login.conninfo], login.env, "pg_dump --schema-only")


def _pattern_quote(identifier: str) -> str:
    """Quote an identifier for a pg_dump ``-t`` pattern so that it matches exactly."""
    return '"' + identifier.replace('"', '""') + '"'


# -- logical restore: data in ----------------------------------------------------------------------
def signature_problems(cur: Any, quoted_table: str, recorded: list[list[str]]) -> str | None:
    """Why binary COPY data recorded with ``recorded`` columns cannot load into the table now, if so."""
    now = column_signature(cur, quoted_table)
    if now == recorded:
        return None
    return f"columns now {_describe(now)}, in the backup {_describe(recorded)}"


def _describe(columns: list[list[str]]) -> str:
    return "(" + ", ".join(f"{n} {t}" for n, t in columns) + ")"


def restore_tables(
    engine: PostgresEngine,
    tables: Sequence[str],
    states: dict[str, dict[str, Any]],
    open_data: Callable[[str], AbstractContextManager[Readable]],
    referenced_from_outside: Iterable[str],
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Replace the rows of ``tables`` (parents first) with the backup's, in one transaction.

    Locks the tables, empties them (children first: one ``TRUNCATE`` of all of them, or
    ``DELETE`` where an empty table outside the scope still references one), loads each with
    binary ``COPY`` parents first, and sets each owned sequence back to its recorded value.
    The foreign keys and indexes of the tables are set aside for the load and built again, by
    their own definition and name, before commit: one validating join per foreign key instead
    of one lookup per row, one sorted build per index instead of one insertion per row
    (:func:`.catalog.rebuildable_indexes` says which are kept in place). Nobody sees the moment without
    them: the tables are locked ACCESS EXCLUSIVE until commit. Triggers and grants are untouched. Any error, a checksum mismatch of a file or a row that breaks a foreign key
    included, rolls everything back.

    :returns: the SQL run, rows removed per table, rows restored per table.
    """
    children_first = list(reversed(tables))
    empty = engine.empty_tables_sql(children_first, referenced_from_outside)
    statements = [s.sql for s in engine.lock_sql(tables)]
    removed: dict[str, int] = {}
    restored: dict[str, int] = {}
    with engine.connect() as conn, conn.transaction(), conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        for table in tables:
            quoted = engine.quote_table(table)
            problem = signature_problems(cur, quoted, states[table]["columns"])
            if problem:
                raise ValueError(f"{table} changed shape since the backup: {problem}")
            cur.execute(f"SELECT count(*) FROM {quoted}")  # noqa: S608
            removed[table] = int(cur.fetchone()[0])
        aside = bulk.set_aside(cur, engine, [engine.quote_table(t) for t in tables])
        statements += aside.statements
        for statement in empty:
            cur.execute(statement.sql, statement.params or None)
            statements.append(statement.sql)
        for table in tables:
            copy_sql = f"COPY {engine.quote_table(table)} FROM STDIN (FORMAT binary)"
            with open_data(table) as source, cur.copy(copy_sql) as copy:
                while chunk := source.read(CHUNK):
                    copy.write(chunk)
            restored[table] = cur.rowcount
            statements.append(copy_sql)
        statements += bulk.put_back(cur, engine, aside)
        for table in tables:
            for sequence in states[table].get("sequences", []):
                sql = "SELECT setval(%s::regclass, %s, %s)"
                cur.execute(sql, (sequence["name"], sequence["last_value"], sequence["is_called"]))
                statements.append(
                    f"SELECT setval('{sequence['name']}', {sequence['last_value']}, {sequence['is_called']})"
                )
    return statements, removed, restored


# -- restore test in a scratch database ------------------------------------------------------------
@contextmanager
def scratch_database(engine: PostgresEngine) -> Iterator[tuple[str, Any]]:
    """A throw-away database on the engine's server: its name and a psycopg connection factory."""
    name = f"sensei_scratch_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def connect() -> Any:
        return psycopg.connect(**connection_params(engine.hook, dbname=name))

    try:
        yield name, connect
    finally:
        with engine.connect() as conn:
            conn.autocommit = True
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def restore_test(
    engine: PostgresEngine,
    tables: Sequence[str],
    states: dict[str, dict[str, Any]],
    schema_archive: Path,
    open_data: Callable[[str], AbstractContextManager[Readable]],
) -> dict[str, TableChecksum]:
    """Restore a backup into a scratch database on the engine's server; the restored tables' checksums.

    Definitions come from the schema archive (tables and sequences, then data, then indexes and
    constraints; foreign keys to tables outside the backup are left out, their parents are not
    there). The scratch database is dropped afterwards, also on failure.
    """
    pg_restore = str(find_program("pg_restore"))
    in_backup = {engine.qualify(t) for t in tables}

    def outside(parent: str) -> bool:
        try:
            return engine.qualify(parent) not in in_backup
        except ValueError:  # recorded by an older version as schema.table, unquoted: not one of ours
            return True

    outside_fks = {
        (*engine.name_parts(t), fk["name"]) for t in tables for fk in states[t].get("foreign_keys", [])
        if outside(fk["parent"])
    }  # fmt: skip
    quoted = {t: engine.quote_table(t) for t in tables}
    with scratch_database(engine) as (name, connect), client_login(engine.hook, dbname=name) as login:
        target, env = login.conninfo, login.env
        with connect() as conn, conn.transaction():
            for schema in sorted({engine.name_parts(t)[0] for t in tables}):
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {engine.quote_identifier(schema)}")
        run([pg_restore, "--section=pre-data", "--no-owner", "--no-privileges", "--exit-on-error",
              "-d", target, str(schema_archive)], env, "pg_restore (definitions)")  # fmt: skip
        with connect() as conn, conn.transaction(), conn.cursor() as cur:
            for table in tables:
                with (
                    open_data(table) as source,
                    cur.copy(f"COPY {quoted[table]} FROM STDIN (FORMAT binary)") as copy,
                ):
                    while chunk := source.read(CHUNK):
                        copy.write(chunk)
        listing = run([pg_restore, "-l", str(schema_archive)], env, "pg_restore -l")
        kept = [line for line in listing.splitlines() if not _is_outside_fk(line, outside_fks)]
        with tempfile.NamedTemporaryFile("w", suffix=".list") as toc:
            toc.write("\n".join(kept) + "\n")
            toc.flush()
            run([pg_restore, "--section=post-data", "--no-owner", "--no-privileges", "--exit-on-error",
                  "-L", toc.name, "-d", target, str(schema_archive)], env, "pg_restore (constraints)")  # fmt: skip
        with connect() as conn, conn.cursor() as cur:
            return table_checksums(cur, quoted, {t: checksum_kind(states[t].get("checksum")) for t in tables})


_TOC_FK = re.compile(r"^\d+; \d+ \d+ FK CONSTRAINT (.*)$")


def _is_outside_fk(line: str, outside: set[tuple[str, str, str]]) -> bool:
    """Whether a ``pg_restore -l`` line is the foreign key ``(schema, table, name)`` of ``outside``.

    The line reads ``<id>; <oid> <oid> FK CONSTRAINT <schema> <table> <name> <owner>`` with the
    names unquoted (they may hold spaces), so it is matched against each known key, not split.
    """
    match = _TOC_FK.match(line)
    if match is None:
        return False
    rest = match[1]
    return any(rest.startswith(f"{schema} {table} {name} ") for schema, table, name in outside)
