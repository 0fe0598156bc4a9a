"""Functions that build the sensei DAGs. Manifests in, DAG objects out; no I/O beyond reading them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, AssetAlias

from sensei_airflow.conf import rollback_params
from sensei_airflow.lineage import ROLLBACK_ASSET_ALIAS
from sensei_airflow.manifest import ManifestSet, Strategy, load_manifests
from sensei_airflow.notify import notify_failure
from sensei_airflow.operators.runbook import (
    APPROVE_TASK_ID,
    FALLBACK_TASK_ID,
    REVERSE_CHUNKS_TASK_ID,
    REVERSE_STAGING_TASK_ID,
    SEQUENCES_TASK_ID,
    ApproveOperator,
    AssessOperator,
    DocumentOperator,
    FallbackOperator,
    HaltOperator,
    InvestigateOperator,
    NotifyOperator,
    ResetSequencesOperator,
    ResumeOperator,
    VerifyOperator,
)
from sensei_airflow.operators.strategies import (
    EXECUTE_OPERATORS,
    ReverseStagingChunksOperator,
    ReverseStagingOperator,
)

ROLLBACK_DAG_ID = "sensei_rollback"


def default_args() -> dict[str, Any]:
    """Task retries from ``[sensei] task_retries`` / ``retry_delay_seconds``."""
    from airflow.sdk import conf

    return {
        "owner": "sensei",
        "retries": conf.getint("sensei", "task_retries", fallback=2),
        "retry_delay": timedelta(seconds=conf.getint("sensei", "retry_delay_seconds", fallback=30)),
    }


def _doc(manifests: ManifestSet) -> str:
    lines = [
        "# Roll back a data migration",
        "",
        "Runs the rollback runbook: **assess, notify, halt, execute, verify, resume, investigate, "
        "document**. Start with *Dry run* on: the assess task returns the plan (tables in order, rows "
        "each would lose, the exact SQL) and nothing is changed.",
        "",
        f"Manifests from `{manifests.directory}`: {', '.join(sorted(manifests.manifests)) or 'none'}.",
    ]
    if manifests.errors:
        lines += ["", "**Manifests that could not be loaded:**", ""]
        lines += [f"- `{error}`" for error in manifests.errors]
    return "\n".join(lines)


def build_rollback_dag(manifests: ManifestSet | None = None) -> DAG:
    """The ``sensei_rollback`` DAG: one run per rollback, conf = the rollback request."""
    manifests = manifests if manifests is not None else load_manifests()
    with DAG(
        dag_id=ROLLBACK_DAG_ID,
        description="Roll back a data migration through the eight-step runbook",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params=rollback_params(manifests.manifests),
        render_template_as_native_obj=True,
        default_args=default_args(),
        doc_md=_doc(manifests),
        tags=["sensei", "rollback"],
    ) as dag:
        # halt, execute, verify and resume tell the channels when they fail (document sends the end).
        alert = notify_failure
        assess = AssessOperator(task_id="assess")
        approve = ApproveOperator(task_id=APPROVE_TASK_ID)
        notify = NotifyOperator(task_id="notify")
        halt = HaltOperator(task_id="halt", on_failure_callback=alert)
        # the tables a rollback changes are known at run time: their asset events go through an alias
        changed_tables = [AssetAlias(ROLLBACK_ASSET_ALIAS)]
        executes = [
            operator(task_id=f"execute_{strategy}", on_failure_callback=alert, outlets=changed_tables)
            for strategy, operator in EXECUTE_OPERATORS.items()
        ]
        # the fallback runs whatever the preferred strategy's outcome and decides itself
        fallback = FallbackOperator(
            task_id=FALLBACK_TASK_ID, trigger_rule="all_done", on_failure_callback=alert
        )
        sequences = ResetSequencesOperator(
            task_id=SEQUENCES_TASK_ID, trigger_rule="all_done", on_failure_callback=alert
        )
        verify = VerifyOperator(
            task_id="verify", trigger_rule="none_failed_min_one_success", on_failure_callback=alert
        )
        resume = ResumeOperator(task_id="resume", on_failure_callback=alert, outlets=changed_tables)
        watched = [
            "assess",
            APPROVE_TASK_ID,
            "notify",
            "halt",
            REVERSE_CHUNKS_TASK_ID,
            *[e.task_id for e in executes],
            FALLBACK_TASK_ID,
            SEQUENCES_TASK_ID,
            "verify",
            "resume",
        ]
        investigate = InvestigateOperator(
            task_id="investigate", watched_task_ids=watched, trigger_rule="all_done", retries=1
        )
        document = DocumentOperator(
            task_id="document",
            watched_task_ids=[*watched, "investigate"],
            trigger_rule="all_done",
        )
        # reverse migration: ranges cut, staged by mapped tasks (spread over the workers), one apply (ADR 0208)
        reverse_chunks = ReverseStagingChunksOperator(
            task_id=REVERSE_CHUNKS_TASK_ID, on_failure_callback=alert
        )
        reverse_staging = ReverseStagingOperator.partial(
            task_id=REVERSE_STAGING_TASK_ID, on_failure_callback=alert
        ).expand_kwargs(reverse_chunks.output)
        reverse_apply = executes[list(EXECUTE_OPERATORS).index(Strategy.REVERSE_MIGRATION)]
        assess >> approve >> notify >> halt
        halt >> [e for e in executes if e is not reverse_apply]
        halt >> reverse_chunks >> reverse_staging >> reverse_apply
        executes >> fallback >> sequences >> verify >> resume
        resume >> investigate >> document
    return dag


DEMO_DAG_ID = "sensei_demo_migration"


def build_demo_migration_dag() -> DAG:
    """``sensei_demo_migration``: fill the demo source shop and migrate it to the target, phase by phase."""
    from airflow.sdk import Param, task

    from sensei_airflow.demo import shop
    from sensei_airflow.operators.mark import MigrationStartOperator

    phases = [p["phase"] for p in shop.manifest()["phases"]]

    def _context(migration_id: str) -> tuple[Any, Any, Any, Any]:
        from sensei_airflow.engines import get_engine
        from sensei_airflow.state import StateStore

        manifest = load_manifests().get(migration_id)
        return (
            manifest,
            get_engine(manifest.source.conn_id),
            get_engine(manifest.target.conn_id),
            StateStore(manifest.state.conn_id),
        )

    with DAG(
        dag_id=DEMO_DAG_ID,
        description="The demo forward migration: shop source to warehouse target, in three phases",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params={"migration_id": Param(shop.DEMO_MIGRATION_ID, type="string", title="Migration")},
        default_args=default_args(),
        tags=["sensei", "demo"],
        doc_md="Creates the demo shop on the source (if empty) and the warehouse tables on the target, takes "
        "the migration's start mark (with the pre-migration backup when the manifest asks for one, and the undo "
        "log when it enables it), then copies each phase. Roll it back with `sensei_rollback`.",
    ) as dag:

        @task
        def prepare(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from sensei_airflow.demo.migration import prepare_source, prepare_target

            _, source, target, _ = _context((params or {})["migration_id"])
            counts = prepare_source(source)
            prepare_target(target)
            return {"source_rows": counts}

        # the public start mark, as a user's own forward-migration DAG takes it: before the first write
        previous: Any = MigrationStartOperator(task_id="start_mark", migration_id="{{ params.migration_id }}")
        prepare() >> previous
        for number in phases:

            @task(task_id=f"migrate_phase_{number}")
            def migrate(phase: int, params: dict[str, Any] | None = None) -> dict[str, int]:
                from sensei_airflow.demo.migration import migrate_phase

                manifest, source, target, _ = _context((params or {})["migration_id"])
                return migrate_phase(manifest, phase, source, target)

            step = migrate(number)
            previous >> step
            previous = step
    return dag


BACKUP_DAG_ID = "sensei_backup"


def build_backup_dag(manifests: ManifestSet | None = None) -> DAG:
    """``sensei_backup``: scheduled backups of every migration whose manifest enables ``pre_migration_backup``.

    One task per migration (each checks its own ``schedule``; one failing never stops the
    others), then verification of the new backups (checksums; a restore test for a sample),
    pruning of expired backups, and a last task that fails the run when anything failed. The
    DAG's schedule is the manifests' common schedule, or a tick fine enough for all of them
    (ADR 0102). Conf ``{"migration_id": ...}`` backs up that migration now.
    """
    from airflow.sdk import Param

    from sensei_airflow.backups.jobs import BackupSettings, dag_schedule
    from sensei_airflow.operators.backup import (
        RESTORE_TEST_CHOICES,
        BackupOutcomeOperator,
        CheckBackupRequestOperator,
        PruneBackupsOperator,
        ScheduledBackupOperator,
        VerifyBackupsOperator,
    )

    manifests = manifests if manifests is not None else load_manifests()
    enabled = [m for m in manifests if BackupSettings.of(m).scheduled]
    ids = [m.id for m in enabled]
    schedules = {m.id: BackupSettings.of(m).schedule for m in enabled}
    lines = [
        "# Scheduled backups of the migrations' tables",
        "",
        "Backs up every migration whose manifest enables `rollback.pre_migration_backup`, verifies the "
        "new backups (sha256 of every file; a restore test into a scratch database for a sample), prunes "
        "expired backups (files and catalog entry together) and records everything in the audit trail. "
        'Trigger with `{"migration_id": "..."}` to back up one migration now.',
        "",
        *(f"- `{mid}`: {schedule}" for mid, schedule in sorted(schedules.items())),
    ]
    if manifests.errors:
        lines += ["", "**Manifests that could not be loaded:**", ""]
        lines += [f"- `{error}`" for error in manifests.errors]
    with DAG(
        dag_id=BACKUP_DAG_ID,
        description="Scheduled backups of the migrations' tables, with verification and retention",
        schedule=dag_schedule(list(schedules.values())),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        params={
            "migration_id": Param(
                None,
                type=["string", "null"],
                enum=[*ids, None],
                title="Migration",
                description="Back up only this migration, now (empty: every migration whose schedule is due)",
            ),
            "restore_test": Param(
                "sample",
                type="string",
                enum=list(RESTORE_TEST_CHOICES),
                title="Restore test",
                description="Restore new backups into a scratch database: a sample of them, all, or none",
            ),
        },
        default_args=default_args(),
        doc_md="\n".join(lines),
        tags=["sensei", "backup"],
    ) as dag:
        check = CheckBackupRequestOperator(task_id="check_request", migration_ids=ids)
        backups = [ScheduledBackupOperator(task_id=f"backup_{mid}", migration_id=mid) for mid in ids]
        backup_ids = [b.task_id for b in backups]
        verify = VerifyBackupsOperator(
            task_id="verify_backups", backup_task_ids=backup_ids, trigger_rule="all_done"
        )
        prune = PruneBackupsOperator(
            task_id="prune_expired",
            state_conn_ids=[m.state.conn_id for m in manifests],
            trigger_rule="all_done",
        )
        outcome = BackupOutcomeOperator(
            task_id="outcome",
            check_task_id=check.task_id,
            watched_task_ids=[*backup_ids, verify.task_id, prune.task_id],
            trigger_rule="all_done",
            retries=0,
        )
        check >> (backups or verify)
        if backups:
            backups >> verify
        verify >> prune >> outcome
    return dag


WINDOW_CHECK_DAG_ID = "sensei_window_check"


def build_window_check_dag() -> DAG:
    """``sensei_window_check``: warn before a migration's rollback windows close.

    Runs on ``[sensei] window_check_schedule`` (default hourly). For each manifest it computes,
    per strategy, until when a rollback stays possible (:mod:`sensei_airflow.windows`) and warns
    once per window closing within ``rollback.point_in_time.warn_before_hours``: through the
    manifest's notify channels, the audit trail and the task log.
    """
    from airflow.sdk import conf, task

    with DAG(
        dag_id=WINDOW_CHECK_DAG_ID,
        description="Warn before a migration's rollback windows close",
        schedule=conf.get("sensei", "window_check_schedule", fallback="@hourly"),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=["sensei", "rollback"],
        doc_md="Until when each migration can still be rolled back, by each strategy (WAL and base backup "
        "retention, Time Travel, undo, backup expiry, rollback_window_hours). Warns before a window closes.",
    ) as dag:

        @task
        def check_windows(run_id: str | None = None) -> list[dict[str, Any]]:
            from sensei_airflow.state import utcnow
            from sensei_airflow.windows import check_all

            return check_all(load_manifests(), now=utcnow(), run_id=run_id or "manual")

        check_windows()
    return dag
