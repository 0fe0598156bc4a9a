"""SQL Server, through the microsoft.mssql provider's ``MsSqlHook`` (pymssql).

Emptying tables: SQL Server refuses ``TRUNCATE TABLE`` on a table that any foreign key
references (even from an empty table; a self-reference is allowed). ``TRUNCATE`` is
transactional here, so every table is emptied in one transaction, children first: ``TRUNCATE``
where allowed (it also restarts the identity), ``DELETE`` otherwise followed by ``DBCC CHECKIDENT
... RESEED`` so the next identity is the seed again. Sequences used by the tables' defaults are
restarted. Counting takes the exclusive table locks (``TABLOCKX, HOLDLOCK``).

Point-in-time recovery restores a copy of the database from the full and log backups ``WITH
STOPAT``, then copies the tables in scope back in one transaction; see
docs/adr/0604-sql-server-restore-copy-stopat.md.
"""

from __future__ import annotations

import hashlib
import ntpath
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sensei_airflow.engines.base import (
    ForeignKey,
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
    SequenceReset,
    Statement,
    check_outside_empty,
)
from sensei_airflow.engines.dbapi import DbApiEngine
from sensei_airflow.extras import missing_extra

_USER_TABLES = """
SELECT s.name, t.name FROM sys.tables t JOIN sys.schemas s ON s.schema_id = t.schema_id
WHERE t.is_ms_shipped = 0
ORDER BY 1, 2
"""

_FOREIGN_KEYS = """
SELECT fk.name, cs.name, ct.name, ps.name, pt.name
FROM sys.foreign_keys fk
JOIN sys.tables ct ON ct.object_id = fk.parent_object_id JOIN sys.schemas cs ON cs.schema_id = ct.schema_id
JOIN sys.tables pt ON pt.object_id = fk.referenced_object_id JOIN sys.schemas ps ON ps.schema_id = pt.schema_id
ORDER BY 2, 3, 1
"""

_IDENTITY = """
SELECT CAST(seed_value AS bigint), CAST(increment_value AS bigint)
FROM sys.identity_columns WHERE object_id = OBJECT_ID(%s)
"""

_DEFAULT_SEQUENCES = """
SELECT DISTINCT SCHEMA_NAME(s.schema_id), s.name
FROM sys.default_constraints dc
JOIN sys.sql_expression_dependencies d ON d.referencing_id = dc.object_id
JOIN sys.sequences s ON s.object_id = d.referenced_id
WHERE dc.parent_object_id = OBJECT_ID(%s)
ORDER BY 1, 2
"""

_IDENTITY_COLUMN = """
SELECT c.name, CAST(c.seed_value AS bigint), CAST(c.increment_value AS bigint)
FROM sys.identity_columns c WHERE c.object_id = OBJECT_ID(%s)
"""

_SEQUENCE_COLUMNS = """
SELECT DISTINCT SCHEMA_NAME(s.schema_id), s.name, c.name, CAST(s.start_value AS bigint), CAST(s.increment AS bigint)
FROM sys.default_constraints dc
JOIN sys.columns c ON c.object_id = dc.parent_object_id AND c.column_id = dc.parent_column_id
JOIN sys.sql_expression_dependencies d ON d.referencing_id = dc.object_id
JOIN sys.sequences s ON s.object_id = d.referenced_id
WHERE dc.parent_object_id = OBJECT_ID(%s)
"""

_RECOVERY_MODEL = "SELECT DB_NAME(), recovery_model_desc FROM sys.databases WHERE name = DB_NAME()"
_SERVER_OFFSET = "SELECT DATEDIFF(minute, SYSUTCDATETIME(), SYSDATETIME())"
_BACKUP_HISTORY = """
SELECT b.backup_set_id, b.type, b.first_lsn, b.last_lsn, b.backup_start_date, b.backup_finish_date,
       m.physical_device_name
FROM msdb.dbo.backupset b JOIN msdb.dbo.backupmediafamily m ON m.media_set_id = b.media_set_id
WHERE b.database_name = DB_NAME() AND b.type IN ('D', 'L')
ORDER BY b.backup_finish_date, b.backup_set_id, m.family_sequence_number
"""
#: a marked transaction as msdb recorded it (its time in server local time, as backupset's)
_LOG_MARK = """
SELECT TOP 1 mark_time FROM msdb.dbo.logmarkhistory
WHERE database_name = DB_NAME() AND mark_name = %s ORDER BY mark_time
"""
_BACKUP_FILES = """
SELECT logical_name, physical_name, file_type FROM msdb.dbo.backupfile
WHERE backup_set_id = %s AND state_desc <> 'DROPPED' ORDER BY file_number
"""
_COLUMNS = """
SELECT c.name, c.is_identity FROM sys.columns c
WHERE c.object_id = OBJECT_ID(%s) AND c.is_computed = 0 AND TYPE_NAME(c.system_type_id) <> 'timestamp'
ORDER BY c.column_id
"""

#: how long a statement waits for a lock before failing (and the task retrying), in ms.
LOCK_TIMEOUT_MS = 30_000


def string_literal(text: str) -> str:
    """A T-SQL N'...' literal (for the few places that take no parameter, e.g. DBCC)."""
    return "N'" + text.replace("'", "''") + "'"


#: the table a start mark's marked transaction writes: a mark enters the log only with a write.
_START_MARKS = """
IF SCHEMA_ID(N'sensei') IS NULL EXEC(N'CREATE SCHEMA sensei');
IF OBJECT_ID(N'sensei.start_marks', N'U') IS NULL
    CREATE TABLE sensei.start_marks (
        mark_name nvarchar(32) NOT NULL PRIMARY KEY,
        description nvarchar(255) NOT NULL,
        marked_at datetime2 NOT NULL DEFAULT SYSUTCDATETIME()
    )
"""


def marked_transaction_name(name: str) -> str:
    """A transaction name for the mark ``name``: at most 32 characters (SQL Server's limit), [a-z0-9_],
    unique per mark (a restore stops at the first mark of a name)."""
    return "sensei_" + hashlib.sha256(name.encode()).hexdigest()[:25]


def marked_transaction_sql(mark: str, description: str) -> list[Statement]:
    """``BEGIN TRANSACTION <mark> WITH MARK``, one row into ``sensei.start_marks``, ``COMMIT``
    (in autocommit mode: the statements are the transaction)."""
    if not re.fullmatch(r"[a-z0-9_]{1,32}", mark):
        raise ValueError(f"unexpected marked transaction name {mark!r}")
    return [
        Statement(_START_MARKS, purpose="the table a marked transaction writes"),
        Statement("SET XACT_ABORT ON"),
        # the description is stored (its first 128 characters) in msdb.dbo.logmarkhistory
        Statement(f"BEGIN TRANSACTION {mark} WITH MARK {string_literal(description[:128])}"),
        Statement(
            "INSERT INTO sensei.start_marks (mark_name, description) VALUES (%s, %s)",
            (mark, description[:255]),
            purpose="the write that puts the mark in the log",
        ),
        Statement(f"COMMIT TRANSACTION {mark}"),
    ]


class MsSqlEngine(DbApiEngine):
    dialect = "tsql"
    engine_title = "SQL Server"
    default_schema = "dbo"
    paramstyle = "format"
    #: sysname is nvarchar(128).
    max_identifier_chars = 128

    def _make_hook(self) -> Any:
        try:
            from airflow.providers.microsoft.mssql.hooks.mssql import MsSqlHook
        except ImportError:
            raise missing_extra("mssql", "Microsoft SQL Server") from None
        return MsSqlHook(mssql_conn_id=self.conn_id)

    # -- catalog ---------------------------------------------------------------------------
    def mark_moment(self, name: str) -> Any:
        """A marked transaction: a log restore stops exactly there (``STOPATMARK``), not at a time.

        A mark enters the log (and ``msdb.dbo.logmarkhistory``) only with a write, so the marked
        transaction inserts one row into ``sensei.start_marks`` (created on first use), never into a
        migrated table. Where the role may not create or write it, the mark is the server's UTC time
        (``STOPAT``), and a note says why.
        """
        from sensei_airflow.engines.base import MarkMoment

        mark = marked_transaction_name(name)
        try:
            self.run_statements(marked_transaction_sql(mark, name), transaction=False)
            (at,) = self.query("SELECT marked_at FROM sensei.start_marks WHERE mark_name = %s", (mark,))[0]
        except Exception as exc:
            (at,) = self.query("SELECT SYSUTCDATETIME()")[0]
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return MarkMoment(
                at=_utc(at),
                position=None,
                notes=[f"no marked transaction ({why}): SQL Server marks {name} by time (STOPAT)"],
            )
        return MarkMoment(
            at=_utc(at),
            restore_point=mark,
            notes=[f"marked transaction {mark} ({name}) in sensei.start_marks: a log restore stops at it"],
        )

    def identity(self) -> str:
        server, database = self.query("SELECT @@SERVERNAME, DB_NAME()")[0]
        return f"mssql:{server}/{database}"

    def user_tables(self) -> list[str]:
        return [self.table_name(schema, name) for schema, name in self.query(_USER_TABLES)]

    def foreign_keys(self) -> list[ForeignKey]:
        return [
            ForeignKey(name=con, child=self.table_name(cs, cn), parent=self.table_name(ps, pn))
            for con, cs, cn, ps, pn in self.query(_FOREIGN_KEYS)
        ]

    def counts_sql(self, tables: Sequence[str]) -> Statement:
        """Counting takes and holds each table's exclusive lock until the transaction ends."""
        union = " UNION ALL ".join(
            f"SELECT %s, COUNT_BIG(*) FROM {self.quote_table(t)} WITH (TABLOCKX, HOLDLOCK)"  # noqa: S608
            for t in tables
        )
        return Statement(union, tuple(tables), purpose="count rows under exclusive locks")

    def row_counts(self, tables: Iterable[str]) -> dict[str, int]:
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        union = " UNION ALL ".join(
            f"SELECT %s, COUNT_BIG(*) FROM {self.quote_table(t)}"  # noqa: S608 - quoted
            for t in names
        )
        return {str(t): int(n) for t, n in self.query(union, names)}

    # -- target truncate -----------------------------------------------------------------
    def lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        return [Statement(f"SET LOCK_TIMEOUT {LOCK_TIMEOUT_MS}", purpose="bound the wait for locks")]

    def reseed_sql(self, table: str, seed: int, increment: int) -> Statement:
        """After ``DELETE``, make the next identity value the seed again.

        DBCC CHECKIDENT gives the next row ``new_reseed_value + increment`` once rows have been
        inserted, but ``new_reseed_value`` itself if none ever were; the guard on ``last_value``
        covers the second case.
        """
        name = string_literal(self.quote_table(table))
        return Statement(
            f"IF EXISTS (SELECT 1 FROM sys.identity_columns WHERE object_id = OBJECT_ID({name}) "  # noqa: S608
            f"AND last_value IS NOT NULL) DBCC CHECKIDENT ({name}, RESEED, {int(seed) - int(increment)})",
            purpose=f"restart the identity of {table}",
        )

    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> list[Statement]:
        """``TRUNCATE`` where no foreign key references the table, else ``DELETE`` + reseed; children first."""
        if not tables:
            return []
        referenced = {fk.parent for fk in self.foreign_keys() if fk.child != fk.parent}
        statements: list[Statement] = []
        for table in tables:
            if table in referenced:
                statements.append(
                    Statement(f"DELETE FROM {self.quote_table(table)}", purpose=f"empty {table}")  # noqa: S608
                )
                identity = self.query(_IDENTITY, (self.quote_table(table),))
                if identity:
                    statements.append(self.reseed_sql(table, *identity[0]))
            else:
                statements.append(
                    Statement(f"TRUNCATE TABLE {self.quote_table(table)}", purpose=f"empty {table}")
                )
        for table in tables:
            for schema, name in self.query(_DEFAULT_SEQUENCES, (self.quote_table(table),)):
                sequence = f"{self.quote_identifier(schema)}.{self.quote_identifier(name)}"
                statements.append(
                    Statement(f"ALTER SEQUENCE {sequence} RESTART", purpose=f"restart {sequence}")
                )
        return statements

    def guard_sql(self, outside: Sequence[str]) -> list[Statement]:
        """Counting the outside tables takes and holds their exclusive locks until the commit."""
        return [self.counts_sql(outside)] if outside else []

    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Lock (by counting), then empty every table in one transaction.

        The outside tables are locked and counted first; one holding a row rolls everything back.
        """
        if not tables:
            return [], {}
        locks = self.lock_sql(tables)
        guard = self.guard_sql(outside)
        work = self.empty_tables_sql(tables, referenced_from_outside)
        counts = self.counts_sql(tables)
        with self.transaction() as (_, cur):
            for statement in locks:
                cur.execute(statement.sql)
            for statement in guard:
                cur.execute(statement.sql, tuple(statement.params))
                check_outside_empty({str(t): int(n) for t, n in cur.fetchall()})
            cur.execute(counts.sql, tuple(counts.params))
            removed = {str(t): int(n) for t, n in cur.fetchall()}
            for statement in work:
                cur.execute(statement.sql)
        return [*locks, *guard, counts, *work], removed

    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """Identity and default sequences of ``tables`` continue just past the column's maximum
        (from their start when the table is empty), in one transaction."""
        resets: list[SequenceReset] = []
        statements: list[Statement] = []
        for table in tables:
            quoted = self.quote_table(table)
            for column, seed, increment in self.query(_IDENTITY_COLUMN, (quoted,)):
                top = self._max(table, str(column))
                if top is None:
                    statements.append(self.reseed_sql(table, int(seed), int(increment)))
                    next_value = int(seed)
                else:
                    statements.append(
                        Statement(f"DBCC CHECKIDENT ({string_literal(quoted)}, RESEED, {int(top)})")
                    )
                    next_value = int(top) + int(increment)
                resets.append(
                    SequenceReset(self.qualify(table), str(column), f"IDENTITY({quoted})", next_value)
                )
            for schema, name, column, start, increment in self.query(_SEQUENCE_COLUMNS, (quoted,)):
                top = self._max(table, str(column))
                next_value = int(start) if top is None else int(top) + int(increment)
                sequence = f"{self.quote_identifier(schema)}.{self.quote_identifier(name)}"
                statements.append(Statement(f"ALTER SEQUENCE {sequence} RESTART WITH {next_value}"))
                resets.append(
                    SequenceReset(self.qualify(table), str(column), self.table_name(schema, name), next_value)
                )
        self.run_statements(statements)
        return resets

    def _max(self, table: str, column: str) -> Any:
        sql = f"SELECT MAX({self.quote_identifier(column)}) FROM {self.quote_table(table)}"  # noqa: S608
        return self.query(sql)[0][0]

    # -- point-in-time recovery ----------------------------------------------------------
    def point_in_time(self, settings: Any) -> MsSqlRestoreCopy:
        return MsSqlRestoreCopy(self)


@dataclass(frozen=True)
class Backup:
    """One backup set from msdb's history (``kind`` D = full, L = log); times in server local time."""

    backup_set_id: int
    kind: str
    first_lsn: int
    last_lsn: int
    started: datetime
    finished: datetime
    devices: tuple[str, ...]


def backups_from_history(rows: Iterable[Sequence[Any]]) -> list[Backup]:
    """Group msdb rows (one per media family) into backup sets, in finish order."""
    sets: dict[int, Backup] = {}
    for set_id, kind, first, last, started, finished, device in rows:
        known = sets.get(int(set_id))
        devices = (*known.devices, str(device)) if known else (str(device),)
        sets[int(set_id)] = Backup(int(set_id), str(kind), int(first), int(last), started, finished, devices)
    return sorted(sets.values(), key=lambda b: (b.finished, b.backup_set_id))


def restore_chain(backups: Sequence[Backup], stop_at: datetime) -> tuple[Backup, list[Backup]]:
    """The full backup and the unbroken run of log backups that reach ``stop_at`` (server local time).

    :raises PointInTimeRefused: no full backup before the point, a gap in the log chain, or no
        log backup taken after the point yet.
    """
    fulls = [b for b in backups if b.kind == "D" and b.finished <= stop_at]
    if not fulls:
        raise PointInTimeRefused(
            f"no full backup finished before {stop_at.isoformat()} (server time) in msdb history"
        )
    full = fulls[-1]
    logs = sorted(
        (b for b in backups if b.kind == "L" and b.last_lsn > full.last_lsn), key=lambda b: b.first_lsn
    )
    chain: list[Backup] = []
    position = full.last_lsn
    for log in logs:
        if not chain:
            if log.first_lsn > position:
                raise PointInTimeRefused(
                    f"the log chain is broken after the full backup of {full.finished.isoformat()}: the next log "
                    f"backup starts at LSN {log.first_lsn}, after the full backup's LSN {position}"
                )
        elif log.first_lsn != position:
            raise PointInTimeRefused(
                f"the log chain is broken between the log backups of {chain[-1].finished.isoformat()} and "
                f"{log.finished.isoformat()} (LSN {position} -> {log.first_lsn})"
            )
        chain.append(log)
        position = log.last_lsn
        if log.started >= stop_at:
            return full, chain
    raise PointInTimeRefused(
        f"no log backup taken after {stop_at.isoformat()} (server time) yet: run BACKUP LOG, then retry"
    )


@dataclass(frozen=True)
class _Facts:
    """What a restore to a point needs, read from the server and msdb."""

    database: str
    offset: int  # server local time minus UTC, in minutes
    stop_at: datetime  # server local time
    full: Backup
    logs: list[Backup]
    mark: str | None  # the marked transaction to stop at (STOPATMARK), when msdb recorded it
    warnings: list[str]


class MsSqlRestoreCopy(PointInTimeRecovery):
    """Restore a copy of the database to the point, then copy the tables in scope back.

    1. ``RESTORE DATABASE <copy> FROM DISK = full WITH MOVE ..., NORECOVERY, REPLACE``;
    2. ``RESTORE LOG <copy> FROM DISK = log WITH NORECOVERY, STOPAT = point`` for each log of the
       unbroken chain; ``RESTORE DATABASE <copy> WITH RECOVERY``;
    3. one transaction on the live database: ``DELETE`` the tables in scope (children first),
       ``INSERT ... SELECT`` them from the copy (parents first, ``IDENTITY_INSERT`` where needed);
    4. ``DROP DATABASE <copy>`` (also when a step failed).

    ``STOPAT`` takes the server's local time: the point is converted with the server's offset,
    never sent without one being applied.
    """

    mechanism = "SQL Server log restore (STOPAT, or STOPATMARK at a start mark)"

    def __init__(
        self,
        engine: MsSqlEngine,
        clock: Callable[[], datetime] | None = None,
        copy_suffix: str = "__sensei_pitr",
    ) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))
        self.copy_suffix = copy_suffix

    # -- pure SQL ------------------------------------------------------------------------
    @staticmethod
    def server_time(moment: datetime, offset_minutes: int) -> datetime:
        """``moment`` as the server's local wall-clock time (naive, as STOPAT and msdb use)."""
        return (moment.astimezone(UTC) + timedelta(minutes=offset_minutes)).replace(tzinfo=None)

    def moved_path(self, physical: str, copy_db: str) -> str:
        path = ntpath if ("\\" in physical or ":" in physical[:3]) else posixpath
        folder, name = path.split(physical)
        stem, ext = path.splitext(name)
        return path.join(folder, f"{stem}{self.copy_suffix}{ext}") if stem else f"{copy_db}{ext}"

    def restore_sql(
        self,
        copy_db: str,
        full: Backup,
        logs: Sequence[Backup],
        files: Sequence[tuple[str, str]],
        stop_at_local: datetime,
        mark: str | None = None,
    ) -> list[Statement]:
        """Restore the copy up to ``stop_at_local`` (server time), or exactly to the marked
        transaction ``mark`` when given (``STOPATMARK``: the mark's transaction included)."""
        quote = self.engine.quote_identifier
        disks = lambda b: ", ".join("DISK = %s" for _ in b.devices)  # noqa: E731
        moves = ", ".join("MOVE %s TO %s" for _ in files)
        move_params = tuple(
            p for logical, physical in files for p in (logical, self.moved_path(physical, copy_db))
        )
        stop = stop_at_local.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        statements = [
            Statement(
                f"RESTORE DATABASE {quote(copy_db)} FROM {disks(full)} WITH {moves + ', ' if moves else ''}"
                "NORECOVERY, REPLACE",
                (*full.devices, *move_params),
                purpose=f"restore the full backup of {full.finished.isoformat()} as {copy_db}",
            )
        ]
        stop_clause, stop_param, up_to = "STOPAT", stop, f"{stop} (server time)"
        if mark is not None:
            stop_clause, stop_param, up_to = "STOPATMARK", mark, f"the marked transaction {mark}"
        statements += [
            Statement(
                f"RESTORE LOG {quote(copy_db)} FROM {disks(log)} WITH NORECOVERY, {stop_clause} = %s",
                (*log.devices, stop_param),
                purpose=f"replay the log backup of {log.finished.isoformat()} up to {up_to}",
            )
            for log in logs
        ]
        statements.append(
            Statement(f"RESTORE DATABASE {quote(copy_db)} WITH RECOVERY", purpose="bring the copy online")
        )
        return statements

    def copy_back_sql(
        self, copy_db: str, tables: Sequence[str], columns: dict[str, list[tuple[str, bool]]]
    ) -> list[Statement]:
        """One transaction: delete children first, insert parents first from the copy."""
        quote = self.engine.quote_table
        statements = [Statement("SET XACT_ABORT ON"), Statement("BEGIN TRANSACTION")]
        statements += [
            Statement(f"DELETE FROM {quote(t)}", purpose=f"empty {t}")  # noqa: S608
            for t in reversed(tables)
        ]
        for table in tables:
            cols = columns[table]
            names = ", ".join(self.engine.quote_identifier(c) for c, _ in cols)
            identity = any(is_identity for _, is_identity in cols)
            source = f"{self.engine.quote_identifier(copy_db)}.{quote(table)}"
            if identity:
                statements.append(Statement(f"SET IDENTITY_INSERT {quote(table)} ON"))
            statements.append(
                Statement(
                    f"INSERT INTO {quote(table)} ({names}) SELECT {names} FROM {source}",  # noqa: S608
                    purpose=f"copy {table} back from {copy_db}",
                )
            )
            if identity:
                statements.append(Statement(f"SET IDENTITY_INSERT {quote(table)} OFF"))
        statements.append(Statement("COMMIT TRANSACTION"))
        return statements

    def drop_sql(self, copy_db: str) -> Statement:
        quoted = self.engine.quote_identifier(copy_db)
        return Statement(
            f"IF DB_ID(%s) IS NOT NULL DROP DATABASE {quoted}", (copy_db,), purpose="remove the copy"
        )

    # -- checks ----------------------------------------------------------------------------
    def facts(self, target: RecoveryTarget) -> _Facts:
        """Database, server offset, local stop time, the backup chain and the marked transaction to stop
        at; refuses what cannot work."""
        if target.time > self.clock():
            raise PointInTimeRefused(f"restore_to {target.time.isoformat()} is in the future")
        database, model = self.engine.query(_RECOVERY_MODEL)[0]
        if str(model).upper() != "FULL":
            raise PointInTimeRefused(
                f"database {database} uses the {model} recovery model: point-in-time restore needs FULL "
                "(and an unbroken chain of log backups since)"
            )
        offset = int(self.engine.query(_SERVER_OFFSET)[0][0])
        stop_at = self.server_time(target.time, offset)
        mark, warnings = None, []
        if target.restore_point:
            # a mark msdb never recorded would not stop the restore: it would run to the chain's end
            found = self.engine.query(_LOG_MARK, (target.restore_point,))
            if found:
                mark, stop_at = target.restore_point, found[0][0]
            else:
                warnings.append(
                    f"the marked transaction {target.restore_point} is not in msdb.dbo.logmarkhistory: "
                    f"the restore stops at {stop_at.isoformat()} (server time) instead"
                )
        full, logs = restore_chain(backups_from_history(self.engine.query(_BACKUP_HISTORY)), stop_at)
        return _Facts(str(database), offset, stop_at, full, logs, mark, warnings)

    def _files(self, full: Backup) -> list[tuple[str, str]]:
        return [
            (str(logical), str(physical))
            for logical, physical, _ in self.engine.query(_BACKUP_FILES, (full.backup_set_id,))
        ]

    # -- the interface -------------------------------------------------------------------------
    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        facts = self.facts(target)
        copy_db = f"{facts.database}{self.copy_suffix}"
        columns = {t: self._columns(t) for t in tables}
        statements = [
            *self.restore_sql(
                copy_db, facts.full, facts.logs, self._files(facts.full), facts.stop_at, facts.mark
            ),
            *self.copy_back_sql(copy_db, tables, columns),
            self.drop_sql(copy_db),
        ]
        return PointInTimePlan(
            tables=list(tables),
            path="table",
            steps=[s.sql for s in statements],
            warnings=[
                *facts.warnings,
                "triggers on the tables in scope fire for the DELETE and INSERT of the copy back",
                *self.outside_references(tables),
            ],
            detail={
                "copy_database": copy_db,
                "server_utc_offset_minutes": facts.offset,
                "stop_at_server_time": facts.stop_at.isoformat(),
                "stop_at_mark": facts.mark,
                "full_backup": list(facts.full.devices),
                "log_backups": [list(b.devices) for b in facts.logs],
            },
        )

    def outside_references(self, tables: Sequence[str]) -> list[str]:
        """Foreign keys from tables outside the scope into it: the copy back fails (and rolls back
        entirely) if such a table holds rows whose parent did not exist at the point."""
        scope = set(tables)
        return [
            f"{fk.child} (outside the scope) references {fk.parent} through {fk.name}: if it holds rows whose "
            f"parent did not exist at the point, the copy back fails and changes nothing"
            for fk in self.engine.foreign_keys()
            if fk.parent in scope and fk.child not in scope
        ]

    def _columns(self, table: str) -> list[tuple[str, bool]]:
        rows = self.engine.query(_COLUMNS, (self.engine.quote_table(table),))
        if not rows:
            raise PointInTimeRefused(f"table {table} does not exist on {self.engine.conn_id}")
        return [(str(name), bool(identity)) for name, identity in rows]

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        tables = list(plan.tables)
        facts = self.facts(target)
        copy_db = f"{facts.database}{self.copy_suffix}"
        columns = {t: self._columns(t) for t in tables}
        restore = self.restore_sql(
            copy_db, facts.full, facts.logs, self._files(facts.full), facts.stop_at, facts.mark
        )
        copy_back = self.copy_back_sql(copy_db, tables, columns)
        drop = self.drop_sql(copy_db)
        try:
            self.engine.run_statements(restore, transaction=False)
            self.engine.run_statements(copy_back, transaction=False)
        finally:
            self.engine.run_statements([drop], transaction=False)
        return PointInTimeOutcome(
            statements=[s.sql for s in [*restore, *copy_back, drop]],
            rows_restored=self.engine.row_counts(tables),
            detail=dict(plan.detail),
        )

    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        """Open as long as the backups are kept; msdb does not say when they will be deleted."""
        try:
            facts = self.facts(RecoveryTarget(time=point))
        except PointInTimeRefused:
            return [
                RecoveryWindow(
                    mechanism=self.mechanism, table=None, closes_at=point, limit="no usable backup chain"
                )
            ]
        return [
            RecoveryWindow(
                mechanism=self.mechanism,
                table=None,
                earliest=(facts.full.finished - timedelta(minutes=facts.offset)).replace(tzinfo=UTC),
                latest=self.clock(),
                closes_at=None,
                limit="backup retention (not recorded in msdb)",
            )
        ]


def _utc(value: datetime) -> datetime:
    """A server time as an aware UTC datetime (a naive one is UTC: the query asked for UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
