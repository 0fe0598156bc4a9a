"""Target truncate: empty the migrated tables, children first, in one transaction.

Safe only when the target tables held nothing before the migration and nothing outside the
scope still points at them; assess checks both and refuses otherwise. Execute locks the outside
tables that reference the scope and checks them again inside its transaction, so a row inserted
there after assess refuses the rollback instead of being cascaded away or blocking it.
"""

from __future__ import annotations

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines.base import ForeignKey, OutsideRows
from sensei_airflow.manifest import Strategy, TableMapping
from sensei_airflow.plan import RefusedError, RollbackPlan, dependency_order
from sensei_airflow.state import utcnow
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy
from sensei_airflow.verify import Verification


class TruncateStrategy(RollbackStrategy):
    name = Strategy.TRUNCATE

    def _ordered(self, tables: list[str]) -> list[str]:
        """Children before parents."""
        return list(reversed(dependency_order(tables, self.target.foreign_keys())))

    def _referenced_from_outside(self, tables: list[str]) -> tuple[set[str], list[str], list[str]]:
        """Tables in scope that an outside table references, those outside tables, and the refusals
        for the ones that hold rows now."""
        outside = self.references_from_outside(tables)
        refusals = [_refusal(fk, rows) for fk, rows in outside if rows > 0]
        children = sorted({fk.child for fk, _ in outside})
        return {fk.parent for fk, _ in outside}, children, refusals

    def _pre_migration_backup_rows(self) -> dict[str, int]:
        """Per-table rows in the newest backup of this target database taken at or before the migration's
        start, whatever its kind (more evidence of what was there); a backup taken later may hold the
        migration's own rows, one of another database says nothing about this one."""
        from sensei_airflow.backups import choice
        from sensei_airflow.backups.catalog import BackupCatalog
        from sensei_airflow.start import migration_start

        found = choice.candidates(
            BackupCatalog(self.state).list(self.manifest.id),
            identity=self.target.identity(),
            start=migration_start(self.manifest, self.state),
            now=utcnow(),
        )
        entry = choice.default_backup(found)
        return entry.row_counts() if entry is not None else {}

    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        tables = [self.target.qualify(t.target) for t in scope]
        existing = set(self.target.user_tables())
        missing = [t for t in tables if t not in existing]
        if missing:
            raise RefusedError(f"target table {missing[0]} does not exist on {self.manifest.target.conn_id}")
        referenced, children, refusals = self._referenced_from_outside(tables)
        if refusals:
            raise RefusedError(
                f"truncate would break foreign keys: {refusals[0]}; add that table to the scope or roll "
                "back its phase too"
            )
        from sensei_airflow.mark import load_mark

        mark = load_mark(self.state, self.manifest.id)
        marked = mark.rows() if mark is not None else {}
        held_rows = {t: n for t, n in marked.items() if t in tables and n > 0}
        backup_rows = self._pre_migration_backup_rows()
        held_rows |= {t: n for t, n in backup_rows.items() if t in tables and n > 0 and t not in held_rows}
        if held_rows:
            table, rows = next(iter(held_rows.items()))
            raise RefusedError(
                f"{table} held {rows} rows before the migration began: truncate would destroy them; "
                "use backup_restore or point_in_time instead"
            )
        ordered = self._ordered(tables)
        statements = [
            s.sql
            for s in [
                *self.target.guard_sql(children),
                *self.target.lock_sql(ordered),
                *self.target.empty_tables_sql(ordered, referenced),
            ]
        ]
        warnings = []
        if mark is None and not backup_rows:
            warnings.append(
                "no start mark and no pre-migration backup are recorded for this migration: truncate assumes "
                "the target tables were empty before it"
            )
        return Assessment(
            tables=ordered,
            rows=self.target.row_counts(ordered),
            statements=statements,
            warnings=warnings,
        )

    def execute(self, plan: RollbackPlan) -> Execution:
        """Empty the tables; the outside tables that reference them are locked and must be empty in
        the same transaction (a row inserted after assess is found there, and nothing changes)."""
        tables = plan.table_names
        outside = self.references_from_outside(tables)
        referenced = {fk.parent for fk, _ in outside}
        try:
            statements, removed = self.target.empty_tables(
                tables, referenced, outside=sorted({fk.child for fk, _ in outside})
            )
        except OutsideRows as exc:
            fk, rows = next((fk, exc.counts[fk.child]) for fk, _ in outside if fk.child in exc.counts)
            raise RefusedError(
                f"truncate would break foreign keys: {_refusal(fk, rows)} (found under lock, after assess); "
                "nothing was changed"
            ) from None
        return Execution(statements=[s.sql for s in statements], rows_affected=removed)

    def verify(self, plan: RollbackPlan) -> Verification:
        checks = self.scope_count_checks(plan, "empty after rollback", dict.fromkeys(plan.table_names, 0))
        return Verification(
            record_counts_match=all(c.ok for c in checks),
            source_comparison="skipped",
            sample_verification="skipped",
            checks=checks,
        )


def _refusal(fk: ForeignKey, rows: int) -> str:
    return f"{fk.child} (outside the scope) references {fk.parent} through {fk.name} and holds {rows} rows"
