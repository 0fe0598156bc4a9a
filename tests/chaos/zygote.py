"""A warm parent for the rollbacks the chaos tests kill: Airflow imported once per pytest worker.

A rollback started with ``python -c`` pays Airflow's imports and the build of the in-process
execution API again: about 10 s of CPU before its first task, against about 1.5 s for a whole
dry run in a warm process. The chaos suite starts over a dozen of them, so each is forked instead
from a multiprocessing forkserver that imported this module once (ADR 0010).

Only the forkserver imports this module (its preload). It holds no database connection and no
thread when it forks (checked here: a fork copies neither safely). Each child
(:func:`tests.chaos.child.run_rollback`) takes the test's environment as it is at the start, runs
``sensei_rollback`` with ``dag.test`` and prints ``SENSEI_RUN {...}`` into its log, like the
``python -c`` child it replaces. It is still a process of its own: ``kill -9`` ends it with no
cleanup code run, and its sessions are its own.
"""

from __future__ import annotations

import importlib
import threading

import airflow.sdk.execution_time.supervisor as _supervisor
import sqlalchemy.orm

#: the modules a rollback imports: the DAG file's, the engine its tasks load, the child's own.
WARM = ("sensei_airflow.factories", "sensei_airflow.engines.postgres", "tests.fixtures", "tests.chaos.child")
for _module in WARM:
    importlib.import_module(_module)

#: build the in-process execution API now: its routes, and the versioned routers Cadwyn would
#: otherwise generate on the first request (most of a fresh child's CPU). No thread, no connection.
_execution_api = _supervisor.in_process_api_server().app
if not _execution_api._cadwyn_initialized:
    _execution_api._cadwyn_initialize()
sqlalchemy.orm.configure_mappers()

# A fork copies only the thread that forks: a lock another thread held would stay locked forever.
if threading.active_count() != 1:
    raise RuntimeError(f"the chaos forkserver must not fork with threads running: {threading.enumerate()}")
