"""A real ``airflow standalone`` for the end-to-end tests: started on first use, stopped after its last.

Request the ``airflow_server`` fixture (registered by ``tests/e2e/conftest.py``). It runs
Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor; SimpleAuthManager)
on 127.0.0.1 with the repository's ``dags/``, the demo manifest, and its own source, target
and state databases on the session's PostgreSQL cluster. Logins: ``admin``/``admin`` (role
admin) and ``viewer``/``viewer`` (role viewer: may read, may not trigger).

The server is the same :class:`~sensei_airflow.demo.standalone.StandaloneAirflow` the demo
launcher uses. It fails the requesting test, with the end of Airflow's log, when it does not
come up; it is stopped with SIGINT (then terminated) once the worker's next test does not need it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensei_airflow.demo.standalone import (
    AirflowNotReady,
    Login,
    StandaloneAirflow,
    airflow_bin,
    spawn,
    standalone_env,
    stop_group,
)
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
    #: Airflow's own metadata database on ``cluster`` (None: the standalone's SQLite).
    metadata_db: str | None = None

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


def _server_home(
    cluster: LocalCluster, manifest_yaml: str | None = None
) -> tuple[Path, dict[str, str], Path, dict[str, str]]:
    """Fresh source, target and state databases, a home with the demo manifest, and their env."""
    from sensei_airflow.demo import shop

    suffix = os.urandom(4).hex()
    databases = {role: f"srv_{role}_{suffix}" for role in CONN_IDS}
    for name in databases.values():
        cluster.create_database(name)
    home = Path(tempfile.mkdtemp(prefix="sensei-e2e-airflow-"))
    migrations = home / "migrations"
    migrations.mkdir()
    (migrations / f"{shop.DEMO_MIGRATION_ID}.yaml").write_text(manifest_yaml or shop.manifest_yaml())
    extra = {f"AIRFLOW_CONN_{CONN_IDS[r].upper()}": cluster.uri(n) for r, n in databases.items()}
    extra["SENSEI_MIGRATIONS_DIR"] = str(migrations)
    return home, databases, migrations, extra


def start_airflow_server(cluster: LocalCluster) -> AirflowServer:
    """Create the databases and the manifest, start Airflow, wait until the sensei DAGs are parsed."""
    home, databases, migrations, extra = _server_home(cluster)
    port = free_port()
    env = standalone_env(
        home=home / "airflow", dags_folder=REPO / "dags", port=port, logins=[ADMIN, VIEWER], extra=extra
    )
    airflow = StandaloneAirflow(env=env, port=port, log_path=home / "standalone.log").start()
    return _until_ready(
        AirflowServer(airflow=airflow, cluster=cluster, databases=databases, migrations_dir=migrations)
    )


def _until_ready(server: AirflowServer) -> AirflowServer:
    """Wait until the sensei DAGs are parsed; pause the scheduled ones. Stops Airflow if it fails."""
    airflow = server.airflow
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


class _ServerSlot:
    """The worker's one running Airflow: started by the first test that needs it, stopped by
    :func:`release_airflow_server` as soon as the worker's next test does not need it.

    The tests on the server form one ``xdist_group`` (see ``tests/conftest.py``), run one after the
    other on one worker; an idle Airflow (scheduler, dag-processor, api-server, triggerer) would
    otherwise take CPU from the other workers' tests until the whole session ends.
    """

    server: AirflowServer | None = None

    @classmethod
    def get(cls, cluster: LocalCluster) -> AirflowServer:
        if cls.server is None:
            try:
                cls.server = start_airflow_server(cluster)
            except AirflowNotReady as exc:
                pytest.fail(f"airflow standalone is needed and did not start: {exc}", pytrace=False)
        return cls.server

    @classmethod
    def stop(cls) -> None:
        server, cls.server = cls.server, None
        if server is not None:
            server.airflow.stop()
            shutil.rmtree(server.migrations_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def _airflow_server_slot() -> Iterator[type[_ServerSlot]]:
    """Stops the worker's Airflow at the end of the session at the latest."""
    try:
        yield _ServerSlot
    finally:
        _ServerSlot.stop()


@pytest.fixture
def airflow_server(pg_cluster: LocalCluster, _airflow_server_slot: type[_ServerSlot]) -> AirflowServer:
    """The worker's running ``airflow standalone`` (see the module docstring and :class:`_ServerSlot`)."""
    return _airflow_server_slot.get(pg_cluster)


def release_airflow_server(nextitem: pytest.Item | None) -> None:
    """Stop the worker's Airflow unless ``nextitem`` (the worker's next test) needs it."""
    if "airflow_server" not in getattr(nextitem, "fixturenames", ()):
        _ServerSlot.stop()


# -- Airflow on CeleryExecutor ------------------------------------------------------------------------
#: the hostname each Celery worker's tasks record in ``task_instance.hostname`` (see celery_hostname.py).
WORKER_HOSTNAME_ENV = "SENSEI_TEST_WORKER_HOSTNAME"


@dataclass
class CeleryAirflow(StandaloneAirflow):
    """Airflow on CeleryExecutor: api-server, scheduler and dag-processor, and Celery workers.

    Each component is its own process group (stopped with SIGINT, then terminated), logging to its
    own file beside ``log_path``. Each worker has its own ``AIRFLOW_HOME`` (its logs stay on its own
    "disk") and its own hostname in the metadata database.
    """

    workers: tuple[str, ...] = ()
    worker_concurrency: int = 1
    components: tuple[str, ...] = ("metadatabase", "scheduler", "dag_processor")
    processes: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Any] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        path = self.log_path.with_name(f"{name}.log")
        self.logs[name] = open(path, "ab")  # noqa: SIM115 - closed in stop()
        self.processes[name] = spawn([airflow_bin(), *args], env=env, log=self.logs[name])

    def start(self) -> CeleryAirflow:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.run("db", "migrate")
        self._spawn("api-server", ["api-server", "--workers", "1"], self.env)
        self._spawn("scheduler", ["scheduler"], self.env)
        self._spawn("dag-processor", ["dag-processor"], self.env)
        for name in self.workers:
            home = Path(self.env["AIRFLOW_HOME"]).with_name(f"home-{name}")
            home.mkdir(parents=True, exist_ok=True)
            env = {
                **self.env,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.celery_hostname.hostname",
                WORKER_HOSTNAME_ENV: name,
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH")) if p),
            }
            self._spawn(
                name,
                ["celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency",
                 str(self.worker_concurrency), "--skip-serve-logs", "--without-gossip", "--without-mingle"],
                env,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 600.0, dag_ids: Any = ()) -> None:
        """The api-server's components healthy, the DAGs parsed, and every worker taking tasks."""
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AirflowNotReady(f"{name} exited ({process.returncode}):\n{self.log_tail_of(name)}")
            try:
                super().wait_ready(timeout=5, dag_ids=dag_ids)
                break
            except AirflowNotReady:
                if time.monotonic() > deadline:
                    raise
        for name in self.workers:
            while f"{name}@" not in self.log_tail_of(name, 200_000) or " ready." not in self.log_tail_of(
                name, 200_000
            ):
                if self.processes[name].poll() is not None or time.monotonic() > deadline:
                    raise AirflowNotReady(f"celery worker {name} not ready:\n{self.log_tail_of(name)}")
                time.sleep(1)

    def log_tail_of(self, name: str, chars: int = 6000) -> str:
        try:
            return self.log_path.with_name(f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def log_tail(self, chars: int = 6000) -> str:
        return "\n".join(f"--- {name}:\n{self.log_tail_of(name, chars // 2)}" for name in self.processes)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            stop_group(process)
        for log in self.logs.values():
            log.close()
        self.logs.clear()


def start_celery_server(
    cluster: LocalCluster,
    broker_url: str,
    workers: tuple[str, ...],
    *,
    extra: dict[str, str] | None = None,
    manifest_yaml: str | None = None,
) -> AirflowServer:
    """Airflow on CeleryExecutor with ``workers``, its metadata database on ``cluster``.

    :param broker_url: the Celery broker (and result backend), e.g. a test's redis-server.
    :param extra: more environment (``[sensei]`` settings) for every component.
    """
    home, databases, migrations, env_extra = _server_home(cluster, manifest_yaml)
    metadata = f"srv_airflow_{os.urandom(4).hex()}"
    cluster.create_database(metadata)
    port = free_port()
    env_extra.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cluster.uri(metadata).replace(
                "postgresql://", "postgresql+psycopg://", 1
            ),
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": broker_url,
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            **(extra or {}),
        }
    )
    env = standalone_env(
        home=home / "airflow", dags_folder=REPO / "dags", port=port, logins=[ADMIN, VIEWER], extra=env_extra
    )
    airflow = CeleryAirflow(env=env, port=port, log_path=home / "airflow.log", workers=workers)
    server = AirflowServer(
        airflow=airflow, cluster=cluster, databases=databases, migrations_dir=migrations, metadata_db=metadata
    )
    try:
        airflow.start()
    except BaseException:
        airflow.stop()
        raise
    return _until_ready(server)
