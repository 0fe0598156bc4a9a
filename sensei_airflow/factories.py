"""Functions that build the sensei DAGs. Manifests in, DAG objects out; no I/O beyond reading them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from sensei_airflow.conf import rollback_params
from sensei_airflow.manifest import ManifestSet, load_manifests
from sensei_airflow.notify import notify_failure
from sensei_airflow.operators.runbook import (
    APPROVE_TASK_ID,
    FALLBACK_TASK_ID,
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
from sensei_airflow.operators.strategies import EXECUTE_OPERATORS

ROLLBACK_DAG_ID = "sensei_rollback"


def default_args() -> dict[str, Any]:
    """Task retries from ``[sensei] task_retries`` / ``retry_delay_seconds``."""
    from airflow.configuration import conf

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
        alert = {"on_failure_callback": notify_failure}
        assess = AssessOperator(task_id="assess")
        approve = ApproveOperator(task_id=APPROVE_TASK_ID)
        notify = NotifyOperator(task_id="notify")
        halt = HaltOperator(task_id="halt", **alert)
        executes = [
            operator(task_id=f"execute_{strategy}", **alert)
            for strategy, operator in EXECUTE_OPERATORS.items()
        ]
        # the fallback runs whatever the preferred strategy's outcome and decides itself
        fallback = FallbackOperator(task_id=FALLBACK_TASK_ID, trigger_rule="all_done", **alert)
        sequences = ResetSequencesOperator(task_id=SEQUENCES_TASK_ID, trigger_rule="all_done", **alert)
        verify = VerifyOperator(task_id="verify", trigger_rule="none_failed_min_one_success", **alert)
        resume = ResumeOperator(task_id="resume", **alert)
        watched = [
            "assess",
            APPROVE_TASK_ID,
            "notify",
            "halt",
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
        assess >> approve >> notify >> halt >> executes >> fallback >> sequences >> verify >> resume
        resume >> investigate >> document
    return dag


DEMO_DAG_ID = "sensei_demo_migration"


def build_demo_migration_dag() -> DAG:
    """``sensei_demo_migration``: fill the demo source shop and migrate it to the target, phase by phase."""
    from airflow.sdk import Param, task

    from sensei_airflow.demo import shop

    phases = [p["phase"] for p in shop.manifest()["phases"]]

    def _context(migration_id: str) -> tuple[Any, Any, Any, Any]:
        from sensei_airflow.engines import get_engine
        from sensei_airflow.state import StateStore

        manifest = load_manifests().get(migration_id)
        return manifest, get_engine(manifest.source.conn_id), get_engine(manifest.target.conn_id), StateStore(
            manifest.state.conn_id
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
        doc_md="Creates the demo shop on the source (if empty), the warehouse tables on the target, "
        "records the target's pre-migration row counts, then copies each phase. Roll it back with "
        "`sensei_rollback`.",
    ) as dag:

        @task
        def prepare(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from sensei_airflow.demo.migration import prepare_source, prepare_target, record_baselines

            manifest, source, target, state = _context((params or {})["migration_id"])
            counts = prepare_source(source)
            prepare_target(target)
            return {"source_rows": counts, "target_rows_before": record_baselines(manifest, target, state)}

        previous = prepare()
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
