"""Backup restore: the tables in scope get back the rows of a catalogued backup.

The backup is the request's ``backup_id``, else the newest usable backup of this very target
database taken at or before the migration's start, whatever its kind (:mod:`sensei_airflow.backups.choice`).
Assess refuses a backup that is unknown, of another migration or database, not finished,
expired, physical, missing a table in scope, on unreachable storage, or whose files no longer
match their sha256. Execute replaces the rows of the tables in scope in one
transaction (parents loaded first; constraints, indexes and grants kept; owned sequences set
back), leaving every other table alone. Verify compares each table with the row count and
checksum the catalog recorded when the backup was taken; when the backup is the one the start
mark took, also with the mark's (a write between the backup and the mark's moment shows there).
An older backup's rows are not the mark's: verify says so and does not compare them with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from sensei_airflow.backups.catalog import BackupCatalog, BackupEntry
from sensei_airflow.backups.files import CorruptBackup
from sensei_airflow.backups.storage import StorageUnreachable, storage_for
from sensei_airflow.conf import RollbackRequest
from sensei_airflow.manifest import Strategy, TableMapping
from sensei_airflow.mark import load_mark
from sensei_airflow.plan import RefusedError, RollbackPlan, dependency_order
from sensei_airflow.state import utcnow
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy
from sensei_airflow.verify import TableCheck, Verification


class BackupRestoreStrategy(RollbackStrategy):
    name = Strategy.BACKUP_RESTORE

    @cached_property
    def catalog(self) -> BackupCatalog:
        return BackupCatalog(self.state)

    # -- which backup ------------------------------------------------------------------------------
    def choose_backup(
        self, backup_id: str | None, tables: Sequence[str] = ()
    ) -> tuple[BackupEntry, list[str]]:
        """The backup to restore from and what the plan should warn about, or ``RefusedError`` saying why not.

        Without ``backup_id``: the newest backup of this very target database, usable now, taken at
        or before the migration's start and covering ``tables`` (whatever its kind); a refusal lists
        every candidate with the reason it cannot be used. With ``backup_id``: that backup, refused
        when it is of another migration, side or database, not finished, expired or physical.
        """
        from sensei_airflow.backups import choice
        from sensei_airflow.start import migration_start

        migration = self.manifest.id
        start = migration_start(self.manifest, self.state)
        identity = self.target.identity()
        if backup_id is None:
            found = choice.candidates(
                self.catalog.list(migration), identity=identity, start=start, now=utcnow(), tables=tables
            )
            entry = choice.default_backup(found)
            if entry is None:
                raise RefusedError(
                    choice.refusal(found, migration_id=migration, start=start, catalog_of=self.state.conn_id)
                )
            return entry, []
        entry = self.catalog.get(backup_id)
        if entry is None:
            raise RefusedError(
                f"backup {backup_id} does not exist in the backup catalog of {self.state.conn_id}"
            )
        if entry.migration_id != migration:
            raise RefusedError(
                f"backup {backup_id} belongs to migration {entry.migration_id}, not {migration}"
            )
        if entry.side != "target":
            raise RefusedError(f"backup {backup_id} is a backup of the {entry.side}, not of the target")
        if entry.type != "logical":
            raise RefusedError(
                f"backup {backup_id} is a {entry.type} (whole-cluster) backup: restore it with point_in_time"
            )
        if entry.status not in ("completed", "verified"):
            raise RefusedError(f"backup {backup_id} is {entry.status}; it cannot be restored")
        if entry.expired():
            raise RefusedError(
                f"backup {backup_id} expired at {entry.expires_at.isoformat()} (retention over; its files may "
                "be pruned at any moment)"
            )
        warnings = []
        if entry.database is None:
            warnings.append(
                f"backup {backup_id}: {choice.identity_problem(entry, identity)}; restoring it as asked, make "
                f"sure it is of {self.manifest.target.conn_id}"
            )
        else:
            other = choice.identity_problem(entry, identity)
            if other:
                raise RefusedError(f"backup {backup_id} was {other} ({self.manifest.target.conn_id})")
        late = choice.timing_problem(entry, start)
        if late:
            warnings.append(
                f"backup {backup_id} was {late}: it may hold rows the migration wrote; restoring it as asked"
            )
        return entry, warnings

    def _check_backup(self, entry: BackupEntry, tables: list[str]) -> None:
        missing = [t for t in tables if t not in entry.tables]
        if missing:
            raise RefusedError(
                f"backup {entry.backup_id} does not cover {missing[0]} (it holds {', '.join(entry.tables)})"
            )
        try:
            storage_for(entry.location).check_reachable()
        except StorageUnreachable as exc:
            raise RefusedError(
                f"backup {entry.backup_id} cannot be read: storage unreachable: {exc}"
            ) from None
        from sensei_airflow.backups.files import check_file

        storage = storage_for(entry.location)
        for table in tables:
            name = entry.table_stats[table]["file"]
            problem = check_file(storage, name, entry.files[name])
            if problem:
                raise RefusedError(f"backup {entry.backup_id} failed its checksum: {problem}")

    def _shape_problems(self, entry: BackupEntry, tables: list[str]) -> None:
        existing = set(self.target.user_tables())
        absent = [t for t in tables if t not in existing]
        if absent:
            raise RefusedError(f"target table {absent[0]} does not exist on {self.manifest.target.conn_id}")
        for table in tables:
            now = self.target.column_signature(table)
            recorded = entry.table_stats[table]["columns"]
            if now != recorded:
                raise RefusedError(
                    f"{table} has changed shape since backup {entry.backup_id}: columns now "
                    f"{', '.join(f'{n} {t}' for n, t in now)}; in the backup {', '.join(f'{n} {t}' for n, t in recorded)}"
                )

    def _outside_references(self, tables: list[str]) -> set[str]:
        """Tables in scope referenced from outside it; refuses when such a referencing table holds rows."""
        outside = self.references_from_outside(tables)
        for fk, rows in outside:
            if rows > 0:
                raise RefusedError(
                    f"restoring {fk.parent} would remove rows that {fk.child} (outside the scope, "
                    f"{rows} rows) references through {fk.name}; add {fk.child} to the scope"
                )
        return {fk.parent for fk, _ in outside}

    # -- the strategy --------------------------------------------------------------------------------
    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        tables = [self.target.qualify(t.target) for t in scope]
        entry, warnings = self.choose_backup(request.backup_id, tables)
        self._check_backup(entry, tables)
        self._shape_problems(entry, tables)
        referenced = self._outside_references(tables)
        ordered = dependency_order(tables, self.target.foreign_keys())
        statements = [
            f"-- restore from backup {entry.backup_id} ({entry.kind}, taken {entry.created_at.isoformat()}, "
            f"at {entry.location})",
            *(s.sql for s in self.target.lock_sql(ordered)),
            *(s.sql for s in self.target.empty_tables_sql(list(reversed(ordered)), referenced)),
            *(f"COPY {self.target.quote_table(t)} FROM STDIN (FORMAT binary)  -- {entry.table_stats[t]['rows']} rows"
              for t in ordered),
        ]  # fmt: skip
        return Assessment(
            tables=ordered,
            rows=self.target.row_counts(ordered),
            statements=statements,
            warnings=warnings,
            detail={
                "backup_id": entry.backup_id,
                "backup_rows": {t: entry.table_stats[t]["rows"] for t in ordered},
            },
        )

    def _backup_of(self, plan: RollbackPlan) -> BackupEntry:
        """The backup assess chose (recorded in the plan), checked again."""
        return self.choose_backup(plan.backup_id, plan.table_names)[0]

    def execute(self, plan: RollbackPlan) -> Execution:
        entry = self._backup_of(plan)
        tables = plan.table_names
        self._check_backup(entry, tables)
        referenced = self._outside_references(tables)
        from sensei_airflow.backups.logical import opener

        try:
            statements, removed, restored = self.target.restore_tables(
                tables, entry.table_stats, opener(entry), referenced
            )
        except CorruptBackup as exc:
            raise RefusedError(
                f"backup {entry.backup_id} failed its checksum during the restore: {exc}"
            ) from None
        return Execution(
            statements=statements,
            rows_affected=restored,
            detail={"backup_id": entry.backup_id, "rows_removed": removed, "rows_restored": restored},
        )

    def verify(self, plan: RollbackPlan) -> Verification:
        entry = self._backup_of(plan)
        in_scope = set(plan.table_names)
        untouched = {t: n for t, n in plan.counts_before.items() if t not in in_scope}
        now = self.target.table_checksums(
            plan.table_names, like={t: entry.table_stats[t]["checksum"] for t in plan.table_names}
        )
        after_outside = self.target.row_counts(untouched)
        checks: list[TableCheck] = []
        for table in plan.table_names:
            recorded = entry.table_stats[table]
            checks.append(TableCheck(table=table, check=f"rows as in backup {entry.backup_id}",
                                     expected=recorded["rows"], actual=now[table].rows,
                                     ok=now[table].rows == recorded["rows"]))  # fmt: skip
            checks.append(TableCheck(table=table, check=f"checksum as in backup {entry.backup_id}",
                                     expected=recorded["checksum"], actual=now[table].checksum,
                                     ok=now[table].checksum == recorded["checksum"]))  # fmt: skip
        for table, rows in untouched.items():
            checks.append(TableCheck(table=table, check="untouched outside the scope", expected=rows,
                                     actual=after_outside.get(table), ok=after_outside.get(table) == rows))  # fmt: skip
        counts_ok = all(c.ok for c in checks if not c.check.startswith("checksum"))
        sums_ok = all(c.ok for c in checks if c.check.startswith("checksum"))
        warnings: list[str] = []
        mark = load_mark(self.state, self.manifest.id)
        if mark is not None and mark.backup_id == entry.backup_id:
            marked = self.mark_checks(plan, mark, now=now)
            checks += marked.checks
            counts_ok = counts_ok and all(c.ok for c in marked.counts)
            sums_ok = sums_ok and marked.checksum_outcome != "failed"
            warnings += marked.warnings
        elif mark is not None:
            taken = entry.created_at.isoformat()
            warnings.append(
                f"the tables in scope hold backup {entry.backup_id}'s rows (taken at {taken}), not the start "
                f"mark's ({mark.taken_at.isoformat()}): compared with the backup only"
            )
        return Verification(
            record_counts_match=counts_ok,
            source_comparison="skipped",
            sample_verification="passed" if sums_ok else "failed",
            checks=checks,
            warnings=warnings,
        )
