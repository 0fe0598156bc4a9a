"""Rollback windows: until when each table of a migration can still be rolled back, by each strategy.

Every strategy is bounded by the manifest's ``rollback_window_hours``; on top of that,
``point_in_time`` is bounded by what the target's recovery mechanism retains (WAL archive and
base backups, Time Travel, undo, log backups: the engine says, through
:meth:`~sensei_airflow.engines.base.PointInTimeRecovery.windows`) and ``backup_restore`` by the
pre-migration backup's expiry. Assess shows these in the plan; the ``sensei_window_check`` DAG
warns a configurable time (``rollback.point_in_time.warn_before_hours``) before one closes,
through the manifest's notify channels, the audit trail and the task log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sensei_airflow.manifest import Manifest, Strategy

log = logging.getLogger(__name__)

WINDOW_CLOSING = "rollback.window_closing"


@dataclass(frozen=True)
class StrategyWindow:
    """Until when ``strategy`` can roll back ``table`` (None: every table) of a migration.

    ``closes_at`` None means nothing known bounds it; ``limit`` names what sets it.
    """

    migration_id: str
    strategy: Strategy
    table: str | None
    closes_at: datetime | None
    limit: str
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["strategy"] = self.strategy.value
        data["closes_at"] = self.closes_at.isoformat() if self.closes_at else None
        return data


def _earliest(*limits: tuple[datetime | None, str]) -> tuple[datetime | None, str]:
    known = [(at, why) for at, why in limits if at is not None]
    if not known:
        return None, "not bounded"
    return min(known, key=lambda item: item[0])


def migration_windows(
    manifest: Manifest,
    target: Any | None = None,
    *,
    now: datetime,
    tables: Sequence[str] | None = None,
    start: datetime | None = None,
    mark: Any | None = None,
) -> list[StrategyWindow]:
    """The windows of every strategy for ``manifest``, earliest closing first.

    :param target: the target's engine; without it (or when its recovery mechanism cannot be
        asked) the point_in_time window says why it is unknown.
    :param tables: the tables the point_in_time window is asked for (default: all the migration's).
    :param start: the migration's start (default: the manifest's ``started_at``).
    :param mark: the migration's start mark (:class:`sensei_airflow.mark.StartMark`), for the undo log's window.
    """
    rollback = manifest.rollback
    start = start or manifest.started_at
    if start is None:
        return []
    overall = (manifest.window_closes_at(start), f"rollback_window_hours ({rollback.rollback_window_hours:g} h)"
               if rollback.rollback_window_hours else "rollback_window_hours")  # fmt: skip
    windows: list[StrategyWindow] = []
    for strategy in (Strategy.TRUNCATE, Strategy.REVERSE_MIGRATION):
        windows.append(StrategyWindow(manifest.id, strategy, None, *_earliest(overall)))
    backup = rollback.pre_migration_backup
    if backup.enabled or rollback.backup_before_start:
        expiry = start + timedelta(days=backup.retention_days)
        closes, limit = _earliest(
            overall, (expiry, f"pre-migration backup retention ({backup.retention_days} d)")
        )
        windows.append(StrategyWindow(manifest.id, Strategy.BACKUP_RESTORE, None, closes, limit))
    windows.extend(_point_in_time_windows(manifest, target, tables, overall, start))
    if mark is not None and mark.undo_log_open:
        windows.append(_undo_log_window(manifest, target, mark, overall))
    return sorted(windows, key=lambda w: (w.closes_at is None, w.closes_at or now, w.strategy.value))


def _undo_log_window(
    manifest: Manifest, target: Any | None, mark: Any, overall: tuple[datetime | None, str]
) -> StrategyWindow:
    """The undo log lives for ``rollback_window_hours``; the limit says how much WAL it retains now."""
    closes, limit = _earliest(overall)
    if target is None:
        return StrategyWindow(manifest.id, Strategy.UNDO_LOG, None, closes, limit, error="target unavailable")
    try:
        held = target.undo_log_retained(mark.undo_log or {})
    except Exception as exc:
        return StrategyWindow(
            manifest.id, Strategy.UNDO_LOG, None, closes, limit, error=str(exc).splitlines()[0]
        )
    if held.get("exists") is False:
        return StrategyWindow(manifest.id, Strategy.UNDO_LOG, None, closes, limit, error="its slot is gone")
    if held.get("wal_status") == "lost":
        return StrategyWindow(manifest.id, Strategy.UNDO_LOG, None, closes, limit, error="its slot lost WAL")
    kept = held.get("retained_wal_bytes")
    if kept is not None:
        limit += f"; slot {held.get('slot')} retains {kept / 1048576:.1f} MiB of WAL"
    return StrategyWindow(manifest.id, Strategy.UNDO_LOG, None, closes, limit)


def _point_in_time_windows(
    manifest: Manifest,
    target: Any | None,
    tables: Sequence[str] | None,
    overall: tuple[datetime | None, str],
    start: datetime,
) -> list[StrategyWindow]:
    if target is None:
        return []
    try:
        recovery = target.point_in_time(manifest.rollback.point_in_time)
        names = list(tables) if tables is not None else [target.qualify(t.target) for t in manifest.tables]
        found = recovery.windows(names, start)
    except Exception as exc:  # no PITR configured, or the target / its archive cannot be reached now
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [StrategyWindow(manifest.id, Strategy.POINT_IN_TIME, None, None, "unknown", error=reason)]
    windows = []
    for window in found:
        closes, limit = _earliest(overall, (window.closes_at, f"{window.limit} ({window.mechanism})"))
        windows.append(StrategyWindow(manifest.id, Strategy.POINT_IN_TIME, window.table, closes, limit))
    return windows


def _span(delta: timedelta) -> str:
    hours = abs(delta.total_seconds()) / 3600
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


def describe(window: StrategyWindow, now: datetime) -> str:
    """One line for the plan, e.g. ``rollback window: truncate (all tables) open until ... (in 3.0 d)``."""
    what = f"{window.strategy.value} ({window.table or 'all tables'})"
    if window.error:
        return f"rollback window: {what} unknown: {window.error}"
    if window.closes_at is None:
        return f"rollback window: {what} not bounded ({window.limit})"
    if window.closes_at <= now:
        return (
            f"rollback window: {what} closed at {window.closes_at.isoformat()} "
            f"({_span(now - window.closes_at)} ago; {window.limit})"
        )
    return (
        f"rollback window: {what} open until {window.closes_at.isoformat()} "
        f"(in {_span(window.closes_at - now)}; {window.limit})"
    )


def closing_soon(
    windows: Iterable[StrategyWindow], now: datetime, warn_before: timedelta
) -> list[StrategyWindow]:
    """The windows still open that close within ``warn_before``."""
    return [w for w in windows if w.closes_at is not None and now < w.closes_at <= now + warn_before]


def check_all(manifests: Iterable[Manifest], *, now: datetime, run_id: str) -> list[dict[str, Any]]:
    """The scheduled check: for each migration, warn once per window about to close.

    Each warning goes to the manifest's notify channels (when any), the audit trail of the
    migration's state store, and the task log. A window already warned about is not warned
    again. Returns every window (as JSON), with ``warned`` set on those warned now.
    """
    from sensei_airflow.engines import get_engine
    from sensei_airflow.state import StateStore

    report: list[dict[str, Any]] = []
    for manifest in manifests:
        try:
            target = get_engine(manifest.target.conn_id)
        except Exception as exc:
            log.warning(
                "window check of %s: target %s unavailable: %s", manifest.id, manifest.target.conn_id, exc
            )
            target = None
        state = StateStore(manifest.state.conn_id)
        mark = _mark_of(manifest, state)
        start = mark.taken_at if mark is not None else manifest.started_at
        windows = migration_windows(manifest, target, now=now, start=start, mark=mark)
        warn_before = timedelta(hours=manifest.rollback.point_in_time.warn_before_hours)
        soon = closing_soon(windows, now, warn_before)
        closed_undo = _close_expired_undo_log(manifest, state, mark, now, start)
        fresh = _not_yet_warned(state, soon, now, run_id) if soon else []
        for window in fresh:
            _warn(manifest, state, window, now, run_id)
        for window in windows:
            if window.error:
                log.warning("window check of %s: %s", manifest.id, describe(window, now))
            report.append({**window.as_json(), "warned": window in fresh, "line": describe(window, now)})
        if closed_undo:
            report.append(
                {"migration_id": manifest.id, "strategy": Strategy.UNDO_LOG.value, "closed": closed_undo}
            )
    return report


def _mark_of(manifest: Manifest, state: Any) -> Any:
    from sensei_airflow.mark import load_mark

    try:
        return load_mark(state, manifest.id)
    except Exception as exc:  # the state store cannot be read now: the windows by started_at still show
        log.warning("window check of %s: start mark unreadable: %s", manifest.id, exc)
        return None


def _close_expired_undo_log(
    manifest: Manifest, state: Any, mark: Any, now: datetime, start: datetime | None
) -> list[str]:
    """Drop the undo log once its window has closed: a slot kept longer would hold WAL without bound."""
    from sensei_airflow.mark import close_undo_log

    if mark is None or not mark.undo_log_open:
        return []
    closes = manifest.window_closes_at(start)
    if closes is None or now <= closes:
        return []
    done = close_undo_log(manifest, state, mark, f"the rollback window closed at {closes.isoformat()}")
    log.warning(
        "%s: the undo log's window closed at %s: %s", manifest.id, closes.isoformat(), "; ".join(done)
    )
    return done


def _not_yet_warned(
    state: Any, windows: Sequence[StrategyWindow], now: datetime, run_id: str
) -> list[StrategyWindow]:
    fresh = []
    with state.transaction() as cur:
        for window in windows:
            cur.execute(
                "INSERT INTO sensei.window_warnings VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    window.migration_id,
                    window.strategy.value,
                    window.table or "*",
                    window.closes_at,
                    now,
                    run_id,
                ),
            )
            if cur.rowcount == 1:
                fresh.append(window)
    return fresh


def _warn(manifest: Manifest, state: Any, window: StrategyWindow, now: datetime, run_id: str) -> None:
    from sensei_airflow.audit import AuditEvent, AuditTrail

    line = describe(window, now)
    log.warning("%s: %s", manifest.id, line)
    deliveries: list[dict[str, Any]] = []
    if manifest.notify:
        from sensei_airflow.notify import RollbackEvent, notify_all

        event = RollbackEvent(
            event=WINDOW_CLOSING,
            migration_id=manifest.id,
            rollback_id=run_id,
            summary=f"{manifest.id}: {line}",
            detail=window.as_json(),
        )
        deliveries = [asdict(d) for d in notify_all(manifest.notify, event)]
    AuditTrail(state).append(
        AuditEvent(
            step="window_check",
            action="window_closing",
            migration_id=manifest.id,
            detail={"window": window.as_json(), "line": line, "notified": deliveries},
        )
    )
