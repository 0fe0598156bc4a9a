# ruff: noqa: F811 - the backup fixtures are imported from tests/integration/backups/conftest.py
"""Pre-migration backup -> demo migration -> changes -> backup_restore through the sensei_rollback DAG.

Real PostgreSQL source, target and state; backups on local disk and on a local S3 (moto);
Airflow runs the DAGs with dag.test. The target tables hold rows from before the migration,
so a correct restore is visible (they come back) and a truncate would be wrong (it refuses).
"""

from __future__ import annotations

from typing import Any

import pytest

from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.state import StateStore
from tests.chaos.harness import task_error
from tests.fixtures import mark_checks_of, migrate_demo, run_dag, write_demo_manifest
from tests.integration.backups.conftest import (  # noqa: F401 - fixtures
    MIGRATED,
    backup_dir,
    checksums,
    fill_target,
    next_ids,
    s3_bucket,
    s3_server,
    structure,
)

pytestmark = pytest.mark.e2e
ROLLBACK = "sensei_rollback"


def change_after_migration(databases) -> None:
    """What happens on the target after the cutover: inserts, updates, deletes in every table."""
    with databases.connect("target") as conn, conn.transaction():
        conn.execute("INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) "
                     "VALUES (5000, 'late', 'late@example.com', 1, now())")  # fmt: skip
        conn.execute("UPDATE sales.orders SET status = 'refunded' WHERE id % 7 = 0")
        conn.execute("DELETE FROM sales.order_items WHERE line_no = 1 AND order_id < 50")
        conn.execute("UPDATE crm.customers SET name = 'renamed' WHERE id = 900003")


def migrate_with_backup(databases, migrations_dir, location: str) -> tuple[dict, str]:
    """Fill the target, write the manifest, run the demo migration DAG; the pre-migration state and backup id."""
    fill_target(databases)
    write_demo_manifest(migrations_dir, pre_migration_backup=location, backup_retention_days=2)
    before = {"sums": checksums(databases), "structure": structure(databases)}
    outcome = run_dag("sensei_demo_migration")
    assert outcome.state == "success", outcome.task_states
    backup_id = outcome.xcoms["start_mark"]["backup_id"]  # the start mark took it, before its moment
    assert backup_id.startswith("bkp_")
    assert checksums(databases) != before["sums"]  # the migration added rows
    return before, backup_id


def sequences_follow_the_keys(databases) -> bool:
    """Each identity hands out an id above the table's highest key (the runbook's sequence step)."""
    ids = next_ids(databases)
    with databases.connect("target") as conn:
        highest = {t: conn.execute(f"SELECT max(id) FROM {t}").fetchone()[0] for t in ids}  # noqa: S608
    return all(ids[t] > highest[t] for t in ids)


def campaigns(databases) -> list:
    with databases.connect("target") as conn:
        return conn.execute("SELECT * FROM crm.campaigns ORDER BY id").fetchall()


def test_full_restore_with_the_seed_payload(databases, migrations_dir, airflow_db, backup_dir):
    before, backup_id = migrate_with_backup(databases, migrations_dir, str(backup_dir))
    change_after_migration(databases)
    outside = campaigns(databases)

    # The truncate strategy sees in the backup that the tables held rows before: it refuses.
    refused = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    assert refused.state == "failed" and refused.task_states["assess"] == "failed"

    outcome = run_dag(
        ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore", "backup_id": backup_id}
    )
    assert outcome.state == "success", outcome.task_states
    status = outcome.xcoms["document"]
    assert status["rollback_status"] == "completed" and status["strategy_used"] == "backup_restore"
    assert status["verification"]["record_counts_match"] is True
    assert status["verification"]["sample_verification"] == "passed"
    assert sorted(status["scope"]["tables"]) == sorted(MIGRATED)
    assert checksums(databases) == before["sums"]
    assert structure(databases) == before["structure"]
    assert sequences_follow_the_keys(databases)
    assert campaigns(databases) == outside
    executed = outcome.xcoms["execute_backup_restore"]
    assert executed["detail"]["backup_id"] == backup_id
    assert executed["rows_affected"] == {t: before["sums"][t][0] for t in MIGRATED}


def test_restore_by_phase_then_by_tables(databases, migrations_dir, airflow_db, backup_dir):
    before, _ = migrate_with_backup(databases, migrations_dir, backup_dir.as_uri())
    change_after_migration(databases)
    changed = checksums(databases)

    # Phase 3 (order_items) only; the newest pre-migration backup is found without an id.
    outcome = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore",
                                 "scope": "phase", "phase": 3})  # fmt: skip
    assert outcome.state == "success", outcome.task_states
    now = checksums(databases)
    assert now["sales.order_items"] == before["sums"]["sales.order_items"]
    assert now["sales.orders"] == changed["sales.orders"] and now["crm.customers"] == changed["crm.customers"]

    # Phase 1 alone would orphan the orders that reference the migrated customers: refused, nothing changed.
    refused = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore",
                                 "scope": "phase", "phase": 1})  # fmt: skip
    assert refused.state == "failed" and refused.task_states["assess"] == "failed"
    assert checksums(databases) == now

    # Tables by their unqualified names, as in the seed's examples.
    outcome = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore",
                                 "scope": "tables", "tables": ["orders", "order_items"]})  # fmt: skip
    assert outcome.state == "success", outcome.task_states
    now = checksums(databases)
    assert now["sales.orders"] == before["sums"]["sales.orders"]
    assert now["sales.order_items"] == before["sums"]["sales.order_items"]
    assert now["crm.customers"] == changed["crm.customers"]
    assert structure(databases) == before["structure"]


def test_restore_from_s3(databases, migrations_dir, airflow_db, s3_bucket):
    before, backup_id = migrate_with_backup(databases, migrations_dir, f"s3://{s3_bucket}/pre-migration/")
    entry = BackupCatalog(StateStore("sensei_state")).require(backup_id)
    assert entry.location == f"s3://{s3_bucket}/pre-migration/mig_shop_2026/{backup_id}"
    change_after_migration(databases)
    outcome = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore"})
    assert outcome.state == "success", outcome.task_states
    assert checksums(databases) == before["sums"]
    assert sequences_follow_the_keys(databases)


# -- verify against the start mark -----------------------------------------------------------------
def mark_with_backup(databases, migrations_dir, backup_dir, *, between_backup_and_mark=None) -> Any:
    """Fill the target, a scheduled backup, a customer's payment, then the start mark (taking its pre-migration
    backup) and the demo migration without its DAG (fast). Returns the manifest.

    :param between_backup_and_mark: SQL committed after the mark's backup, before the mark's moment.
    """
    from sensei_airflow.backups import jobs

    fill_target(databases)
    manifest = write_demo_manifest(
        migrations_dir, pre_migration_backup=str(backup_dir), backup_retention_days=2
    )
    jobs.backup_migration(manifest, kind="scheduled")  # the nightly backup, before the migration
    with databases.connect("target") as conn:
        conn.execute("UPDATE crm.customers SET balance_cents = balance_cents + 4999 WHERE id = 900007")
    if between_backup_and_mark is not None:
        backup = jobs.backup_migration

        def backup_then_written(*args: Any, **kwargs: Any) -> Any:
            entry = backup(*args, **kwargs)
            with databases.connect("target") as conn:
                conn.execute(between_backup_and_mark)
            return entry

        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(jobs, "backup_migration", backup_then_written)
            migrate_demo(manifest, customers=40)
    else:
        migrate_demo(manifest, customers=40)
    change_after_migration(databases)
    return manifest


def the_mark() -> Any:
    from sensei_airflow.mark import load_mark

    mark = load_mark(StateStore("sensei_state"), "mig_shop_2026")
    assert mark is not None and mark.backup_id and all(mark.checksums().values())
    return mark


def test_restoring_the_marks_backup_verify_compares_with_the_mark(
    databases, migrations_dir, airflow_db, backup_dir
):
    from sensei_airflow.plan import RollbackPlan
    from sensei_airflow.strategies.backup_restore import BackupRestoreStrategy

    manifest = mark_with_backup(databases, migrations_dir, backup_dir)
    mark = the_mark()
    catalog = BackupCatalog(StateStore("sensei_state"))
    scheduled = next(e for e in catalog.list("mig_shop_2026") if e.kind == "scheduled")

    outcome = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore"})

    assert outcome.state == "success", outcome.task_states
    assert outcome.xcoms["execute_backup_restore"]["detail"]["backup_id"] == mark.backup_id
    verification = outcome.xcoms["verify"]
    assert verification["sample_verification"] == "passed" and verification["warnings"] == []
    marked = mark_checks_of(verification)
    for table in MIGRATED:
        rows = marked[(table, "rows at the start mark")]
        summed = marked[(table, "checksum at the start mark")]
        assert rows["expected"] == rows["actual"] == mark.rows()[table] and rows["ok"], rows
        assert summed["expected"] == summed["actual"] == mark.checksums()[table] and summed["ok"], summed
    backup_checks = [
        c for c in verification["checks"] if c["check"].endswith(f"as in backup {mark.backup_id}")
    ]
    assert len(backup_checks) == 2 * len(MIGRATED) and all(c["ok"] for c in backup_checks)

    # The nightly backup from before the payment: its rows come back, verified against it, not the mark.
    plan = RollbackPlan.model_validate(outcome.xcoms["assess"]).model_copy(
        update={"backup_id": scheduled.backup_id}
    )
    strategy = BackupRestoreStrategy(manifest, StateStore("sensei_state"))
    strategy.execute(plan)
    older = strategy.verify(plan)
    assert older.passed and not mark_checks_of(older.model_dump(mode="json"))
    assert older.warnings == [
        f"the tables in scope hold backup {scheduled.backup_id}'s rows (taken at "
        f"{scheduled.created_at.isoformat()}), not the start mark's ({mark.taken_at.isoformat()}): compared "
        "with the backup only"
    ]
    assert checksums(databases, ["crm.customers"])["crm.customers"][1] != mark.checksums()["crm.customers"]


def test_a_write_between_the_marks_backup_and_its_moment_fails_the_mark_checksum(
    databases, migrations_dir, airflow_db, backup_dir
):
    """An order refunded after the pre-migration backup, before the mark: the backup restores, but not the mark."""
    mark_with_backup(
        databases,
        migrations_dir,
        backup_dir,
        between_backup_and_mark="UPDATE sales.orders SET status = 'refunded' WHERE id = 900010",
    )
    mark = the_mark()
    entry = BackupCatalog(StateStore("sensei_state")).require(mark.backup_id)

    outcome = run_dag(ROLLBACK, {"migration_id": "mig_shop_2026", "strategy": "backup_restore"})

    assert outcome.state == "failed" and outcome.task_states["verify"] == "failed", outcome.task_states
    assert outcome.xcoms["execute_backup_restore"]["detail"]["backup_id"] == mark.backup_id
    verification = outcome.xcoms["verify"]
    failed = [c for c in verification["checks"] if not c["ok"]]
    assert [(c["table"], c["check"]) for c in failed] == [("sales.orders", "checksum at the start mark")]
    # what came back is exactly the backup's rows; the mark had the refund
    assert failed[0]["expected"] == mark.checksums()["sales.orders"]
    assert failed[0]["actual"] == entry.table_stats["sales.orders"]["checksum"] != failed[0]["expected"]
    assert verification["record_counts_match"] is True and verification["sample_verification"] == "failed"
    assert (
        f"verification failed: sales.orders checksum at the start mark: expected {failed[0]['expected']}, "
        f"found {failed[0]['actual']}; consumers stay halted"
    ) in task_error(outcome.run_id, "verify")
