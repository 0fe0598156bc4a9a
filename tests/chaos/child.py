"""The rollback a chaos test kills, as a function a forkserver child runs (:mod:`tests.chaos.zygote`).

Light to import: the test process imports it only to name the child's target.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


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

    from sensei_airflow.engines.postgres import PostgresEngine
    from tests.fixtures import load_dag

    PostgresEngine.lock_timeout = lock_timeout  # the test holds locks longer than the default bound
    run = load_dag("sensei_rollback").test(run_conf=conf)
    print("SENSEI_RUN " + json.dumps({"run_id": run.run_id, "state": str(run.state)}), flush=True)
    sys.stderr.flush()
