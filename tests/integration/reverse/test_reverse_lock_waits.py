"""Every lock wait of a reverse migration is bounded: a lock held elsewhere fails the try, never hangs it.

The hang these tests guard against: the apply transaction holds the source tables' locks and
sits idle in transaction (after ``SELECT EXISTS (SELECT 1 FROM public.order_items)``) while the
stager waits, without any timeout, on a lock another session holds: a target table locked by a
migration or maintenance job, or the advisory lock that serialises the staging DDL. The try
must fail within the lock timeout, leave the source as it was, and the retry must resume.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.reverse.conftest import (
    SOURCE_ROWS,
    assert_source_is_inverse_of_target,
    change_target,
    make_plan,
    table_rows,
)

TABLES = ["crm.customers", "sales.orders", "sales.order_items"]


@pytest.fixture
def short_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    from sensei_airflow.engines.postgres import PostgresEngine
    from sensei_airflow.engines.postgres.reverse import PostgresReverseWriter

    monkeypatch.setattr(PostgresEngine, "lock_timeout", "500ms")
    monkeypatch.setattr(PostgresReverseWriter, "lock_timeout", "500ms")


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    strategy = ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))
    strategy.writer.chunk_rows = 200  # several chunks per table: the retry resumes mid-way
    return strategy


def _snapshot(databases: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: table_rows(databases, "source", sql) for t, sql in SOURCE_ROWS.items()}


def _staged(databases: Any) -> int:
    with databases.connect("source") as conn:
        return conn.execute(
            "SELECT count(*) FROM sensei_staging.reverse_chunks WHERE state <> 'pending'"
        ).fetchone()[0]


def _our_sessions(databases: Any) -> list[tuple[Any, ...]]:
    """Sessions still open on the source after the try (idle in transaction or waiting)."""
    with databases.connect("source") as conn:
        return conn.execute(
            "SELECT pid, state, wait_event_type, left(query, 120) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
        ).fetchall()


@pytest.mark.timeout(90)
def test_a_target_table_locked_elsewhere_fails_the_try_within_the_lock_timeout_and_the_retry_resumes(
    databases, demo, short_locks
):
    change_target(databases)
    before = _snapshot(databases)
    plan = make_plan(demo, TABLES)
    strategy = _strategy(demo)
    with psycopg.connect(databases.cluster.dsn(databases.target)) as holder:
        # the last table in parents-first order: its parents are staged, the apply holds the
        # source locks, then reading sales.order_items waits on this lock
        holder.execute("LOCK TABLE sales.order_items IN ACCESS EXCLUSIVE MODE")
        # LockNotAvailable is the lock timeout firing: without one the try would wait forever
        with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
            strategy.execute(plan)
        holder.rollback()
    assert _snapshot(databases) == before, "the failed try changed the source"
    assert _our_sessions(databases) == [], "a source session was left open"
    staged = _staged(databases)
    assert staged > 0, "the parents' chunks should have been staged before the lock was met"

    execution = _strategy(demo).execute(plan)

    assert execution.detail["chunks"]["crm.customers"]["resumed"] > 0
    assert_source_is_inverse_of_target(databases)


@pytest.mark.timeout(90)
def test_the_staging_ddl_lock_held_elsewhere_fails_the_try_within_the_lock_timeout(
    databases, demo, short_locks
):
    from sensei_airflow.engines.postgres.reverse import _LOCK_KEY

    change_target(databases)
    before = _snapshot(databases)
    plan = make_plan(demo, TABLES)
    with psycopg.connect(databases.cluster.dsn(databases.source)) as holder:
        # another rollback creating the staging schema on the same source, stuck mid-transaction
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
            _strategy(demo).execute(plan)
        holder.rollback()
    assert _snapshot(databases) == before

    _strategy(demo).execute(plan)

    assert_source_is_inverse_of_target(databases)
