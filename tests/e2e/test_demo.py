"""``make demo``'s launcher: its setup steps for real, the curl lines it prints, and its clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sensei_airflow.demo import __main__ as launcher
from sensei_airflow.demo.standalone import spawn, stop_group
from sensei_airflow.local_postgres import free_port, new_cluster_dir
from tests.e2e.airflow_server import ADMIN, AirflowServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Demo]:
    """``python -m sensei_airflow.demo --setup-only`` in a scratch directory, on free ports."""
    demo_dir = tmp_path_factory.mktemp("demo")
    pg_dir = new_cluster_dir("sensei-demo-test-")
    ports = [free_port() for _ in range(3)]
    demo = launcher.Demo(
        demo_dir=demo_dir,
        clusters_dir=pg_dir,
        port=free_port(),
        pg_ports=dict(zip(launcher.DATABASES, ports, strict=True)),
    )
    args = ["--setup-only", "--demo-dir", str(demo_dir), "--pg-dir", str(pg_dir), "--port", str(demo.port)]
    args += ["--pg-ports", ",".join(map(str, ports))]
    try:
        code = launcher.main(args)
        assert code == 0
        yield demo
    finally:
        for cluster in demo.clusters().values():
            cluster.destroy()
        shutil.rmtree(pg_dir, ignore_errors=True)


def _one(demo: launcher.Demo, role: str, sql: str) -> object:
    cluster = demo.clusters()[role]
    with psycopg.connect(cluster.dsn(launcher.DATABASES[role][1]), autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def test_setup_migrates_the_demo_into_the_target(demo_setup: launcher.Demo) -> None:
    for table in ("customers", "orders", "order_items"):
        source = _one(demo_setup, "source", f"SELECT count(*) FROM public.{table}")  # noqa: S608
        schema = "crm" if table == "customers" else "sales"
        target = _one(demo_setup, "target", f"SELECT count(*) FROM {schema}.{table}")  # noqa: S608
        assert source == target > 0, table
    # the public start mark, taken before the copy: the three empty warehouse tables
    assert _one(demo_setup, "state", "SELECT count(*) FROM sensei.migration_marks, jsonb_each(tables)") == 3


def test_target_archives_wal_for_point_in_time_recovery(demo_setup: launcher.Demo) -> None:
    assert _one(demo_setup, "target", "SHOW wal_level") == "replica"
    assert _one(demo_setup, "target", "SHOW archive_mode") == "on"
    segment = _one(demo_setup, "target", "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 30
    while not (demo_setup.wal_archive / str(segment)).exists():
        assert time.monotonic() < deadline, f"{segment} not archived into {demo_setup.wal_archive}"
        time.sleep(0.2)


def test_manifest_window_opens_now(demo_setup: launcher.Demo) -> None:
    from datetime import UTC, datetime, timedelta

    from sensei_airflow.manifest import load_manifests

    manifests = load_manifests(demo_setup.migrations_dir)
    assert not manifests.errors
    manifest = manifests.get("mig_shop_2026")
    assert datetime.now(UTC) - manifest.started_at < timedelta(minutes=30)
    assert manifest.rollback.backup_location == demo_setup.backups_dir.as_uri()


def test_pre_migration_backup_is_the_default_of_backup_restore(demo_setup: launcher.Demo) -> None:
    """The demo's start mark takes the pre-migration backup before its moment: that backup is the default."""
    finished = _one(
        demo_setup, "state", "SELECT max(completed_at) FROM sensei.backups WHERE kind = 'pre_migration'"
    )
    marked = _one(
        demo_setup,
        "state",
        "SELECT taken_at FROM sensei.migration_marks WHERE migration_id = 'mig_shop_2026'",
    )
    assert finished is not None and finished <= marked


def test_env_file_gives_a_working_airflow_cli(demo_setup: launcher.Demo) -> None:
    env_file = demo_setup.demo_dir / "env"
    script = f". {env_file} && airflow connections get shop_target -o json && airflow dags list -o plain"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(demo_setup.pg_ports["target"]) in result.stdout
    assert "sensei_rollback" in result.stdout
    assert (demo_setup.airflow_home / "simple_auth_manager_passwords.json").exists()
    text = env_file.read_text()
    assert all(
        f"export {key}=" in text
        for key in ("AIRFLOW_HOME", "AIRFLOW_CONN_SHOP_TARGET", "SENSEI_MIGRATIONS_DIR")
    )


def test_second_setup_reuses_clusters_and_data(demo_setup: launcher.Demo) -> None:
    before = _one(demo_setup, "target", "SELECT count(*) FROM sales.orders")
    clusters = demo_setup.start_clusters()
    assert all(c.is_running() for c in clusters.values())
    assert _one(demo_setup, "target", "SELECT count(*) FROM sales.orders") == before


def test_printed_curl_lines_start_a_rollback(airflow_server: AirflowServer) -> None:
    """The banner's curl lines, run by bash as a user would paste them, against a running Airflow."""
    airflow_server.migrate_demo()
    token, rollback, status = launcher.curl_lines(airflow_server.url, ADMIN)
    banner = launcher.banner(airflow_server.url, ADMIN, Path(".demo/env"))
    assert token in banner and rollback in banner
    script = f"set -e\n{token}\n{rollback}\n"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    started = json.loads(result.stdout)
    run = airflow_server.wait_for_run("sensei_rollback", started["rollback_id"])
    assert run["state"] == "success"
    result = subprocess.run(
        ["bash", "-c", f"set -e\n{token}\n{status}\n"], capture_output=True, text=True, timeout=120
    )
    document = json.loads(result.stdout)
    assert document["rollback_id"] == started["rollback_id"]
    assert document["rollback_status"] == "completed"
    assert airflow_server.scalar("target", "SELECT count(*) FROM sales.orders") == 0
    assert airflow_server.scalar("target", "SELECT count(*) FROM crm.customers") > 0


def test_ctrl_c_stops_the_whole_process_group(tmp_path: Path) -> None:
    """What the launcher does to airflow standalone: SIGINT to its group; children that ignore it are ended.

    Started while this process ignores SIGINT, as a background job does: ``spawn`` must restore
    the default handler, or the leader would never stop on Ctrl-C.
    """
    script = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"
        polite = "import time; time.sleep(600)"
        children = [subprocess.Popen([sys.executable, "-c", c]) for c in (stubborn, polite)]
        print(" ".join(str(c.pid) for c in children), flush=True)
        try:
            time.sleep(600)
        except KeyboardInterrupt:
            sys.exit(3)
        """
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(tmp_path / "out.log", "wb") as log:
            process = spawn([sys.executable, "-c", script], env=os.environ, log=log)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not (tmp_path / "out.log").read_text().strip():
        assert time.monotonic() < deadline, "the test's process tree did not start"
        time.sleep(0.1)
    children = [int(p) for p in (tmp_path / "out.log").read_text().split()]
    stop_group(process, timeout=5)
    assert process.returncode == 3, "the leader must get KeyboardInterrupt from SIGINT"
    assert not [pid for pid in children if _alive(pid)]


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
