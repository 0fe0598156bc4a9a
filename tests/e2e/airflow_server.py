"""A real ``airflow standalone`` for the end-to-end tests: one per test session, started on first use.

Request the ``airflow_server`` fixture (registered by ``tests/e2e/conftest.py``). It runs
Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor; SimpleAuthManager)
on 127.0.0.1 with the repository's ``dags/``, the demo manifest, and its own source, target
and state databases on the session's PostgreSQL cluster. Logins: ``admin``/``admin`` (role
admin) and ``viewer``/``viewer`` (role viewer: may read, may not trigger).

The server is the same :class:`~sensei_airflow.demo.standalone.StandaloneAirflow` the demo
launcher uses. It fails the requesting test, with the end of Airflow's log, when it does not
come up; it is stopped with SIGINT (then terminated) at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensei_airflow.demo.standalone import AirflowNotReady, Login, StandaloneAirflow, standalone_env
from sensei_airflow.local_postgres import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]
ADMIN = Login("admin", "admin", "admin")
VIEWER = Login("viewer", "viewer", "viewer")
CONN_IDS = {"source": "shop_source", "target": "shop_target", "state": "sensei_state"}
TERMINAL = {"success", "failed"}
NEEDED_DAGS = ("sensei_rollback", "sensei_demo_migration")


@dataclass
class AirflowServer:
    """A running Airflow and the databases its demo manifest points at."""

    airflow: StandaloneAirflow
    cluster: LocalCluster
    databases: dict[str, str]
    migrations_dir: Path

    @property
    def url(self) -> str:
        return self.airflow.url

    @property
    def conn_env(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` of the server's connections."""
        return {
            f"AIRFLOW_CONN_{CONN_IDS[role].upper()}": self.cluster.uri(name)
            for role, name in self.databases.items()
        }

    def client(self, login: Login | None = ADMIN) -> httpx.Client:
        """An HTTP client on the server, authenticated as ``login`` (None: no credentials)."""
        headers = {} if login is None else self.airflow.auth_headers(login.username, login.password)
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def scalar(self, role: str, sql: str) -> Any:
        import psycopg

        with psycopg.connect(self.cluster.dsn(self.databases[role]), autocommit=True) as conn:
            return conn.execute(sql).fetchone()[0]

    @contextmanager
    def connections(self) -> Iterator[None]:
        """The server's connections, for code run in the test process."""
        saved = {k: os.environ.get(k) for k in self.conn_env}
        os.environ.update(self.conn_env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def migrate_demo(self, customers: int = 300) -> dict[str, int]:
        """(Re)do the demo forward migration directly, so there is something to roll back."""
        from sensei_airflow.manifest import load_manifests
        from tests.fixtures import migrate_demo

        with self.connections():
            return migrate_demo(load_manifests(self.migrations_dir).get("mig_shop_2026"), customers=customers)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 240) -> dict[str, Any]:
        """Poll Airflow's REST API until the run ends; returns its DAG run document."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
                response.raise_for_status()
                run = response.json()
                if run["state"] in TERMINAL:
                    return run
                if time.monotonic() > deadline:
                    raise AssertionError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s")
                time.sleep(1)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        with self.client() as client:
            response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
            response.raise_for_status()
            return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}


def start_airflow_server(cluster: LocalCluster) -> AirflowServer:
    """Create the databases and the manifest, start Airflow, wait until the sensei DAGs are parsed."""
    from sensei_airflow.demo import shop

    suffix = os.urandom(4).hex()
    databases = {role: f"srv_{role}_{suffix}" for role in CONN_IDS}
    for name in databases.values():
        cluster.create_database(name)
    home = Path(tempfile.mkdtemp(prefix="sensei-e2e-airflow-"))
    migrations = home / "migrations"
    migrations.mkdir()
    (migrations / f"{shop.DEMO_MIGRATION_ID}.yaml").write_text(shop.manifest_yaml())
    port = free_port()
    extra = {f"AIRFLOW_CONN_{CONN_IDS[r].upper()}": cluster.uri(n) for r, n in databases.items()}
    extra["SENSEI_MIGRATIONS_DIR"] = str(migrations)
    env = standalone_env(
        home=home / "airflow", dags_folder=REPO / "dags", port=port, logins=[ADMIN, VIEWER], extra=extra
    )
    airflow = StandaloneAirflow(env=env, port=port, log_path=home / "standalone.log").start()
    server = AirflowServer(airflow=airflow, cluster=cluster, databases=databases, migrations_dir=migrations)
    try:
        airflow.wait_ready(dag_ids=list(NEEDED_DAGS))
        # Scheduled DAGs (backups, window checks) would only compete for the tests' two cores;
        # pausing them is best effort: a slow api-server must not fail the session for it.
        with suppress(httpx.HTTPError):
            airflow.unpause([d for d in airflow.dag_ids() if d not in NEEDED_DAGS], paused=True)
    except BaseException:
        airflow.stop()
        raise
    return server


@pytest.fixture(scope="session")
def airflow_server(pg_cluster: LocalCluster) -> Iterator[AirflowServer]:
    """One running ``airflow standalone`` for the session (see the module docstring)."""
    try:
        server = start_airflow_server(pg_cluster)
    except AirflowNotReady as exc:
        pytest.fail(f"airflow standalone is needed and did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.airflow.stop()
        shutil.rmtree(server.migrations_dir.parent, ignore_errors=True)
