"""Oracle, through the oracle provider's ``OracleHook`` (python-oracledb).

Names: unquoted plain identifiers fold to upper case, so ``crm.customers`` is ``CRM.CUSTOMERS``;
quoted parts and names that are not plain identifiers are exact (see sensei_airflow/names.py);
an unqualified name is in the session's current schema. A name holds at most 128 bytes and
never a double quote.

Emptying tables: ``TRUNCATE`` is DDL in Oracle (it commits, cannot be rolled back) and fails
with ORA-02266 on a table that an enabled foreign key of another table references, even an
empty one. So when no table in scope is referenced that way, each is truncated (children
first); otherwise every table is emptied with ``DELETE`` in one transaction, children first,
under ``LOCK TABLE``. Identity columns are restarted afterwards with ``ALTER TABLE ... MODIFY``.
See docs/adr/0603-oracle-truncate-and-flashback.md.

Point-in-time recovery is ``FLASHBACK TABLE t1, t2, ... TO TIMESTAMP`` (one statement, one
transaction), after checking row movement and undo retention, and recording the SCN before it
so the flashback itself can be undone.

The undo log is Flashback Query (engines/row_history.py): the mark records the SCN, an undo reads
the keys changed since with ``VERSIONS BETWEEN SCN`` and sets them back from the table ``AS OF
SCN``: a ``MERGE`` per table (parents first), then a ``DELETE`` of the keys new since the mark
(children first), in one transaction. It reaches back as far as ``UNDO_RETENTION``; see
docs/adr/0701-undo-log-from-row-history.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from sensei_airflow.engines.base import (
    ForeignKey,
    MarkMoment,
    MarkRefused,
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
    SequenceReset,
    Statement,
    UndoTable,
    check_outside_empty,
)
from sensei_airflow.engines.row_history import RowHistoryUndo
from sensei_airflow.extras import missing_extra

_USER_TABLES = """
SELECT t.owner, t.table_name FROM all_tables t JOIN all_users u ON u.username = t.owner
WHERE u.oracle_maintained = 'N' AND t.temporary = 'N' AND t.nested = 'NO' AND t.secondary = 'N'
  AND t.dropped = 'NO'
ORDER BY 1, 2
"""

_FOREIGN_KEYS = """
SELECT c.constraint_name, c.owner, c.table_name, p.owner, p.table_name, c.status
FROM all_constraints c
JOIN all_constraints p ON p.owner = c.r_owner AND p.constraint_name = c.r_constraint_name
JOIN all_users u ON u.username = c.owner
WHERE c.constraint_type = 'R' AND u.oracle_maintained = 'N'
ORDER BY 2, 3, 1
"""

_IDENTITY_COLUMNS = """
SELECT i.column_name, i.generation_type, c.default_on_null, i.identity_options, i.sequence_name
FROM all_tab_identity_cols i
JOIN all_tab_columns c ON c.owner = i.owner AND c.table_name = i.table_name AND c.column_name = i.column_name
WHERE i.owner = :1 AND i.table_name = :2
ORDER BY 1
"""

_ROW_MOVEMENT = "SELECT owner, table_name, row_movement FROM all_tables WHERE owner = :1 AND table_name = :2"
_LAST_DDL = (
    "SELECT last_ddl_time FROM all_objects WHERE owner = :1 AND object_name = :2 AND object_type = 'TABLE'"
)
_COLUMNS = "SELECT column_name, data_type FROM all_tab_columns WHERE owner = :1 AND table_name = :2 ORDER BY column_id"
_UNDO_RETENTION = "SELECT value FROM v$parameter WHERE name = 'undo_retention'"
_CURRENT_SCN = "SELECT DBMS_FLASHBACK.GET_SYSTEM_CHANGE_NUMBER FROM dual"
_TIMESTAMP_TO_SCN = "SELECT TIMESTAMP_TO_SCN(:1) FROM dual"

#: how long a statement waits for a table lock before failing (and the task retrying).
LOCK_WAIT_SECONDS = 30
_TS_FORMAT = "YYYY-MM-DD HH24:MI:SS.FF6 TZH:TZM"


def _identity_option(options: Any, name: str, default: int) -> int:
    """One number from ``ALL_TAB_IDENTITY_COLS.IDENTITY_OPTIONS`` (``START WITH: 1, INCREMENT BY: 1, ...``)."""
    match = re.search(rf"{name}:\s*(-?\d+)", str(options or ""))
    return int(match.group(1)) if match else default


def timestamp_literal(moment: datetime) -> str:
    """An Oracle ``TO_TIMESTAMP_TZ`` literal with an explicit offset (never a session-zone time).

    Built from a ``datetime``, never from user text; used where Oracle takes no bind
    parameters (``FLASHBACK TABLE`` is DDL).
    """
    utc = moment.astimezone(UTC)
    return f"TO_TIMESTAMP_TZ('{utc.strftime('%Y-%m-%d %H:%M:%S.%f')} +00:00', '{_TS_FORMAT}')"


class OracleEngine(RowHistoryUndo):
    history_kind = "oracle_flashback"
    dialect = "oracle"
    engine_title = "Oracle"
    paramstyle = "numeric"
    folds_unquoted = True
    max_identifier_bytes = 128
    forbidden_name_chars = {"\0": "NUL", '"': "double quote"}

    def _make_hook(self) -> Any:
        try:
            from airflow.providers.oracle.hooks.oracle import OracleHook
        except ImportError:
            raise missing_extra("oracle", "Oracle") from None
        return OracleHook(oracle_conn_id=self.conn_id)

    # -- names ---------------------------------------------------------------------------
    @cached_property
    def default_schema(self) -> str:  # type: ignore[override]
        """The session's current schema (unqualified names resolve there)."""
        return str(self.query("SELECT SYS_CONTEXT('USERENV', 'CURRENT_SCHEMA') FROM dual")[0][0])

    # -- catalog ---------------------------------------------------------------------------
    def mark_moment(self, name: str) -> Any:
        """The current SCN and the server's UTC time: FLASHBACK ... TO SCN then reaches the mark exactly."""
        from sensei_airflow.engines.base import MarkMoment

        scn, at = self.query(
            "SELECT DBMS_FLASHBACK.GET_SYSTEM_CHANGE_NUMBER, SYS_EXTRACT_UTC(SYSTIMESTAMP) FROM dual"
        )[0]
        return MarkMoment(at=_utc(at), position=str(int(scn)))

    def identity(self) -> str:
        row = self.query(
            "SELECT SYS_CONTEXT('USERENV', 'DB_UNIQUE_NAME'), SYS_CONTEXT('USERENV', 'CON_NAME') FROM dual"
        )[0]
        return f"oracle:{row[0]}/{row[1]}"

    def user_tables(self) -> list[str]:
        return [self.table_name(owner, name) for owner, name in self.query(_USER_TABLES)]

    def _foreign_keys(self) -> list[tuple[ForeignKey, bool]]:
        return [
            (
                ForeignKey(name=con, child=self.table_name(co, ct), parent=self.table_name(po, pt)),
                status == "ENABLED",
            )
            for con, co, ct, po, pt, status in self.query(_FOREIGN_KEYS)
        ]

    def foreign_keys(self) -> list[ForeignKey]:
        return [fk for fk, _ in self._foreign_keys()]

    def referenced(self, tables: Sequence[str]) -> list[ForeignKey]:
        """Enabled foreign keys of other tables that reference one of ``tables`` (each makes TRUNCATE fail)."""
        scope = set(tables)
        return [
            fk
            for fk, enabled in self._foreign_keys()
            if enabled and fk.parent in scope and fk.child != fk.parent
        ]

    # -- target truncate -----------------------------------------------------------------
    def lock_sql(self, tables: Sequence[str], *, delete: bool | None = None) -> list[Statement]:
        """``LOCK TABLE`` for the ``DELETE`` path; for ``TRUNCATE``, a bounded DDL lock wait."""
        if not tables:
            return []
        if delete is None:
            delete = bool(self.referenced(tables))
        if delete:
            quoted = ", ".join(self.quote_table(t) for t in tables)
            return [
                Statement(
                    f"LOCK TABLE {quoted} IN EXCLUSIVE MODE WAIT {LOCK_WAIT_SECONDS}",
                    purpose="lock tables in scope",
                )
            ]
        return [
            Statement(
                f"ALTER SESSION SET DDL_LOCK_TIMEOUT = {LOCK_WAIT_SECONDS}",
                purpose="bound the wait for locks",
            )
        ]

    def identity_restart_sql(
        self, table: str, columns: Sequence[tuple[Any, ...]], start_with: dict[str, int] | None = None
    ) -> list[Statement]:
        """``ALTER TABLE ... MODIFY (col GENERATED ... AS IDENTITY (START WITH n))`` per identity column.

        ``columns`` are rows of (column, generation type, default on null, identity options,
        sequence) as ``ALL_TAB_IDENTITY_COLS`` gives them; the generation type and ``ON NULL`` are
        restated unchanged (``MODIFY`` would otherwise change them). ``start_with`` overrides the
        identity's own start value per column.
        """
        statements = []
        for column, generation, on_null, options, *_ in columns:
            start = (start_with or {}).get(str(column), _identity_option(options, "START WITH", 1))
            kind = "ALWAYS" if str(generation).upper() == "ALWAYS" else "BY DEFAULT"
            if kind == "BY DEFAULT" and str(on_null).upper() == "YES":
                kind = "BY DEFAULT ON NULL"
            statements.append(
                Statement(
                    f"ALTER TABLE {self.quote_table(table)} MODIFY ({self.quote_identifier(str(column))} "
                    f"GENERATED {kind} AS IDENTITY (START WITH {int(start)}))",
                    purpose=f"restart the identity of {table}.{column}",
                )
            )
        return statements

    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """Restart each identity column just past the column's highest value (its start when empty).

        Oracle ties no other sequence to a table (trigger-filled columns are not discoverable).
        """
        resets: list[SequenceReset] = []
        statements: list[Statement] = []
        for table in tables:
            columns = self.identity_columns(table)
            start_with: dict[str, int] = {}
            for column, _, _, options, sequence in columns:
                top = self.query(
                    f"SELECT MAX({self.quote_identifier(str(column))}) FROM {self.quote_table(table)}"  # noqa: S608
                )[0][0]
                step = _identity_option(options, "INCREMENT BY", 1)
                start_with[str(column)] = (
                    _identity_option(options, "START WITH", 1) if top is None else int(top) + step
                )
                resets.append(
                    SequenceReset(self.qualify(table), str(column), str(sequence), start_with[str(column)])
                )
            statements += self.identity_restart_sql(table, columns, start_with)
        self.run_statements(statements, transaction=False)
        return resets

    def identity_columns(self, table: str) -> list[tuple[Any, ...]]:
        owner, name = self.name_parts(table)
        return self.query(_IDENTITY_COLUMNS, (owner, name))

    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], *, delete: bool | None = None
    ) -> list[Statement]:
        """``TRUNCATE TABLE`` each (none referenced by an enabled foreign key) or ``DELETE`` each
        in one transaction, children first; then restart identity columns."""
        if not tables:
            return []
        if delete is None:
            delete = bool(self.referenced(tables))
        if delete:
            empty = [Statement(f"DELETE FROM {self.quote_table(t)}", purpose=f"empty {t}") for t in tables]  # noqa: S608
            empty.append(Statement("COMMIT", purpose="commit before the identity DDL"))
        else:
            empty = [Statement(f"TRUNCATE TABLE {self.quote_table(t)}", purpose=f"empty {t}") for t in tables]
        restarts = [s for t in tables for s in self.identity_restart_sql(t, self.identity_columns(t))]
        return [*empty, *restarts]

    def guard_sql(self, outside: Sequence[str]) -> list[Statement]:
        """``SHARE`` locks on the outside tables (bounded wait): writers wait until the commit."""
        if not outside:
            return []
        quoted = ", ".join(self.quote_table(t) for t in outside)
        return [
            Statement(
                f"LOCK TABLE {quoted} IN SHARE MODE WAIT {LOCK_WAIT_SECONDS}",
                purpose="keep writers out of the tables outside the scope that reference it",
            )
        ]

    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Lock (or bound the DDL wait), count, empty; the statements run and rows removed per table.

        The outside tables are locked first and counted; one holding a row rolls everything back.
        """
        if not tables:
            return [], {}
        delete = bool(self.referenced(tables))
        guard = self.guard_sql(outside)
        locks = self.lock_sql(tables, delete=delete)
        work = self.empty_tables_sql(tables, referenced_from_outside, delete=delete)
        counts = self.counts_sql(tables)
        with self.transaction() as (conn, cur):
            for statement in guard:
                cur.execute(statement.sql)
            if outside:
                outside_counts = self.counts_sql(outside)
                cur.execute(outside_counts.sql, tuple(outside_counts.params))
                check_outside_empty({str(t): int(n) for t, n in cur.fetchall()})
            for statement in locks:
                cur.execute(statement.sql)
            cur.execute(counts.sql, tuple(counts.params))
            removed = {str(t): int(n) for t, n in cur.fetchall()}
            for statement in work:
                if statement.sql == "COMMIT":
                    conn.commit()
                else:
                    cur.execute(statement.sql)
        return [*guard, *locks, *work], removed

    # -- point-in-time recovery ----------------------------------------------------------
    # -- the undo log: Flashback Query since the mark's SCN (engines/row_history.py) ------------
    def column_types(self, table: str) -> dict[str, str]:
        owner, name = self.name_parts(table)
        return {str(c): str(t) for c, t in self.query(_COLUMNS, (owner, name))}

    def undo_retention(self) -> int:
        """``UNDO_RETENTION`` in seconds: how far back Flashback Query reaches (at least)."""
        return int(self.query(_UNDO_RETENTION)[0][0])

    def open_row_history(self, tables: Sequence[str]) -> dict[str, Any]:
        """Nothing to turn on (undo is always kept); the retention is read now, so a mark that cannot
        be read back is refused before the migration starts."""
        try:
            return {"undo_retention_seconds": self.undo_retention()}
        except Exception as exc:
            raise MarkRefused(
                f"cannot read UNDO_RETENTION on {self.conn_id} ({type(exc).__name__}): grant SELECT on V_$PARAMETER "
                "to the connection's user, or disable rollback.undo_log"
            ) from None

    def history_moment(self, moment: MarkMoment) -> dict[str, Any]:
        return {"scn": int(moment.position or 0), "at": moment.at.astimezone(UTC).isoformat()}

    def at_mark(self, table: str, undo: dict[str, Any]) -> str:
        return f"{self.quote_table(table)} AS OF SCN {int(undo['scn'])}"

    def since_mark(self, undo: dict[str, Any]) -> str:
        scn = int(undo["scn"])
        return f"VERSIONS BETWEEN SCN {scn} AND MAXVALUE WHERE VERSIONS_STARTSCN IS NOT NULL OR VERSIONS_ENDSCN IS NOT NULL"

    def undo_lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        return self.lock_sql(tables, delete=True)

    def undo_statements(
        self, table: UndoTable, columns: Sequence[str], undo: dict[str, Any]
    ) -> tuple[list[Statement], list[Statement]]:
        """A ``MERGE`` from the table at the mark (rows set back, deleted rows inserted again), and a
        ``DELETE`` of the keys new since the mark: Oracle checks foreign keys per statement, so the
        first runs parents first and the second children first."""
        key = [self.column_name(k) for k in table.key]
        q = self.quote_identifier
        target = self.quote_table(table.table)
        keys = ", ".join(q(k) for k in key)
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key)
        others = [c for c in columns if c not in key]
        update = (
            f" WHEN MATCHED THEN UPDATE SET {', '.join(f't.{q(c)} = s.{q(c)}' for c in others)}"
            if others
            else ""
        )
        merge = (
            f"MERGE INTO {target} t USING (SELECT {', '.join(f'm.{q(c)}' for c in columns)} "  # noqa: S608
            f"FROM {self.at_mark(table.table, undo)} m WHERE ({', '.join(f'm.{q(k)}' for k in key)}) IN "
            f"({self.changed_keys(table, undo)})) s ON ({on}){update} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(q(c) for c in columns)}) "
            f"VALUES ({', '.join(f's.{q(c)}' for c in columns)})"
        )
        delete = (
            f"DELETE FROM {target} WHERE ({keys}) IN ({self.changed_keys(table, undo)} "  # noqa: S608
            f"MINUS SELECT {keys} FROM {self.at_mark(table.table, undo)})"
        )
        return (
            [Statement(merge, purpose=f"set {table.table} back to the start mark")],
            [Statement(delete, purpose=f"delete the rows of {table.table} new since the start mark")],
        )

    def history_problems(self, undo: dict[str, Any], tables: Sequence[UndoTable]) -> list[str]:
        """A mark older than the undo retention; an identity column that refuses its old values back."""
        found: list[str] = []
        retention = self.undo_retention()
        at = datetime.fromisoformat(undo["at"])
        if at + timedelta(seconds=retention) < datetime.now(UTC):
            found.append(
                f"the undo log may be gone: Oracle keeps row history for UNDO_RETENTION = {retention} s and the "
                f"start mark ({at.isoformat()}) is older; roll back with backup_restore"
            )
        for table in tables:
            for column, generation, *_ in self.identity_columns(table.table):
                if str(generation).upper() == "ALWAYS":
                    found.append(
                        f"{table.table}.{column} is GENERATED ALWAYS AS IDENTITY: deleted rows cannot be inserted "
                        "again with their values; make it GENERATED BY DEFAULT for the rollback, or use "
                        "point_in_time"
                    )
        return found

    def undo_log_retained(self, undo: dict[str, Any]) -> dict[str, Any]:
        retention = self.undo_retention()
        until = datetime.fromisoformat(undo["at"]) + timedelta(seconds=retention)
        return {"undo_retention_seconds": retention, "reaches_back_until": until.isoformat()}

    def point_in_time(self, settings: Any) -> OracleFlashback:
        return OracleFlashback(self)


class OracleFlashback(PointInTimeRecovery):
    """``FLASHBACK TABLE`` every table in scope in one statement, to the point's time (or SCN).

    Assess refuses when row movement is disabled on a table or the point is older than
    ``UNDO_RETENTION``, and converts the point to an SCN (``TIMESTAMP_TO_SCN`` fails when the
    undo no longer reaches it). Restore records the current SCN first: ``FLASHBACK TABLE ... TO
    SCN <that>`` undoes the rollback.
    """

    mechanism = "Oracle Flashback Table"

    def __init__(self, engine: OracleEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def flashback_sql(self, tables: Sequence[str], target: RecoveryTarget) -> Statement:
        quoted = ", ".join(self.engine.quote_table(t) for t in tables)
        if target.position:
            point = f"SCN {int(target.position)}"
        else:
            point = f"TIMESTAMP {timestamp_literal(target.time)}"
        return Statement(f"FLASHBACK TABLE {quoted} TO {point}", purpose=f"flash back to {target.describe()}")

    def undo_sql(self, tables: Sequence[str], scn: int) -> Statement:
        quoted = ", ".join(self.engine.quote_table(t) for t in tables)
        return Statement(f"FLASHBACK TABLE {quoted} TO SCN {int(scn)}", purpose="undo the flashback")

    def undo_retention_seconds(self) -> int:
        try:
            rows = self.engine.query(_UNDO_RETENTION)
        except Exception as exc:
            raise PointInTimeRefused(
                f"cannot read UNDO_RETENTION ({type(exc).__name__}: {exc}); grant SELECT on V_$PARAMETER "
                "to the connection's user"
            ) from None
        return int(rows[0][0])

    def check(self, tables: Sequence[str], target: RecoveryTarget, now: datetime) -> tuple[int, list[str]]:
        """Refuse what FLASHBACK TABLE cannot do; the undo retention and warnings otherwise."""
        if target.time > now:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is in the future (now {now.isoformat()})"
            )
        warnings: list[str] = []
        for table in tables:
            owner, name = self.engine.name_parts(table)
            rows = self.engine.query(_ROW_MOVEMENT, (owner, name))
            if not rows:
                raise PointInTimeRefused(f"table {table} does not exist on {self.engine.conn_id}")
            if str(rows[0][2]).upper() != "ENABLED":
                raise PointInTimeRefused(
                    f"row movement is disabled on {table}: FLASHBACK TABLE needs it; run "
                    f"ALTER TABLE {self.engine.quote_table(table)} ENABLE ROW MOVEMENT first"
                )
            ddl = self.engine.query(_LAST_DDL, (owner, name))
            if ddl and ddl[0][0] is not None:
                last = ddl[0][0] if ddl[0][0].tzinfo else ddl[0][0].replace(tzinfo=UTC)
                if last > target.time:
                    warnings.append(
                        f"{table} had DDL at {last.isoformat()} (after the point): FLASHBACK TABLE fails with "
                        "ORA-01466 if it changed the table's structure"
                    )
        retention = self.undo_retention_seconds()
        if target.time < now - timedelta(seconds=retention):
            raise PointInTimeRefused(
                f"UNDO_RETENTION is {retention} s: {target.time.isoformat()} is older than the undo kept "
                f"(earliest point now: {(now - timedelta(seconds=retention)).isoformat()}); use backup_restore"
            )
        warnings.append(
            f"UNDO_RETENTION ({retention} s) is a target, not a guarantee, unless the undo tablespace has "
            "RETENTION GUARANTEE"
        )
        return retention, warnings

    def scn_at(self, moment: datetime) -> int:
        try:
            return int(self.engine.query(_TIMESTAMP_TO_SCN, (moment,))[0][0])
        except Exception as exc:
            raise PointInTimeRefused(
                f"Oracle cannot map {moment.isoformat()} to an SCN ({exc}): the undo no longer reaches it"
            ) from None

    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        retention, warnings = self.check(tables, target, self.clock())
        scn = int(target.position) if target.position else self.scn_at(target.time)
        return PointInTimePlan(
            tables=list(tables),
            path="table",
            steps=[
                _CURRENT_SCN + "  -- recorded: undo with FLASHBACK TABLE ... TO SCN <it>",
                self.flashback_sql(tables, target).sql,
            ],
            warnings=warnings,
            detail={"scn_at_point": scn, "undo_retention_seconds": retention},
        )

    def create_restore_point(self, name: str) -> str | None:
        """The current SCN: a rollback to the migration's start then flashes back ``TO SCN`` exactly."""
        return str(int(self.engine.query(_CURRENT_SCN)[0][0]))

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        tables = list(plan.tables)
        self.check(tables, target, self.clock())
        scn_before = int(self.engine.query(_CURRENT_SCN)[0][0])
        flashback = self.flashback_sql(tables, target)
        self.engine.run_statements([flashback], transaction=False)
        undo = self.undo_sql(tables, scn_before)
        return PointInTimeOutcome(
            statements=[_CURRENT_SCN, flashback.sql],
            rows_restored=self.engine.row_counts(tables),
            detail={**plan.detail, "scn_before_flashback": scn_before, "undo": undo.sql},
        )

    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        retention = self.undo_retention_seconds()
        now = self.clock()
        return [
            RecoveryWindow(
                mechanism=self.mechanism,
                table=None,
                earliest=now - timedelta(seconds=retention),
                latest=now,
                closes_at=point + timedelta(seconds=retention),
                limit="undo retention (UNDO_RETENTION)",
            )
        ]


def _utc(value: datetime) -> datetime:
    """A server time as an aware UTC datetime (a naive one is UTC: the query asked for UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
