"""RDS / Aurora point-in-time recovery: the AWS calls against moto's RDS, the data against real PostgreSQL.

moto keeps the instances' metadata but runs no database, so the restored instance's data is a
real PostgreSQL database holding the tables as they were at the point; the test points the
copy at it through :meth:`RdsRecovery.restored_conninfo` after checking the endpoint moto gave.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sensei_airflow.engines.base import PointInTimeRefused, RecoveryTarget
from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.engines.postgres.rds import RdsRecovery, aside_identifier, restored_identifier
from sensei_airflow.manifest import PointInTimeSettings
from tests.fixtures import aws_client, use_aws_connection

SCHEMA = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES public.customers (id), total int);
CREATE TABLE public.audit_notes (id int PRIMARY KEY, note text);
"""
AT_POINT = """
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 50) g;
INSERT INTO public.orders SELECT g, 1 + g % 50, g FROM generate_series(1, 120) g;
INSERT INTO public.audit_notes VALUES (1, 'at the point');
"""
LATER = """
INSERT INTO public.customers (name) SELECT 'late' || g FROM generate_series(1, 5) g;
UPDATE public.orders SET total = -1;
INSERT INTO public.audit_notes VALUES (2, 'later');
"""


@pytest.fixture
def rds(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 RDS client on moto, also reachable as Airflow connection ``aws_pitr``."""
    use_aws_connection(monkeypatch, "aws_pitr", moto_endpoint)
    return aws_client("rds", moto_endpoint)


def create_instance(rds: Any, retention: int = 7) -> str:
    identifier = f"shop-{uuid.uuid4().hex[:8]}"
    rds.create_db_instance(
        DBInstanceIdentifier=identifier, Engine="postgres", DBInstanceClass="db.t3.micro",
        MasterUsername="postgres", MasterUserPassword="password1", AllocatedStorage=20,
        BackupRetentionPeriod=retention,
    )  # fmt: skip
    return identifier


@pytest.fixture
def live_and_restored(pg_cluster, monkeypatch) -> Iterator[tuple[str, str]]:
    """The live target (``pitr_target``, changed after the point) and the database playing the restored instance."""
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    live, restored = f"rds_live_{suffix}", f"rds_restored_{suffix}"
    monkeypatch.setenv("AIRFLOW_CONN_PITR_TARGET", pg_cluster.create_database(live))
    pg_cluster.create_database(restored)
    for name, statements in ((live, SCHEMA + AT_POINT + LATER), (restored, SCHEMA + AT_POINT)):
        with psycopg.connect(pg_cluster.dsn(name), autocommit=True) as conn:
            conn.execute(statements)
    yield live, restored
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        for name in (live, restored):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recovery(instance: str, **rds_settings: Any) -> RdsRecovery:
    settings = PointInTimeSettings.model_validate(
        {
            "target_holds_only_this_migration": rds_settings.pop("whole", False),
            "rds": {"aws_conn_id": "aws_pitr", "db_instance_identifier": instance, "poll_seconds": 0.1,
                    "wait_timeout_minutes": 1, **rds_settings},
        }
    )  # fmt: skip
    return RdsRecovery(PostgresEngine("pitr_target"), settings)


def point_after_creation() -> RecoveryTarget:
    time.sleep(0.05)
    point = datetime.now(UTC) - timedelta(milliseconds=10)
    return RecoveryTarget(time=point)


def rows(pg_cluster, database: str, table: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_cluster.dsn(database)) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608


def test_copy_back_restores_the_tables_in_scope_and_deletes_the_instance(
    rds, pg_cluster, live_and_restored, monkeypatch
):
    live, restored_db = live_and_restored
    instance = create_instance(rds)
    target = point_after_creation()
    pitr = recovery(instance)
    endpoints: list[dict[str, Any]] = []

    def conninfo(self: RdsRecovery, endpoint: dict[str, Any], database: str) -> dict[str, Any]:
        endpoints.append(endpoint)
        assert database == live
        return {"host": "127.0.0.1", "port": pg_cluster.port, "dbname": restored_db, "user": "postgres"}

    monkeypatch.setattr(RdsRecovery, "restored_conninfo", conninfo)
    plan = pitr.assess(["public.orders", "public.customers"], target, whole_database=False)
    assert plan.path == "table"
    assert plan.tables == ["public.customers", "public.orders"]
    assert plan.detail["restored"] == restored_identifier(instance, target)
    outcome = pitr.restore(plan, target)

    assert rows(pg_cluster, live, "public.orders") == rows(pg_cluster, restored_db, "public.orders")
    assert rows(pg_cluster, live, "public.customers") == rows(pg_cluster, restored_db, "public.customers")
    assert len(rows(pg_cluster, live, "public.audit_notes")) == 2  # outside the scope: untouched
    assert outcome.rows_restored == {"public.customers": 50, "public.orders": 120}
    # the restored instance was a real moto instance with its own endpoint, and is gone now
    described = endpoints[0]
    assert plan.detail["restored"] in described["address"] and described["port"] == 5432
    assert outcome.statements[0].startswith(f"restore_db_instance_to_point_in_time({instance} -> ")
    assert any(s.startswith("delete_db_instance(") for s in outcome.statements)
    with pytest.raises(rds.exceptions.DBInstanceNotFoundFault):
        rds.describe_db_instances(DBInstanceIdentifier=plan.detail["restored"])


def test_retry_reuses_the_instance_a_previous_try_started(rds, pg_cluster, live_and_restored, monkeypatch):
    live, restored_db = live_and_restored
    instance = create_instance(rds)
    target = point_after_creation()
    pitr = recovery(instance)
    monkeypatch.setattr(
        RdsRecovery, "restored_conninfo",
        lambda self, endpoint, database: {"host": "127.0.0.1", "port": pg_cluster.port, "dbname": restored_db,
                                          "user": "postgres"},
    )  # fmt: skip
    plan = pitr.assess(["public.customers", "public.orders"], target, whole_database=False)
    rds.restore_db_instance_to_point_in_time(  # what a failed first try left behind
        SourceDBInstanceIdentifier=instance,
        TargetDBInstanceIdentifier=plan.detail["restored"],
        RestoreTime=target.time,
    )
    outcome = pitr.restore(plan, target)
    assert not any(s.startswith("restore_db_instance") for s in outcome.statements)
    assert rows(pg_cluster, live, "public.orders") == rows(pg_cluster, restored_db, "public.orders")


def test_points_outside_the_retention_are_refused(rds, pg_cluster, live_and_restored):
    instance = create_instance(rds)
    pitr = recovery(instance)
    with pytest.raises(PointInTimeRefused, match=r"before RDS .* earliest restorable time"):
        pitr.assess(
            ["public.orders"],
            RecoveryTarget(time=datetime.now(UTC) - timedelta(days=1)),
            whole_database=False,
        )
    with pytest.raises(PointInTimeRefused, match=r"after RDS .* latest restorable time"):
        pitr.assess(
            ["public.orders"],
            RecoveryTarget(time=datetime.now(UTC) + timedelta(hours=1)),
            whole_database=False,
        )
    no_backups = create_instance(rds, retention=0)
    with pytest.raises(PointInTimeRefused, match="automated backups turned off"):
        recovery(no_backups).assess(["public.orders"], point_after_creation(), whole_database=False)
    [window] = pitr.windows(["public.orders"], datetime(2026, 3, 1, tzinfo=UTC))
    assert window.closes_at == datetime(2026, 3, 8, tzinfo=UTC)
    assert window.limit == "automated backup retention (7 d)"


def test_swap_renames_the_restored_instance_into_place(rds, pg_cluster, live_and_restored):
    instance = create_instance(rds)
    target = point_after_creation()
    pitr = recovery(instance, method="swap")
    plan = pitr.assess(
        ["public.customers", "public.orders", "public.audit_notes"], target, whole_database=True
    )
    assert plan.path == "database"
    outcome = pitr.restore(plan, target)
    assert outcome.detail["previous_instance"] == aside_identifier(instance, target)
    tags = {
        t["Key"]: t["Value"]
        for t in rds.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]["TagList"]
    }
    assert tags["sensei:rollback-of"] == instance  # the instance now under the live name is the restored one
    assert tags["sensei:restored-as"] == plan.detail["restored"]
    rds.describe_db_instances(DBInstanceIdentifier=aside_identifier(instance, target))
    assert [(c.check, c.ok) for c in pitr.verify_restore(outcome.detail)] == [
        ("the live instance is the restored one", True),
        ("restored to the point", True),
        ("the replaced instance is kept", True),
    ]
    with pytest.raises(rds.exceptions.DBInstanceNotFoundFault):
        rds.describe_db_instances(DBInstanceIdentifier=plan.detail["restored"])
    # scope other than all: swap is not allowed, the tables are copied back instead
    narrow = recovery(instance, method="swap").assess(
        ["public.orders"], point_after_creation(), whole_database=False
    )
    assert narrow.path == "table" and "copying the tables back" in narrow.warnings[0]


def test_aurora_cluster_restore_copies_back_and_cleans_up(rds, pg_cluster, live_and_restored, monkeypatch):
    live, restored_db = live_and_restored
    cluster = f"aurora-{uuid.uuid4().hex[:8]}"
    rds.create_db_cluster(
        DBClusterIdentifier=cluster, Engine="aurora-postgresql", MasterUsername="postgres",
        MasterUserPassword="password1", BackupRetentionPeriod=3,
    )  # fmt: skip
    target = point_after_creation()
    settings = PointInTimeSettings.model_validate(
        {"rds": {"aws_conn_id": "aws_pitr", "db_cluster_identifier": cluster, "poll_seconds": 0.1,
                 "instance_class": "db.r6g.large"}}
    )  # fmt: skip
    pitr = RdsRecovery(PostgresEngine("pitr_target"), settings)
    monkeypatch.setattr(
        RdsRecovery, "restored_conninfo",
        lambda self, endpoint, database: {"host": "127.0.0.1", "port": pg_cluster.port, "dbname": restored_db,
                                          "user": "postgres"},
    )  # fmt: skip
    plan = pitr.assess(["public.customers", "public.orders"], target, whole_database=False)
    outcome = pitr.restore(plan, target)
    assert rows(pg_cluster, live, "public.customers") == rows(pg_cluster, restored_db, "public.customers")
    calls = outcome.statements
    assert calls[0] == f"restore_db_cluster_to_point_in_time({cluster} -> {plan.detail['restored']})"
    assert any(c.startswith("delete_db_cluster(") for c in calls)
    with pytest.raises(rds.exceptions.DBClusterNotFoundFault):
        rds.describe_db_clusters(DBClusterIdentifier=plan.detail["restored"])


# -- swap: idempotent, verified, and honest about a second rollback -----------------------------------
WHOLE = ["public.customers", "public.orders", "public.audit_notes"]


def swapper(instance: str, rollback_id: str | None) -> RdsRecovery:
    pitr = recovery(instance, method="swap")
    pitr.rollback_id = rollback_id
    return pitr


def instances(rds: Any) -> set[str]:
    return {i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]}


def test_swap_retry_after_a_partial_swap_finishes_it(rds, pg_cluster, live_and_restored, monkeypatch):
    instance = create_instance(rds)
    target = point_after_creation()
    restored, aside = restored_identifier(instance, target), aside_identifier(instance, target)
    first = swapper(instance, "manual__run1")
    plan = first.assess(WHOLE, target, whole_database=True)
    rename = RdsRecovery._rename
    renames: list[tuple[str, str]] = []

    def worker_lost_after_the_first_rename(self: RdsRecovery, old: str, new: str) -> str:
        renames.append((old, new))
        if len(renames) == 2:
            raise RuntimeError("worker lost")
        return rename(self, old, new)

    monkeypatch.setattr(RdsRecovery, "_rename", worker_lost_after_the_first_rename)
    with pytest.raises(RuntimeError, match="worker lost"):
        first.restore(plan, target)
    monkeypatch.setattr(RdsRecovery, "_rename", rename)
    assert instance not in instances(rds) and {aside, restored} <= instances(rds)  # half swapped

    # another rollback does not take over a swap it did not start
    with pytest.raises(
        PointInTimeRefused, match=rf"RDS {instance} is missing: rollback manual__run1 set it aside"
    ):
        swapper(instance, None).assess(WHOLE, target, whole_database=True)

    retry = swapper(instance, "manual__run1")  # the task's retry re-plans, then restores
    plan = retry.assess(WHOLE, target, whole_database=True)
    assert plan.detail["swap_state"] == "aside"
    outcome = retry.restore(plan, target)
    assert outcome.statements == [f"modify_db_instance({restored} -> {instance}, ApplyImmediately)"]
    assert all(c.ok for c in retry.verify_restore(outcome.detail))
    assert instances(rds) >= {instance, aside} and restored not in instances(rds)


def test_a_retry_after_a_complete_swap_changes_nothing(rds, pg_cluster, live_and_restored):
    instance = create_instance(rds)
    target = point_after_creation()
    first = swapper(instance, "manual__run1")
    first.restore(first.assess(WHOLE, target, whole_database=True), target)
    before = instances(rds)

    retry = swapper(instance, "manual__run1")
    plan = retry.assess(WHOLE, target, whole_database=True)
    outcome = retry.restore(plan, target)

    assert plan.detail["swap_state"] == "done"
    assert outcome.statements == [] and outcome.detail["already_swapped"] is True
    assert instances(rds) == before  # no second restore started
    assert all(c.ok for c in retry.verify_restore(outcome.detail))


def test_a_second_rollback_to_the_same_point_is_refused(rds, pg_cluster, live_and_restored):
    instance = create_instance(rds)
    target = point_after_creation()
    first = swapper(instance, "manual__run1")
    first.restore(first.assess(WHOLE, target, whole_database=True), target)
    before = instances(rds)

    for rollback_id in (None, "manual__run2"):  # at assess, and if it got as far as execute
        with pytest.raises(PointInTimeRefused) as refused:
            swapper(instance, rollback_id).assess(WHOLE, target, whole_database=True)
        assert str(refused.value) == (
            f"RDS {instance} already is the instance restored to {target.time.isoformat()} by rollback "
            f"manual__run1 (the instance it replaced is kept as {aside_identifier(instance, target)}): a second "
            f"swap to that point would have to restore {aside_identifier(instance, target)}, which this rollback "
            f"does not do; restore {aside_identifier(instance, target)} yourself, or choose a later restore_to"
        )
    assert instances(rds) == before


def test_a_second_rollback_to_a_later_point_really_swaps_again(rds, pg_cluster, live_and_restored):
    instance = create_instance(rds)
    first_point = point_after_creation()
    first = swapper(instance, "manual__run1")
    first.restore(first.assess(WHOLE, first_point, whole_database=True), first_point)
    time.sleep(1.1)  # instance names carry the point to the second: the next point is a later second
    later = point_after_creation()

    second = swapper(instance, "manual__run2")
    plan = second.assess(WHOLE, later, whole_database=True)
    outcome = second.restore(plan, later)

    assert plan.detail["swap_state"] == "ready"
    assert outcome.statements[0].startswith(f"restore_db_instance_to_point_in_time({instance} -> ")
    live = rds.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]
    tags = {t["Key"]: t["Value"] for t in live["TagList"]}
    assert tags["sensei:restored-as"] == restored_identifier(instance, later)
    assert tags["sensei:rollback-id"] == "manual__run2"
    assert {aside_identifier(instance, first_point), aside_identifier(instance, later)} <= instances(rds)
    assert all(c.ok for c in second.verify_restore(outcome.detail))


def test_verify_notices_when_the_live_name_no_longer_serves_the_restored_instance(
    rds, pg_cluster, live_and_restored
):
    instance = create_instance(rds)
    target = point_after_creation()
    pitr = swapper(instance, "manual__run1")
    outcome = pitr.restore(pitr.assess(WHOLE, target, whole_database=True), target)
    aside = aside_identifier(instance, target)
    # someone swaps the old instance back under the live name
    rds.modify_db_instance(
        DBInstanceIdentifier=instance, NewDBInstanceIdentifier=f"{instance}-x", ApplyImmediately=True
    )
    rds.modify_db_instance(
        DBInstanceIdentifier=aside, NewDBInstanceIdentifier=instance, ApplyImmediately=True
    )

    checks = {c.check: c for c in pitr.verify_restore(outcome.detail)}

    live = checks["the live instance is the restored one"]
    assert not live.ok and live.expected == restored_identifier(instance, target) and live.actual is None
    assert not checks["the replaced instance is kept"].ok


def test_the_restored_instance_is_reached_with_the_live_connections_login_and_extras(monkeypatch):
    """The one seam the other tests replace: the live connection's credentials at the new endpoint."""
    live = {"conn_type": "postgres", "host": "live.example.internal", "port": 5432, "login": "Shop Owner",
            "password": "pa ss 'wörd'", "schema": "shop", "extra": {"sslmode": "verify-full",
                                                                   "sslrootcert": "/etc/rds-ca.pem"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_PITR_TARGET", json.dumps(live))
    info = recovery("shop-db").restored_conninfo(
        {"address": "shop-db-pitr.example.internal", "port": 5433}, "shop"
    )
    assert info == {
        "host": "shop-db-pitr.example.internal",
        "port": 5433,
        "dbname": "shop",
        "user": "Shop Owner",
        "password": "pa ss 'wörd'",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/rds-ca.pem",
        "connect_timeout": 30,
    }
