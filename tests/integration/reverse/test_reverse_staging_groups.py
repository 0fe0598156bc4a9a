"""Reverse migration staged by several tasks (groups of key ranges), then one apply (ADR 0208).

Strategy level, against real PostgreSQL source and target databases: what each mapped staging
task of the runbook does, in whatever order and with whatever retries the workers give it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.reverse.conftest import (
    assert_source_is_inverse_of_target,
    change_target,
    make_plan,
    migrate_demo,
)

ROLLBACK = "manual__staging_groups"


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    return ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))


def _plan(manifest: Any) -> Any:
    return make_plan(manifest, ["crm.customers", "sales.orders", "sales.order_items"], rollback_id=ROLLBACK)


def _checkpoints(databases: Any) -> dict[str, int]:
    with databases.connect("source") as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM sensei_staging.reverse_chunks WHERE rollback_id = %s GROUP BY state",
            (ROLLBACK,),
        ).fetchall()
    return {state: int(n) for state, n in rows}


@pytest.fixture
def small_chunks(databases: Any, migrations_dir: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo migrated forward with 400 customers, changed on the target, cut into 300-row ranges."""
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "300")
    manifest = migrate_demo(databases, migrations_dir, customers=400)
    change_target(databases)
    return manifest


def test_groups_are_at_most_the_setting_and_never_more_than_the_ranges(small_chunks, databases, monkeypatch):
    strategy = _strategy(small_chunks)
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_STAGING_TASKS", "3")
    groups = strategy.staging_groups(_plan(small_chunks))
    assert groups == [{"group": i, "groups": 3} for i in range(3)]
    ranges = sum(_checkpoints(databases).values())
    assert ranges > 3  # the ranges are cut once, on the source, and kept for every task

    # asked for more tasks than there are ranges: one task per range, the same ranges as before
    many = strategy.staging_groups(_plan(small_chunks), tasks=ranges + 10)
    assert many == [{"group": i, "groups": ranges} for i in range(ranges)]
    assert sum(_checkpoints(databases).values()) == ranges


def test_groups_staged_in_any_order_then_one_apply_give_the_inverse_of_the_target(small_chunks, databases):
    strategy = _strategy(small_chunks)
    plan = _plan(small_chunks)
    groups = strategy.staging_groups(plan, tasks=3)
    before = databases.scalar("source", "SELECT count(*) FROM public.customers")

    staged = 0
    for g in reversed(groups):  # workers finish in any order
        result = strategy.stage(plan, g["group"], g["groups"])
        staged += sum(c["staged"] + c["same"] for c in result["chunks"].values())
    # every range is staged by exactly one group; the real source tables are untouched so far
    assert _checkpoints(databases).get("pending", 0) == 0
    assert staged == sum(_checkpoints(databases).values())
    assert databases.scalar("source", "SELECT count(*) FROM public.customers") == before

    execution = strategy.execute(plan)

    assert_source_is_inverse_of_target(databases)
    chunks = execution.detail["chunks"]
    # the apply moved nothing itself: it found every range checkpointed by the staging tasks
    assert all(c["staged"] == 0 and c["resumed"] > 0 for c in chunks.values()), chunks
    assert execution.detail["applied"]["public.customers"]["deleted"] == 1
    assert strategy.verify(plan).passed
    assert (
        databases.scalar(
            "source",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'sensei_staging' AND starts_with(tablename, 'rev_')",
        )
        == 0
    )


def test_a_group_killed_mid_range_is_redone_without_duplicates(small_chunks, databases, monkeypatch):
    from sensei_airflow.engines.postgres.reverse import PostgresReverseWriter

    strategy = _strategy(small_chunks)
    plan = _plan(small_chunks)
    groups = strategy.staging_groups(plan, tasks=2)
    strategy.stage(plan, 0, 2)

    real_copy = PostgresReverseWriter._copy_range
    calls = {"n": 0}

    def copy_then_die(self: Any, *args: Any, **kwargs: Any) -> int:
        moved = real_copy(self, *args, **kwargs)  # the rows are in the staging table, not yet committed
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("worker lost in the middle of a range")
        return moved

    monkeypatch.setattr(PostgresReverseWriter, "_copy_range", copy_then_die)
    with pytest.raises(ConnectionError):
        strategy.stage(plan, 1, 2)
    monkeypatch.setattr(PostgresReverseWriter, "_copy_range", real_copy)
    assert _checkpoints(databases).get("pending", 0) > 0

    retried = strategy.stage(plan, 1, 2)  # the task's retry, maybe on another worker
    counts = retried["chunks"]
    # the range committed before the kill is kept; the one it died in is staged again
    assert sum(c["resumed"] for c in counts.values()) >= 1
    assert _checkpoints(databases).get("pending", 0) == 0
    again = strategy.stage(plan, 0, 2)  # a finished group run once more changes nothing
    assert all(c["staged"] == 0 and c["same"] == 0 for c in again["chunks"].values())

    strategy.execute(plan)
    assert_source_is_inverse_of_target(databases)
    assert len(groups) == 2


def test_staging_tables_carry_their_rollback_so_a_crashed_run_is_cleaned(small_chunks, databases):
    from sensei_airflow.strategies.reverse import leftover_staging

    strategy = _strategy(small_chunks)
    plan = _plan(small_chunks)
    strategy.staging_groups(plan, tasks=2)
    strategy.stage(plan, 1, 2)  # then the run dies: group 0 never runs, the apply never comes
    left = leftover_staging(small_chunks, strategy.state)
    assert [(s.migration_id, s.rollback_id) for s in left] == [(small_chunks.id, ROLLBACK)]
    assert left[0].tables > 0 and not left[0].holds_lock

    # the next rollback of the migration (a new run id) completes and drops what the crashed one left
    after = make_plan(
        small_chunks,
        ["crm.customers", "sales.orders", "sales.order_items"],
        rollback_id="manual__after_crash",
    )
    for g in strategy.staging_groups(after, tasks=2):
        strategy.stage(after, g["group"], g["groups"])
    execution = strategy.execute(after)
    assert len(execution.detail["staging_dropped"]) == left[0].tables
    assert leftover_staging(small_chunks, strategy.state) == []
    assert_source_is_inverse_of_target(databases)


def test_sibling_staging_tasks_share_the_change_lock_that_an_apply_holds_alone(databases):
    from sensei_airflow.engines import get_engine
    from sensei_airflow.engines.base import ChangeLockHeld
    from sensei_airflow.state import change_lock_key

    source = get_engine("shop_source")
    key = change_lock_key("mig_shop_2026")
    # two staging tasks of one run hold it together; another run's apply is refused meanwhile
    with (
        source.hold_change_lock(key, "sensei run_a", shared=True),
        source.hold_change_lock(key, "sensei run_a", shared=True),
        pytest.raises(ChangeLockHeld, match="held by session"),
        source.hold_change_lock(key, "sensei run_b"),
    ):
        pass
    # while an apply holds it, no staging task of another run starts
    with (
        source.hold_change_lock(key, "sensei run_b"),
        pytest.raises(ChangeLockHeld, match="sensei run_b"),
        source.hold_change_lock(key, "sensei run_a", shared=True),
    ):
        pass
