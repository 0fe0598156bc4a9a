"""Point-in-time recovery of a PostgreSQL target on AWS RDS or Aurora, through the amazon provider.

RDS restores a point in time only into a *new* instance (or Aurora cluster). Two ways back:

- ``copy_back`` (default): restore into a new instance, copy the tables in scope from it into
  the live target in one transaction (the same copy as the self-managed table-level path), then
  delete the new instance. Every other table and database of the target is untouched.
- ``swap``: for scope ``all`` of an instance that holds only this migration: rename the live
  instance aside (``<id>-before-<point>``) and the restored one into its name, so the endpoint
  clients use now serves the restored data. The old instance is kept (renamed) for the DBA to
  delete.

The restored instance's name is derived from the source and the point, so a retried task finds
and reuses the instance a previous try started instead of starting a second one. The restored
instance is tagged with the point, its own name and the rollback, so a swap is idempotent and
verified: a retry after a partial swap finishes it, a retry after a complete one changes nothing,
another rollback to the same point is refused (it would have to restore from the set-aside
instance), a rollback to a later point swaps again, and verify checks that the instance serving
the live name is the restored one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import psycopg

from sensei_airflow.engines.base import (
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRefused,
    RecoveryCheck,
    RecoveryTarget,
    RecoveryWindow,
)
from sensei_airflow.engines.postgres.client import connection_params
from sensei_airflow.engines.postgres.copy import CopyBackRecovery, replace_statements, replacement_scope
from sensei_airflow.extras import missing_extra
from sensei_airflow.manifest import RdsPointInTime

MECHANISM = "AWS RDS point-in-time restore"
TAG_KEY = "sensei:rollback-of"
#: tags of a restored instance: the point it was restored to, the name it was restored as, the rollback.
TAG_RESTORED_TO = "sensei:restored-to"
TAG_RESTORED_AS = "sensei:restored-as"
TAG_ROLLBACK_ID = "sensei:rollback-id"


def _stamp(target: RecoveryTarget) -> str:
    return target.time.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def restored_identifier(source: str, target: RecoveryTarget) -> str:
    """``<source>-pitr-<UTC time of the point>``, within RDS's 63 characters (letters, digits, hyphens)."""
    stamp = _stamp(target)
    return f"{source[: 63 - len(stamp) - 6].rstrip('-')}-pitr-{stamp}"


def aside_identifier(source: str, target: RecoveryTarget) -> str:
    """``<source>-before-<UTC time of the point>``: the name the live instance is set aside under by a swap."""
    stamp = _stamp(target)
    return f"{source[: 63 - len(stamp) - 8].rstrip('-')}-before-{stamp}"


class RdsRecovery(CopyBackRecovery[RdsPointInTime]):
    """RDS / Aurora PostgreSQL: restore into a new instance, then copy back or swap."""

    mechanism = MECHANISM
    block = "rds"

    @cached_property
    def hook(self) -> Any:
        try:
            from airflow.providers.amazon.aws.hooks.rds import RdsHook
        except ImportError as exc:
            raise missing_extra("amazon", "Amazon", "point-in-time recovery on RDS") from exc
        return RdsHook(aws_conn_id=self.config.aws_conn_id, region_name=self.config.region_name)

    @property
    def client(self) -> Any:
        return self.hook.conn

    @property
    def is_cluster(self) -> bool:
        return self.config.db_cluster_identifier is not None

    @property
    def source_id(self) -> str:
        return self.config.db_cluster_identifier or self.config.db_instance_identifier or ""

    # -- facts -------------------------------------------------------------------------------
    def describe_source(self) -> dict[str, Any]:
        try:
            if self.is_cluster:
                return dict(
                    self.client.describe_db_clusters(DBClusterIdentifier=self.source_id)["DBClusters"][0]
                )
            return dict(
                self.client.describe_db_instances(DBInstanceIdentifier=self.source_id)["DBInstances"][0]
            )
        except self.client.exceptions.ClientError as exc:
            raise PointInTimeRefused(f"RDS {self.source_id} cannot be described: {exc}") from None

    def restorable_range(self, source: dict[str, Any], now: datetime) -> tuple[datetime, datetime, int]:
        """(earliest, latest restorable time, retention days) of the source."""
        retention = int(source.get("BackupRetentionPeriod") or 0)
        latest = source.get("LatestRestorableTime") or now
        created = source.get("InstanceCreateTime") or source.get("ClusterCreateTime") or now
        earliest = source.get("EarliestRestorableTime") or max(created, now - timedelta(days=retention))
        return earliest, latest, retention

    def _instance_exists(self, identifier: str) -> bool:
        return self._instance(identifier) is not None

    def _cluster_exists(self, identifier: str) -> bool:
        try:
            self.client.describe_db_clusters(DBClusterIdentifier=identifier)
        except self.client.exceptions.DBClusterNotFoundFault:
            return False
        return True

    def _instance(self, identifier: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0])
        except self.client.exceptions.DBInstanceNotFoundFault:
            return None

    @staticmethod
    def _tags(instance: dict[str, Any] | None) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in (instance or {}).get("TagList", [])}

    def _tags_now(self, instance: dict[str, Any] | None) -> dict[str, str]:
        """The instance's tags as RDS holds them now (``DescribeDBInstances`` may omit them)."""
        if instance is None:
            return {}
        found = self._tags(instance)
        if found or not instance.get("DBInstanceArn"):
            return found
        listed = self.client.list_tags_for_resource(ResourceName=instance["DBInstanceArn"])
        return {t["Key"]: t["Value"] for t in listed.get("TagList", [])}

    def swap_state(self, target: RecoveryTarget) -> tuple[str, dict[str, str]]:
        """Where a swap of the live instance to ``target`` stands, from what RDS holds now.

        ``done``: the live name serves the instance restored to this point (its tags say so);
        ``aside``: the live instance was renamed aside and the restored one not yet into its
        place; ``ready``: nothing is swapped yet (the restore may have started). Also the tags
        of the instance under the live name (or of the restored one, when ``aside``).

        :raises PointInTimeRefused: for a state no swap of this point leaves behind.
        """
        live_id = self.source_id
        restored = restored_identifier(live_id, target)
        aside = aside_identifier(live_id, target)
        live = self._instance(live_id)
        tags = self._tags_now(live)
        if live is not None and tags.get(TAG_RESTORED_AS) == restored:
            return "done", tags
        if live is None:
            waiting = self._instance(restored)
            if waiting is not None and self._instance_exists(aside):
                return "aside", self._tags_now(waiting)
            raise PointInTimeRefused(
                f"RDS {live_id} does not exist (and no swap of it to {target.time.isoformat()} is half done): "
                "nothing to restore"
            )
        if self._instance_exists(aside):
            raise PointInTimeRefused(
                f"RDS {aside} already exists: {live_id} cannot be set aside under that name; rename or delete it"
            )
        return "ready", tags

    # -- PointInTimeRecovery ------------------------------------------------------------------
    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        if self.config.method == "swap" and whole_database and not self.is_cluster:
            state, tags = self.swap_state(target)
            if state != "ready":
                return self._resume_swap(tables, target, state, tags)
        source = self.describe_source()
        now = datetime.now(UTC)
        earliest, latest, retention = self.restorable_range(source, now)
        if retention == 0:
            raise PointInTimeRefused(
                f"RDS {self.source_id} has automated backups turned off (BackupRetentionPeriod 0): "
                "it cannot be restored to a point in time"
            )
        if target.time < earliest:
            previous = self._tags(source).get(TAG_RESTORED_TO)
            why = (
                f"; {self.source_id} is the instance a rollback restored to {previous}: its history starts "
                "when it was restored, what came before is in the instance it replaced"
                if previous
                else ""
            )
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is before RDS {self.source_id}'s earliest restorable "
                f"time {earliest.isoformat()} ({retention} d of automated backups){why}"
            )
        if target.time > latest:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is after RDS {self.source_id}'s latest restorable time "
                f"{latest.isoformat()} (RDS uploads transaction logs every few minutes: wait, or choose an "
                "earlier point)"
            )
        ordered, referenced = replacement_scope(self.engine, tables)
        path, warnings = "table", []
        if self.config.method == "swap":
            if whole_database and not self.is_cluster:
                path = "database"
            else:
                warnings.append("copying the tables back instead of swapping: swap needs scope all of an instance "
                                "that holds only this migration (target_holds_only_this_migration)")  # fmt: skip
        restored = restored_identifier(self.source_id, target)
        kind = "cluster" if self.is_cluster else "instance"
        steps = [
            f"restore_db_{kind}_to_point_in_time({self.source_id} -> {restored}, {target.time.isoformat()})",
            f"wait until {restored} is available",
        ]
        if path == "table":
            steps += [s.sql for s in replace_statements(self.engine, ordered, referenced)]
            steps += [
                "COPY each table from the restored instance, parents first; set its sequences",
                "COMMIT",
            ]
            if not self.config.keep_restored_instance:
                steps.append(f"delete {restored} (no final snapshot)")
        else:
            aside = aside_identifier(self.source_id, target)
            steps += [
                f"rename {self.source_id} -> {aside}",
                f"rename {restored} -> {self.source_id}",
                f"check that {self.source_id} is the instance restored to {target.time.isoformat()}",
            ]
        database = self.engine.query("SELECT current_database()")[0][0]
        detail = {
            "source": self.source_id,
            "restored": restored,
            "aside": aside_identifier(self.source_id, target),
            "swap_state": "ready" if path == "database" else None,
            "database": database,
            "earliest_restorable": earliest.isoformat(),
            "latest_restorable": latest.isoformat(),
        }
        return self.assessed(ordered, referenced, path, steps, warnings, detail)

    def _resume_swap(
        self, tables: Sequence[str], target: RecoveryTarget, state: str, tags: dict[str, str]
    ) -> PointInTimePlan:
        """The plan when a swap to this point is already (half) done: this rollback's own, or refused."""
        restored = restored_identifier(self.source_id, target)
        aside = aside_identifier(self.source_id, target)
        by = tags.get(TAG_ROLLBACK_ID)
        if self.rollback_id is None or by != self.rollback_id:
            if state == "done":
                raise PointInTimeRefused(
                    f"RDS {self.source_id} already is the instance restored to {target.time.isoformat()} "
                    f"by rollback {by or 'unknown'} (the instance it replaced is kept as {aside}): a second "
                    f"swap to that point would have to restore {aside}, which this rollback does not do; "
                    f"restore {aside} yourself, or choose a later restore_to"
                )
            raise PointInTimeRefused(
                f"RDS {self.source_id} is missing: rollback {by or 'unknown'} set it aside as {aside} and did "
                f"not rename {restored} into its place yet; let that rollback's retry finish the swap, or "
                f"rename {aside} back"
            )
        steps = (
            [f"nothing left: {self.source_id} already is the instance restored to {target.time.isoformat()}"]
            if state == "done"
            else [
                f"rename {restored} -> {self.source_id} (finishing the swap: {self.source_id} is set aside as {aside})"
            ]
        )
        return PointInTimePlan(
            tables=list(tables),
            path="database",
            steps=[
                *steps,
                f"check that {self.source_id} is the instance restored to {target.time.isoformat()}",
            ],
            detail={
                "mechanism": MECHANISM,
                "source": self.source_id,
                "restored": restored,
                "aside": aside,
                "swap_state": state,
            },
        )

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        restored = str(plan.detail["restored"])
        if plan.path == "database":
            return self._swap(plan, target)
        source = self.describe_source()
        calls = self._start_restore(source, restored, target)
        try:
            endpoint = self._wait_available(restored)
            statements, rows = self._copy_back(plan, endpoint)
        except BaseException:
            if not self.config.keep_restored_instance:
                self._delete(restored)
            raise
        if not self.config.keep_restored_instance:
            calls += self._delete(restored)
        return PointInTimeOutcome(
            statements=[*calls, *statements],
            rows_restored=rows,
            detail={
                "path": "table",
                "restored": restored,
                "endpoint": endpoint,
                "recovery": f"RDS restore to {target.time.isoformat()}",
            },
        )

    def _start_restore(self, source: dict[str, Any], restored: str, target: RecoveryTarget) -> list[str]:
        """Start the restore (or find the one a previous try started)."""
        tags = [
            {"Key": TAG_KEY, "Value": self.source_id},
            {"Key": TAG_RESTORED_TO, "Value": target.time.isoformat()},
            {"Key": TAG_RESTORED_AS, "Value": restored},
            *([{"Key": TAG_ROLLBACK_ID, "Value": self.rollback_id}] if self.rollback_id else []),
        ]
        if self.is_cluster:
            calls = []
            if not self._cluster_exists(restored):
                self.client.restore_db_cluster_to_point_in_time(
                    SourceDBClusterIdentifier=self.source_id,
                    DBClusterIdentifier=restored,
                    RestoreToTime=target.time,
                    RestoreType="full-copy",
                    DBSubnetGroupName=source.get("DBSubnetGroup") or None,
                    VpcSecurityGroupIds=[
                        g["VpcSecurityGroupId"] for g in source.get("VpcSecurityGroups", [])
                    ],
                    Tags=tags,
                )
                calls.append(f"restore_db_cluster_to_point_in_time({self.source_id} -> {restored})")
            writer = f"{restored[:57]}-w1"
            if not self._instance_exists(writer):
                self.client.create_db_instance(
                    DBInstanceIdentifier=writer,
                    DBClusterIdentifier=restored,
                    Engine=source.get("Engine", "aurora-postgresql"),
                    DBInstanceClass=self.config.instance_class or "db.r6g.large",
                    Tags=tags,
                )
                calls.append(f"create_db_instance({writer} in {restored})")
            return calls
        if self._instance_exists(restored):
            return []
        arguments: dict[str, Any] = {
            "SourceDBInstanceIdentifier": self.source_id,
            "TargetDBInstanceIdentifier": restored,
            "RestoreTime": target.time,
            "PubliclyAccessible": bool(source.get("PubliclyAccessible", False)),
            "Tags": tags,
        }
        if self.config.instance_class:
            arguments["DBInstanceClass"] = self.config.instance_class
        subnet = (source.get("DBSubnetGroup") or {}).get("DBSubnetGroupName")
        if subnet:
            arguments["DBSubnetGroupName"] = subnet
        groups = [g["VpcSecurityGroupId"] for g in source.get("VpcSecurityGroups", [])]
        if groups:
            arguments["VpcSecurityGroupIds"] = groups
        self.client.restore_db_instance_to_point_in_time(**arguments)
        return [
            f"restore_db_instance_to_point_in_time({self.source_id} -> {restored}, {target.time.isoformat()})"
        ]

    def _max_attempts(self) -> int:
        return max(1, int(self.config.wait_timeout_minutes * 60 / self.config.poll_seconds))

    def _wait_available(self, restored: str) -> dict[str, Any]:
        """Wait until the restored instance (or cluster) is available; its endpoint."""
        if self.is_cluster:
            self.hook.wait_for_db_cluster_state(
                restored, target_state="available", check_interval=self.config.poll_seconds,
                max_attempts=self._max_attempts(),
            )  # fmt: skip
            self.hook.wait_for_db_instance_state(
                f"{restored[:57]}-w1", target_state="available", check_interval=self.config.poll_seconds,
                max_attempts=self._max_attempts(),
            )  # fmt: skip
            cluster = self.client.describe_db_clusters(DBClusterIdentifier=restored)["DBClusters"][0]
            return {"address": cluster["Endpoint"], "port": int(cluster.get("Port") or 5432)}
        self.hook.wait_for_db_instance_state(
            restored, target_state="available", check_interval=self.config.poll_seconds,
            max_attempts=self._max_attempts(),
        )  # fmt: skip
        instance = self.client.describe_db_instances(DBInstanceIdentifier=restored)["DBInstances"][0]
        return {"address": instance["Endpoint"]["Address"], "port": int(instance["Endpoint"]["Port"])}

    def restored_conninfo(self, endpoint: dict[str, Any], database: str) -> dict[str, Any]:
        """libpq parameters for the restored instance: the live connection's, as ``PostgresHook`` builds
        them (login, password, extras such as ``sslmode``), at the restored endpoint."""
        return connection_params(
            self.engine.hook,
            host=endpoint["address"],
            port=endpoint["port"],
            dbname=database,
            connect_timeout=30,
        )

    def _copy_back(self, plan: PointInTimePlan, endpoint: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
        info = self.restored_conninfo(endpoint, str(plan.detail["database"]))
        with closing(psycopg.connect(**{k: v for k, v in info.items() if v is not None})) as source:
            return self.copy_back_from(source, plan)

    def _rename(self, old: str, new: str) -> str:
        self.client.modify_db_instance(
            DBInstanceIdentifier=old, NewDBInstanceIdentifier=new, ApplyImmediately=True
        )
        self.hook.wait_for_db_instance_state(
            new, target_state="available", check_interval=self.config.poll_seconds,
            max_attempts=self._max_attempts(),
        )  # fmt: skip
        return f"modify_db_instance({old} -> {new}, ApplyImmediately)"

    def _swap(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        """Restore, set the live instance aside, rename the restored one into its place; each step
        only if RDS does not show it done yet, so a retry finishes what a failed try began."""
        live_id = self.source_id
        restored = str(plan.detail["restored"])
        aside = str(plan.detail["aside"])
        state, _ = self.swap_state(target)
        calls: list[str] = []
        if state == "ready":
            calls += self._start_restore(self.describe_source(), restored, target)
            self._wait_available(restored)
            calls.append(self._rename(live_id, aside))
        if state in ("ready", "aside"):
            calls.append(self._rename(restored, live_id))
        problems = [c for c in self.verify_restore({"path": "database", "restored": restored, "aside": aside,
                                                      "point": target.time.isoformat()}) if not c.ok]  # fmt: skip
        if problems:
            raise RuntimeError(
                f"the swap did not leave RDS {live_id} as the restored instance: {problems[0].check} "
                f"(expected {problems[0].expected}, found {problems[0].actual})"
            )
        rows = self.engine.row_counts(plan.tables)
        return PointInTimeOutcome(
            statements=calls,
            rows_restored=rows,
            detail={
                "path": "database",
                "restored": restored,
                "aside": aside,
                "live_instance": live_id,
                "previous_instance": aside,
                "point": target.time.isoformat(),
                "already_swapped": state == "done",
            },
        )

    def verify_restore(self, detail: dict[str, Any]) -> list[RecoveryCheck]:
        """After a swap: the live name serves the instance restored to the point, and the replaced
        instance is kept under its aside name."""
        if detail.get("path") != "database":
            return []
        what = f"RDS {self.source_id}"
        tags = self._tags_now(self._instance(self.source_id))
        return [
            RecoveryCheck(what, "the live instance is the restored one", detail["restored"],
                          tags.get(TAG_RESTORED_AS), tags.get(TAG_RESTORED_AS) == detail["restored"]),
            RecoveryCheck(what, "restored to the point", detail.get("point"), tags.get(TAG_RESTORED_TO),
                          tags.get(TAG_RESTORED_TO) == detail.get("point")),
            RecoveryCheck(f"RDS {detail['aside']}", "the replaced instance is kept", "exists",
                          "exists" if self._instance_exists(str(detail["aside"])) else "missing",
                          self._instance_exists(str(detail["aside"]))),
        ]  # fmt: skip

    def _delete(self, restored: str) -> list[str]:
        """Delete the restored instance (and cluster); never raises (the rollback's outcome stands)."""
        calls = []
        with suppress(Exception):
            if self.is_cluster:
                writer = f"{restored[:57]}-w1"
                if self._instance_exists(writer):
                    self.client.delete_db_instance(DBInstanceIdentifier=writer, SkipFinalSnapshot=True)
                    calls.append(f"delete_db_instance({writer})")
                if self._cluster_exists(restored):
                    self.client.delete_db_cluster(DBClusterIdentifier=restored, SkipFinalSnapshot=True)
                    calls.append(f"delete_db_cluster({restored})")
            elif self._instance_exists(restored):
                self.client.delete_db_instance(
                    DBInstanceIdentifier=restored, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
                )
                calls.append(f"delete_db_instance({restored}, SkipFinalSnapshot)")
        return calls

    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        source = self.describe_source()
        now = datetime.now(UTC)
        earliest, latest, retention = self.restorable_range(source, now)
        return [
            RecoveryWindow(
                mechanism=MECHANISM,
                table=None,
                earliest=earliest,
                latest=latest,
                closes_at=point + timedelta(days=retention),
                limit=f"automated backup retention ({retention} d)",
            )
        ]
