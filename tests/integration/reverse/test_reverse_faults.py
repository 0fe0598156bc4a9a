"""Faults in the middle of a reverse migration: a dropped connection, a killed task. The retry resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from tests.fixtures import REPO
from tests.integration.reverse.conftest import (
    SOURCE_ROWS,
    assert_source_is_inverse_of_target,
    change_target,
    make_plan,
    migrate_demo,
    table_rows,
)


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    return ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))


def _snapshot(databases: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: table_rows(databases, "source", sql) for t, sql in SOURCE_ROWS.items()}


def _done_chunks(databases: Any) -> tuple[int, int]:
    """(chunks done, chunks planned) in the source's checkpoint table."""
    with databases.connect("source") as conn:
        if conn.execute("SELECT to_regclass('sensei_staging.reverse_chunks')").fetchone()[0] is None:
            return 0, 0
        return conn.execute(
            "SELECT count(*) FILTER (WHERE state <> 'pending'), count(*) FROM sensei_staging.reverse_chunks"
        ).fetchone()


@contextmanager
def _frozen_after(databases: Any, chunks: int, alive: Callable[[], bool]) -> Iterator[int]:
    """Once ``chunks`` chunks are checkpointed, block the next checkpoint; yields the blocked backend's pid."""
    deadline = time.monotonic() + 120
    while _done_chunks(databases)[0] < chunks:
        assert alive(), "the reverse migration ended before the fault could be injected"
        assert time.monotonic() < deadline, "no progress in the reverse migration"
        time.sleep(0.01)
    with databases.connect("source") as conn:
        conn.autocommit = False
        conn.execute("LOCK TABLE sensei_staging.reverse_chunks IN ACCESS EXCLUSIVE MODE")
        with databases.connect("source") as watcher:
            while True:
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> %s",
                    (conn.info.backend_pid,),
                ).fetchone()
                if row:
                    break
                assert time.monotonic() < deadline, "the reverse migration never reached its next checkpoint"
                time.sleep(0.01)
        yield row[0]
        conn.rollback()


@pytest.fixture
def bigger_demo(databases, migrations_dir, monkeypatch):
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "1000")
    manifest = migrate_demo(databases, migrations_dir, customers=2000)
    change_target(databases)
    with databases.connect("target") as conn:  # enough changed chunks that every table moves some
        conn.execute("UPDATE sales.order_items SET qty = qty + 1 WHERE order_id % 97 = 0")
        conn.execute("UPDATE sales.orders SET status = 'audited' WHERE id % 89 = 0")
    return manifest


def test_dropped_connection_mid_table_then_retry_resumes(bigger_demo, databases):
    before = _snapshot(databases)
    strategy = _strategy(bigger_demo)
    plan = make_plan(bigger_demo, strategy.assess(bigger_demo.tables, _request(bigger_demo)).tables)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _strategy(bigger_demo).execute(plan)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    with _frozen_after(databases, 4, worker.is_alive) as pid:
        assert _snapshot(databases) == before, "the source shows part of the reverse migration"
        with databases.connect("source") as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    worker.join(60)
    assert failure and isinstance(failure[0], psycopg.OperationalError), failure
    done, planned = _done_chunks(databases)
    assert 4 <= done < planned
    assert _snapshot(databases) == before

    execution = _strategy(bigger_demo).execute(plan)

    resumed = sum(c["resumed"] for c in execution.detail["chunks"].values())
    assert resumed == done
    assert_source_is_inverse_of_target(databases)
    assert _strategy(bigger_demo).verify(plan).passed


def test_killed_task_mid_table_then_retry_resumes(bigger_demo, databases):
    before = _snapshot(databases)
    strategy = _strategy(bigger_demo)
    plan = make_plan(bigger_demo, strategy.assess(bigger_demo.tables, _request(bigger_demo)).tables)
    script = (
        "import sys\n"
        "from sensei_airflow.manifest import load_manifests\n"
        "from sensei_airflow.plan import RollbackPlan\n"
        "from sensei_airflow.state import StateStore\n"
        "from sensei_airflow.strategies.reverse import ReverseMigrationStrategy\n"
        "plan = RollbackPlan.model_validate_json(sys.argv[1])\n"
        "manifest = load_manifests().get(plan.migration_id)\n"
        "ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id)).execute(plan)\n"
    )
    task = subprocess.Popen(
        [sys.executable, "-c", script, plan.model_dump_json()], cwd=REPO, env=dict(os.environ)
    )
    try:
        with _frozen_after(databases, 6, lambda: task.poll() is None):
            task.send_signal(signal.SIGKILL)
            task.wait(30)
            assert _snapshot(databases) == before
    finally:
        if task.poll() is None:
            task.kill()
    done, planned = _done_chunks(databases)
    assert 6 <= done < planned
    assert _snapshot(databases) == before

    execution = _strategy(bigger_demo).execute(plan)

    assert sum(c["resumed"] for c in execution.detail["chunks"].values()) == done
    assert_source_is_inverse_of_target(databases)
    # a retry after the apply committed returns the recorded outcome and changes nothing
    again = _strategy(bigger_demo).execute(plan)
    assert again.detail["resumed"] == "the apply had already committed"
    assert again.rows_affected == execution.rows_affected
    assert_source_is_inverse_of_target(databases)


def _request(manifest: Any) -> Any:
    from sensei_airflow.conf import RollbackRequest

    return RollbackRequest.parse({"migration_id": manifest.id, "strategy": "reverse_migration"})
