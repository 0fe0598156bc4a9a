"""The undo log from the engine's own row history: Snowflake change tracking and Time Travel, Oracle Flashback.

These engines keep each table's earlier rows for a retention period, so the undo log needs no
capture of its own. The start mark records the moment (a Snowflake timestamp, an Oracle SCN);
an undo then asks the history which keys changed since that moment (Snowflake ``CHANGES``,
Oracle ``VERSIONS BETWEEN SCN``) and sets exactly those rows back to their values at the mark
(``AT`` / ``AS OF SCN``), in one transaction. Only the changed keys are read and written: the
cost is the size of the change, not of the table (the history query is served from the
engine's change records, not by comparing whole tables).

Idempotent like PostgreSQL's undo: the statements set each changed key to its state at the
mark, so a retry after a crash changes nothing more. What each engine contributes (the history
clauses, the statements, its limits) is in its own module; see docs/adr/0701-undo-log-from-row-history.md.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from sensei_airflow.engines.base import MarkMoment, Statement, UndoLogRefused, UndoSummary, UndoTable
from sensei_airflow.engines.dbapi import DbApiEngine


def columns_fingerprint(columns: dict[str, str]) -> str:
    """A short digest of a table's ``[name, type]`` columns in order: it changes with any DDL on them."""
    return hashlib.sha256(json.dumps(list(columns.items())).encode()).hexdigest()[:16]


class RowHistoryUndo(DbApiEngine):
    """An engine whose undo log is its own row history (see the module docstring)."""

    keeps_undo_log = True
    #: the handle's ``kind``: which history an undo log of this engine reads.
    history_kind: str = ""

    # -- what each engine writes --------------------------------------------------------------
    @abstractmethod
    def column_types(self, table: str) -> dict[str, str]:
        """Exact column name -> type, in column order (empty when the table does not exist)."""

    @abstractmethod
    def open_row_history(self, tables: Sequence[str]) -> dict[str, Any]:
        """Make the history reach back to the coming moment (e.g. turn change tracking on); what was
        done, kept in the undo log's handle so closing it can put things back."""

    @abstractmethod
    def history_moment(self, moment: MarkMoment) -> dict[str, Any]:
        """The part of the handle that names the mark's moment in this engine's history clauses."""

    @abstractmethod
    def at_mark(self, table: str, undo: dict[str, Any]) -> str:
        """A FROM item of ``table``'s rows as they were at the mark (values are literals, never user text)."""

    @abstractmethod
    def since_mark(self, undo: dict[str, Any]) -> str:
        """What follows a table's name to read only its row versions changed since the mark
        (Snowflake ``CHANGES ... AT``, Oracle ``VERSIONS BETWEEN SCN``)."""

    def changed_keys(self, table: UndoTable, undo: dict[str, Any]) -> str:
        """A query of the distinct keys of ``table`` changed since the mark (columns: the key, quoted)."""
        keys = ", ".join(self.quote_column(k) for k in table.key)
        return f"SELECT DISTINCT {keys} FROM {self.quote_table(table.table)} {self.since_mark(undo)}"  # noqa: S608

    @abstractmethod
    def undo_statements(
        self, table: UndoTable, columns: Sequence[str], undo: dict[str, Any]
    ) -> tuple[list[Statement], list[Statement]]:
        """The statements that set ``table``'s changed keys back: ``(run parents first, run children first)``."""

    @abstractmethod
    def history_problems(self, undo: dict[str, Any], tables: Sequence[UndoTable]) -> list[str]:
        """Why the history cannot reach back to the mark for ``tables`` now (retention, ...): one line each."""

    def undo_lock_sql(self, tables: Sequence[str]) -> list[Statement]:
        """What keeps other writers off ``tables`` until the undo commits (default: the engine's locks)."""
        return self.lock_sql(tables)

    # -- the mark --------------------------------------------------------------------------
    def take_mark(self, name: str, tables: Sequence[str], *, undo_log: bool, slot: str) -> MarkMoment:
        """The mark as every engine takes it; with ``undo_log`` the history is opened first, so it
        reaches back to the moment, and the columns are fingerprinted to tell DDL since."""
        opened = self.open_row_history(tables) if undo_log else None
        moment = super().take_mark(name, tables, undo_log=False, slot=slot)
        moment.schema = {t: columns_fingerprint(self.column_types(t)) for t in tables}
        if opened is not None:
            moment.undo_log = {"kind": self.history_kind, **opened, **self.history_moment(moment)}
        return moment

    # -- the undo --------------------------------------------------------------------------
    def _match(self, left: str, right: str, key: Sequence[str]) -> str:
        return " AND ".join(f"{left}.{self.quote_column(k)} = {right}.{self.quote_column(k)}" for k in key)

    def undo_log_problems(
        self, undo: dict[str, Any], tables: Sequence[UndoTable], schema: dict[str, str]
    ) -> list[str]:
        if undo.get("kind") != self.history_kind:
            return [f"the undo log was not opened by {self.engine_title}'s row history; use backup_restore"]
        alternative = "roll back with backup_restore or point_in_time"
        found: list[str] = []
        for table in tables:
            if not table.key:
                found.append(
                    f"{table.table} has no key in the manifest: the undo log cannot tell its rows apart; {alternative}"
                )
                continue
            columns = self.column_types(table.table)
            if not columns:
                found.append(f"{table.table} no longer exists (DDL since the start mark); {alternative}")
            elif table.table in schema and columns_fingerprint(columns) != schema[table.table]:
                found.append(
                    f"{table.table} changed its columns since the start mark (DDL): its history cannot be read "
                    f"across it; {alternative}"
                )
        return found + self.history_problems(undo, tables)

    def _present(self, table: UndoTable, template: str) -> str:
        """``template`` (our own text) with ``{mark}`` / ``{now}``: the key's first column at the mark / now.

        Formatted before any name joins it, so a name holding braces is never read as a placeholder.
        """
        first = self.quote_column(table.key[0])
        return template.format(mark=f"m.{first}", now=f"n.{first}")

    def _kinds_sql(self, table: UndoTable, undo: dict[str, Any], select: str, tail: str = "") -> str:
        return (
            f"SELECT {select} "  # noqa: S608 - quoted names
            f"FROM ({self.changed_keys(table, undo)}) c "
            f"LEFT JOIN {self.at_mark(table.table, undo)} m ON {self._match('m', 'c', table.key)} "
            f"LEFT JOIN {self.quote_table(table.table)} n ON {self._match('n', 'c', table.key)}{tail}"
        )

    def undo_summary(self, undo: dict[str, Any], tables: Sequence[UndoTable], sample: int = 5) -> UndoSummary:
        """Per table, the changed keys counted by what the undo does to them, and a few of them."""
        found = self.undo_log_problems(undo, tables, {})
        if found:
            raise UndoLogRefused(found[0])
        counts = (
            "COUNT(*), COUNT(CASE WHEN {mark} IS NOT NULL AND {now} IS NULL THEN 1 END), "
            "COUNT(CASE WHEN {mark} IS NOT NULL AND {now} IS NOT NULL THEN 1 END), "
            "COUNT(CASE WHEN {mark} IS NULL AND {now} IS NOT NULL THEN 1 END)"
        )
        kind = (
            "CASE WHEN {mark} IS NULL AND {now} IS NOT NULL THEN 'delete' "
            "WHEN {mark} IS NOT NULL AND {now} IS NULL THEN 'insert' ELSE 'update' END"
        )
        result = UndoSummary()
        for table in tables:
            changed, insert, update, delete = self.query(
                self._kinds_sql(table, undo, self._present(table, counts))
            )[0]
            result.per_table[table.table] = {
                "insert": int(insert),
                "update": int(update),
                "delete": int(delete),
            }
            result.captured[table.table] = {"changed keys": int(changed)}
            keys = ", ".join(f"c.{self.quote_column(k)}" for k in table.key)
            rows = self.query(
                self._kinds_sql(
                    table,
                    undo,
                    f"{keys}, {self._present(table, kind)}",
                    f" FETCH FIRST {int(sample)} ROWS ONLY",
                )
            )
            names = [self.column_name(k) for k in table.key]
            result.samples[table.table] = [
                {"undo": row[-1], "key": dict(zip(names, row[:-1], strict=True))} for row in rows
            ]
        return result

    def apply_undo(
        self, undo: dict[str, Any], tables: Sequence[UndoTable], sequences: Sequence[dict[str, Any]]
    ) -> tuple[list[str], dict[str, int], dict[str, Any]]:
        """Set each changed key of ``tables`` (given parents first) back to the mark, in one transaction:
        rows re-inserted and set back parents first, rows new since the mark deleted children first."""
        found = self.undo_log_problems(undo, tables, {})
        if found:
            raise UndoLogRefused(found[0])
        first: list[tuple[str, Statement]] = []
        last: list[tuple[str, Statement]] = []
        for table in tables:
            forward, backward = self.undo_statements(table, list(self.column_types(table.table)), undo)
            first += [(table.table, s) for s in forward]
            last = [(table.table, s) for s in backward] + last
        lock = self.undo_lock_sql([t.table for t in tables])
        changed = {t.table: 0 for t in tables}
        with self.transaction() as (_, cur):
            for statement in lock:
                cur.execute(statement.sql)
            for table_name, statement in [*first, *last]:
                cur.execute(statement.sql)
                changed[table_name] += max(int(getattr(cur, "rowcount", 0) or 0), 0)
        statements = [s.sql for s in lock] + [s.sql for _, s in (*first, *last)]
        detail = {"history": self.history_kind, **{k: v for k, v in undo.items() if k != "kind"}}
        return statements, changed, detail
