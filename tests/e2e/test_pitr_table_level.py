"""Point-in-time rollback through the whole runbook DAG, on a PostgreSQL target that archives its WAL.

The target database lives on a cluster with WAL archiving and a base backup; source and state
live on the session's cluster. The demo migration records a restore point as it starts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from sensei_airflow.demo import shop
from sensei_airflow.demo.migration import prepare_target
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.basebackup import list_base_backups
from sensei_airflow.engines.postgres.pitr import PostgresWalRecovery
from sensei_airflow.engines.postgres.wal import archived_segments
from sensei_airflow.manifest import PointInTimeSettings
from tests.fixtures import mark_checks_of, run_dag
from tests.integration.pitr.clusters import ArchivingCluster, archiving_cluster

MIGRATED = ["crm.customers", "sales.orders", "sales.order_items"]


@pytest.fixture(scope="module")
def archiving() -> Iterator[ArchivingCluster]:
    with archiving_cluster("sensei-pitr-e2e-") as cluster:
        cluster.base_backup()
        yield cluster


@pytest.fixture
def pitr_target(databases, archiving, monkeypatch) -> str:
    """The target connection moved onto the archiving cluster, with the warehouse tables and a few rows."""
    name = f"{databases.target}_wal"
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_TARGET", archiving.cluster.create_database(name))
    prepare_target(PostgresEngine("shop_target"))
    with archiving.connect(name) as conn:  # rows the target held before the migration
        conn.execute(
            "INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at) "
            "VALUES (900001, 'kept', 'kept@example.com', 5, now())"
        )
    return name


def settings_of(archiving: ArchivingCluster) -> PointInTimeSettings:
    return PointInTimeSettings.model_validate({"postgres": archiving.settings()})


def write_manifest(migrations_dir, archiving: ArchivingCluster, started_at: datetime, **pitr: Any) -> None:
    document = shop.manifest(started_at=started_at)
    document["rollback"] |= {
        "preferred_strategy": "point_in_time",
        "point_in_time": {"postgres": archiving.settings(), **pitr},
    }
    (migrations_dir / f"{shop.DEMO_MIGRATION_ID}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def rows(archiving: ArchivingCluster, database: str, table: str) -> list[tuple[Any, ...]]:
    with archiving.connect(database) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608


def state_of(archiving: ArchivingCluster, database: str) -> dict[str, list[tuple[Any, ...]]]:
    return {t: rows(archiving, database, t) for t in [*MIGRATED, "crm.campaigns"]}


def error_of(outcome, task_id: str = "assess") -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="sensei_rollback", run_id=outcome.run_id, task_id=task_id, key="error")
            .one()
        )
        return XComModel.deserialize_value(row)["error"]


def migrate_then_change(archiving, pitr_target, migrations_dir) -> tuple[datetime, dict[str, Any]]:
    """Migrate (recording a restore point), then change the target further; returns (started_at, state before)."""
    started_at = archiving.now(pitr_target)
    before = state_of(archiving, pitr_target)
    write_manifest(migrations_dir, archiving, started_at)
    migration = run_dag("sensei_demo_migration")
    assert migration.state == "success", migration.task_states
    mark = migration.xcoms["start_mark"]
    assert mark["restore_point"].startswith(f"sensei_{shop.DEMO_MIGRATION_ID}_")
    # the demo migration took the start mark before its copy began: that is the migration's start now
    started_at = datetime.fromisoformat(mark["taken_at"])
    with archiving.connect(pitr_target) as conn:  # later changes, in scope and outside it
        conn.execute("UPDATE sales.orders SET status = 'cancelled' WHERE id % 7 = 0")
        conn.execute("INSERT INTO crm.campaigns VALUES (3, 'after the migration')")
    return started_at, before


def test_point_in_time_rollback_restores_the_tables_in_scope(
    databases, archiving, pitr_target, migrations_dir, airflow_db
):
    started_at, before = migrate_then_change(archiving, pitr_target, migrations_dir)
    assert rows(archiving, pitr_target, "sales.orders") != before["sales.orders"]

    outcome = run_dag(
        "sensei_rollback", {"migration_id": shop.DEMO_MIGRATION_ID, "strategy": "point_in_time"}
    )
    assert outcome.state == "success", outcome.task_states
    assert outcome.task_states["execute_truncate"] == "skipped"
    now = state_of(archiving, pitr_target)
    for table in MIGRATED:
        assert now[table] == before[table], table
    assert (3, "after the migration") in now["crm.campaigns"]  # outside the scope: untouched
    status = outcome.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["strategy_used"] == "point_in_time"
    assert datetime.fromisoformat(status["restored_to"]) == started_at
    assert status["verification"]["record_counts_match"] is True
    plan = outcome.xcoms["assess"]
    assert any("recovery_target_name = 'sensei_mig_shop_2026_" in s for s in plan["statements"])
    assert any(w.startswith("rollback window: point_in_time") for w in plan["warnings"])
    execution = outcome.xcoms["execute_point_in_time"]
    assert "restore point" in execution["detail"]["recovery"]
    assert archiving.scratch_leftovers() == []


def test_explicit_restore_to_and_phase_scope(databases, archiving, pitr_target, migrations_dir, airflow_db):
    started_at, before = migrate_then_change(archiving, pitr_target, migrations_dir)
    migrated = state_of(archiving, pitr_target)
    request = {
        "migration_id": shop.DEMO_MIGRATION_ID,
        "strategy": "point_in_time",
        "scope": "phase",
        "phase": 3,
        "restore_to": started_at.isoformat(),
        "reason": "order items were mangled",
    }
    outcome = run_dag("sensei_rollback", request)
    assert outcome.state == "success", outcome.task_states
    now = state_of(archiving, pitr_target)
    assert now["sales.order_items"] == before["sales.order_items"]
    assert now["sales.orders"] == migrated["sales.orders"]  # phase 2 stays migrated (and changed)
    assert now["crm.customers"] == migrated["crm.customers"]


def test_refusals_leave_the_target_unchanged(databases, archiving, pitr_target, migrations_dir, airflow_db):
    migrate_then_change(archiving, pitr_target, migrations_dir)
    unchanged = state_of(archiving, pitr_target)
    base = {"migration_id": shop.DEMO_MIGRATION_ID, "strategy": "point_in_time"}

    # a naive time is refused when the run is triggered (the form's date-time format needs an
    # offset), and by the request model wherever else a request comes from
    from airflow.sdk.exceptions import ParamValidationError

    from sensei_airflow.conf import InvalidRequest, RollbackRequest

    with pytest.raises(ParamValidationError, match="date-time"):
        run_dag("sensei_rollback", {**base, "restore_to": "2026-02-02T07:59:00"})
    with pytest.raises(InvalidRequest, match=r"restore_to.*timezone"):
        RollbackRequest.parse({**base, "restore_to": "2026-02-02T07:59:00"})

    too_early = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    early = run_dag("sensei_rollback", {**base, "restore_to": too_early})
    assert early.task_states["assess"] == "failed"
    assert "before the oldest base backup" in error_of(early)

    too_late = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    late = run_dag("sensei_rollback", {**base, "restore_to": too_late})
    assert late.task_states["assess"] == "failed"
    assert "after the newest WAL" in error_of(late)

    # a segment missing from the archive: refused before anything changes
    PostgresWalRecovery(PostgresEngine("shop_target"), settings_of(archiving)).switch_and_wait()
    gapped = archiving.root / f"archive-gap-{pitr_target}"
    shutil.copytree(archiving.archive, gapped)
    start = list_base_backups(archiving.backups)[0].start_wal_file
    missing = next(s for s in archived_segments(gapped) if s > start)
    (gapped / missing).unlink()
    started_at = datetime.fromisoformat(
        yaml.safe_load((migrations_dir / f"{shop.DEMO_MIGRATION_ID}.yaml").read_text())["started_at"]
    )
    write_manifest(
        migrations_dir, archiving, started_at, postgres=archiving.settings(wal_archive=str(gapped))
    )
    gap = run_dag("sensei_rollback", base)
    assert gap.task_states["assess"] == "failed"
    assert f"WAL segment {missing} is missing" in error_of(gap)
    shutil.rmtree(gapped)

    for outcome in (early, late, gap):
        assert outcome.task_states["execute_point_in_time"] != "success"
    assert state_of(archiving, pitr_target) == unchanged


# -- verify against the start mark -----------------------------------------------------------------
def order_status(archiving: ArchivingCluster, database: str, order_id: int) -> str:
    with archiving.connect(database) as conn:
        return conn.execute("SELECT status FROM sales.orders WHERE id = %s", (order_id,)).fetchone()[0]


def load_manifest(migrations_dir) -> Any:
    from sensei_airflow.manifest import load_manifests

    return load_manifests(migrations_dir).get(shop.DEMO_MIGRATION_ID)


def mark_then_migrate(archiving, pitr_target, migrations_dir) -> Any:
    """Orders from before the migration, the start mark (a restore point), the demo migration without its DAG
    (fast), then the shop ships an order that was there at the mark. Returns the mark."""
    from sensei_airflow.mark import load_mark
    from sensei_airflow.state import StateStore
    from tests.fixtures import migrate_demo

    with archiving.connect(pitr_target) as conn:
        conn.execute(
            "INSERT INTO sales.orders (id, customer_id, status, total, ordered_at) VALUES "
            "(900001, 900001, 'paid', 12.50, '2025-02-01T00:00:00Z'), "
            "(900002, 900001, 'new', 7.25, '2025-02-02T00:00:00Z')"
        )
        conn.execute("INSERT INTO sales.order_items VALUES (900001, 1, 'Straße lamp', 2, 6.25)")
    write_manifest(migrations_dir, archiving, archiving.now(pitr_target))
    migrate_demo(load_manifest(migrations_dir), customers=40)
    with archiving.connect(pitr_target) as conn:
        conn.execute("UPDATE sales.orders SET status = 'shipped' WHERE id = 900002")
    mark = load_mark(StateStore("sensei_state"), shop.DEMO_MIGRATION_ID)
    assert mark is not None and mark.restore_point and all(mark.checksums().values())
    return mark


def test_recovered_to_the_start_mark_verify_compares_with_its_counts_and_checksums(
    databases, archiving, pitr_target, migrations_dir, airflow_db
):
    from sensei_airflow.plan import RollbackPlan
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.point_in_time import PointInTimeStrategy

    mark = mark_then_migrate(archiving, pitr_target, migrations_dir)

    outcome = run_dag(
        "sensei_rollback", {"migration_id": shop.DEMO_MIGRATION_ID, "strategy": "point_in_time"}
    )

    assert outcome.state == "success", outcome.task_states
    verification = outcome.xcoms["verify"]
    assert verification["sample_verification"] == "passed" and verification["warnings"] == []
    marked = mark_checks_of(verification)
    for table in MIGRATED:
        rows = marked[(table, "rows at the start mark")]
        summed = marked[(table, "checksum at the start mark")]
        assert rows["expected"] == rows["actual"] == mark.rows()[table] and rows["ok"], rows
        assert summed["expected"] == summed["actual"] == mark.checksums()[table] and summed["ok"], summed
    assert order_status(archiving, pitr_target, 900002) == "new"  # as at the mark

    # the same rollback verified as if it had recovered to another point: nothing compared with the mark
    plan = RollbackPlan.model_validate(outcome.xcoms["assess"])
    other = plan.model_copy(update={"restore_to": (mark.taken_at + timedelta(seconds=1)).isoformat()})
    elsewhere = PointInTimeStrategy(load_manifest(migrations_dir), StateStore("sensei_state")).verify(other)
    assert elsewhere.passed and not mark_checks_of(elsewhere.model_dump(mode="json"))
    assert elsewhere.sample_verification == "skipped"


def test_a_restored_row_changed_before_verify_fails_the_start_mark_checksum(
    databases, archiving, pitr_target, migrations_dir, airflow_db, monkeypatch
):
    """A writer the halt step does not know about updates a restored order: same counts, not the mark's rows."""
    mark = mark_then_migrate(archiving, pitr_target, migrations_dir)
    restore = PostgresWalRecovery.restore

    def restore_then_written(self, plan, target):
        outcome = restore(self, plan, target)
        with archiving.connect(pitr_target) as conn:
            conn.execute("UPDATE sales.orders SET total = 0 WHERE id = 900001")
        return outcome

    monkeypatch.setattr(PostgresWalRecovery, "restore", restore_then_written)

    outcome = run_dag(
        "sensei_rollback", {"migration_id": shop.DEMO_MIGRATION_ID, "strategy": "point_in_time"}
    )

    assert outcome.state == "failed" and outcome.task_states["verify"] == "failed", outcome.task_states
    verification = outcome.xcoms["verify"]
    failed = [c for c in verification["checks"] if not c["ok"]]
    assert [(c["table"], c["check"]) for c in failed] == [("sales.orders", "checksum at the start mark")]
    assert failed[0]["expected"] == mark.checksums()["sales.orders"] != failed[0]["actual"]
    assert mark_checks_of(verification)[("sales.orders", "rows at the start mark")]["ok"]  # same count
    assert verification["sample_verification"] == "failed"
    assert (
        f"verification failed: sales.orders checksum at the start mark: expected {failed[0]['expected']}, "
        f"found {failed[0]['actual']}; consumers stay halted"
    ) in error_of(outcome, "verify")
