# ruff: noqa: F811 - the backup fixtures are imported from tests/integration/backups/conftest.py
"""backup_restore refuses, with the reason and before anything changes: unknown id, expired, corrupted,
not covering a table in scope, storage unreachable."""

from __future__ import annotations

import json

import pytest

from sensei_airflow.backups import jobs, logical
from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.engines import get_engine
from sensei_airflow.state import StateStore
from tests.fixtures import migrate_demo, run_dag, write_demo_manifest
from tests.integration.backups.conftest import (  # noqa: F401 - fixtures
    backup_dir,
    checksums,
    fill_target,
    s3_bucket,
    s3_server,
)

pytestmark = pytest.mark.e2e


def assess_error(outcome) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="sensei_rollback", run_id=outcome.run_id, task_id="assess", key="error")
            .one()
        )
        return XComModel.deserialize_value(row)["error"]


def refused(databases, conf: dict, *reason: str) -> None:
    """The rollback fails in assess, naming the reason, and the target is exactly as it was."""
    before = checksums(databases)
    outcome = run_dag(
        "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "backup_restore", **conf}
    )
    assert outcome.state == "failed"
    assert outcome.task_states["assess"] == "failed"
    assert all(
        state != "success" for task, state in outcome.task_states.items() if task.startswith("execute")
    )
    error = assess_error(outcome)
    for words in reason:
        assert words in error, error
    assert checksums(databases) == before


@pytest.fixture
def setup(databases, migrations_dir, airflow_db, backup_dir):
    """A pre-migration backup on local disk, then the demo migration (starting after it), then a change."""
    fill_target(databases)
    manifest = write_demo_manifest(migrations_dir, pre_migration_backup=str(backup_dir))
    catalog = BackupCatalog(StateStore("sensei_state"))
    entry = jobs.backup_migration(manifest, kind="pre_migration", catalog=catalog)
    manifest = write_demo_manifest(migrations_dir, pre_migration_backup=str(backup_dir))  # starts now
    migrate_demo(manifest, customers=100)
    with databases.connect("target") as conn:
        conn.execute("UPDATE sales.orders SET status = 'changed' WHERE id < 20")
    return manifest, catalog, entry


def test_unknown_backup_id(databases, setup):
    refused(databases, {"backup_id": "bkp_abc123"}, "bkp_abc123", "does not exist")


def test_expired_backup(databases, setup):
    _, _, entry = setup
    with databases.connect("state") as conn:
        conn.execute("UPDATE sensei.backups SET expires_at = now() - interval '1 minute'")
    refused(databases, {"backup_id": entry.backup_id}, entry.backup_id, "expired")
    refused(databases, {}, "no backup of this target taken at or before the migration's start", "expired at")


def test_corrupted_backup_file(databases, setup, backup_dir):
    _, _, entry = setup
    name = entry.table_stats["sales.orders"]["file"]
    assert name == logical.data_file("sales.orders")
    path = backup_dir / "mig_shop_2026" / entry.backup_id / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    refused(databases, {"backup_id": entry.backup_id}, "failed its checksum", name)


def test_backup_missing_a_table_in_scope(databases, setup, backup_dir):
    manifest, catalog, _ = setup
    partial = logical.take_logical_backup(
        engine=get_engine("shop_target"), tables=["sales.order_items"], location=str(backup_dir),
        catalog=catalog, migration_id=manifest.id, kind="manual",
    )  # fmt: skip
    refused(databases, {"backup_id": partial.backup_id}, partial.backup_id, "does not cover crm.customers")
    # The same backup is fine for a scope it covers.
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "backup_restore",
                                          "backup_id": partial.backup_id, "scope": "tables",
                                          "tables": ["order_items"], "dry_run": True})  # fmt: skip
    assert outcome.state == "success", outcome.task_states
    assert outcome.xcoms["assess"]["statements"][0].startswith(f"-- restore from backup {partial.backup_id}")


def test_storage_unreachable(databases, migrations_dir, airflow_db, s3_bucket, monkeypatch):
    fill_target(databases)
    manifest = write_demo_manifest(migrations_dir, pre_migration_backup=f"s3://{s3_bucket}/pm/")
    entry = jobs.backup_migration(manifest, kind="pre_migration")
    migrate_demo(manifest, customers=50)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "login": "a", "password": "b",
                    "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}),
    )  # fmt: skip
    refused(databases, {"backup_id": entry.backup_id}, entry.backup_id, "storage unreachable")
