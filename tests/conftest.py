"""Test setup: an isolated Airflow home, real PostgreSQL clusters, and helpers to run the DAGs.

Airflow reads its configuration on import, so the environment is set here, before anything
imports airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="sensei-test-airflow-"))
_CREATOR = os.getpid()


@atexit.register
def _remove_home() -> None:
    """The Airflow home goes with the process that made it (a forked child inherits this hook)."""
    if os.getpid() == _CREATOR:
        shutil.rmtree(_HOME, ignore_errors=True)


os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "sensei-tests-" + "0123456789abcdef" * 4,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SENSEI__TASK_RETRIES": "0",
        "AIRFLOW__SENSEI__RETRY_DELAY_SECONDS": "0",
        "SENSEI_MIGRATIONS_DIR": str(_HOME / "migrations"),
    }
)

pytest_plugins = ["tests.fixtures"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Spread the suite over pytest-xdist workers a module at a time (``--dist loadgroup``).

    Module-scoped fixtures are then set up once. The tests that talk to a running ``airflow
    standalone`` form one group, so one worker starts one such server, and stops it after the
    group's last test (``tests/e2e/conftest.py``). The group mostly waits for the server's
    scheduler, so the other workers have the cores meanwhile.
    """
    for item in items:
        group = "airflow_server" if "airflow_server" in item.fixturenames else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
