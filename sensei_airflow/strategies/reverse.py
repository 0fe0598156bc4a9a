"""Reverse migration: copy the data back from the target to the source through the inverse transforms.

The source is made equal to ``inverse(target)``, table by table: rows deleted on the target
are deleted on the source, changed rows updated, new rows inserted (upsert by key). The
inverse expressions run inside the target's ``SELECT``; rows land in staging tables on the
source chunk by chunk (each chunk a key range, committed with its checkpoint), and one
source transaction applies every table at the end, so a failure at any point leaves the
source as it was and a retry resumes from the last staged chunk. In the runbook the chunks are
staged by several mapped tasks first (:meth:`ReverseMigrationStrategy.staging_groups`,
:meth:`ReverseMigrationStrategy.stage`), spread over the executor's workers, and the apply task
finds them staged (ADR 0208).

Assess refuses, before anything is written, when a column in scope has no inverse, the
source cannot be written, a key is missing, or a mapping does not round-trip on a sample of
the target's rows (inverse then forward must give the target value back). The plan says, per
table, how many source rows the apply will insert, update and delete, counted without writing
(:func:`sensei_airflow.verify.count_changes`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines import Engine, UnsupportedEngine, get_engine
from sensei_airflow.engines.base import ReverseTable
from sensei_airflow.manifest import Manifest, Strategy, TableMapping
from sensei_airflow.names import format_name
from sensei_airflow.plan import RefusedError, RollbackPlan, check_names, dependency_order
from sensei_airflow.state import StateStore
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy
from sensei_airflow.transforms import column_plan, irreversible_columns, key_is_copied
from sensei_airflow.verify import TableCheck, Verification, compare_table, comparison_verification

#: rows of the target read for the round-trip proof, per table.
PROOF_ROWS = 1000
#: keys compared column by column in verify, per table.
SAMPLE_KEYS = 200
#: rows fetched (both sides) to classify the differing key ranges of one table in the plan.
CHANGE_ROWS = 200_000
#: staging tasks of a reverse migration when ``[sensei] reverse_staging_tasks`` is not set.
DEFAULT_STAGING_TASKS = 4


def _setting(name: str, fallback: int) -> int:
    try:
        from airflow.sdk import conf

        return conf.getint("sensei", name, fallback=fallback)
    except Exception:  # outside Airflow (benchmarks, scripts)
        return fallback


class ReverseMigrationStrategy(RollbackStrategy):
    name = Strategy.REVERSE_MIGRATION
    #: the source is made equal to the inverse of the target.
    written_sides = ("target", "source")

    @cached_property
    def source(self) -> Engine:
        return get_engine(self.manifest.source.conn_id)

    @cached_property
    def writer(self) -> Any:
        writer = self.source.reverse_writer(chunk_rows=_setting("reverse_chunk_rows", 100_000))
        writer.bulk_rows = _setting("reverse_bulk_rows", writer.bulk_rows)
        return writer

    # -- resolving tables --------------------------------------------------------------------
    def resolve(self, table: TableMapping) -> Any:
        """The table's columns, types, inverse expressions and keys, checked against both catalogs.

        :raises RefusedError: for a missing table, column or key.
        """
        source_types = self.writer.column_types(table.source)
        if not source_types:
            raise RefusedError(
                f"source table {table.source} does not exist on {self.manifest.source.conn_id}"
            )
        target_types = self.target.reverse_column_types(table.target)
        if not target_types:
            raise RefusedError(
                f"target table {table.target} does not exist on {self.manifest.target.conn_id}"
            )
        # the manifest writes names (names.py); each catalog answers with exact names
        source_name, target_name = self.source.column_name, self.target.column_name
        plan = column_plan(table, [format_name([c]) for c in source_types], self.target.reverse_quote_column)
        missing_source = [i.source for i in plan.inverses if source_name(i.source) not in source_types]
        if missing_source:
            raise RefusedError(f"source table {table.source} has no column {missing_source[0]}")
        missing_target = [f.target for f in plan.forwards if target_name(f.target) not in target_types]
        if missing_target:
            raise RefusedError(f"target table {table.target} has no column {missing_target[0]}")
        missing_key = [k for k in plan.target_key if target_name(k) not in target_types]
        if missing_key:
            raise RefusedError(f"key column {missing_key[0]} is missing from target table {table.target}")
        transformed = key_is_copied(table)
        if transformed:
            raise RefusedError(
                f"key column {table.target}.{transformed[0]} is transformed: reverse migration needs the key "
                "copied as is (or cast); use backup_restore or point_in_time"
            )
        source_key = [source_name(k) for k in plan.source_key]
        if set(source_key) not in self.writer.unique_keys(table.source):
            raise RefusedError(
                f"source table {table.source} has no primary key or unique index on "
                f"({', '.join(plan.source_key)}): rows cannot be matched; add one or use backup_restore"
            )
        columns = [source_name(i.source) for i in plan.inverses]
        return (
            ReverseTable(
                source=self.source.qualify(table.source),
                target=self.target.qualify(table.target),
                columns=columns,
                types=[source_types[c] for c in columns],
                inverses=[self.target.transpile(i.inverse) for i in plan.inverses],
                source_key=source_key,
                target_key=plan.target_key,
                key_types=[source_types[k] for k in source_key],
                written_columns=tuple(i.source for i in plan.inverses),
            ),
            plan,
            {f.target: target_types[target_name(f.target)] for f in plan.forwards},
        )

    def _parents_first(self, tables: list[TableMapping]) -> list[TableMapping]:
        by_source = {self.source.qualify(t.source): t for t in tables}
        order = dependency_order(list(by_source), self.source.foreign_keys())
        return [by_source[name] for name in order]

    # -- assess ------------------------------------------------------------------------------
    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        irreversible = [c for t in scope for c in irreversible_columns(t)]
        if irreversible:
            raise RefusedError(
                f"column {irreversible[0]} is not reversible: reverse migration cannot rebuild the source "
                "value; use backup_restore or point_in_time"
            )
        try:
            self.source.identity()
        except UnsupportedEngine as exc:
            raise RefusedError(f"source {self.manifest.source.conn_id}: {exc}") from None
        try:
            writer = self.writer
        except NotImplementedError as exc:
            raise RefusedError(f"source {self.manifest.source.conn_id}: {exc}") from None
        check_names(self.source, scope, side="source")
        ordered = self._parents_first(scope)
        missing = [
            t.source for t in ordered if t.source not in writer.existing_tables([t.source for t in ordered])
        ]
        if missing:
            raise RefusedError(f"source table {missing[0]} does not exist on {self.manifest.source.conn_id}")
        problems = writer.writability([t.source for t in ordered])
        if problems:
            raise RefusedError(
                f"the source is not writable: {'; '.join(problems)}; reverse migration writes it back"
            )
        resolved = []
        proofs: dict[str, int] = {}
        changes: dict[str, dict[str, Any]] = {}
        for table in ordered:
            spec, plan, target_types = self.resolve(table)
            reader = self.target.reverse_reader(spec)
            failure, checked = reader.round_trip(plan.forwards, target_types, PROOF_ROWS)
            if failure:
                raise RefusedError(
                    f"{table.target}.{failure['column']} does not round-trip: key {failure['key']} holds "
                    f"{failure['target']!r}, inverse then forward gives {failure['round_trip']!r}; fix the "
                    "mapping's inverse or use backup_restore or point_in_time"
                )
            proofs[spec.target] = checked
            changes[spec.target] = self.changes(spec, reader)
            resolved.append(spec)
        statements = [
            f"-- {spec.target} -> {spec.source}: {_describe(changes[spec.target])}; COPY (SELECT "  # noqa: S608 - a comment
            f"{', '.join(spec.inverses)} FROM {spec.target}) into staging, then upsert by "
            f"({', '.join(spec.source_key)}) and delete the rows gone from the target"
            for spec in resolved
        ]
        warnings = []
        for table, spec in zip(ordered, resolved, strict=True):
            unmapped = [c for c in writer.column_types(table.source) if c not in spec.columns]
            if unmapped:
                warnings.append(
                    f"{table.source}: columns {', '.join(unmapped)} were not migrated; updated rows keep "
                    "their values, inserted rows get the column defaults"
                )
        return Assessment(
            tables=[spec.target for spec in resolved],
            rows=self.target.row_counts([spec.target for spec in resolved]),
            statements=statements,
            warnings=warnings,
            detail={
                "round_trip_rows_checked": proofs,
                "tables": [spec.as_json() for spec in resolved],
            },
            changes=changes,
        )

    def changes(self, spec: Any, reader: Any) -> dict[str, Any]:
        """Source rows the apply will insert, update and delete for one table, counted without writing.

        The source as it is against the inverse of the target, as verify compares them: equal key
        ranges are dropped by in-database checksums, differing ones bisected and classified from
        (key, row hash) lists, within :data:`CHANGE_ROWS` rows fetched; tables over
        ``[sensei] reverse_plan_max_rows`` rows (a scan of each side) are not counted.
        """
        from sensei_airflow.verify import KeyRange, count_changes

        source_side = self.writer.source_reader(spec)
        if getattr(source_side, "hash_family", None) != getattr(reader, "hash_family", None) or not hasattr(
            reader, "row_hashes"
        ):
            return {
                "why": "the target's engine hashes rows differently from the source's; verify compares them"
            }
        limit = _setting("reverse_plan_max_rows", 10_000_000)
        largest = max(source_side.count_rows(KeyRange()), reader.count_rows(KeyRange()))
        if largest > limit:
            return {
                "why": f"{largest} rows is over [sensei] reverse_plan_max_rows ({limit}); verify compares them after"
            }
        return count_changes(source_side, reader, max_rows=CHANGE_ROWS).as_json()

    # -- execute -----------------------------------------------------------------------------
    def _specs(self, plan: RollbackPlan) -> list[Any]:
        by_target = {self.target.qualify(t.target): t for t in self.manifest.tables}
        tables = self._parents_first([by_target[name] for name in plan.table_names])
        return [self.resolve(t)[0] for t in tables]

    # -- staging over several tasks (ADR 0208) ------------------------------------------------
    def staging_groups(self, plan: RollbackPlan, tasks: int | None = None) -> list[dict[str, int]]:
        """Cut the tables into chunks (checkpointed on the source) and share them out.

        :param tasks: how many staging tasks at most (default ``[sensei] reverse_staging_tasks``).
        :returns: one small XCom per staging task, ``{"group": i, "groups": n}``: never more groups
            than chunks, at least one (it does nothing when the apply already committed).
        """
        wanted = tasks if tasks is not None else _setting("reverse_staging_tasks", DEFAULT_STAGING_TASKS)
        stager = self.source.reverse_stager(self.writer)
        if stager is None or self.writer.applied_result(plan.rollback_id) is not None:
            return [{"group": 0, "groups": 1}]
        specs = self._specs(plan)
        readers = {spec.source: self.target.reverse_reader(spec) for spec in specs}
        if self.writer.loads_directly(specs, readers):  # nothing to stage (ADR 0200)
            return [{"group": 0, "groups": 1}]
        chunks = stager.plan(plan.rollback_id, specs, readers)
        groups = max(1, min(wanted, chunks))
        return [{"group": i, "groups": groups} for i in range(groups)]

    def stage(self, plan: RollbackPlan, group: int, groups: int) -> dict[str, Any]:
        """Stage one group's chunks into the source's staging tables (the apply comes after).

        :returns: per target table, the chunks staged, found unchanged, and resumed.
        """
        stager = self.source.reverse_stager(self.writer)
        if stager is None:
            return {"staged_in": "the apply task (the source engine stages there)"}
        if self.writer.applied_result(plan.rollback_id) is not None:
            return {"resumed": "the apply had already committed"}
        specs = self._specs(plan)
        readers = {spec.source: self.target.reverse_reader(spec) for spec in specs}
        if self.writer.loads_directly(specs, readers):
            return {
                "staged_in": "the apply task: the source tables are empty, so it copies each key range "
                "from the target straight into them"
            }
        chunks = stager.stage(
            plan.rollback_id, specs, readers, group=group, groups=groups, migration_id=self.manifest.id
        )
        return {"group": group, "groups": groups, "chunks": chunks}

    def execute(self, plan: RollbackPlan) -> Execution:
        writer = self.writer
        done = writer.applied_result(plan.rollback_id)
        if done is not None:
            cleanup = self.drop_leftover_staging(plan.rollback_id)
            return self._execution(done, {"resumed": "the apply had already committed", **cleanup})
        specs = self._specs(plan)
        readers = {spec.source: self.target.reverse_reader(spec) for spec in specs}
        applied, staging = writer.migrate(plan.rollback_id, specs, readers, migration_id=self.manifest.id)
        result = {name: vars(r) for name, r in applied.items()}
        return self._execution(result, {"chunks": staging, **self.drop_leftover_staging(plan.rollback_id)})

    def drop_leftover_staging(self, rollback_id: str) -> dict[str, Any]:
        """After the apply committed: drop the staging earlier runs of this migration left behind.

        Only runs that no longer hold the migration's lock (crashed, stopped) lose theirs; this
        run's own staging went with its apply. A failure here does not undo the rollback: it is
        reported, and the staging stays listed by ``sensei migration status``.
        """
        try:
            leftovers = [
                s
                for s in leftover_staging(self.manifest, self.state)
                if not s.holds_lock or s.rollback_id == rollback_id
            ]
            dropped = self.writer.drop_leftover_staging(leftovers)
        except Exception as exc:
            return {"staging_cleanup_error": f"{type(exc).__name__}: {exc}"}
        return {"staging_dropped": dropped} if dropped else {}

    def _execution(self, result: dict[str, Any], extra: dict[str, Any]) -> Execution:
        by_target = {
            self.source.qualify(t.source): self.target.qualify(t.target) for t in self.manifest.tables
        }
        rows = {
            by_target.get(source, source): int(r["inserted"]) + int(r["updated"]) + int(r["deleted"])
            for source, r in result.items()
        }
        return Execution(
            statements=[f"-- reverse migration of {name}" for name in rows],
            rows_affected=rows,
            detail={"applied": result, **extra},
        )

    # -- verify ------------------------------------------------------------------------------
    def verify(self, plan: RollbackPlan) -> Verification:
        comparisons = []
        extra: list[TableCheck] = []
        for spec in self._specs(plan):
            source_side = self.writer.source_reader(spec)
            expected = self.target.reverse_reader(spec)
            comparable = getattr(source_side, "hash_family", None) == getattr(expected, "hash_family", None)
            comparisons.append(
                compare_table(
                    spec.source, source_side, expected, sample_size=SAMPLE_KEYS, checksums=comparable
                )
            )
            for sequence, last, highest in self.writer.sequence_positions(spec):
                extra.append(
                    TableCheck(
                        table=spec.source,
                        check=f"sequence {sequence} past the highest key",
                        expected=f">= {highest}",
                        actual=last,
                        ok=last >= highest,
                    )
                )
        return comparison_verification(comparisons, extra)


def _describe(changes: dict[str, Any]) -> str:
    if "insert" not in changes:
        return f"source changes not counted ({changes['why']})"
    counts = f"insert {changes['insert']}, update {changes['update']}, delete {changes['delete']} source rows"
    return counts if changes["exact"] else f"at least {counts}"


def leftover_staging(manifest: Manifest, state: StateStore) -> list[Any]:
    """Staging tables of this migration's reverse migrations on its source, each run's marked
    ``holds_lock`` when that run holds the migration's lock now (it is running).

    :returns: :class:`~sensei_airflow.engines.postgres.reverse.StagingLeftover` items (empty for a
        source engine without reverse staging).
    """
    from sensei_airflow.lock import MigrationLocks

    try:
        writer = get_engine(manifest.source.conn_id).reverse_writer(chunk_rows=1)
    except NotImplementedError:
        return []
    found = [s for s in writer.leftover_staging() if s.migration_id == manifest.id]
    if not found:
        return []
    holder = MigrationLocks(state).holder(manifest.id)
    for leftover in found:
        leftover.holds_lock = holder is not None and holder.rollback_id == leftover.rollback_id
    return found
