"""Test setup: an isolated Airflow home, real PostgreSQL clusters, and helpers to run the DAGs.

Airflow reads its configuration on import, so the environment is set here, before anything
imports airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="sensei-test-airflow-"))
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

    Module-scoped fixtures are then set up once. The tests that talk to the session's ``airflow
    standalone`` form two groups (the REST API's module, and the rest), so at most two such servers
    start and neither group alone becomes the suite's longest path.
    """
    for item in items:
        module = item.nodeid.split("::")[0]
        if "airflow_server" in item.fixturenames:
            group = "airflow_server-api" if module.endswith("test_api_server.py") else "airflow_server"
        else:
            group = module
        item.add_marker(pytest.mark.xdist_group(group))
