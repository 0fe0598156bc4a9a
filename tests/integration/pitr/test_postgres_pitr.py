"""Table-level point-in-time recovery on a real PostgreSQL cluster with WAL archiving."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.engines.base import PointInTimeRefused, RecoveryTarget
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.basebackup import list_base_backups
from sensei_airflow.engines.postgres.cluster import remove_cluster
from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery, recover
from sensei_airflow.engines.postgres.wal import archived_segments
from sensei_airflow.manifest import PointInTimeSettings
from tests.integration.pitr.clusters import ArchivingCluster

SCHEMA = """
CREATE SCHEMA crm;
CREATE TABLE crm.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE crm.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES crm.customers (id),
                         total numeric(10, 2) NOT NULL);
CREATE TABLE crm.campaigns (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO crm.customers (name) SELECT 'customer ' || g FROM generate_series(1, 200) g;
INSERT INTO crm.orders SELECT g, 1 + g % 200, g * 1.5 FROM generate_series(1, 500) g;
INSERT INTO crm.campaigns VALUES (1, 'spring');
"""

LATER = """
INSERT INTO crm.customers (name) SELECT 'late ' || g FROM generate_series(1, 30) g;
UPDATE crm.orders SET total = 0 WHERE id <= 100;
DELETE FROM crm.orders WHERE id > 450;
INSERT INTO crm.orders VALUES (9001, 201, 9.99);
INSERT INTO crm.campaigns VALUES (2, 'summer');
"""


def recovery(archiving: ArchivingCluster, **overrides: Any) -> PostgresWalRecovery:
    settings = PointInTimeSettings.model_validate({"postgres": archiving.settings(**overrides)})
    return PostgresWalRecovery(PostgresEngine("pitr_target"), settings)


def content(archiving: ArchivingCluster, database: str, table: str) -> list[tuple[Any, ...]]:
    with archiving.connect(database) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608


def snapshot(archiving: ArchivingCluster, database: str) -> dict[str, list[tuple[Any, ...]]]:
    return {t: content(archiving, database, t) for t in ("crm.customers", "crm.orders", "crm.campaigns")}


@pytest.fixture
def changed_after_point(
    archiving: ArchivingCluster, shop_db: str
) -> tuple[datetime, dict[str, Any], dict[str, Any]]:
    """The shop at a point, then changed: (the point, the content at it, the content now)."""
    with archiving.connect(shop_db) as conn:
        conn.execute(SCHEMA)
    point = archiving.now(shop_db)
    before = snapshot(archiving, shop_db)
    with archiving.connect(shop_db) as conn:
        conn.execute(LATER)
    return point, before, snapshot(archiving, shop_db)


def test_table_level_restores_only_the_tables_in_scope(archiving, shop_db, changed_after_point):
    point, before, after = changed_after_point
    other_db = f"{shop_db}_other"
    archiving.cluster.create_database(other_db)
    with archiving.connect(other_db) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1), (2)")
    assert before["crm.orders"] != after["crm.orders"]

    pitr = recovery(archiving)
    target = RecoveryTarget(time=point)
    plan = pitr.assess(["crm.orders", "crm.customers"], target, whole_database=False)
    assert plan.path == "table"
    assert plan.tables == ["crm.customers", "crm.orders"]  # parents first
    outcome = pitr.restore(plan, target)

    assert content(archiving, shop_db, "crm.customers") == before["crm.customers"]
    assert content(archiving, shop_db, "crm.orders") == before["crm.orders"]
    assert outcome.rows_restored == {"crm.customers": 200, "crm.orders": 500}
    # outside the scope: the later change stays, as does the other database
    assert content(archiving, shop_db, "crm.campaigns") == after["crm.campaigns"]
    assert content(archiving, other_db, "notes") == [(1,), (2,)]
    assert outcome.detail["recovery"].startswith("recovery stopping before commit")
    # the sequence continues after the restored rows
    with archiving.connect(shop_db) as conn:
        assert conn.execute("SELECT nextval('crm.customers_id_seq')").fetchone()[0] > 200
    assert archiving.scratch_leftovers() == []


def test_restore_point_is_preferred_and_reached(archiving, shop_db):
    with archiving.connect(shop_db) as conn:
        conn.execute(SCHEMA)
    pitr = recovery(archiving)
    lsn = pitr.create_restore_point(f"sensei_{shop_db}")
    marked = snapshot(archiving, shop_db)
    with archiving.connect(shop_db) as conn:
        conn.execute(LATER)
    # a wrong time beside the restore point: the name wins
    target = RecoveryTarget(time=datetime.now(UTC), restore_point=f"sensei_{shop_db}", position=lsn)
    plan = pitr.assess(["crm.customers", "crm.orders"], target, whole_database=False)
    assert plan.detail["use_restore_point"] is True
    assert any(f"recovery_target_name = 'sensei_{shop_db}'" in step for step in plan.steps)
    outcome = pitr.restore(plan, target)
    assert "restore point" in outcome.detail["recovery"]
    assert content(archiving, shop_db, "crm.orders") == marked["crm.orders"]
    assert content(archiving, shop_db, "crm.customers") == marked["crm.customers"]


def test_naive_timestamp_is_refused():
    with pytest.raises(PointInTimeRefused, match="no UTC offset"):
        RecoveryTarget(time=datetime(2026, 2, 2, 8, 0))


def test_points_outside_the_archive_are_refused_in_assess(archiving, shop_db):
    with archiving.connect(shop_db) as conn:
        conn.execute(SCHEMA)
    pitr = recovery(archiving)
    oldest = list_base_backups(archiving.backups)[0]
    with pytest.raises(PointInTimeRefused, match="before the oldest base backup"):
        pitr.assess(
            ["crm.orders"], RecoveryTarget(time=oldest.end_time - timedelta(minutes=5)), whole_database=False
        )
    with pytest.raises(PointInTimeRefused, match="after the newest WAL"):
        pitr.assess(
            ["crm.orders"], RecoveryTarget(time=datetime.now(UTC) + timedelta(hours=1)), whole_database=False
        )


def test_outside_child_with_rows_is_refused(archiving, shop_db, changed_after_point):
    point, _, _ = changed_after_point
    with pytest.raises(
        PointInTimeRefused, match=r"crm.orders \(outside the scope\) references crm.customers"
    ):
        recovery(archiving).assess(["crm.customers"], RecoveryTarget(time=point), whole_database=False)


def _archive_without_a_segment(archiving: ArchivingCluster, tmp_root: Path) -> tuple[Path, str]:
    """A copy of the archive with one segment after the base backup removed."""
    copy = tmp_root / "archive-with-gap"
    shutil.copytree(archiving.archive, copy)
    backup = list_base_backups(archiving.backups)[0]
    later = [s for s in archived_segments(copy) if s > backup.start_wal_file]
    assert later, "the test needs WAL archived after the base backup"
    (copy / later[0]).unlink()
    return copy, later[0]


def test_archive_gap_is_refused_before_the_target_changes(archiving, shop_db, changed_after_point):
    point, _, after = changed_after_point
    recovery(archiving).switch_and_wait()
    gap_root = archiving.root / "gap"
    gap_root.mkdir(exist_ok=True)
    archive, missing = _archive_without_a_segment(archiving, gap_root)
    pitr = recovery(archiving, wal_archive=str(archive))
    with pytest.raises(PointInTimeRefused, match=f"WAL segment {missing} is missing"):
        pitr.assess(["crm.customers", "crm.orders"], RecoveryTarget(time=point), whole_database=False)
    assert snapshot(archiving, shop_db) == after
    shutil.rmtree(gap_root)


def test_missing_segment_during_replay_fails_and_leaves_no_scratch(archiving, shop_db, changed_after_point):
    """Replay itself stops at a missing segment: recovery fails with the server's reason."""
    point, _, after = changed_after_point
    recovery(archiving).switch_and_wait()
    gap_root = archiving.root / "gap2"
    gap_root.mkdir(exist_ok=True)
    archive, _ = _archive_without_a_segment(archiving, gap_root)
    pitr = recovery(archiving, wal_archive=str(archive))
    backup = list_base_backups(archiving.backups)[0]
    base = archiving.scratch / "replay-gap"
    with pytest.raises(PointInTimeRefused, match="failed before the live target changed") as refused:
        try:
            recover(
                backup,
                RecoveryTarget(time=point),
                pitr.config,
                base,
                use_restore_point=False,
                user="postgres",
            )
        finally:
            remove_cluster(base)
    assert "recovery ended before configured recovery target was reached" in str(refused.value)
    assert snapshot(archiving, shop_db) == after
    assert archiving.scratch_leftovers() == []
    shutil.rmtree(gap_root)


def test_scratch_clusters_listen_on_a_private_socket_only_even_two_at_once(
    archiving, shop_db, changed_after_point
):
    """Two rollbacks' scratch clusters start at the same moment (two workers, one port in the range):
    both come up; neither listens on TCP nor trusts anything but its own 0700 socket folder."""
    import psycopg

    point, before, _ = changed_after_point
    pitr = recovery(archiving, scratch_ports=[55400, 55400])
    pitr.switch_and_wait()
    backup = list_base_backups(archiving.backups)[0]
    bases = [archiving.scratch / f"twin-{n}" for n in (1, 2)]
    recovered: dict[int, Any] = {}
    errors: list[BaseException] = []

    def start(n: int) -> None:
        try:
            recovered[n] = recover(
                backup,
                RecoveryTarget(time=point),
                pitr.config,
                bases[n],
                use_restore_point=False,
                user="postgres",
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors, "\n".join(str(e) for e in errors)
        for scratch in recovered.values():
            cluster = scratch.cluster
            with psycopg.connect(scratch.dsn(shop_db, "postgres")) as conn:
                assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
                assert conn.execute("SELECT count(*) FROM crm.customers").fetchone()[0] == len(
                    before["crm.customers"]
                )
                rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
            assert rules == [("local", "trust")]
            folder = cluster.socket_dir.stat()
            assert stat.S_IMODE(folder.st_mode) == 0o700
            if os.geteuid() == 0:
                assert pwd.getpwuid(folder.st_uid).pw_name == "postgres"
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(
                    f"host=127.0.0.1 port={cluster.port} dbname={shop_db} user=postgres", connect_timeout=5
                )
    finally:
        for base in bases:
            remove_cluster(base)


def test_windows_follow_backup_and_wal_retention(archiving, shop_db):
    backup = list_base_backups(archiving.backups)[0]
    pitr = recovery(archiving, base_backup_retention_days=7, wal_retention_days=3)
    point = backup.end_time + timedelta(seconds=1)
    [window] = pitr.windows(["crm.orders"], point)
    assert window.earliest == backup.end_time
    assert window.closes_at == backup.start_time + timedelta(days=3)
    assert window.limit == "WAL archive retention"
    [before_backup] = pitr.windows(["crm.orders"], backup.end_time - timedelta(hours=1))
    assert before_backup.closes_at == backup.end_time - timedelta(hours=1)
    assert "no base backup" in before_backup.limit


def test_tar_format_base_backup_is_usable(archiving, shop_db, changed_after_point, tmp_path):
    """Physical backups in pg_basebackup's tar format, zstd-compressed as the backup DAG stores them, serve PITR."""
    import subprocess

    from sensei_airflow.engines.postgres.client import find_program

    point, before, after = changed_after_point
    tar_backups = archiving.root / "tar-backups"
    plain = list_base_backups(archiving.backups)[0]
    dest = tar_backups / "physical-1"
    dest.mkdir(parents=True)
    for member, source in (("base.tar", plain.path), ("pg_wal.tar", plain.path / "pg_wal")):
        entries = sorted(p.name for p in source.iterdir())
        subprocess.run(["tar", "-cf", str(dest / member), "-C", str(source), *entries], check=True)
        subprocess.run(
            ["zstd", "-q", "--rm", "-1", str(dest / member)], check=True
        )  # the backup DAG's layout
    (dest / "backup_manifest").write_text((plain.path / "backup_manifest").read_text())
    assert sorted(p.name for p in dest.iterdir()) == ["backup_manifest", "base.tar.zst", "pg_wal.tar.zst"]
    [described] = list_base_backups(tar_backups)
    assert (described.start_lsn, described.start_wal_file) == (plain.start_lsn, plain.start_wal_file)
    assert find_program("pg_ctl")  # the server binaries the recovery uses

    pitr = recovery(archiving, base_backups=str(tar_backups))
    target = RecoveryTarget(time=point)
    plan = pitr.assess(["crm.customers", "crm.orders"], target, whole_database=False)
    pitr.restore(plan, target)
    assert content(archiving, shop_db, "crm.orders") == before["crm.orders"]
    assert content(archiving, shop_db, "crm.campaigns") == after["crm.campaigns"]
    shutil.rmtree(tar_backups)


def test_an_lsn_is_reached_exactly(archiving, shop_db):
    with archiving.connect(shop_db) as conn:
        conn.execute(SCHEMA)
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    marked = snapshot(archiving, shop_db)
    with archiving.connect(shop_db) as conn:
        conn.execute(LATER)
    target = RecoveryTarget(time=datetime.now(UTC), position=lsn)
    pitr = recovery(archiving)
    plan = pitr.assess(["crm.customers", "crm.orders"], target, whole_database=False)
    assert any(f"recovery_target_lsn = '{lsn}'" in step for step in plan.steps)
    pitr.restore(plan, target)
    assert content(archiving, shop_db, "crm.orders") == marked["crm.orders"]
    assert content(archiving, shop_db, "crm.customers") == marked["crm.customers"]
