"""A plugin the Celery test's workers load: each reverse-migration staging task waits, as it starts,
until the staging tasks of its run have started on two workers.

Without it, which worker takes which mapped task is up to timing: when staging tasks are short, one
worker can finish its task and take the next before the other polls the broker, and "staged on both
workers" would depend on the machine's load. With one task slot per worker, a staging task waiting
here keeps its worker busy, so the next one must go to the other worker. The wait is bounded: after
two minutes the task goes on, and the test's check of the hostnames says what happened.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from pluggy import HookimplMarker

hookimpl = HookimplMarker("airflow")

#: the database holding the barrier's table (set for the workers only).
BARRIER_ENV = "SENSEI_TEST_STAGING_BARRIER"
WORKERS_NEEDED = 2


@hookimpl
def on_task_instance_running(previous_state: Any, task_instance: Any) -> None:
    dsn = os.environ.get(BARRIER_ENV)
    if not dsn or task_instance.task_id != "execute_reverse_migration_stage":
        return
    import psycopg

    host = os.environ.get("SENSEI_TEST_WORKER_HOSTNAME", "unknown")
    deadline = time.monotonic() + 120
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS staging_started (run_id text, host text)")
        conn.execute("INSERT INTO staging_started VALUES (%s, %s)", (task_instance.run_id, host))
        while time.monotonic() < deadline:
            (hosts,) = conn.execute(
                "SELECT count(DISTINCT host) FROM staging_started WHERE run_id = %s", (task_instance.run_id,)
            ).fetchone()
            if hosts >= WORKERS_NEEDED:
                return
            time.sleep(0.1)


class StagingBarrier(AirflowPlugin):
    name = "sensei_test_staging_barrier"
    listeners = [sys.modules[__name__]]
