"""Point-in-time recovery: the tables in scope return to their content at ``restore_to``.

The strategy knows no database: it asks the target's engine for its recovery mechanism
(:meth:`~sensei_airflow.engines.base.Engine.point_in_time`, configured by the manifest's
``rollback.point_in_time`` block) and hands it the tables and the point. Where the migration
tool recorded a restore point when it started (:func:`mark_migration_start`), a rollback to
the migration's ``started_at`` uses that mark instead of a timestamp. Recovered to the start mark
itself, the tables in scope must also match the mark's row counts and checksums exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines.base import (
    Engine,
    PointInTimePlan,
    PointInTimeRecovery,
    PointInTimeRefused,
    RecoveryTarget,
)
from sensei_airflow.manifest import Manifest, Strategy, TableMapping
from sensei_airflow.mark import StartMark, load_mark
from sensei_airflow.plan import RefusedError, RollbackPlan
from sensei_airflow.start import migration_start
from sensei_airflow.state import StateStore, utcnow
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy
from sensei_airflow.verify import TableCheck, Verification


@dataclass(frozen=True)
class RestorePoint:
    """A named mark the migration tool made on the target as the migration started."""

    name: str
    position: str | None
    recorded_at: datetime


def restore_point_name(manifest: Manifest, at: datetime) -> str:
    """``<prefix>_<UTC time>``: unique, since recovery stops at the *first* mark of a name in the WAL."""
    prefix = manifest.rollback.point_in_time.restore_point or f"sensei_{manifest.id}"
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix[: 62 - len(stamp)]}_{stamp}"


def record_restore_point(
    state: StateStore, manifest: Manifest, target_identity: str, point: RestorePoint
) -> None:
    with state.transaction() as cur:
        cur.execute(
            """
            INSERT INTO sensei.pitr_restore_points
                (migration_id, target_identity, name, position, recorded_at)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (migration_id, target_identity) DO UPDATE
            SET name = EXCLUDED.name, position = EXCLUDED.position, recorded_at = EXCLUDED.recorded_at
            """,
            (manifest.id, target_identity, point.name, point.position, point.recorded_at),
        )


def recorded_restore_point(
    state: StateStore, manifest: Manifest, target_identity: str
) -> RestorePoint | None:
    with state.transaction() as cur:
        cur.execute(
            "SELECT name, position, recorded_at FROM sensei.pitr_restore_points "
            "WHERE migration_id = %s AND target_identity = %s",
            (manifest.id, target_identity),
        )
        row = cur.fetchone()
    return RestorePoint(*row) if row else None


def mark_migration_start(manifest: Manifest, target: Engine, state: StateStore) -> RestorePoint | None:
    """Record a restore point on the target as the migration starts, where its engine can.

    Called by the migration tool before its first write. Returns None (and records nothing)
    when the target has no point-in-time recovery configured or no such marks.
    """
    try:
        recovery = target.point_in_time(manifest.rollback.point_in_time)
    except PointInTimeRefused:
        return None
    identity = target.identity()
    earlier = recorded_restore_point(state, manifest, identity)
    if earlier is not None:  # a re-run of the migration: its start is the first mark, keep it
        return earlier
    now = utcnow()
    name = restore_point_name(manifest, now)
    position = recovery.create_restore_point(name)
    if position is None:
        return None
    point = RestorePoint(name=name, position=position, recorded_at=now)
    record_restore_point(state, manifest, identity, point)
    return point


class PointInTimeStrategy(RollbackStrategy):
    """Restore the tables in scope as they were at ``restore_to`` (default: the migration's start)."""

    name = Strategy.POINT_IN_TIME

    @cached_property
    def recovery(self) -> PointInTimeRecovery:
        try:
            return self.target.point_in_time(self.manifest.rollback.point_in_time)
        except PointInTimeRefused as exc:
            raise RefusedError(str(exc)) from None

    def recovery_target(self, restore_to: datetime | None) -> RecoveryTarget:
        """The point to recover to; the recorded restore point when restoring to the migration's start."""
        start = migration_start(self.manifest, self.state)
        point = restore_to or start
        try:
            target = RecoveryTarget(time=point)
        except PointInTimeRefused as exc:
            raise RefusedError(str(exc)) from None
        settings = self.manifest.rollback.point_in_time
        if settings.prefer_restore_point and point == start:
            started = load_mark(self.state, self.manifest.id)
            if (
                started is not None
                and started.target_identity == self.target.identity()
                and (started.restore_point or started.position)
            ):
                return RecoveryTarget(
                    time=point, restore_point=started.restore_point, position=started.position
                )
            mark = recorded_restore_point(self.state, self.manifest, self.target.identity())
            if mark is not None:
                return RecoveryTarget(time=point, restore_point=mark.name, position=mark.position)
        return target

    def whole_database_allowed(self, scope: str) -> bool:
        """Scope ``all`` of a target that holds only this migration, with the state store elsewhere."""
        if scope != "all" or not self.manifest.rollback.point_in_time.target_holds_only_this_migration:
            return False
        server = self.target.identity().rsplit("/", 1)[0]
        return self.state.identity().rsplit("/", 1)[0] != server

    def _plan(self, tables: list[str], target: RecoveryTarget, scope: str) -> PointInTimePlan:
        try:
            return self.recovery.assess(tables, target, whole_database=self.whole_database_allowed(scope))
        except PointInTimeRefused as exc:
            raise RefusedError(str(exc)) from None

    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        from sensei_airflow.windows import describe, migration_windows

        tables = [self.target.qualify(t.target) for t in scope]
        target = self.recovery_target(request.restore_to)
        planned = self._plan(tables, target, request.scope)
        warnings = list(planned.warnings)
        if target.restore_point:
            warnings.append(f"recovering to {target.describe()}, recorded as the migration started")
        now = utcnow()
        windows = migration_windows(
            self.manifest,
            self.target,
            now=now,
            tables=planned.tables,
            start=migration_start(self.manifest, self.state),
        )
        warnings += [describe(w, now) for w in windows]
        return Assessment(
            tables=planned.tables,
            rows=self.target.row_counts(planned.tables),
            statements=planned.steps,
            warnings=warnings,
            detail={"path": planned.path, **planned.detail},
        )

    def _restore_to(self, plan: RollbackPlan) -> datetime:
        return (
            datetime.fromisoformat(plan.restore_to)
            if plan.restore_to
            else migration_start(self.manifest, self.state)
        )

    def execute(self, plan: RollbackPlan) -> Execution:
        # Assess again: the archive, the backups and the foreign keys may have changed since.
        self.recovery.rollback_id = plan.rollback_id  # so a retry recognises this rollback's own work
        target = self.recovery_target(self._restore_to(plan))
        planned = self._plan(plan.table_names, target, str(plan.scope.get("scope", "all")))
        try:
            outcome = self.recovery.restore(planned, target)
        except PointInTimeRefused as exc:
            raise RefusedError(str(exc)) from None
        return Execution(
            statements=outcome.statements,
            rows_affected=outcome.rows_restored,
            detail={"restored_to": target.describe(), **outcome.detail},
        )

    def _executed(self, plan: RollbackPlan) -> dict[str, Any] | None:
        """The detail of this rollback's execute event in the audit trail (rows restored, path)."""
        from sensei_airflow.audit import AuditTrail

        for event in reversed(AuditTrail(self.state).events(plan.rollback_id)):
            if event.get("step") == "execute" and event.get("action") == "executed":
                detail: dict[str, Any] = event.get("detail", {})
                return detail
        return None

    def _mark_recovered(self, plan: RollbackPlan) -> StartMark | None:
        """The start mark, when this rollback recovered to its very moment (else None).

        Its restore point, else its position, else its time: the same point the recovery target
        was chosen by. Only then must the tables equal the mark's rows; another point
        legitimately holds other rows.
        """
        mark = load_mark(self.state, self.manifest.id)
        if mark is None or mark.target_identity != self.target.identity():
            return None
        target = self.recovery_target(self._restore_to(plan))
        if target.restore_point is not None:
            return mark if target.restore_point == mark.restore_point else None
        if target.position is not None:
            return mark if target.position == mark.position else None
        return mark if target.time == mark.taken_at else None

    def verify(self, plan: RollbackPlan) -> Verification:
        """The tables in scope hold what was recovered (and, recovered to the start mark, exactly the mark's
        rows); on the table path, the others are untouched."""
        executed = self._executed(plan)
        if executed is None:
            checks = [
                TableCheck(table=t, check="restored rows recorded by execute", ok=False)
                for t in plan.table_names
            ]
            return Verification(record_counts_match=False, checks=checks)
        restored = {t: int(n) for t, n in executed.get("rows_affected", {}).items()}
        # a whole-cluster restore rewinds every table by design: only the table path leaves others untouched
        checks = self.scope_count_checks(
            plan, "rows as recovered at restore_to", restored, others=executed.get("path") != "database"
        )
        # what the engine knows beyond counts (e.g. that the live RDS instance is the restored one):
        # counts read through the live name mean nothing if another instance answers there
        checks += [
            TableCheck(table=c.what, check=c.check, expected=c.expected, actual=c.actual, ok=c.ok)
            for c in self.recovery.verify_restore(executed)
        ]
        mark = self._mark_recovered(plan)
        if mark is None:
            return Verification(
                record_counts_match=all(c.ok for c in checks),
                source_comparison="skipped",
                sample_verification="skipped",
                checks=checks,
            )
        marked = self.mark_checks(plan, mark)
        return Verification(
            record_counts_match=all(c.ok for c in [*checks, *marked.counts]),
            source_comparison="skipped",
            sample_verification=marked.checksum_outcome,
            checks=[*checks, *marked.checks],
            warnings=marked.warnings,
        )
