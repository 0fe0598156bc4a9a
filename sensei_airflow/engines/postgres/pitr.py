"""Point-in-time recovery for self-managed PostgreSQL: base backups plus a WAL archive.

Two paths (docs/adr/0501-postgres-table-level-pitr.md):

- **table** (the default): recover a copy of the newest base backup taken before
  ``restore_to`` into a scratch cluster, replay the archived WAL up to the target, promote it,
  then replace only the tables in scope on the live target in one transaction (parents before
  children), leaving every other table and database untouched. The scratch cluster is always
  removed.
- **database**: for scope ``all`` when the manifest says the cluster holds only this
  migration's data: recover a new data directory beside the live one, then stop the live
  cluster, swap the directories and start it again with its own options. The old data
  directory is kept beside it.

Traps handled (ENVIRONMENT.md): the target time is always sent with an explicit offset, or
replaced by a restore point name; the current WAL segment is switched and its archiving
awaited before recovery; ``recovery_target_action=promote``; recovery is waited for until
``pg_is_in_recovery()`` is false; a target before the oldest base backup or after the newest
WAL is refused in assess, as is a gap in the archive; a segment missing during replay fails
before the live target changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from sensei_airflow.engines.base import (
    PointInTimeOutcome,
    PointInTimePlan,
    PointInTimeRefused,
    RecoveryTarget,
    RecoveryWindow,
)
from sensei_airflow.engines.postgres import catalog, cluster, wal
from sensei_airflow.engines.postgres.basebackup import (
    BaseBackup,
    list_base_backups,
    parse_lsn,
    unpack,
    with_archived_stop_time,
)
from sensei_airflow.engines.postgres.cluster import RecoveredCluster
from sensei_airflow.engines.postgres.copy import CopyBackRecovery, replace_statements, replacement_scope
from sensei_airflow.manifest import PostgresPointInTime

MECHANISM = "PostgreSQL WAL archive + base backups"
#: configuration the cluster-level path carries over from the live data directory.
LIVE_CONFIG_FILES = ("pg_hba.conf", "pg_ident.conf", "postgresql.conf", "postgresql.auto.conf")


def recover(
    backup: BaseBackup,
    target: RecoveryTarget,
    config: PostgresPointInTime,
    base_dir: Path,
    *,
    use_restore_point: bool,
    user: str,
    fast: bool = True,
) -> RecoveredCluster:
    """Copy ``backup`` into ``base_dir/data``, replay the archive to ``target``, promote, and wait.

    :raises PointInTimeRefused: when recovery cannot reach the target (a missing segment, a
        target before the backup became consistent); the server log's last lines say why.
    """
    settings = wal.recovery_settings(
        target, config.wal_archive, config.recovery_target_timeline, use_restore_point=use_restore_point
    )
    return cluster.recover(
        base_dir,
        lambda data: unpack(backup, data),
        settings,
        target,
        port=config.scratch_ports[0],
        user=user,
        timeout_seconds=config.recovery_timeout_seconds,
        fast=fast,
    )


def _outcome_detail(
    path: str, backup: BaseBackup, switched: str, recovered: RecoveredCluster
) -> dict[str, Any]:
    """What a restore reports of itself: the path, the base backup, the WAL switched and where recovery stopped."""
    return {
        "path": path,
        "base_backup": backup.name,
        "switched_wal": switched,
        "recovery": recovered.stopped_at,
    }


# -- the mechanism -----------------------------------------------------------------------
class PostgresWalRecovery(CopyBackRecovery[PostgresPointInTime]):
    """Table-level (default) or cluster-level PITR of a self-managed PostgreSQL target."""

    mechanism = MECHANISM
    block = "postgres"

    # -- facts about the live cluster and the archive --------------------------------------
    def server_facts(self) -> dict[str, Any]:
        return dict(self.engine.read(catalog.archiver_facts))

    def backups(self) -> list[BaseBackup]:
        return [
            with_archived_stop_time(b, self.config.wal_archive)
            for b in list_base_backups(self.config.base_backups)
        ]

    def choose_backup(self, target: RecoveryTarget, restore_point_lsn: int | None) -> BaseBackup:
        backups = self.backups()
        if not backups:
            raise PointInTimeRefused(
                f"no base backup in {self.config.base_backups}: take one (pg_basebackup -Fp -X stream)"
            )
        if restore_point_lsn is not None:
            usable = [b for b in backups if (b.end_lsn or b.start_lsn) <= restore_point_lsn]
        else:
            usable = [b for b in backups if b.end_time <= target.time]
        if not usable:
            oldest = backups[0]
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is before the oldest base backup ({oldest.name}, "
                f"usable from {oldest.end_time.isoformat()}): the WAL archive cannot reach it"
            )
        return usable[-1]

    def _check_archive(self, facts: dict[str, Any], backup: BaseBackup, target: RecoveryTarget) -> None:
        if facts["in_recovery"]:
            raise PointInTimeRefused(f"{self.engine.conn_id} is a standby: point it at the primary")
        if facts["wal_level"] not in ("replica", "logical") or facts["archive_mode"] not in ("on", "always"):
            raise PointInTimeRefused(
                f"{self.engine.conn_id} does not archive WAL (wal_level={facts['wal_level']}, "
                f"archive_mode={facts['archive_mode']}): point-in-time recovery is impossible"
            )
        failed, archived = facts["last_failed_time"], facts["last_archived_time"]
        if failed is not None and (archived is None or failed > archived):
            raise PointInTimeRefused(
                f"WAL archiving is failing on {self.engine.conn_id} (last failed segment "
                f"{facts['last_failed_wal']} at {failed.isoformat()}): fix archive_command first"
            )
        if target.time > facts["now"]:
            raise PointInTimeRefused(
                f"restore_to {target.time.isoformat()} is after the newest WAL (the server's clock says "
                f"{facts['now'].isoformat()}): a point in the future cannot be restored"
            )
        if not Path(self.config.wal_archive).is_dir():
            raise PointInTimeRefused(
                f"the WAL archive {self.config.wal_archive} is not readable from this worker"
            )
        gap = wal.archive_gap(
            self.config.wal_archive,
            backup.start_wal_file,
            int(facts["segment_size"]),
            facts["last_archived_wal"],
        )
        if gap is not None:
            raise PointInTimeRefused(
                f"WAL segment {gap} is missing from the archive {self.config.wal_archive}: replay from base "
                f"backup {backup.name} cannot pass it"
            )

    def _restore_point_lsn(self, target: RecoveryTarget) -> int | None:
        return parse_lsn(target.position) if target.position else None

    # -- PointInTimeRecovery ------------------------------------------------------------------
    def create_restore_point(self, name: str) -> str:
        """``pg_create_restore_point(name)``; returns its LSN (the migration tool calls this)."""
        with self.engine.connect() as conn:
            conn.autocommit = True
            lsn = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()[0]
        return str(lsn)

    def assess(
        self, tables: Sequence[str], target: RecoveryTarget, *, whole_database: bool
    ) -> PointInTimePlan:
        facts = self.server_facts()
        backup = self.choose_backup(target, self._restore_point_lsn(target))
        self._check_archive(facts, backup, target)
        tablespaces = backup.path / "pg_tblspc"
        if tablespaces.is_dir() and any(tablespaces.iterdir()):
            raise PointInTimeRefused(
                f"base backup {backup.name} has tablespaces: the scratch restore does not relocate them"
            )
        ordered, referenced = replacement_scope(self.engine, tables)
        warnings: list[str] = []
        path = "table"
        if whole_database:
            reason = self._cluster_path_refusal()
            if reason is None:
                path = "database"
            else:
                warnings.append(f"restoring table by table, not the whole cluster: {reason}")
        use_point = bool(target.restore_point or target.position)
        settings = wal.recovery_settings(
            target, self.config.wal_archive, self.config.recovery_target_timeline, use_restore_point=use_point
        )
        stop = next(
            f"{name} = '{settings[name]}'"
            for name in ("recovery_target_name", "recovery_target_lsn", "recovery_target_time")
            if name in settings
        )
        steps = [
            "SELECT pg_switch_wal()  -- then wait until the segment is in the archive",
            f"copy base backup {backup.name} to a new data directory",
            f"{stop}, recovery_target_action = 'promote', restore_command from {self.config.wal_archive}",
            "start it and wait until pg_is_in_recovery() is false",
        ]
        if path == "table":
            steps += [s.sql for s in replace_statements(self.engine, ordered, referenced)]
            steps.append("COPY each table from the recovered cluster, parents first; set its sequences")
            steps.append("COMMIT; stop and remove the scratch cluster")
        else:
            steps += [
                f"pg_ctl stop -D {self.config.data_directory}",
                f"move {self.config.data_directory} aside, move the recovered directory into its place",
                f"pg_ctl start -D {self.config.data_directory} with its previous options",
            ]
        detail = {
            "base_backup": backup.name,
            "base_backup_usable_from": backup.end_time.isoformat(),
            "database": facts["database"],
            "use_restore_point": use_point,
        }
        return self.assessed(ordered, referenced, path, steps, warnings, detail)

    def _cluster_path_refusal(self) -> str | None:
        if not self.config.data_directory:
            return "rollback.point_in_time.postgres.data_directory is not set"
        data = Path(self.config.data_directory)
        if not (data / "PG_VERSION").is_file():
            return f"{data} is not a data directory this worker can reach"
        identifier = self.engine.read(catalog.system_identifier)
        control = subprocess.run(
            [str(cluster.program("pg_controldata", self.config.bin_dir)), str(data)],
            capture_output=True,
            text=True,
            check=False,
        )
        if f"Database system identifier:           {identifier}" not in control.stdout:
            return f"{data} is not the data directory of {self.engine.conn_id}"
        return None

    def switch_and_wait(self) -> str:
        """Close the current WAL segment and wait until it is archived; returns its name."""
        return wal.switch_and_wait(self.engine, self.config.wal_archive, self.config.archive_wait_seconds)

    def _scratch_base(self, rollback_key: str) -> Path:
        if self.config.scratch_dir:
            root = Path(self.config.scratch_dir)
            root.mkdir(parents=True, exist_ok=True)
            return root / f"sensei-pitr-{rollback_key}"
        return cluster.new_cluster_dir("sensei-pitr-") / "scratch"

    @contextmanager
    def scratch(
        self, backup: BaseBackup, target: RecoveryTarget, *, use_restore_point: bool, key: str
    ) -> Iterator[RecoveredCluster]:
        """A recovered, promoted scratch cluster; always stopped and removed on exit."""
        base = self._scratch_base(key)
        try:
            yield recover(
                backup,
                target,
                self.config,
                base,
                use_restore_point=use_restore_point,
                user=self.config.scratch_user,
            )
        finally:
            cluster.remove_cluster(base)
            if not self.config.scratch_dir:
                shutil.rmtree(base.parent, ignore_errors=True)

    def restore(self, plan: PointInTimePlan, target: RecoveryTarget) -> PointInTimeOutcome:
        backup = next((b for b in self.backups() if b.name == plan.detail["base_backup"]), None)
        if backup is None:
            raise PointInTimeRefused(
                f"base backup {plan.detail['base_backup']} is gone from {self.config.base_backups}"
            )
        facts = self.server_facts()
        self._check_archive(facts, backup, target)
        switched = self.switch_and_wait()
        use_point = bool(plan.detail.get("use_restore_point"))
        key = f"{int(time.time() * 1000)}-{os.getpid()}"
        if plan.path == "database":
            return self._restore_cluster(plan, target, backup, switched, use_point, key)
        with self.scratch(backup, target, use_restore_point=use_point, key=key) as recovered:
            statements, rows = self.copy_back(recovered, plan)
        detail = _outcome_detail("table", backup, switched, recovered)
        return PointInTimeOutcome(statements=statements, rows_restored=rows, detail=detail)

    def copy_back(
        self, recovered: RecoveredCluster, plan: PointInTimePlan
    ) -> tuple[list[str], dict[str, int]]:
        """Replace the plan's tables on the live target with their recovered content, in one transaction."""
        dsn = recovered.dsn(plan.detail["database"], self.config.scratch_user)
        with closing(psycopg.connect(dsn)) as source:
            return self.copy_back_from(source, plan)

    # -- the cluster-level path ------------------------------------------------------------
    def _restore_cluster(
        self,
        plan: PointInTimePlan,
        target: RecoveryTarget,
        backup: BaseBackup,
        switched: str,
        use_point: bool,
        key: str,
    ) -> PointInTimeOutcome:
        assert self.config.data_directory
        live_dir = Path(self.config.data_directory)
        base = live_dir.parent / f"{live_dir.name}.sensei-restore"
        aside = live_dir.parent / f"{live_dir.name}.before-pitr-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        options = cluster.postmaster_options(live_dir)

        try:
            recovered = recover(
                backup,
                target,
                self.config,
                base,
                use_restore_point=use_point,
                user=self.config.scratch_user,
                fast=False,
            )
            with closing(
                psycopg.connect(recovered.dsn(plan.detail["database"], self.config.scratch_user))
            ) as conn:
                quoted = [self.engine.quote_table(t) for t in plan.tables]
                rows = {
                    t: int(cluster.scalar(conn, f"SELECT count(*) FROM {q}"))  # noqa: S608
                    for t, q in zip(plan.tables, quoted, strict=True)
                }
            recovered.cluster.stop("fast")
            # the live cluster's own configuration (the scratch one trusted its private socket)
            for name in LIVE_CONFIG_FILES:
                if (live_dir / name).is_file():
                    shutil.copy2(live_dir / name, base / "data" / name)
            cluster.chown_to_postgres(base / "data")
        except BaseException:
            cluster.remove_cluster(base)
            raise
        pg_ctl = str(cluster.program("pg_ctl", self.config.bin_dir))
        run = [*cluster.as_postgres_user(), pg_ctl, "-D", str(live_dir), "-m", "fast", "-w", "stop"]
        subprocess.run(run, capture_output=True, text=True, check=True)
        live_dir.rename(aside)
        (base / "data").rename(live_dir)
        shutil.rmtree(base, ignore_errors=True)
        log_file = live_dir.parent / "server.log"
        start = [
            *cluster.as_postgres_user(),
            pg_ctl,
            "-D",
            str(live_dir),
            "-l",
            str(log_file),
            "-w",
            "-t",
            "120",
            "-o",
            options,
            "start",
        ]
        started = subprocess.run(start, capture_output=True, text=True, check=False)
        if started.returncode != 0:
            # put the previous cluster back rather than leave the target down
            shutil.rmtree(live_dir.parent / f"{live_dir.name}.failed-pitr", ignore_errors=True)
            live_dir.rename(live_dir.parent / f"{live_dir.name}.failed-pitr")
            aside.rename(live_dir)
            subprocess.run([*start], capture_output=True, text=True, check=False)
            raise RuntimeError(
                f"the recovered cluster did not start ({started.stderr.strip()}); the previous one is back"
            )
        return PointInTimeOutcome(
            statements=[
                " ".join(run),
                f"mv {live_dir} {aside}",
                f"mv <recovered> {live_dir}",
                " ".join(start),
            ],
            rows_restored=rows,
            detail={
                **_outcome_detail("database", backup, switched, recovered),
                "previous_data_directory": str(aside),
            },
        )

    # -- windows ----------------------------------------------------------------------------
    def windows(self, tables: Sequence[str], point: datetime) -> list[RecoveryWindow]:
        backups = self.backups()
        earliest = backups[0].end_time if backups else None
        covering = [b for b in backups if b.end_time <= point]
        closes: list[tuple[datetime, str]] = []
        if not covering:
            closes.append((point, "no base backup was taken before this point"))
        else:
            chosen = covering[-1]
            if self.config.base_backup_retention_days is not None:
                closes.append(
                    (chosen.end_time + timedelta(days=self.config.base_backup_retention_days),
                     f"base backup retention ({chosen.name})")
                )  # fmt: skip
            if self.config.wal_retention_days is not None:
                closes.append(
                    (
                        chosen.start_time + timedelta(days=self.config.wal_retention_days),
                        "WAL archive retention",
                    )
                )
        closes_at, limit = min(closes) if closes else (None, "no retention configured")
        return [
            RecoveryWindow(
                mechanism=MECHANISM,
                table=None,
                earliest=earliest,
                latest=datetime.now(UTC),
                closes_at=closes_at,
                limit=limit,
            )
        ]
