"""A warm parent for the rollbacks the chaos tests kill: Airflow imported once per pytest worker.

A rollback started with ``python -c`` pays Airflow's imports and the build of the in-process
execution API again: about 10 s of CPU before its first task, against about 1.5 s for a whole
dry run in a warm process. The chaos suite starts over a dozen of them, so each is forked instead
from a multiprocessing forkserver that imported this module once (ADR 0010).

The forkserver holds no database connection and no thread (checked before it forks: a fork copies
neither safely). Each child takes the test's environment as it is at the start, runs
``sensei_rollback`` with ``dag.test`` and prints ``SENSEI_RUN {...}`` into its log, like the
``python -c`` child it replaces. It is still a process of its own: ``kill -9`` ends it with no
cleanup code run, and its sessions are its own.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import airflow.sdk.execution_time.supervisor as _supervisor
import sqlalchemy.orm

# the modules a rollback imports: the DAG file's, and the engine its tasks load on first use
import sensei_airflow.engines.postgres
import sensei_airflow.factories
import tests.fixtures

#: build the in-process execution API now: its routes, and the versioned routers Cadwyn would
#: otherwise generate on the first request (most of a fresh child's CPU). No thread, no connection.
_execution_api = _supervisor.in_process_api_server().app
if not _execution_api._cadwyn_initialized:
    _execution_api._cadwyn_initialize()
sqlalchemy.orm.configure_mappers()

# A fork copies only the thread that forks: a lock another thread held would stay locked forever.
if threading.active_count() != 1:
    raise RuntimeError(f"the chaos forkserver must not fork with threads running: {threading.enumerate()}")


def run_rollback(
    conf: dict[str, Any], lock_timeout: str, environ: dict[str, str], log: str, cwd: str
) -> None:
    """The child: ``dag.test`` of ``sensei_rollback`` with ``conf``, its output appended to ``log``."""
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)

    # the test holds locks longer than the default bound
    sensei_airflow.engines.postgres.PostgresEngine.lock_timeout = lock_timeout
    run = tests.fixtures.load_dag("sensei_rollback").test(run_conf=conf)
    print("SENSEI_RUN " + json.dumps({"run_id": run.run_id, "state": str(run.state)}), flush=True)
    sys.stderr.flush()
