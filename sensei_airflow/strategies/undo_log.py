"""Undo log: undo every change made to the tables in scope since the migration's start mark.

The mark opened the undo log (``rollback.undo_log.enabled``; on PostgreSQL a logical replication
slot); every insert, update and delete since then, the migration's own and later ones alike, is
in it. The rollback sets each touched row back to its value at the mark, in one transaction, and
the sequences back to the mark's values: it costs the size of the change, not of the tables.
Verify compares each table in scope with the mark's row count and checksum: they must match.
"""

from __future__ import annotations

from functools import cached_property

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines.base import UndoLogRefused, UndoTable
from sensei_airflow.manifest import Strategy, TableMapping
from sensei_airflow.mark import StartMark, load_mark
from sensei_airflow.plan import RefusedError, RollbackPlan, dependency_order
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy
from sensei_airflow.verify import Verification


class UndoLogStrategy(RollbackStrategy):
    name = Strategy.UNDO_LOG

    @cached_property
    def mark(self) -> StartMark:
        """The start mark with an open undo log, or a refusal saying what is missing."""
        migration = self.manifest.id
        if not self.target.keeps_undo_log:
            raise RefusedError(
                f"{self.target.engine_title} keeps no undo log here ({self.manifest.target.conn_id}): roll back "
                f"{migration} with point_in_time (the engine's own history) or backup_restore"
            )
        if not self.manifest.rollback.undo_log.enabled:
            raise RefusedError(
                f"the undo log is not enabled for {migration}: set rollback.undo_log.enabled in its manifest "
                "before the start mark is taken"
            )
        mark = load_mark(self.state, migration)
        if mark is None:
            raise RefusedError(
                f"{migration} has no start mark: the undo log opens with it (sensei migration start {migration} "
                "before the migration writes)"
            )
        if mark.undo_log is None:
            raise RefusedError(
                f"the start mark of {migration} was taken without the undo log: restart it with the undo log "
                "enabled (sensei migration start --restart) before the next migration, or use another strategy"
            )
        if mark.undo_log_closed_at is not None:
            raise RefusedError(
                f"the undo log of {migration} was closed at {mark.undo_log_closed_at.isoformat()} (its rollback "
                "window ended); roll back with backup_restore or point_in_time"
            )
        if mark.target_identity != self.target.identity():
            raise RefusedError(
                f"the start mark of {migration} was taken on another database ({mark.target_identity}) than "
                f"{self.manifest.target.conn_id} is now"
            )
        return mark

    def _tables(self, names: list[str]) -> list[UndoTable]:
        keys = {self.target.qualify(t.target): tuple(t.key) for t in self.manifest.tables}
        return [UndoTable(name, keys[name]) for name in names]

    def _problems(self, tables: list[UndoTable]) -> None:
        problems = self.target.undo_log_problems(
            self.mark.undo_log or {}, tables, self.mark.schema_fingerprints
        )
        if problems:
            raise RefusedError(problems[0])

    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        mark = self.mark
        tables = dependency_order([self.target.qualify(t.target) for t in scope], self.target.foreign_keys())
        undo_tables = self._tables(tables)
        self._problems(undo_tables)
        try:
            summary = self.target.undo_summary(mark.undo_log or {}, undo_tables)
        except UndoLogRefused as exc:
            raise RefusedError(str(exc)) from None
        warnings = [
            f"undo log: {table} gets {n['insert']} rows inserted again, {n['update']} set back and "
            f"{n['delete']} deleted (from {sum(summary.captured[table].values())} changes captured since the mark)"
            for table, n in summary.per_table.items()
        ]
        if summary.retained_bytes is not None:
            warnings.append(f"undo log: its slot retains {summary.retained_bytes / 1048576:.1f} MiB of WAL")
        return Assessment(
            tables=tables,
            rows=self.target.row_counts(tables),
            statements=[],
            warnings=warnings,
            detail={
                "undo": {
                    "per_table": summary.per_table,
                    "captured": summary.captured,
                    "samples": summary.samples,
                }
            },
            changes={
                t: {
                    **summary.per_table[t],
                    "captured": summary.captured[t],
                    "sample": summary.samples[t],
                    "exact": True,
                }
                for t in tables
            },
        )

    def execute(self, plan: RollbackPlan) -> Execution:
        """Apply the inverse of the captured changes in one transaction (idempotent: a retry changes no more)."""
        mark = self.mark
        tables = self._tables(plan.table_names)
        self._problems(tables)
        try:
            statements, changed, detail = self.target.apply_undo(mark.undo_log or {}, tables, mark.sequences)
        except UndoLogRefused as exc:
            raise RefusedError(str(exc)) from None
        return Execution(statements=statements, rows_affected=changed, detail={"undo_log": detail})

    def verify(self, plan: RollbackPlan) -> Verification:
        """Each table in scope against the mark's row count and checksum; the others untouched."""
        marked = self.mark_checks(plan, self.mark, others=True)
        return Verification(
            record_counts_match=all(c.ok for c in marked.counts),
            source_comparison="skipped",
            sample_verification=marked.checksum_outcome,
            checks=marked.checks,
            warnings=marked.warnings,
        )
