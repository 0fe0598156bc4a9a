"""Which backup a rollback uses by default: the newest one of this very target database taken at or
before the migration's start, whatever its kind; refusals list every candidate with its reason.

Real PostgreSQL target and state store, real backups on local disk.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sensei_airflow.backups import jobs
from sensei_airflow.backups.catalog import BackupCatalog, BackupEntry
from sensei_airflow.conf import RollbackRequest
from sensei_airflow.manifest import Manifest
from sensei_airflow.plan import RefusedError, resolve_scope
from sensei_airflow.state import StateStore
from sensei_airflow.strategies.backup_restore import BackupRestoreStrategy
from sensei_airflow.strategies.truncate import TruncateStrategy
from tests.fixtures import migrate_demo, write_demo_manifest
from tests.integration.backups.conftest import fill_target


def manifest_starting_now(migrations_dir: Any, backup_dir: Any) -> Manifest:
    """The demo manifest (backups to ``backup_dir``) whose migration starts at this moment."""
    return write_demo_manifest(
        migrations_dir, pre_migration_backup=str(backup_dir), started_at=datetime.now(UTC)
    )


def take(manifest: Manifest, kind: str) -> BackupEntry:
    return jobs.backup_migration(manifest, kind=kind)  # type: ignore[arg-type]


def request(**conf: Any) -> RollbackRequest:
    return RollbackRequest.parse({"migration_id": "mig_shop_2026", "strategy": "backup_restore", **conf})


def assess(manifest: Manifest, **conf: Any) -> Any:
    strategy = BackupRestoreStrategy(manifest, StateStore("sensei_state"))
    wanted = request(**conf)
    return strategy.assess(resolve_scope(manifest, wanted), wanted)


@pytest.fixture
def other_target(pg_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Creates another database with the demo's target tables; ``use()`` points shop_target at it."""
    import psycopg

    from sensei_airflow.demo.shop import TARGET_DDL

    name = f"elsewhere_{uuid.uuid4().hex[:8]}"
    uri = pg_cluster.create_database(name)
    with psycopg.connect(pg_cluster.dsn(name), autocommit=True) as conn:
        conn.execute(TARGET_DDL)
    yield uri
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_default_is_the_newest_backup_taken_before_the_start_whatever_its_kind(
    databases, migrations_dir, backup_dir
):
    fill_target(databases)
    early = manifest_starting_now(migrations_dir, backup_dir)
    scheduled = take(early, "scheduled")  # before the migration: what a rollback must go back to
    manifest = manifest_starting_now(migrations_dir, backup_dir)
    migrate_demo(manifest, customers=60, mark=False)  # no mark: started_at is the start
    after = take(manifest, "pre_migration")  # taken once the migration ran: holds its rows
    assert after.row_counts()["sales.orders"] > scheduled.row_counts()["sales.orders"]

    assessment = assess(manifest)

    assert assessment.detail["backup_id"] == scheduled.backup_id
    assert assessment.detail["backup_rows"] == scheduled.row_counts()
    assert assessment.warnings == []


def test_with_a_start_mark_the_default_is_the_backup_the_mark_took(databases, migrations_dir, backup_dir):
    """The mark is the start: its own backup (taken just before its moment) is the default, though it was
    taken after the manifest's started_at, and a backup taken after the mark never is."""
    from sensei_airflow.mark import load_mark

    fill_target(databases)
    manifest = manifest_starting_now(migrations_dir, backup_dir)  # started_at: before the mark's backup
    migrate_demo(manifest, customers=60)  # takes the start mark, which takes the pre-migration backup
    mark = load_mark(StateStore("sensei_state"), manifest.id)
    assert mark is not None and mark.backup_id is not None
    after = take(manifest, "pre_migration")  # after the mark: holds the migration's rows

    assessment = assess(manifest)

    assert assessment.detail["backup_id"] == mark.backup_id != after.backup_id
    assert assessment.detail["backup_rows"] == mark.rows()


def test_refusal_lists_every_candidate_and_why_it_cannot_be_used(databases, migrations_dir, backup_dir):
    fill_target(databases)
    manifest = manifest_starting_now(migrations_dir, backup_dir)
    expired = take(manifest, "scheduled")
    with databases.connect("state") as conn:
        conn.execute(
            "UPDATE sensei.backups SET expires_at = now() - interval '1 minute' WHERE backup_id = %s",
            (expired.backup_id,),
        )
    manifest = manifest_starting_now(migrations_dir, backup_dir)
    late = take(manifest, "pre_migration")

    with pytest.raises(RefusedError) as refused:
        assess(manifest)

    reason = str(refused.value)
    assert "no backup of this target taken at or before the migration's start" in reason
    assert f"{late.backup_id} (pre_migration, taken " in reason
    assert "taken after the migration's start" in reason
    assert f"{expired.backup_id} (scheduled, taken " in reason and "expired at" in reason
    assert reason.index(late.backup_id) < reason.index(expired.backup_id)  # newest first
    assert reason.endswith("name one with backup_id or choose another strategy")
    assert "\n" not in reason


def test_a_backup_of_another_database_is_never_the_default_nor_restored_by_id(
    databases, migrations_dir, backup_dir, other_target, monkeypatch
):
    fill_target(databases)
    early = manifest_starting_now(migrations_dir, backup_dir)
    elsewhere = take(early, "pre_migration")  # of the database shop_target named then
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_TARGET", other_target)  # the manifest's target now
    manifest = manifest_starting_now(migrations_dir, backup_dir)

    with pytest.raises(RefusedError) as refused:
        assess(manifest)
    assert f"{elsewhere.backup_id} (pre_migration, taken " in str(refused.value)
    assert f"taken from database {databases.target} on the same server, not from this target" in str(
        refused.value
    )

    with pytest.raises(RefusedError) as by_id:
        assess(manifest, backup_id=elsewhere.backup_id)
    assert str(by_id.value) == (
        f"backup {elsewhere.backup_id} was taken from database {databases.target} on the same server, "
        "not from this target (shop_target)"
    )


def test_an_entry_without_its_database_is_named_not_guessed(databases, migrations_dir, backup_dir):
    fill_target(databases)
    early = manifest_starting_now(migrations_dir, backup_dir)
    old = take(early, "pre_migration")
    with databases.connect("state") as conn:  # as recorded before the catalog kept the identity
        conn.execute("UPDATE sensei.backups SET database = NULL")
    manifest = manifest_starting_now(migrations_dir, backup_dir)

    with pytest.raises(RefusedError, match="does not record which database it was taken from") as refused:
        assess(manifest)
    assert old.backup_id in str(refused.value)

    named = assess(manifest, backup_id=old.backup_id)  # the DBA named it: restored as asked, with a warning
    assert named.detail["backup_id"] == old.backup_id
    assert any("does not record which database it was taken from" in w for w in named.warnings)


def test_a_backup_taken_after_the_start_named_by_id_is_restored_with_a_warning(
    databases, migrations_dir, backup_dir
):
    fill_target(databases)
    manifest = manifest_starting_now(migrations_dir, backup_dir)
    late = take(manifest, "manual")

    named = assess(manifest, backup_id=late.backup_id)

    assert named.detail["backup_id"] == late.backup_id
    assert named.warnings == [
        f"backup {late.backup_id} was taken after the migration's start "
        f"({manifest.started_at.isoformat(timespec='seconds')}): it may hold rows the migration wrote; "
        "restoring it as asked"
    ]


def test_truncate_takes_no_evidence_from_a_backup_taken_after_the_start_or_of_another_database(
    databases, migrations_dir, backup_dir, other_target, monkeypatch
):
    # A database that held rows before: its backup says nothing about the target named now.
    fill_target(databases)
    early = manifest_starting_now(migrations_dir, backup_dir)
    take(early, "pre_migration")
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_TARGET", other_target)
    manifest = manifest_starting_now(migrations_dir, backup_dir)
    migrated = migrate_demo(manifest, customers=40, mark=False)  # no mark: started_at is the start
    take(manifest, "pre_migration")  # after the migration: it holds the migrated rows
    catalog = BackupCatalog(StateStore("sensei_state"))
    assert len(catalog.list(manifest.id)) == 2

    wanted = RollbackRequest.parse({"migration_id": manifest.id, "strategy": "truncate"})
    assessment = TruncateStrategy(manifest, StateStore("sensei_state")).assess(
        resolve_scope(manifest, wanted), wanted
    )

    assert assessment.rows == migrated  # it will empty them: nothing was there before the migration
