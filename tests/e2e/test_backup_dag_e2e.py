# ruff: noqa: F811 - the backup fixtures are imported from tests/integration/backups/conftest.py
"""The scheduled sensei_backup DAG through dag.test: backups taken, catalogued and verified, expired ones
pruned (files and entry), a broken migration failing visibly without stopping the others, audit trail."""

from __future__ import annotations

import json

import pytest

from sensei_airflow.backups import jobs, logical
from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.cli import main as sensei_cli
from sensei_airflow.demo.shop import TARGET_DDL
from sensei_airflow.state import StateStore
from tests.fixtures import run_dag, write_demo_manifest
from tests.integration.backups.conftest import MIGRATED, backup_dir, checksums, fill_target  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def three_migrations(databases, migrations_dir, airflow_db, backup_dir, monkeypatch):
    """mig_shop_2026 and mig_second back up real targets; mig_broken's target connection leads nowhere."""
    import psycopg

    fill_target(databases)
    second = f"{databases.target}_second"
    monkeypatch.setenv("AIRFLOW_CONN_SECOND_TARGET", databases.cluster.create_database(second))
    with psycopg.connect(databases.cluster.dsn(second), autocommit=True) as conn:
        conn.execute(TARGET_DDL)
        conn.execute("INSERT INTO crm.customers (name, email_address, balance_cents, created_at) "
                     "SELECT 'c' || g, 'c' || g, g, now() FROM generate_series(1, 30) g")  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN_TARGET", databases.cluster.uri("no_such_database"))
    location = str(backup_dir)
    manifests = {
        "mig_shop_2026": write_demo_manifest(migrations_dir, pre_migration_backup=location),
        "mig_second": write_demo_manifest(migrations_dir, migration_id="mig_second", target_conn_id="second_target",
                                          pre_migration_backup=location, backup_schedule="@hourly"),
        "mig_broken": write_demo_manifest(migrations_dir, migration_id="mig_broken", target_conn_id="broken_target",
                                          pre_migration_backup=location),
    }  # fmt: skip
    yield manifests
    with psycopg.connect(databases.cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{second}" WITH (FORCE)')


def audit_actions(databases) -> list[tuple[str, str]]:
    with databases.connect("state") as conn:
        rows = conn.execute(
            "SELECT migration_id, action FROM sensei.audit_events WHERE step = 'backup' ORDER BY seq"
        ).fetchall()
    return [(m, a) for m, a in rows]


def test_scheduled_run_backs_up_verifies_prunes_and_fails_visibly(
    databases, three_migrations, backup_dir, capsys
):
    catalog = BackupCatalog(StateStore("sensei_state"))
    old = jobs.backup_migration(three_migrations["mig_shop_2026"], kind="pre_migration", catalog=catalog)
    with databases.connect("state") as conn:
        conn.execute("UPDATE sensei.backups SET expires_at = now() - interval '1 day' WHERE backup_id = %s",
                     (old.backup_id,))  # fmt: skip
    assert (backup_dir / "mig_shop_2026" / old.backup_id).is_dir()

    outcome = run_dag("sensei_backup", {"restore_test": "all"})

    assert outcome.state == "failed"
    assert outcome.task_states["backup_mig_broken"] == "failed"
    assert outcome.task_states["backup_mig_shop_2026"] == "success"
    assert outcome.task_states["backup_mig_second"] == "success"
    assert outcome.task_states["verify_backups"] == "success"
    assert outcome.task_states["prune_expired"] == "success"
    assert outcome.task_states["outcome"] == "failed"
    summary = outcome.xcoms["outcome"]
    assert len(summary["backed_up"]) == 2 and len(summary["failed"]) == 1
    assert "backup_mig_broken" in summary["failed"][0] and "no_such_database" in summary["failed"][0]

    # New backups: catalogued, verified by checksum and by a restore into a scratch database.
    new = {e.migration_id: e for e in catalog.list() if e.kind == "scheduled"}
    assert set(new) == {"mig_shop_2026", "mig_second"}
    assert sorted(summary["backed_up"]) == sorted(e.backup_id for e in new.values())
    for entry in new.values():
        assert entry.status == "verified", entry
        assert entry.verification["ok"] and entry.verification["restore_test"]["ok"]
        assert set(entry.files) == {"schema.archive", *(logical.data_file(t) for t in MIGRATED)}
    assert {t: (s["rows"], s["checksum"]) for t, s in new["mig_shop_2026"].table_stats.items()} == checksums(
        databases
    )
    assert new["mig_second"].table_stats["crm.customers"]["rows"] == 30

    # The expired backup is gone from storage and from the catalog; the new ones are there.
    assert catalog.get(old.backup_id) is None
    assert not (backup_dir / "mig_shop_2026" / old.backup_id).exists()
    for entry in new.values():
        assert (backup_dir / entry.migration_id / entry.backup_id / "schema.archive").is_file()

    actions = audit_actions(databases)
    assert ("mig_broken", "backup_failed") in actions
    assert actions.count(("mig_shop_2026", "backed_up")) == 1
    assert actions.count(("mig_second", "backed_up")) == 1
    assert ("mig_second", "verified") in actions and ("mig_shop_2026", "pruned") in actions

    # The catalog, as the operator sees it.
    capsys.readouterr()
    assert sensei_cli(["backups", "list", "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("[\n") :])
    assert {b["backup_id"] for b in listed} == {e.backup_id for e in catalog.list()}
    assert sensei_cli(["backups", "list", "--migration-id", "mig_second"]) == 0
    text = capsys.readouterr().out
    assert (
        new["mig_second"].backup_id in text
        and "verified" in text
        and new["mig_shop_2026"].backup_id not in text
    )


def test_conf_backs_up_one_migration_now(databases, three_migrations):
    catalog = BackupCatalog(StateStore("sensei_state"))
    outcome = run_dag("sensei_backup", {"migration_id": "mig_second", "restore_test": "none"})
    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["backup_mig_second"] == "success"
    assert outcome.task_states["backup_mig_shop_2026"] == "skipped"
    assert outcome.task_states["backup_mig_broken"] == "skipped"
    [entry] = catalog.list()
    assert entry.migration_id == "mig_second" and entry.status == "verified"
    assert outcome.xcoms["verify_backups"]["verified"] == [
        {"backup_id": entry.backup_id, "ok": True, "restore_tested": False, "problems": []}
    ]

    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="mig_nope"):  # refused on trigger, before any task
        run_dag("sensei_backup", {"migration_id": "mig_nope"})
    assert len(catalog.list()) == 1
