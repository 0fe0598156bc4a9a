# ruff: noqa: F811 - the backup fixtures are imported from tests/integration/backups/conftest.py
"""kill -9 in execute_truncate and execute_backup_restore, then the rollback again; a backup corrupted mid-execute.

Each kill lands while the step's transaction waits for a sequence lock the test holds: the step
has taken its table locks (and, for the restore, set its constraints aside) but committed
nothing. The target must be exactly as before; the crashed run's lock is cleared with
``sensei lock release --force``; the rollback started again ends exactly right.
"""

from __future__ import annotations

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.backups.storage import FileStorage
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.state import StateStore
from tests.chaos.harness import (
    MIG,
    constraints,
    dsns,
    hold,
    kill_when_blocked,
    release_crashed_lock,
    rows,
    start_rollback,
    task_error,
    task_states,
    wait_until_gone,
)
from tests.e2e.test_backup_restore_e2e import change_after_migration, migrate_with_backup
from tests.fixtures import run_dag
from tests.integration.backups.conftest import MIGRATED, backup_dir, checksums  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e
TARGET_TABLES = [*MIGRATED, "crm.campaigns"]
#: TRUNCATE ... RESTART IDENTITY needs this sequence exclusively; holding it stops the step there.
SEQUENCE_HOLD = "ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 1"


def change_lock_holder(databases) -> str | None:
    """The application name of the session holding a migration's change lock on the target."""
    with databases.connect("target") as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return row[0] if row else None


def test_killed_in_execute_truncate_then_run_again(migrated, databases):
    before = rows(databases, "target", TARGET_TABLES)
    conf = {"migration_id": MIG, "strategy": "truncate", "reason": "Zoë's chaos drill: «kill -9»"}

    holders: list[str] = []

    def inside_the_fence(_: str) -> None:
        holders.append(MigrationLocks(StateStore("sensei_state")).holder(MIG).rollback_id)
        assert change_lock_holder(databases) == f"sensei {holders[0]}"  # the change runs inside the fence

    query = kill_when_blocked(
        databases.cluster.dsn(databases.target),
        [SEQUENCE_HOLD],
        conf,
        "execute_truncate's TRUNCATE",
        while_blocked=inside_the_fence,
    )
    assert query.startswith("TRUNCATE TABLE")
    crashed = holders[0]
    wait_until_gone(*dsns(databases))

    assert rows(databases, "target", TARGET_TABLES) == before  # untouched: nothing was committed
    assert release_crashed_lock(as_process=True) == crashed  # the installed console script, once
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    after = rows(databases, "target", TARGET_TABLES)
    assert {t: after[t] for t in MIGRATED} == {t: [] for t in MIGRATED}
    assert after["crm.campaigns"] == before["crm.campaigns"]
    trail = AuditTrail(StateStore("sensei_state"))
    assert "executed" not in [e["action"] for e in trail.events(crashed)]
    assert [e["action"] for e in trail.events(crashed)].count("lock released by force") == 1
    assert trail.verify().ok
    assert MigrationLocks(StateStore("sensei_state")).holder(MIG) is None


def test_killed_in_execute_backup_restore_then_run_again(databases, migrations_dir, airflow_db, backup_dir):
    pre_migration, backup_id = migrate_with_backup(databases, migrations_dir, str(backup_dir))
    change_after_migration(databases)
    before, shape = rows(databases, "target", TARGET_TABLES), constraints(databases)
    conf = {"migration_id": MIG, "strategy": "backup_restore", "backup_id": backup_id}
    query = kill_when_blocked(
        databases.cluster.dsn(databases.target),
        [SEQUENCE_HOLD],
        conf,
        "the restore's TRUNCATE, its foreign keys set aside",
    )
    assert query.startswith("TRUNCATE TABLE")
    wait_until_gone(*dsns(databases))

    assert rows(databases, "target", TARGET_TABLES) == before
    assert constraints(databases) == shape  # the foreign keys and keys it had dropped are back
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    assert checksums(databases) == pre_migration["sums"]  # exactly the backup's rows
    assert constraints(databases) == shape
    assert rows(databases, "target", ["crm.campaigns"]) == {"crm.campaigns": before["crm.campaigns"]}


def test_a_backup_corrupted_during_execute_fails_before_the_target_changes(
    databases, migrations_dir, airflow_db, backup_dir
):
    _, backup_id = migrate_with_backup(databases, migrations_dir, str(backup_dir))
    change_after_migration(databases)
    before, shape = rows(databases, "target", TARGET_TABLES), constraints(databases)
    entry = BackupCatalog(StateStore("sensei_state")).get(backup_id)
    data_file = FileStorage(entry.location)._path(entry.table_stats["sales.order_items"]["file"])
    conf = {"migration_id": MIG, "strategy": "backup_restore", "backup_id": backup_id}
    with hold(databases.cluster.dsn(databases.target), SEQUENCE_HOLD) as held:
        child = start_rollback(conf)
        try:
            # assess and execute's own checksum pass are behind it: the restore is under way
            held.blocked(child.alive, "the restore's TRUNCATE")
            damaged = bytearray(data_file.read_bytes())
            middle = len(damaged) // 2
            damaged[middle : middle + 16] = bytes(b ^ 0xFF for b in damaged[middle : middle + 16])
            data_file.write_bytes(bytes(damaged))
            held.release()
            run = child.finish()
        finally:
            child.stop()

    assert run["state"] == "failed"
    assert task_states(run["run_id"])["execute_backup_restore"] == "failed"
    error = task_error(run["run_id"], "execute_backup_restore")
    assert f"backup {backup_id} failed its checksum during the restore: backup file" in error
    assert rows(databases, "target", TARGET_TABLES) == before  # the partial load was rolled back
    assert constraints(databases) == shape
    assert MigrationLocks(StateStore("sensei_state")).holder(MIG) is None  # document gave the lock back
