"""Snowflake, through the snowflake provider's ``SnowflakeHook``.

Names: Snowflake folds unquoted plain identifiers to upper case, so ``crm.customers`` in a
manifest is ``CRM.CUSTOMERS`` here (and is quoted that way); ``crm."Customers"`` and
``Sales Data.Order Items`` (not plain identifiers) are exact (see sensei_airflow/names.py). Foreign keys are recorded but not enforced
on standard tables, so ``TRUNCATE`` never fails because of one; tables are still emptied
children first. ``TRUNCATE`` is DML in Snowflake: all tables are emptied in one transaction.

The undo log is change tracking read through Time Travel (engines/row_history.py): the mark turns
``CHANGE_TRACKING`` on for the tables that had it off, an undo reads the keys changed since the
mark with ``CHANGES(INFORMATION => DEFAULT) AT(...)`` and sets each back with one ``MERGE`` per
table from the table ``AT`` the mark; see docs/adr/0701-undo-log-from-row-history.md.

Point-in-time recovery is Time Travel: each table is cloned ``AT`` the point (or ``BEFORE`` the
migration's first statement), then swapped in with ``ALTER TABLE ... SWAP WITH``; see
docs/adr/0600-snowflake-time-travel-clone-and-swap.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from sensei_airflow.engines.base import (
    ForeignKey,
    MarkMoment,
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
    SequenceReset,
    Statement,
    TableChecksum,
    UndoTable,
    check_outside_empty,
)
from sensei_airflow.engines.row_history import RowHistoryUndo
from sensei_airflow.extras import missing_extra

_USER_TABLES = """
SELECT table_schema, table_name FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema <> 'INFORMATION_SCHEMA'
ORDER BY 1, 2
"""

_FOREIGN_KEYS = """
SELECT rc.constraint_name AS fk_name, fk.table_schema AS child_schema, fk.table_name AS child_table,
       pk.table_schema AS parent_schema, pk.table_name AS parent_table
FROM information_schema.referential_constraints rc
JOIN information_schema.table_constraints fk
  ON fk.constraint_schema = rc.constraint_schema AND fk.constraint_name = rc.constraint_name
  AND fk.constraint_type = 'FOREIGN KEY'
JOIN information_schema.table_constraints pk
  ON pk.constraint_schema = rc.unique_constraint_schema AND pk.constraint_name = rc.unique_constraint_name
ORDER BY 2, 3, 1
"""

#: retention (DATA_RETENTION_TIME_IN_DAYS, as INFORMATION_SCHEMA.TABLES.RETENTION_TIME), creation
#: and last change (DML or DDL) of every table.
_RETENTION = """
SELECT table_schema, table_name, retention_time, created, last_altered FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema <> 'INFORMATION_SCHEMA'
"""

#: a point closer than this to the end of its Time Travel retention is refused: the clone could
#: outlive it while the rollback runs.
RETENTION_MARGIN = timedelta(minutes=30)


class SnowflakeEngine(RowHistoryUndo):
    dialect = "snowflake"
    engine_title = "Snowflake"
    history_kind = "snowflake_changes"
    paramstyle = "format"
    folds_unquoted = True
    max_identifier_chars = 255

    @cached_property
    def default_schema(self) -> str:  # type: ignore[override]
        """The connection's schema (where unqualified names resolve), else ``PUBLIC``."""
        schema = self.hook.get_connection(self.conn_id).schema
        if not schema:
            return "PUBLIC"
        try:
            return self.identifier(schema)
        except ValueError:  # not a written name (e.g. holds a dot): taken as it is
            return str(schema)

    def _make_hook(self) -> Any:
        try:
            from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook
        except ImportError:
            raise missing_extra("snowflake", "Snowflake") from None
        return SnowflakeHook(snowflake_conn_id=self.conn_id)

    def begin_sql(self) -> list[Statement]:
        # the connector runs in autocommit mode: a transaction is opened explicitly
        return [Statement("BEGIN", purpose="open a transaction")]

    # -- catalog ---------------------------------------------------------------------------
    def mark_moment(self, name: str) -> MarkMoment:
        """The server's time in UTC: Time Travel (``AT(TIMESTAMP => ...)``) reaches the mark."""
        (at,) = self.query("SELECT CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ")[0]
        return MarkMoment(at=_utc(at))

    def identity(self) -> str:
        conn = self.hook.get_connection(self.conn_id)
        account = (conn.extra_dejson or {}).get("account") or conn.host or "unknown-account"
        database = self.query("SELECT CURRENT_DATABASE()")[0][0]
        return f"snowflake:{str(account).lower()}/{database}"

    def user_tables(self) -> list[str]:
        return [self.table_name(schema, name) for schema, name in self.query(_USER_TABLES)]

    def foreign_keys(self) -> list[ForeignKey]:
        return [
            ForeignKey(name=con, child=self.table_name(cs, cn), parent=self.table_name(ps, pn))
            for con, cs, cn, ps, pn in self.query(_FOREIGN_KEYS)
        ]

    # -- target truncate -----------------------------------------------------------------
    def lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        """None: Snowflake has no LOCK TABLE; a DML statement locks its table until commit."""
        return []

    def empty_tables_sql(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str]
    ) -> list[Statement]:
        """``TRUNCATE TABLE`` each table, children first.

        Foreign keys are not enforced on standard tables, so an (empty) outside table that
        references one of these does not stop the truncate. Sequences and identity columns are
        left as they are: Snowflake cannot restart either in place (see ADR 0602).
        """
        return [Statement(f"TRUNCATE TABLE {self.quote_table(t)}", purpose=f"empty {t}") for t in tables]

    def empty_tables(
        self, tables: Sequence[str], referenced_from_outside: Iterable[str], outside: Sequence[str] = ()
    ) -> tuple[list[Statement], dict[str, int]]:
        """Count and empty the tables in one transaction; the SQL run and the rows removed from each.

        Snowflake has no table locks: the outside tables are counted inside the same transaction.
        """
        statements = [*self.begin_sql(), *self.empty_tables_sql(tables, referenced_from_outside)]
        removed: dict[str, int] = {}
        with self.transaction() as (_, cur):
            if outside:
                guard = self.counts_sql(outside)
                cur.execute(guard.sql, tuple(guard.params))
                check_outside_empty({str(t): int(n) for t, n in cur.fetchall()})
            if tables:
                counts = self.counts_sql(tables)
                cur.execute(counts.sql, tuple(counts.params))
                removed = {str(t): int(n) for t, n in cur.fetchall()}
            for statement in statements[1:]:
                cur.execute(statement.sql)
        return statements, removed

    def reset_sequences(self, tables: Sequence[str]) -> list[SequenceReset]:
        """Not possible in place: reported by the runbook as a warning (see ADR 0602)."""
        raise NotImplementedError(
            "Snowflake cannot restart a sequence or an identity column in place (ALTER SEQUENCE only "
            "changes the increment, and a recreated sequence breaks the column defaults that use it): "
            "new rows continue after the old highest value, leaving a gap"
        )

    # -- reverse migration: the target read through the inverse expressions -------------------
    # (owned by the reverse-migration strategy; the batched reading is engines/dbapi_reverse.py)
    def reverse_column_types(self, table: str) -> dict[str, str]:
        """Exact column name -> type (``ID``: an unquoted ``id`` in a manifest is ``ID`` here)."""
        schema, name = self.name_parts(table)
        rows = self.query(
            "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, name),
        )
        return {c: (f"{t}({p}, {s})" if t.upper() == "NUMBER" and p else t) for c, t, p, s in rows}

    def reverse_reader(self, table: Any) -> Any:
        from sensei_airflow.engines.dbapi_reverse import BatchedRowSource

        return BatchedRowSource(
            self,
            self.quote_table(table.target),
            list(table.written_columns or table.columns),
            list(table.inverses),
            list(table.types),
            [self.reverse_quote_column(k) for k in table.target_key],
            list(table.key_types),
        )

    # -- the undo log: change tracking read through Time Travel (engines/row_history.py) -----------
    def column_types(self, table: str) -> dict[str, str]:
        return self.reverse_column_types(table)

    def change_tracking(self, table: str) -> bool | None:
        """Whether ``table`` has ``CHANGE_TRACKING`` on (None: no such table), from ``SHOW TABLES``."""
        schema, name = self.name_parts(table)
        pattern = name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%").replace("'", "''")
        with self.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute(f"SHOW TABLES LIKE '{pattern}' IN SCHEMA {self.quote_identifier(schema)}")
                columns = [str(d[0]).lower() for d in cur.description or []]
                rows = [dict(zip(columns, row, strict=False)) for row in cur.fetchall()]
            finally:
                cur.close()
        for row in rows:
            if row.get("name") == name:
                return str(row.get("change_tracking", "")).upper() == "ON"
        return None

    def table_checksums(self, tables: Iterable[str], like: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rows and ``HASH_AGG(*)`` per table: order-independent, computed in Snowflake (the mark records
        them, and verify compares an undone table with them). One kind only: ``like`` changes nothing."""
        names = [self.qualify(t) for t in tables]
        if not names:
            return {}
        union = " UNION ALL ".join(
            f"SELECT %s, COUNT(*), TO_VARCHAR(HASH_AGG(*)) FROM {self.quote_table(t)}"  # noqa: S608 - quoted
            for t in names
        )
        return {str(t): TableChecksum(int(n), str(h)) for t, n, h in self.query(union, tuple(names))}

    def open_row_history(self, tables: Sequence[str]) -> dict[str, Any]:
        """Turn ``CHANGE_TRACKING`` on where it is off (``CHANGES`` reads only from when it was on)."""
        enabled = [t for t in tables if self.change_tracking(t) is False]
        self.run_statements(
            [Statement(f"ALTER TABLE {self.quote_table(t)} SET CHANGE_TRACKING = TRUE") for t in enabled],
            transaction=False,
        )
        return {"tracked": list(tables), "enabled": enabled}

    def history_moment(self, moment: MarkMoment) -> dict[str, Any]:
        return {"at": moment.at.astimezone(UTC).isoformat()}

    @staticmethod
    def _at(undo: dict[str, Any]) -> str:
        # a literal from the recorded datetime (parsed and written again: never free text)
        return f"AT(TIMESTAMP => '{datetime.fromisoformat(undo['at']).astimezone(UTC).isoformat()}'::TIMESTAMP_TZ)"

    def at_mark(self, table: str, undo: dict[str, Any]) -> str:
        return f"{self.quote_table(table)} {self._at(undo)}"

    def since_mark(self, undo: dict[str, Any]) -> str:
        return f"CHANGES(INFORMATION => DEFAULT) {self._at(undo)}"

    def undo_statements(
        self, table: UndoTable, columns: Sequence[str], undo: dict[str, Any]
    ) -> tuple[list[Statement], list[Statement]]:
        """One ``MERGE``: keys new since the mark deleted, changed rows set back, deleted rows inserted
        again. Snowflake enforces no foreign key, so one statement per table does all three."""
        key = [self.column_name(k) for k in table.key]
        q = self.quote_identifier
        probe = [q(f"sensei$key_{i}") for i in range(1, len(key) + 1)]
        picked = ", ".join(
            [f"c.{q(k)} AS {p}" for k, p in zip(key, probe, strict=True)] + [f"m.{q(c)}" for c in columns]
        )
        on = " AND ".join(f"t.{q(k)} = s.{p}" for k, p in zip(key, probe, strict=True))
        others = [c for c in columns if c not in key]
        update = (
            f" WHEN MATCHED THEN UPDATE SET {', '.join(f'{q(c)} = s.{q(c)}' for c in others)}"
            if others
            else ""
        )
        listed = ", ".join(q(c) for c in columns)
        values = ", ".join(f"s.{q(c)}" for c in columns)
        sql = (
            f"MERGE INTO {self.quote_table(table.table)} t USING (SELECT {picked} "  # noqa: S608 - quoted names
            f"FROM ({self.changed_keys(table, undo)}) c "
            f"LEFT JOIN {self.at_mark(table.table, undo)} m ON {self._match('m', 'c', table.key)}) s ON ({on}) "
            f"WHEN MATCHED AND s.{q(key[0])} IS NULL THEN DELETE{update} "
            f"WHEN NOT MATCHED AND s.{q(key[0])} IS NOT NULL THEN INSERT ({listed}) VALUES ({values})"
        )
        return [Statement(sql, purpose=f"set {table.table} back to the start mark")], []

    def history_problems(self, undo: dict[str, Any], tables: Sequence[UndoTable]) -> list[str]:
        """A table that was not tracked from the mark, or whose Time Travel retention no longer reaches it."""
        at = datetime.fromisoformat(undo["at"])
        kept = self.table_retention()
        now = datetime.now(UTC)
        found: list[str] = []
        for table in tables:
            if table.table not in undo.get("tracked", []):
                found.append(
                    f"{table.table} was not in the migration when the start mark was taken: no change tracking "
                    "reaches back to it; roll back with backup_restore or point_in_time"
                )
                continue
            times = kept.get(table.table)
            if times is not None and at + timedelta(days=times.retention_days) - RETENTION_MARGIN < now:
                found.append(
                    f"the undo log of {table.table} is gone: its Time Travel retention ({times.retention_days} d) "
                    f"no longer reaches the start mark ({at.isoformat()}); roll back with backup_restore"
                )
        return found

    def undo_log_retained(self, undo: dict[str, Any]) -> dict[str, Any]:
        """When Time Travel stops reaching the mark (the earliest over the tracked tables)."""
        at = datetime.fromisoformat(undo["at"])
        kept = self.table_retention()
        days = [kept[t].retention_days for t in undo.get("tracked", []) if t in kept]
        return (
            {"reaches_back_until": (at + timedelta(days=min(days))).isoformat()}
            if days
            else {"exists": False}
        )

    def close_undo_log(self, undo: dict[str, Any]) -> list[str]:
        """Turn change tracking off again where the mark turned it on."""
        tables = [t for t in undo.get("enabled", []) if self.change_tracking(t)]
        self.run_statements(
            [Statement(f"ALTER TABLE {self.quote_table(t)} SET CHANGE_TRACKING = FALSE") for t in tables],
            transaction=False,
        )
        return [f"change tracking off again on {t}" for t in tables]

    # -- point-in-time recovery ----------------------------------------------------------
    def point_in_time(self, settings: Any) -> SnowflakeTimeTravel:
        return SnowflakeTimeTravel(self)

    def table_retention(self) -> dict[str, TableTimes]:
        """``{table: (DATA_RETENTION_TIME_IN_DAYS, created, last_altered)}`` for every user table."""
        return {
            self.table_name(row[0], row[1]): TableTimes(
                int(row[2] or 0), row[3], row[4] if len(row) > 4 else None
            )
            for row in self.query(_RETENTION)
        }


@dataclass(frozen=True)
class TableTimes:
    """What Time Travel needs to know of a table."""

    retention_days: int
    created: datetime | None
    last_altered: datetime | None = None


#: swap and rename of one table happen within this; a live table changed later than its kept
#: copy was made by an earlier rollback, not by an interrupted attempt of this one.
SWAP_GRACE = timedelta(minutes=10)


def restore_token(tables: Sequence[str], target: RecoveryTarget) -> str:
    """The same for every attempt of one rollback (execute re-plans), so a retry finds its own tables."""
    key = "|".join([target.time.astimezone(UTC).isoformat(), target.position or "", *tables])
    return hashlib.sha256(key.encode()).hexdigest()[:8].upper()


@dataclass(frozen=True)
class CloneNames:
    """The two helper tables of one table's Time Travel restore."""

    restored: str  # the clone at the point, before it is swapped in
    kept: str  # the table's content before the rollback, after the swap (kept for undo)


class SnowflakeTimeTravel(PointInTimeRecovery):
    """``CREATE TABLE ... CLONE ... AT|BEFORE`` for every table, then ``ALTER TABLE ... SWAP WITH`` each.

    All clones are made before any live table changes, so an expired retention fails first.
    Each swap is atomic for its table (tables are swapped one after another, children last).
    The pre-rollback content stays as ``<table>__SENSEI_<token>_PRE`` so the rollback can be
    undone by swapping back; the plan lists the statements for both.
    """

    mechanism = "Snowflake Time Travel"

    def __init__(self, engine: SnowflakeEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- pure SQL ------------------------------------------------------------------------
    @staticmethod
    def names(table: str, token: str) -> CloneNames:
        """The clone and the kept copy of a qualified ``table``: its exact name plus a suffix, in its schema."""
        from sensei_airflow.names import exact_part, format_name, parse_name

        *schema, name = (exact_part(p, folds=True) for p in parse_name(table))
        return CloneNames(
            restored=format_name([*schema, f"{name}__SENSEI_{token}_AT"], folds=True),
            kept=format_name([*schema, f"{name}__SENSEI_{token}_PRE"], folds=True),
        )

    def at_clause(self, target: RecoveryTarget) -> Statement:
        """``BEFORE(STATEMENT => id)`` when the migration's first query id is known, else ``AT(TIMESTAMP => t)``."""
        if target.position:
            return Statement("BEFORE(STATEMENT => %s)", (target.position,))
        return Statement("AT(TIMESTAMP => %s::TIMESTAMP_TZ)", (target.time.astimezone(UTC).isoformat(),))

    def clone_sql(self, table: str, token: str, target: RecoveryTarget) -> Statement:
        names = self.names(table, token)
        at = self.at_clause(target)
        quote = self.engine.quote_table
        return Statement(
            f"CREATE OR REPLACE TABLE {quote(names.restored)} CLONE {quote(table)} {at.sql}",
            at.params,
            purpose=f"clone {table} at {target.describe()}",
        )

    def swap_sql(self, table: str, token: str) -> list[Statement]:
        names = self.names(table, token)
        quote = self.engine.quote_table
        kept_name = self.engine.name_parts(names.kept)[-1]
        return [
            Statement(
                f"ALTER TABLE {quote(table)} SWAP WITH {quote(names.restored)}",
                purpose=f"swap the restored {table} in",
            ),
            Statement(
                f"ALTER TABLE {quote(names.restored)} RENAME TO {quote(names.kept)}",
                purpose=f"keep {table} as it was before the rollback ({kept_name})",
            ),
        ]

    def restore_sql(self, tables: Sequence[str], token: str, target: RecoveryTarget) -> list[Statement]:
        """Every statement of a restore, in order: all clones, then swap and rename each (children last)."""
        clones = [self.clone_sql(t, token, target) for t in tables]
        swaps = [s for t in reversed(tables) for s in self.swap_sql(t, token)]
        return [*clones, *swaps]

    def undo_sql(self, tables: Sequence[str], token: str) -> list[Statement]:
        """Swap the pre-rollback content back in (run by hand to undo a completed rollback)."""
        quote = self.engine.quote_table
        return [
            Statement(
                f"ALTER TABLE {quote(t)} SWAP WITH {quote(self.names(t, token).kept)}", purpose=f"undo {t}"
            )
            for t in tables
        ]

    def cleanup_sql(self, tables: Sequence[str], token: str) -> list[Statement]:
        """Drop the pre-rollback copies once the rollback is accepted."""
        quote = self.engine.quote_table
        return [
            Statement(
                f"DROP TABLE IF EXISTS {quote(self.names(t, token).kept)}", purpose=f"drop the copy of {t}"
            )
            for t in tables
        ]

    # -- checks ----------------------------------------------------------------------------
    def check(
        self,
        tables: Sequence[str],
        target: RecoveryTarget,
        retention: dict[str, TableTimes],
        now: datetime,
    ) -> None:
        """Refuse a point in the future, a table that did not exist yet, or a point outside its retention."""
        if target.time > now:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is in the future (now {now.isoformat()})"
            )
        for table in tables:
            if table not in retention:
                raise PointInTimeRefused(f"table {table} does not exist on {self.engine.conn_id}")
            days, created = retention[table].retention_days, retention[table].created
            if days <= 0:
                raise PointInTimeRefused(
                    f"{table} has DATA_RETENTION_TIME_IN_DAYS = 0 (no Time Travel): it cannot be restored to a "
                    "point in time; use backup_restore"
                )
            earliest = now - timedelta(days=days) + RETENTION_MARGIN
            if target.time < earliest:
                raise PointInTimeRefused(
                    f"{table} keeps Time Travel for {days} day(s) (DATA_RETENTION_TIME_IN_DAYS): "
                    f"{target.time.isoformat()} is outside it (earliest safe point now: {earliest.isoformat()})"
                )
            if created is not None and _aware(created) > target.time and not target.position:
                raise PointInTimeRefused(
                    f"{table} was created at {_aware(created).isoformat()}, after {target.time.isoformat()}: "
                    "there is no version of it to clone at that point"
                )

    # -- the interface -------------------------------------------------------------------------
    def create_restore_point(self, name: str) -> str | None:
        """The id of a query run now: ``BEFORE(STATEMENT => id)`` is then exactly the migration's start."""
        with self.engine.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute("SELECT %s AS sensei_restore_point", (name,))
                cur.fetchall()
                cur.execute("SELECT LAST_QUERY_ID()")
                return str(cur.fetchall()[0][0])
            finally:
                cur.close()

    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        retention = self.engine.table_retention()
        self.check(tables, target, retention, self.clock())
        token = restore_token(tables, target)
        statements = self.restore_sql(tables, token, target)
        kept = [self.names(t, token).kept for t in tables]
        return PointInTimePlan(
            tables=list(tables),
            path="table",
            steps=[_render(s) for s in statements],
            warnings=[
                "the tables' content before the rollback is kept as "
                + ", ".join(kept)
                + " (Time Travel clones: no extra storage until they diverge); drop them when the "
                "rollback is accepted"
            ],
            detail={
                "token": token,
                "undo": [s.sql for s in self.undo_sql(tables, token)],
                "cleanup": [s.sql for s in self.cleanup_sql(tables, token)],
                "retention_days": {t: retention[t].retention_days for t in tables},
            },
        )

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        """Clone every table, then swap each in; a retry skips the tables already swapped."""
        token = str(plan.detail["token"])
        tables = list(plan.tables)
        existing = self.engine.table_retention()
        done = [t for t in tables if self._already_restored(t, token, existing)]
        todo = [t for t in tables if t not in done]
        # a clone left by an interrupted run that was already swapped in (crash between swap and
        # rename): the live table is then the newer one of the pair
        swapped = [t for t in todo if self._already_swapped(t, token, existing)]
        to_clone = [t for t in todo if t not in swapped]
        self.check(to_clone, target, existing, self.clock())
        clones = [self.clone_sql(t, token, target) for t in to_clone]
        swaps = [
            *(s for t in reversed(to_clone) for s in self.swap_sql(t, token)),
            *(self.swap_sql(t, token)[1] for t in swapped),
        ]
        self.engine.run_statements(clones, transaction=False)
        self.engine.run_statements(swaps, transaction=False)
        statements = [*clones, *swaps]
        return PointInTimeOutcome(
            statements=[_render(s) for s in statements],
            rows_restored=self.engine.row_counts(tables),
            detail={**plan.detail, "already_restored": done},
        )

    def _already_swapped(self, table: str, token: str, existing: dict[str, TableTimes]) -> bool:
        restored = self.names(table, token).restored
        if restored not in existing:
            return False
        live_created, clone_created = existing[table].created, existing[restored].created
        return live_created is not None and clone_created is not None and live_created > clone_created

    def _already_restored(self, table: str, token: str, existing: dict[str, TableTimes]) -> bool:
        """The kept copy of this rollback exists, and the live table has not changed since the swap.

        :raises PointInTimeRefused: the kept copy is left from an earlier rollback to the same point
            and the table changed since: restoring would need that name.
        """
        kept = self.names(table, token).kept
        if kept not in existing:
            return False
        live, copy = existing[table].last_altered, existing[kept].last_altered
        if live is not None and copy is not None and _aware(live) > _aware(copy) + SWAP_GRACE:
            raise PointInTimeRefused(
                f"{kept} is left from an earlier rollback of {table} to the same point, and {table} changed "
                f"since: drop {kept} once it is no longer needed, then retry"
            )
        return True

    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        retention = self.engine.table_retention()
        now = self.clock()
        return [
            RecoveryWindow(
                mechanism=self.mechanism,
                table=t,
                earliest=now - timedelta(days=retention[t].retention_days),
                latest=now,
                closes_at=point + timedelta(days=retention[t].retention_days),
                limit="Time Travel retention (DATA_RETENTION_TIME_IN_DAYS)",
            )
            for t in tables
            if t in retention
        ]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _render(statement: Statement) -> str:
    """A statement as shown in a plan: the SQL with its parameters after it."""
    if not statement.params:
        return statement.sql
    return f"{statement.sql}  -- params: {', '.join(repr(p) for p in statement.params)}"


def _utc(value: datetime) -> datetime:
    """A server time as an aware UTC datetime (a naive one is UTC: the query asked for UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
