"""Rollbacks on a real CeleryExecutor deployment: redis, Airflow, two Celery workers (ADR 0208).

One deployment for the module: ``redis-server`` started here, an api-server, scheduler and
dag-processor on CeleryExecutor with their metadata database on the session's PostgreSQL cluster,
and two ``airflow celery worker`` processes, each with its own ``AIRFLOW_HOME`` and hostname.
A reverse migration of 200k rows is staged by mapped tasks on both workers, and its result is
the same, row for row, as a single-process run of the same rollback. A backup, a backup_restore
and a table-level point_in_time (its scratch cluster built on whichever worker runs it, from the
archive every worker reaches) also run through the workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.airflow_server import ADMIN, AirflowServer, start_celery_server
from tests.e2e.redis_server import RedisNotStarted, RedisServer, start_redis
from tests.integration.pitr.clusters import ArchivingCluster, archiving_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("celery")]

MIG = "mig_shop_2026"
ROLLBACK = f"/sensei/v1/migrations/{MIG}/rollback"
WORKERS = ("sensei-worker-1", "sensei-worker-2")
#: ~20 rows of order_items and orders per customer: 20,100 customers make just over 200k rows.
CUSTOMERS = 20_100
SETTINGS = {"AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS": "25000", "AIRFLOW__SENSEI__REVERSE_STAGING_TASKS": "4"}
#: the point_in_time migration's target: a database on the archiving cluster, under its own connection.
PITR_MIG = "mig_pitr_on_celery"
PITR_CONN = "pitr_target"
PITR_DB = "warehouse_wal"
SOURCE_TABLES = {
    "public.customers": "id",
    "public.orders": "id",
    "public.order_items": "order_id, line_no",
}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    try:
        server = start_redis()
    except RedisNotStarted as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def backups() -> Iterator[Path]:
    """The backup location: one directory every worker reaches (as shared storage would be)."""
    path = Path(tempfile.mkdtemp(prefix="sensei-celery-backups-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def archiving() -> Iterator[ArchivingCluster]:
    """A target cluster that archives its WAL, with a base backup: what point_in_time recovers from."""
    with archiving_cluster("sensei-celery-pitr-") as cluster:
        cluster.cluster.create_database(PITR_DB)
        cluster.base_backup()
        yield cluster


@pytest.fixture(scope="module")
def celery_server(
    pg_cluster: Any, redis: RedisServer, backups: Path, archiving: ArchivingCluster
) -> Iterator[AirflowServer]:
    from sensei_airflow.demo import shop
    from sensei_airflow.demo.standalone import AirflowNotReady

    manifest = shop.manifest_yaml(pre_migration_backup=backups.as_uri(), backup_retention_days=2)
    extra = {
        **SETTINGS,
        f"AIRFLOW_CONN_{PITR_CONN.upper()}": archiving.cluster.uri(PITR_DB),
        # staging tasks start on both workers, whatever the machine's load (worker_plugins/staging_barrier.py)
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(__file__).with_name("worker_plugins")),
        "SENSEI_TEST_STAGING_BARRIER": pg_cluster.create_database(f"celery_barrier_{os.urandom(4).hex()}"),
    }
    try:
        server = start_celery_server(pg_cluster, redis.url, WORKERS, extra=extra, manifest_yaml=manifest)
    except AirflowNotReady as exc:
        pytest.fail(f"Airflow on CeleryExecutor did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.airflow.stop()
        shutil.rmtree(server.migrations_dir.parent, ignore_errors=True)


def change_target(dsn: str) -> None:
    """What the application did on the target after cutover (fixed values: both runs must match)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) VALUES "
            "(900001, 'Zoë Ørsted-Łukasiewicz', 'zoe@example.com', 123456, '2026-02-03 10:00:00+00'), "
            "(900002, 'order \"user\" Straße', 'user@example.com', 0, '2026-02-03 11:00:00+00')"
        )
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) "
            "VALUES (9000001, 900001, 'new', 12.34, '2026-02-03 12:00:00+00')"
        )
        conn.execute(
            "INSERT INTO sales.order_items (order_id, line_no, product, qty, price) "
            "VALUES (9000001, 1, 'Lampe « Nuit »', 2, 6.17)"
        )
        conn.execute("UPDATE crm.customers SET name = name || ' (VIP)' WHERE id % 997 = 0")
        conn.execute("UPDATE sales.order_items SET qty = qty + 1 WHERE order_id % 1009 = 0")
        conn.execute(
            "DELETE FROM sales.order_items WHERE order_id IN (SELECT id FROM sales.orders WHERE customer_id = 7)"
        )
        conn.execute("DELETE FROM sales.orders WHERE customer_id = 7")
        conn.execute("DELETE FROM crm.customers WHERE id = 7")


def source_digest(dsn: str, tables: dict[str, str] = SOURCE_TABLES) -> dict[str, tuple[int, str]]:
    """Row count and an md5 over every row in key order, per table (default: the source's)."""
    found = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, key in tables.items():
            count, digest = conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY {key})) FROM {table} t"  # noqa: S608
            ).fetchone()
            found[table] = (int(count), str(digest))
    return found


def metadata(server: AirflowServer, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    assert server.metadata_db is not None
    with psycopg.connect(server.cluster.dsn(server.metadata_db), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_reverse_migration_staged_on_both_workers_equals_a_single_process_run(
    celery_server: AirflowServer, databases: Any, migrations_dir: Any, airflow_db: None, monkeypatch
) -> None:
    migrated = celery_server.migrate_demo(customers=CUSTOMERS)
    assert sum(migrated.values()) >= 200_000, migrated
    change_target(celery_server.cluster.dsn(celery_server.databases["target"]))
    with celery_server.client(ADMIN) as client:
        response = client.post(ROLLBACK, json={"strategy": "reverse_migration", "reason": "Celery ünd Redis"})
        assert response.status_code == 202, response.text
        run_id = response.json()["rollback_id"]
    run = celery_server.wait_for_run("sensei_rollback", run_id, timeout=900)
    states = celery_server.task_states("sensei_rollback", run_id)
    assert run["state"] == "success", states

    staged_on = metadata(
        celery_server,
        "SELECT map_index, hostname, state FROM task_instance WHERE dag_id = 'sensei_rollback' AND run_id = %s "
        "AND task_id = 'execute_reverse_migration_stage' ORDER BY map_index",
        (run_id,),
    )
    assert [m for m, _, _ in staged_on] == [0, 1, 2, 3]
    assert {s for _, _, s in staged_on} == {"success"}
    # the mapped staging tasks ran on both workers; the one apply ran once, on one of them
    assert {h for _, h, _ in staged_on} == set(WORKERS), staged_on
    applied_on = metadata(
        celery_server,
        "SELECT hostname FROM task_instance WHERE dag_id = 'sensei_rollback' AND run_id = %s "
        "AND task_id = 'execute_reverse_migration'",
        (run_id,),
    )
    assert len(applied_on) == 1 and applied_on[0][0] in WORKERS
    celery_result = source_digest(celery_server.cluster.dsn(celery_server.databases["source"]))
    assert (
        celery_server.scalar(
            "source",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'sensei_staging' AND starts_with(tablename, 'rev_')",
        )
        == 0
    )

    # the same rollback of the same data in one process (dag.test), one staging task
    from tests.fixtures import migrate_demo, run_dag, write_demo_manifest

    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_STAGING_TASKS", "1")
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", SETTINGS["AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS"])
    manifest = write_demo_manifest(migrations_dir)
    migrate_demo(manifest, customers=CUSTOMERS)
    change_target(databases.cluster.dsn(databases.target))
    outcome = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "reverse_migration"})
    assert outcome.state == "success", outcome.task_states
    assert source_digest(databases.cluster.dsn(databases.source)) == celery_result
    assert celery_result["public.customers"][0] == CUSTOMERS + 2 - 1


TARGET_TABLES = {"crm.customers": "id", "sales.orders": "id", "sales.order_items": "order_id, line_no"}


def target_digest(server: AirflowServer) -> dict[str, tuple[int, str]]:
    return source_digest(server.cluster.dsn(server.databases["target"]), TARGET_TABLES)


def trigger(server: AirflowServer, dag_id: str, conf: dict[str, Any]) -> str:
    with server.client(ADMIN) as client:
        response = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])


def test_backup_then_backup_restore_on_the_workers(celery_server: AirflowServer, backups: Path) -> None:
    if not celery_server.scalar("target", "SELECT count(*) FROM crm.customers"):
        celery_server.migrate_demo(customers=300)
    # a backup now, on a worker, restore-tested (maybe on the other worker); the DAG was paused at start-up
    celery_server.airflow.unpause(["sensei_backup"])
    run_id = trigger(celery_server, "sensei_backup", {"migration_id": MIG, "restore_test": "all"})
    run = celery_server.wait_for_run("sensei_backup", run_id, timeout=600)
    assert run["state"] == "success", celery_server.task_states("sensei_backup", run_id)
    with celery_server.client(ADMIN) as client:
        entry = client.get(
            f"/api/v2/dags/sensei_backup/dagRuns/{run_id}/taskInstances/backup_{MIG}/xcomEntries/return_value"
        )
        assert entry.status_code == 200, entry.text
    backup_id = entry.json()["value"]["backup_id"]
    assert any(backups.rglob("*")), "the backup's files are in the shared location"
    at_backup = target_digest(celery_server)

    with psycopg.connect(
        celery_server.cluster.dsn(celery_server.databases["target"]), autocommit=True
    ) as conn:
        conn.execute("UPDATE sales.orders SET status = 'remboursé' WHERE id % 7 = 0")
        conn.execute("DELETE FROM sales.order_items WHERE line_no = 1 AND order_id < 50")
        conn.execute("UPDATE crm.customers SET name = 'Ærøskøbing \"user\"' WHERE id = 3")
    assert target_digest(celery_server) != at_backup

    rollback = trigger(
        celery_server,
        "sensei_rollback",
        {"migration_id": MIG, "strategy": "backup_restore", "backup_id": backup_id},
    )
    run = celery_server.wait_for_run("sensei_rollback", rollback, timeout=600)
    states = celery_server.task_states("sensei_rollback", rollback)
    assert run["state"] == "success", states
    assert states["execute_backup_restore"] == "success"
    assert target_digest(celery_server) == at_backup


def test_point_in_time_on_a_worker(
    celery_server: AirflowServer, archiving: ArchivingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Table-level point_in_time through the workers: the scratch cluster is built, replayed and
    dropped inside the execute task, from the archive and base backups every worker reaches."""
    import yaml

    from sensei_airflow.demo import shop
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines.postgres import PostgresEngine

    monkeypatch.setenv(f"AIRFLOW_CONN_{PITR_CONN.upper()}", archiving.cluster.uri(PITR_DB))
    prepare_target(PostgresEngine(PITR_CONN))
    dsn = archiving.cluster.dsn(PITR_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) "
            "SELECT g, 'Zoë ' || g, 'c' || g || '@example.com', g, '2026-02-01' FROM generate_series(1, 40) g"
        )
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) "
            "SELECT g, 1 + g % 40, 'new', g, '2026-02-02' FROM generate_series(1, 120) g"
        )
    point = archiving.now(PITR_DB)
    before = source_digest(dsn, TARGET_TABLES)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the migration went wrong after the point
        conn.execute("UPDATE sales.orders SET status = 'remboursé \"order\"' WHERE id % 3 = 0")
        conn.execute("DELETE FROM sales.orders WHERE id > 100")
        conn.execute("UPDATE crm.customers SET name = 'Ærøskøbing' WHERE id = 5")
    assert source_digest(dsn, TARGET_TABLES) != before

    document = shop.manifest(migration_id=PITR_MIG, target_conn_id=PITR_CONN, started_at=point)
    document["rollback"] |= {
        "preferred_strategy": "point_in_time",
        "point_in_time": {"postgres": archiving.settings(recovery_timeout_seconds=300)},
    }
    (celery_server.migrations_dir / f"{PITR_MIG}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    rollback = trigger(
        celery_server,
        "sensei_rollback",
        {"migration_id": PITR_MIG, "strategy": "point_in_time", "restore_to": point.isoformat()},
    )
    run = celery_server.wait_for_run("sensei_rollback", rollback, timeout=600)
    states = celery_server.task_states("sensei_rollback", rollback)
    assert run["state"] == "success", states
    assert states["execute_point_in_time"] == "success"
    assert source_digest(dsn, TARGET_TABLES) == before
    [(hostname,)] = metadata(
        celery_server,
        "SELECT hostname FROM task_instance WHERE dag_id = 'sensei_rollback' AND run_id = %s "
        "AND task_id = 'execute_point_in_time'",
        (rollback,),
    )
    assert hostname in WORKERS
    assert archiving.scratch_leftovers() == []
