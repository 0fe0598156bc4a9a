"""Backup operators: the pre-migration backup, and the tasks of the ``sensei_backup`` DAG.

The work is in :mod:`sensei_airflow.backups.jobs`; these operators choose what to do from the
run's conf and the manifests, record every backup, verification and prune in the audit trail
of the migration's state store, and hand small summaries on by XCom.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from sensei_airflow.audit import AuditTrail
from sensei_airflow.manifest import Manifest, load_manifests
from sensei_airflow.operators.base import OUTCOME_XCOM_KEY, SenseiOperator, TaskRun
from sensei_airflow.redaction import redact_error
from sensei_airflow.state import StateStore, utcnow

log = logging.getLogger(__name__)

#: XCom key every backup task pushes, whatever happens (so the outcome task can tell a crash).
OUTCOME_KEY = OUTCOME_XCOM_KEY
RESTORE_TEST_CHOICES = ("sample", "all", "none")


class BackupTaskOperator(SenseiOperator[TaskRun]):
    """A backup task: pushes its outcome (ok, skipped or the error) for the outcome task, and records
    each backup, verification and prune as a ``backup`` event in its migration's audit trail."""

    step = "backup"

    def begin(self, context: Any) -> TaskRun:
        return TaskRun(self, context)

    @staticmethod
    def audit(
        task: TaskRun, state_conn_id: str, action: str, *, migration_id: str | None, detail: dict[str, Any]
    ) -> None:
        """Append an event to the audit trail of a state store (and the task log)."""
        task.append(
            AuditTrail(StateStore(state_conn_id)),
            action,
            migration_id=migration_id,
            detail={"dag_id": task.ti.dag_id, "run_id": task.run_id, **detail},
            finished=True,
        )


class PreMigrationBackupOperator(BackupTaskOperator):
    """Back up a migration's tables before it starts, when its manifest asks for it.

    Takes a ``pre_migration`` backup of the target (and of the source if asked), re-reads every
    file against its sha256, and catalogs it. Does nothing (and says so) when the manifest sets
    neither ``rollback.backup_before_start`` nor ``rollback.pre_migration_backup.enabled``. A
    retry takes a new backup; the failed try's files were removed and its entry marked failed.

    :param migration_id: the migration (templated).
    :param sides: ``target`` and/or ``source``.
    """

    template_fields: Sequence[str] = ("migration_id",)
    ui_color = "#e2e3f3"

    def __init__(self, *, migration_id: str, sides: Sequence[str] = ("target",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.migration_id = migration_id
        self.sides = tuple(sides)
        for side in self.sides:
            if side not in ("target", "source"):
                raise ValueError(f"sides: {side!r} is neither 'target' nor 'source'")

    def run(self, task: TaskRun) -> dict[str, Any]:
        from sensei_airflow.backups import jobs

        try:
            manifest = load_manifests().get(self.migration_id)
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from None
        settings = jobs.BackupSettings.of(manifest)
        if not settings.before_start:
            log.info("migration %s does not ask for a pre-migration backup", manifest.id)
            return {"enabled": False, "backups": []}
        catalog = jobs.catalog_of(manifest)
        return {
            "enabled": True,
            "backups": [self._back_up(task, manifest, side, catalog) for side in self.sides],
        }

    def _back_up(self, task: TaskRun, manifest: Manifest, side: str, catalog: Any) -> dict[str, Any]:
        """Take, record and re-read one side's backup; returns its summary."""
        from sensei_airflow.backups import jobs

        state = manifest.state.conn_id
        try:
            entry = jobs.backup_migration(manifest, kind="pre_migration", side=side, catalog=catalog)
        except Exception as exc:
            detail = {"kind": "pre_migration", "side": side, "error": redact_error(exc)}
            self.audit(task, state, "backup_failed", migration_id=manifest.id, detail=detail)
            raise
        self.audit(task, state, "backed_up", migration_id=manifest.id, detail=entry.summary())
        result = jobs.verify_backup(entry, catalog, restore_test=False)
        action = "verified" if result["ok"] else "verification_failed"
        self.audit(task, state, action, migration_id=manifest.id, detail=result)
        if not result["ok"]:
            raise RuntimeError(f"backup {entry.backup_id} failed verification: {result['problems'][0]}")
        return {**entry.summary(), "status": "verified", "row_counts": entry.row_counts()}


# -- the sensei_backup DAG ------------------------------------------------------------------------
class CheckBackupRequestOperator(BackupTaskOperator):
    """First task of ``sensei_backup``: reject a conf naming an unknown migration, or one without backups.

    :param migration_ids: the migrations whose manifest enables scheduled backups.
    """

    ui_color = "#fff3cd"

    def __init__(self, *, migration_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.migration_ids = list(migration_ids)

    def run(self, task: TaskRun) -> dict[str, Any]:
        conf = task.conf()
        unknown_keys = sorted(set(conf) - {"migration_id", "restore_test"})
        if unknown_keys:
            raise AirflowFailException(
                f"unknown conf keys {unknown_keys}: allowed are migration_id, restore_test"
            )
        if conf.get("restore_test", "sample") not in RESTORE_TEST_CHOICES:
            raise AirflowFailException(f"restore_test must be one of {', '.join(RESTORE_TEST_CHOICES)}")
        chosen = conf.get("migration_id")
        if chosen and chosen not in self.migration_ids:
            manifests = load_manifests()
            why = (
                "has no manifest"
                if chosen not in manifests.manifests
                else "does not enable pre_migration_backup"
            )
            raise AirflowFailException(
                f"migration {chosen!r} {why}; backed-up migrations: {', '.join(self.migration_ids) or 'none'}"
            )
        return {"migration_id": chosen, "migrations": [chosen] if chosen else self.migration_ids}


class ScheduledBackupOperator(BackupTaskOperator):
    """Back up one migration when its schedule is due (or when the run's conf names it).

    Skips when the conf names another migration, or when the migration's own
    ``pre_migration_backup.schedule`` has not fired since its last scheduled backup.

    :param migration_id: the migration this task backs up.
    """

    template_fields: Sequence[str] = ("migration_id",)
    ui_color = "#e2e3f3"

    def __init__(self, *, migration_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.migration_id = migration_id

    def run(self, task: TaskRun) -> dict[str, Any]:
        from sensei_airflow.backups import jobs

        chosen = task.conf().get("migration_id")
        if chosen and chosen != self.migration_id:
            raise AirflowSkipException(f"this run backs up {chosen} only")
        manifest: Manifest | None = None
        try:
            manifest = load_manifests().get(self.migration_id)
            settings = jobs.BackupSettings.of(manifest)
            catalog = jobs.catalog_of(manifest)
            now = utcnow()
            last = catalog.last_created(manifest.id, "scheduled")
            if not chosen and not jobs.is_due(settings.schedule, last, now):
                raise AirflowSkipException(
                    f"schedule {settings.schedule} has not fired since the last backup at {last}"
                )
            entry = jobs.backup_migration(manifest, kind="scheduled", catalog=catalog)
        except AirflowSkipException:
            raise
        except Exception as exc:
            error = redact_error(exc)
            if manifest is not None:
                try:
                    self.audit(
                        task,
                        manifest.state.conn_id,
                        "backup_failed",
                        migration_id=manifest.id,
                        detail={"kind": "scheduled", "error": error},
                    )
                except Exception:  # the state store may be what failed; the task log has it
                    log.exception("could not record the failed backup in the audit trail")
            raise
        self.audit(
            task, manifest.state.conn_id, "backed_up", migration_id=manifest.id, detail=entry.summary()
        )
        return {**entry.summary(), "state_conn_id": manifest.state.conn_id}


class VerifyBackupsOperator(BackupTaskOperator):
    """Verify the backups this run took: every file's sha256, and a restore test for a sample.

    The sample (param ``restore_test``): ``sample`` restore-tests a random third of the new
    logical backups, at least one; ``all`` every one; ``none`` none. A backup that fails is
    marked ``failed`` in the catalog (so no rollback picks it) and fails this task, after the
    others were checked.

    :param backup_task_ids: the backup tasks whose new backups to verify.
    """

    ui_color = "#d1e7dd"
    sample_fraction = 1 / 3

    def __init__(self, *, backup_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_task_ids = list(backup_task_ids)

    def run(self, task: TaskRun) -> dict[str, Any]:
        from sensei_airflow.backups import jobs
        from sensei_airflow.backups.catalog import BackupCatalog

        ti = task.ti
        new = [b for b in (ti.xcom_pull(task_ids=t) for t in self.backup_task_ids) if b]
        mode = task.conf().get("restore_test", "sample")
        logical = [b["backup_id"] for b in new if b["type"] == "logical"]
        tested = jobs.restore_test_sample(logical, mode, self.sample_fraction)
        results, failures = [], []
        for backup in new:
            try:
                catalog = BackupCatalog(StateStore(backup["state_conn_id"]))
                entry = catalog.require(backup["backup_id"])
                result = jobs.verify_backup(entry, catalog, restore_test=entry.backup_id in tested)
            except Exception as exc:
                result = {
                    "backup_id": backup["backup_id"],
                    "ok": False,
                    "problems": [redact_error(exc)],
                }
            self.audit(
                task,
                backup["state_conn_id"],
                "verified" if result["ok"] else "verification_failed",
                migration_id=backup["migration_id"],
                detail=result,
            )
            results.append({"backup_id": backup["backup_id"], "ok": result["ok"],
                            "restore_tested": backup["backup_id"] in tested, "problems": result["problems"]})  # fmt: skip
            if not result["ok"]:
                failures.append(f"{backup['backup_id']} ({backup['migration_id']}): {result['problems'][0]}")
        if failures:
            ti.xcom_push(key="return_value", value={"verified": results})
            raise AirflowFailException("backup verification failed: " + "; ".join(failures))
        return {"verified": results}


class PruneBackupsOperator(BackupTaskOperator):
    """Delete expired backups of every state store the manifests use: files, then their catalog entry.

    :param state_conn_ids: the state stores to prune (each manifest's ``state`` connection).
    """

    ui_color = "#f8d7da"

    def __init__(self, *, state_conn_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_conn_ids = sorted(set(state_conn_ids))

    def run(self, task: TaskRun) -> dict[str, Any]:
        from sensei_airflow.backups import jobs
        from sensei_airflow.backups.catalog import BackupCatalog

        pruned, errors = [], []
        for conn_id in self.state_conn_ids:
            try:
                records = jobs.prune_expired(BackupCatalog(StateStore(conn_id)))
            except Exception as exc:
                errors.append(f"state store {conn_id}: {redact_error(exc)}")
                continue
            for record in records:
                self.audit(
                    task,
                    conn_id,
                    "pruned" if record["pruned"] else "prune_failed",
                    migration_id=record["migration_id"],
                    detail=record,
                )
                pruned.append(record)
                if record["error"]:
                    errors.append(f"{record['backup_id']}: {record['error']}")
        if errors:
            task.ti.xcom_push(key="return_value", value={"pruned": pruned})
            raise AirflowFailException("pruning failed: " + "; ".join(errors))
        return {"pruned": pruned}


class BackupOutcomeOperator(BackupTaskOperator):
    """Last task of ``sensei_backup``: fails the run, naming them, when any task before it failed.

    :param check_task_id: the conf check; when it failed, nothing else ran.
    :param watched_task_ids: the backup, verify and prune tasks.
    """

    ui_color = "#cfe2ff"

    def __init__(self, *, check_task_id: str, watched_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_task_id = check_task_id
        self.watched_task_ids = list(watched_task_ids)

    def run(self, task: TaskRun) -> dict[str, Any]:
        ti = task.ti
        check = ti.xcom_pull(task_ids=self.check_task_id, key=OUTCOME_KEY) or {
            "error": "failed before reporting"
        }
        if "error" in check:
            raise AirflowFailException(f"the run's conf was refused: {check['error']}")
        backed_up, skipped, failed = [], [], []
        for task_id in self.watched_task_ids:
            outcome = ti.xcom_pull(task_ids=task_id, key=OUTCOME_KEY)
            if not outcome:
                failed.append(f"{task_id}: failed before reporting (see its log)")
            elif "error" in outcome:
                failed.append(f"{task_id}: {outcome['error']}")
            elif "skipped" in outcome:
                skipped.append(task_id)
            else:
                backup = ti.xcom_pull(task_ids=task_id)
                if isinstance(backup, dict) and "backup_id" in backup:
                    backed_up.append(backup["backup_id"])
        summary = {"backed_up": backed_up, "skipped": skipped, "failed": failed}
        if failed:
            ti.xcom_push(key="return_value", value=summary)
            raise AirflowFailException(f"{len(failed)} task(s) failed: " + "; ".join(failed))
        return summary
