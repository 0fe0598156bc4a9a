"""Cluster-level point-in-time recovery: the whole cluster is recovered and swapped in.

Its own cluster (the swap restarts it), so the table-level tests never see it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sensei_airflow.engines.base import RecoveryTarget
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery
from sensei_airflow.manifest import PointInTimeSettings
from tests.integration.pitr.clusters import ArchivingCluster, archiving_cluster


@pytest.fixture(scope="module")
def dedicated() -> Iterator[ArchivingCluster]:
    with archiving_cluster("sensei-pitr-cl-") as cluster:
        cluster.base_backup()
        yield cluster


def test_whole_cluster_is_recovered_and_swapped_in(dedicated, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PITR_TARGET", dedicated.cluster.create_database("warehouse"))
    with dedicated.connect("warehouse") as conn:
        conn.execute("CREATE TABLE facts (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO facts SELECT g, 'v' || g FROM generate_series(1, 1000) g")
    point = dedicated.now("warehouse")
    with dedicated.connect("warehouse") as conn:
        conn.execute("DELETE FROM facts WHERE id > 600")
        conn.execute("CREATE TABLE created_later (id int)")
    port_before = dedicated.cluster.port
    hba_before = (dedicated.cluster.data_dir / "pg_hba.conf").read_text()
    (dedicated.cluster.data_dir / "postgresql.auto.conf").write_text("work_mem = '7MB'\n")

    settings = PointInTimeSettings.model_validate(
        {
            "target_holds_only_this_migration": True,
            "postgres": dedicated.settings(data_directory=str(dedicated.cluster.data_dir)),
        }
    )
    pitr = PostgresWalRecovery(PostgresEngine("pitr_target"), settings)
    target = RecoveryTarget(time=point)
    plan = pitr.assess(["public.facts"], target, whole_database=True)
    assert plan.path == "database", plan.warnings
    outcome = pitr.restore(plan, target)

    assert outcome.rows_restored == {"public.facts": 1000}
    with dedicated.connect("warehouse") as conn:  # same port, same data directory path
        assert conn.execute("SELECT count(*) FROM facts").fetchone()[0] == 1000
        assert conn.execute("SELECT to_regclass('created_later')").fetchone()[0] is None
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        # its own settings came back: it still archives WAL
        assert conn.execute("SELECT current_setting('archive_mode')").fetchone()[0] == "on"
    assert dedicated.cluster.port == port_before
    assert (dedicated.cluster.data_dir / "pg_hba.conf").read_text() == hba_before
    with dedicated.connect("warehouse") as conn:
        assert conn.execute("SELECT current_setting('work_mem')").fetchone()[0] == "7MB"
    previous = outcome.detail["previous_data_directory"]
    assert previous.startswith(str(dedicated.cluster.data_dir) + ".before-pitr-")
    leftovers = sorted(p.name for p in dedicated.cluster.base_dir.iterdir())
    assert not [name for name in leftovers if name.endswith(".sensei-restore")]


def test_cluster_path_needs_the_data_directory(dedicated, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PITR_TARGET", dedicated.cluster.uri("postgres"))
    settings = PointInTimeSettings.model_validate(
        {"target_holds_only_this_migration": True, "postgres": dedicated.settings()}
    )
    pitr = PostgresWalRecovery(PostgresEngine("pitr_target"), settings)
    plan = pitr.assess([], RecoveryTarget(time=dedicated.now()), whole_database=True)
    assert plan.path == "table"
    assert "data_directory is not set" in plan.warnings[0]
