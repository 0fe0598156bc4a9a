"""Shared fixtures: PostgreSQL clusters the tests start, migrations, and DAG runs through dag.test."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.local_postgres import LocalCluster, PostgresUnavailable, free_port, new_cluster_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """One real PostgreSQL server for the session (fresh databases per test).

    A test that needs PostgreSQL fails, never skips, when the server cannot start.
    """
    cluster = LocalCluster(new_cluster_dir(), free_port())
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        pytest.fail(f"PostgreSQL is needed and could not start: {exc}", pytrace=False)
    yield cluster
    cluster.destroy()


@dataclass
class Databases:
    """A source, a target and a state database, wired as Airflow connections."""

    cluster: LocalCluster
    source: str
    target: str
    state: str
    conn_ids: dict[str, str]

    def connect(self, which: str) -> Any:
        import psycopg

        return psycopg.connect(self.cluster.dsn(getattr(self, which)), autocommit=True)

    def scalar(self, which: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect(which) as conn:
            return conn.execute(sql, params).fetchone()[0]


@contextmanager
def databases_on(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, *, before_drop: str | None = None
) -> Iterator[Databases]:
    """Fresh source, target and state databases on ``cluster``, their connections in the environment.

    :param before_drop: SQL run on the cluster before the databases are dropped, with the target's
        name as its one parameter (e.g. dropping the target's replication slots).
    """
    import psycopg
    from psycopg import sql

    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}_{suffix}" for role in ("source", "target", "state")}
    conn_ids = {"source": "shop_source", "target": "shop_target", "state": "sensei_state"}
    for role, name in names.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_ids[role].upper()}", cluster.create_database(name))
    yield Databases(cluster, names["source"], names["target"], names["state"], conn_ids)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        if before_drop is not None:
            conn.execute(before_drop, (names["target"],))
        for name in names.values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def databases(pg_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Databases]:
    with databases_on(pg_cluster, monkeypatch) as made:
        yield made


@pytest.fixture
def migrations_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh manifest folder for this test (SENSEI_MIGRATIONS_DIR)."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    monkeypatch.setenv("SENSEI_MIGRATIONS_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata database, created once per session."""
    from airflow.utils.db import resetdb

    resetdb()


#: how long ``dag.test`` waits before it looks at the run again when no task is ready.
DAG_TEST_POLL_SECONDS = 0.05


def _poll_dag_test_quickly() -> None:
    """Shorten the wait of Airflow's ``dag.test`` loop when a pass finds no task ready to run.

    The loop sleeps a whole second then: each level of skipped or upstream-failed tasks after a
    branch or a refusal costs one, about 7 s of every refused rollback. Only sleeps called by
    ``DAG.test`` itself are shortened (``time.sleep`` is wrapped once per process); every pass still
    reads the run's state from the metadata database.
    """
    from airflow.sdk.definitions.dag import DAG

    if getattr(time.sleep, "dag_test_poll", False):
        return
    loop, sleep = DAG.test.__code__, time.sleep

    def quick_sleep(seconds: float) -> None:
        sleep(min(seconds, DAG_TEST_POLL_SECONDS) if sys._getframe(1).f_code is loop else seconds)

    quick_sleep.dag_test_poll = True  # type: ignore[attr-defined]
    time.sleep = quick_sleep


def _check_param_schemas_once() -> None:
    """Check each distinct JSON schema against the JSON Schema metaschema once per process.

    Airflow validates every ``Param`` of the DAG with ``jsonschema.validate`` each time it resolves
    the DAG's params: for every task it runs and twice per task when it serializes the DAG (about
    800 times per ``dag.test`` of ``sensei_rollback``). ``jsonschema.validate`` first checks the
    schema itself against the metaschema, a pure function of the schema that took a quarter of the
    CPU of a rollback's ``dag.test``. Here it runs once per distinct schema; values are still
    validated every time.
    """
    from jsonschema import validators

    latest = validators.validator_for({})
    check = latest.check_schema
    if getattr(check, "once_per_schema", False):
        return
    checked: set[str] = set()

    def check_once(schema: Any, *args: Any, **kwargs: Any) -> None:
        key = json.dumps(schema, sort_keys=True, default=repr)
        if key not in checked:
            check(schema, *args, **kwargs)
            checked.add(key)

    check_once.once_per_schema = True  # type: ignore[attr-defined]
    latest.check_schema = staticmethod(check_once)  # type: ignore[method-assign,assignment]


def load_dag(dag_id: str) -> Any:
    """Parse the DAG from the repository's dags folder, as the dag processor would.

    Its ``dag.test`` polls quickly (:func:`_poll_dag_test_quickly`) and checks each Param schema
    once (:func:`_check_param_schemas_once`).
    """
    from airflow.dag_processing.dagbag import DagBag

    _poll_dag_test_quickly()
    _check_param_schemas_once()
    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


@dataclass
class DagOutcome:
    state: str
    task_states: dict[str, str]
    xcoms: dict[str, Any]
    run_id: str


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> DagOutcome:
    """Run a whole DAG in-process with ``dag.test`` and collect task states and return values."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dag(dag_id)
    dag_run = dag.test(run_conf=conf or {})
    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        states = {ti.task_id: str(ti.state) for ti in tis}
        rows = (
            session.query(XComModel).filter_by(dag_id=dag_id, run_id=dag_run.run_id, key="return_value").all()
        )
        xcoms = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    return DagOutcome(state=str(dag_run.state), task_states=states, xcoms=xcoms, run_id=dag_run.run_id)


def mark_checks_of(verification: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The checks against the start mark of a verification block, by (table, check)."""
    return {
        (c["table"], c["check"]): c for c in verification["checks"] if c["check"].endswith("the start mark")
    }


def write_demo_manifest(migrations_dir: Path, **kwargs: Any) -> Any:
    """Write the demo manifest (sensei_airflow.demo.shop) and return it parsed."""
    from sensei_airflow.demo import shop
    from sensei_airflow.manifest import load_manifests

    (migrations_dir / f"{kwargs.get('migration_id', shop.DEMO_MIGRATION_ID)}.yaml").write_text(
        shop.manifest_yaml(**kwargs)
    )
    return load_manifests(migrations_dir).get(kwargs.get("migration_id", shop.DEMO_MIGRATION_ID))


def migrate_demo(manifest: Any, customers: int = 300, *, mark: bool = True) -> dict[str, int]:
    """Run the demo forward migration directly (fast); returns target row counts per table.

    :param mark: take the migration's start mark first (as a migration tool does); without it the
        manifest's ``started_at`` is the migration's start.
    """
    from sensei_airflow.demo.migration import migrate_phase, prepare_source, prepare_target
    from sensei_airflow.engines import get_engine
    from sensei_airflow.mark import take_mark

    source, target = get_engine(manifest.source.conn_id), get_engine(manifest.target.conn_id)
    prepare_source(source, customers=customers)
    prepare_target(target)
    if mark:
        take_mark(manifest)
    migrated: dict[str, int] = {}
    for phase in manifest.phases:
        migrated.update(migrate_phase(manifest, phase.phase, source, target))
    return migrated


@pytest.fixture
def migrated(databases: Databases, migrations_dir: Path, airflow_db: None) -> dict[str, int]:
    """The demo migration done: source filled, start mark taken, target migrated. Rows per target table."""
    return migrate_demo(write_demo_manifest(migrations_dir))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A local moto server (S3, RDS, ...) for the session; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def aws_client(service: str, endpoint: str) -> Any:
    """A boto3 client of the local moto server."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def use_aws_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, endpoint: str) -> None:
    """Make Airflow connection ``conn_id`` an AWS connection to the local moto server."""
    import json

    extra = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}),
    )
