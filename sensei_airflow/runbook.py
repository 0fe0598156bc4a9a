"""The runbook's decisions, as plain Python: assess a request, and whether (and how) to fall back.

The operators in :mod:`sensei_airflow.operators` call these; nothing here knows Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sensei_airflow.conf import InvalidRequest, RollbackRequest
from sensei_airflow.engines import UnsupportedEngine, get_engine
from sensei_airflow.lock import LockHeld, MigrationLocks, release_command
from sensei_airflow.manifest import Manifest, ManifestSet, Strategy
from sensei_airflow.plan import (
    PlannedTable,
    RefusedError,
    RollbackPlan,
    check_names,
    resolve_scope,
    strategy_candidates,
)
from sensei_airflow.start import NoStart, migration_start
from sensei_airflow.state import StateStore
from sensei_airflow.strategies import RollbackStrategy, strategy_class

log = logging.getLogger(__name__)

#: how long a rollback's lock lasts unless renewed: a crashed run holds it no longer.
DEFAULT_LOCK_TTL = timedelta(hours=6)


@dataclass(frozen=True)
class RunContext:
    """Who runs which rollback, and when."""

    rollback_id: str
    actor: str | None
    now: datetime


def parse_request(conf: Mapping[str, Any]) -> RollbackRequest:
    try:
        return RollbackRequest.parse(conf)
    except InvalidRequest as exc:
        raise RefusedError(f"invalid rollback request: {exc}") from None


def find_manifest(manifests: ManifestSet, migration_id: str) -> Manifest:
    try:
        return manifests.get(migration_id)
    except LookupError as exc:
        raise RefusedError(str(exc)) from None


def check_window(manifest: Manifest, now: datetime, start: datetime) -> None:
    closes = manifest.window_closes_at(start)
    if closes is not None and now > closes:
        raise RefusedError(
            f"the rollback window of {manifest.id} closed at {closes.isoformat()} "
            f"({manifest.rollback.rollback_window_hours:g} h after the migration began at "
            f"{start.isoformat()}); widen rollback.rollback_window_hours in the manifest "
            "if a rollback is still safe"
        )


def assess(
    manifest: Manifest,
    request: RollbackRequest,
    run: RunContext,
    lock_ttl: timedelta = DEFAULT_LOCK_TTL,
    *,
    lock_token: int | None = None,
) -> RollbackPlan:
    """Validate everything and decide the plan, or raise ``RefusedError`` before anything changes.

    A rollback (not a dry run) takes the migration's lock for ``lock_ttl``: a second rollback of
    the same migration is refused while the first holds it. The plan carries the lock's fencing
    token, which every later change checks (:mod:`sensei_airflow.lock`).

    :param lock_token: the run already holds the lock with this token (the fallback, assessed
        again inside its fence): it is not taken again.
    """
    state = StateStore(manifest.state.conn_id)
    try:
        target = get_engine(manifest.target.conn_id)
    except UnsupportedEngine as exc:
        raise RefusedError(f"target {manifest.target.conn_id}: {exc}") from None
    if state.identity() == target.identity():
        raise RefusedError(
            f"the state store ({manifest.state.conn_id}) is the target database itself: the audit trail "
            "would be rolled back with it; point state at another database"
        )
    try:
        start = migration_start(manifest, state)
    except NoStart as exc:
        raise RefusedError(str(exc)) from None
    check_window(manifest, run.now, start)
    if not request.dry_run and lock_token is None:
        # before planning: the plan reads the target, whose tables a running rollback may hold
        refuse_while_locked(state, manifest.id, run.rollback_id)
    scope = resolve_scope(manifest, request)
    check_names(target, scope)

    refusals: list[str] = []
    notes: list[str] = []
    chosen: RollbackStrategy | None = None
    for candidate in strategy_candidates(manifest, request):
        try:
            strategy = strategy_class(candidate)(manifest, state)
            assessment = strategy.assess(scope, request)
        except RefusedError as exc:
            refusals.append(f"{candidate}: {exc}")
            notes.append(f"{candidate} cannot apply: {exc}")
            continue
        chosen = strategy
        break
    if chosen is None:
        if len(refusals) == 1:
            raise RefusedError(refusals[0])
        raise RefusedError("no strategy can apply: " + " | ".join(refusals))
    if request.strategy == "auto":
        notes.append(f"auto: chose {chosen.name} (preferred: {manifest.rollback.preferred_strategy})")

    by_target = {target.qualify(t.target): t for t in scope}
    planned = [
        PlannedTable(
            target=name,
            source=by_target[name].source,
            phase=manifest.phase_of(by_target[name]),
            rows=assessment.rows.get(name),
            changes=assessment.changes.get(name),
        )
        for name in assessment.tables
    ]
    candidates = strategy_candidates(manifest, request)
    later = candidates[candidates.index(chosen.name) + 1 :]
    if later:
        notes.append(
            f"fallback: {later[0]} runs if {chosen.name} fails after its retries without having "
            "changed the target"
        )
    restore_to = request.restore_to or start
    warnings = list(assessment.warnings)
    if request.dry_run or Strategy.REVERSE_MIGRATION in (chosen.name, *later[:1]):
        # only where the source matters: a truncate must not wait on a source that is gone
        warnings += staging_warnings(manifest, state)
    if lock_token is None:
        lock_token, lock_notes = take_lock(
            state, manifest.id, run.rollback_id, lock_ttl, dry_run=request.dry_run, warnings=warnings
        )
        notes += lock_notes
    return RollbackPlan(
        migration_id=manifest.id,
        rollback_id=run.rollback_id,
        strategy=chosen.name,
        requested_strategy=request.strategy,
        fallback=later[0] if later else None,
        scope={"scope": request.scope, **({"phase": request.phase} if request.scope == "phase" else {})},
        tables=planned,
        restore_to=restore_to.isoformat() if chosen.name == "point_in_time" else None,
        backup_id=request.backup_id or assessment.detail.get("backup_id"),
        verify_after=manifest.rollback.verify_rollback
        if request.verify_after is None
        else request.verify_after,
        dry_run=request.dry_run,
        statements=assessment.statements,
        warnings=warnings,
        notes=notes,
        counts_before=target.row_counts(target.user_tables()),
        triggered_by=run.actor,
        reason=request.reason,
        started_at=run.now.isoformat(),
        lock_token=lock_token,
    )


def take_lock(
    state: StateStore,
    migration_id: str,
    rollback_id: str,
    ttl: timedelta,
    *,
    dry_run: bool,
    warnings: list[str],
) -> tuple[int | None, list[str]]:
    """Take the migration's rollback lock (dry runs only look); returns its token and notes for the plan.

    :raises RefusedError: naming the running rollback, and how to clear a crashed run's lock, when
        another run holds the lock.
    """
    locks = MigrationLocks(state)
    if dry_run:
        holder = locks.holder(migration_id)
        if holder is not None and holder.rollback_id != rollback_id:
            warnings.append(
                f"rollback {holder.rollback_id} holds the lock of {migration_id} now: this plan may be "
                "outdated when it ends"
            )
        return None, []
    try:
        acquired = locks.acquire(migration_id, rollback_id, ttl)
    except LockHeld as exc:
        raise lock_held(exc) from None
    stale = acquired.took_over
    if stale is None:
        return acquired.lock.token, []
    expired = stale.expires_at.isoformat()
    return acquired.lock.token, [
        f"took over the lock of rollback {stale.rollback_id}, which expired at {expired}"
    ]


def refuse_while_locked(state: StateStore, migration_id: str, rollback_id: str) -> None:
    """Refuse at once while another run holds a live lock of the migration (the atomic check is
    :func:`take_lock`'s, after planning; this one spares a plan that would wait on that run's work)."""
    holder = MigrationLocks(state).holder(migration_id)
    if holder is not None and holder.rollback_id != rollback_id and not holder.expired:
        raise lock_held(LockHeld(holder))


def lock_held(exc: LockHeld) -> RefusedError:
    """The one-line refusal while another run holds the lock: who, since when, and how to clear it."""
    return RefusedError(
        f"{exc}; wait for it to end, or if its task died, clear its lock with "
        f"`{release_command(exc.lock.migration_id)}` (audited)"
    )


def staging_warnings(manifest: Manifest, state: StateStore) -> list[str]:
    """What crashed reverse migrations left in the source's staging schema, as plan warnings.

    Best effort: a source that cannot be asked (another engine, unreachable) gives none.
    """
    from sensei_airflow.strategies.reverse import leftover_staging

    try:
        found = leftover_staging(manifest, state)
    except Exception as exc:
        log.info("leftover staging of %s not checked: %s: %s", manifest.id, type(exc).__name__, exc)
        return []
    where = f"the source {manifest.source.conn_id} (schema sensei_staging)"
    return [leftover.describe(where) for leftover in found]


class NoFallback(Exception):
    """The fallback does not run, and that is no failure (the preferred strategy succeeded, ...)."""


class FallbackRefused(RefusedError):
    """The preferred strategy failed after changing the target: the fallback must not run on it.

    :param changed: the target tables whose fingerprints differ from those taken at halt.
    """

    def __init__(self, message: str, changed: list[str]) -> None:
        super().__init__(message)
        self.changed = changed


def fallback_reason(
    plan: RollbackPlan,
    *,
    halted: Mapping[str, Any] | None,
    primary_result: Any,
    primary_error: Mapping[str, Any] | None,
    fingerprints_now: Callable[[], Mapping[str, Any]],
) -> str:
    """Why the fallback runs (ADR 0403): the preferred strategy failed after its retries and the target
    tables' fingerprints still equal those taken at halt.

    :param halted: the halt step's result (with the fingerprints at halt); None if it did not finish.
    :param primary_result: the preferred strategy's execute result (None unless it succeeded).
    :param primary_error: its last try's error record, if it failed.
    :param fingerprints_now: reads the target tables' fingerprints now.
    :raises NoFallback: when the fallback has nothing to do.
    :raises FallbackRefused: when the target changed.
    """
    if plan.requested_strategy != "auto" or plan.fallback is None:
        raise NoFallback("no fallback: the strategy was chosen explicitly or none is set")
    if not halted:
        raise NoFallback("halt did not complete: nothing was executed")
    if primary_result:
        raise NoFallback(f"{plan.strategy} succeeded")
    if not primary_error:
        raise NoFallback(f"{plan.strategy} did not run")
    now = fingerprints_now()
    changed = sorted(t for t in plan.table_names if now.get(t) != halted["fingerprints"].get(t))
    if changed:
        raise FallbackRefused(
            f"{plan.strategy} failed ({primary_error['error']}) after changing {', '.join(changed)}: the "
            f"fallback {plan.fallback} is not run on a half-changed target; investigate first",
            changed,
        )
    return f"{plan.strategy} failed after its retries without changing the target: {primary_error['error']}"


def plan_fallback(
    manifest: Manifest,
    request: RollbackRequest,
    run: RunContext,
    plan: RollbackPlan,
    why: str,
    lock_ttl: timedelta,
) -> RollbackPlan:
    """Assess the fallback strategy afresh (it may refuse too), under the lock the run already holds.

    :param plan: the preferred strategy's plan.
    :param why: :func:`fallback_reason`'s answer, kept in the plan's notes.
    """
    assert plan.fallback is not None
    request = request.model_copy(update={"strategy": plan.fallback.value})
    fallback = assess(manifest, request, run, lock_ttl, lock_token=plan.lock_token)
    return fallback.model_copy(
        update={
            "requested_strategy": "auto",
            "notes": [*plan.notes, f"fell back to {fallback.strategy}: {why}"],
            "started_at": plan.started_at,
        }
    )
