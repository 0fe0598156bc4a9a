"""The runbook steps: assess, notify, halt, (execute: see strategies.py), verify, resume, investigate, document."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from sensei_airflow.manifest import load_manifests
from sensei_airflow.operators.base import ERROR_XCOM_KEY, RunbookOperator, StepRun, log
from sensei_airflow.plan import RefusedError, RollbackPlan
from sensei_airflow.report import render_markdown
from sensei_airflow.runbook import (
    RunContext,
    assess,
    find_manifest,
    parse_request,
    rollback_status,
    status_document,
)
from sensei_airflow.state import utcnow
from sensei_airflow.strategies import strategy_class
from sensei_airflow.verify import Verification

RUNBOOK_TASK_IDS = ("assess", "notify", "halt", "verify", "resume", "investigate", "document")


def execute_task_id(strategy: str) -> str:
    return f"execute_{strategy}"


class AssessOperator(RunbookOperator):
    """Step 1, assess: validate the request and the manifest, choose the strategy, and plan.

    Refuses (fails without retry, before anything is changed) on a bad request, an unknown
    migration, a closed rollback window, a strategy that cannot apply, or a state store that is
    the target itself. Returns the plan (also stored in the run record).
    """

    step = "assess"
    skipped_in_dry_run = False
    ui_color = "#fff3cd"

    def run(self, step: StepRun) -> dict[str, Any]:
        conf = {**dict(step.context["params"]), **dict(step.context["dag_run"].conf or {})}
        request = parse_request(conf)
        manifest = find_manifest(load_manifests(), request.migration_id)
        step.use_manifest(manifest)
        assert step.state is not None
        step.record("received", detail={"request": request.conf()})
        run = RunContext(rollback_id=step.rollback_id, actor=step.actor, now=utcnow())
        try:
            plan = assess(manifest, request, run)
        except RefusedError as exc:
            step.state.record_run(
                step.rollback_id,
                manifest.id,
                status="failed",
                request=request.conf(),
                dry_run=request.dry_run,
                triggered_by=step.actor,
                reason=request.reason,
            )
            step.record("refused", detail={"why": str(exc)})
            raise
        document = plan.model_dump(mode="json")
        step.state.record_run(
            step.rollback_id,
            manifest.id,
            status="planned" if plan.dry_run else "running",
            request=request.conf(),
            dry_run=plan.dry_run,
            strategy=plan.strategy.value,
            plan=document,
            triggered_by=step.actor,
            reason=plan.reason,
        )
        step.record("planned", sql=plan.statements, detail={"plan": document})
        return document

    def summary(self, result: Any) -> dict[str, Any]:
        return {"strategy": result["strategy"], "tables": [t["target"] for t in result["tables"]]}


class NotifyOperator(RunbookOperator):
    """Step 2, notify: tell the manifest's notification channels what is about to happen."""

    step = "notify"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        assert step.manifest is not None
        message = (
            f"Rollback {plan.rollback_id} of {plan.migration_id} starting: strategy {plan.strategy}, "
            f"tables {', '.join(plan.table_names)}; reason: {plan.reason or 'not given'}"
        )
        channels = [c.conn_id for c in step.manifest.notify]
        for channel in channels:
            log.info("notify %s: %s", channel, message)
        return {"message": message, "channels": channels}


class HaltOperator(RunbookOperator):
    """Step 3, halt: name the downstream consumers of the target tables to stop during the rollback."""

    step = "halt"

    def run(self, step: StepRun) -> dict[str, Any]:
        self.require_plan(step)
        assert step.manifest is not None
        downstream = step.manifest.downstream
        return {"dags": list(downstream.dags), "db_roles": list(downstream.db_roles), "halted": []}


class VerifyOperator(RunbookOperator):
    """Step 5, verify: counts, samples and source comparison, as the strategy defines them.

    Fails (after recording the result) when verification fails, so consumers stay halted.
    """

    step = "verify"
    ui_color = "#d1e7dd"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        assert step.manifest is not None and step.state is not None
        if not plan.verify_after:
            return Verification.skipped().model_dump(mode="json")
        verification = strategy_class(plan.strategy)(step.manifest, step.state).verify(plan)
        result = verification.model_dump(mode="json")
        if not verification.passed:
            step.ti.xcom_push(key="return_value", value=result)
            first = verification.failures[0] if verification.failures else None
            detail = f"{first.table} {first.check}: expected {first.expected}, found {first.actual}" if first else ""
            raise RefusedError(f"verification failed: {detail}")
        return result


class ResumeOperator(RunbookOperator):
    """Step 6, resume: restart exactly the consumers that halt stopped (only after verification passed)."""

    step = "resume"

    def run(self, step: StepRun) -> dict[str, Any]:
        self.require_plan(step)
        halted = step.pull("halt") or {}
        return {"resumed": list(halted.get("halted", []))}


def _errors(step: StepRun, task_ids: list[str]) -> list[dict[str, Any]]:
    found = step.pull(task_ids, key=ERROR_XCOM_KEY) or []
    return [e for e in found if e]


class InvestigateOperator(RunbookOperator):
    """Step 7, investigate: when anything failed, gather what a DBA needs before re-attempting.

    Runs whatever happened upstream. Collects the failing tasks and their errors, the failed
    verification checks, and the row counts of the tables in scope before and now.
    """

    step = "investigate"
    skipped_in_dry_run = False

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched_task_ids = watched_task_ids

    def run(self, step: StepRun) -> dict[str, Any]:
        errors = _errors(step, self.watched_task_ids)
        verification = step.pull("verify")
        failed_checks = [c for c in (verification or {}).get("checks", []) if not c["ok"]]
        if not errors and not failed_checks:
            return {"needed": False}
        evidence: dict[str, Any] = {"needed": True, "errors": errors, "failed_checks": failed_checks}
        plan = step.plan
        if plan is not None:
            assert step.manifest is not None and step.state is not None
            try:
                engine = strategy_class(plan.strategy)(step.manifest, step.state).target
                now = engine.row_counts(plan.table_names)
                evidence["table_states"] = {
                    t: {"before": plan.counts_before.get(t), "now": now.get(t)} for t in plan.table_names
                }
            except Exception as exc:  # the target itself may be what failed
                evidence["table_states_error"] = f"{type(exc).__name__}: {exc}"
        return evidence


class DocumentOperator(RunbookOperator):
    """Step 8, document: write the final report and return the status document.

    The status document (CONTRACT.md) is the task's XCom and is stored in the run record with
    the JSON and Markdown reports. The task fails after documenting a failed rollback, so the
    DAG run shows the outcome.
    """

    step = "document"
    skipped_in_dry_run = False
    ui_color = "#cfe2ff"

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched_task_ids = watched_task_ids

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = step.plan
        finished_at = utcnow()
        execution = step.pull(execute_task_id(plan.strategy)) if plan else None
        raw_verification = step.pull("verify") if plan else None
        verification = Verification.model_validate(raw_verification) if raw_verification else None
        if plan is not None and plan.dry_run:
            verification = None
        status = rollback_status(plan, execution, verification)
        conf = {**dict(step.context["params"]), **dict(step.context["dag_run"].conf or {})}
        started_at = self._started_at(plan, step)
        document = status_document(
            migration_id=plan.migration_id if plan else conf.get("migration_id"),
            rollback_id=step.rollback_id,
            plan=plan,
            status=status,
            verification=verification,
            started_at=started_at,
            finished_at=finished_at,
            scope={"scope": conf.get("scope"), "tables": []},
        )
        report = {
            "status": document,
            "plan": plan.model_dump(mode="json") if plan else None,
            "execution": execution,
            "verification": raw_verification,
            "consumers": {"halted": step.pull("halt"), "resumed": step.pull("resume")},
            "investigation": step.pull("investigate"),
            "errors": _errors(step, self.watched_task_ids),
            "triggered_by": step.actor,
            "reason": plan.reason if plan else conf.get("reason"),
            "started_at": started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
        }
        if step.manifest is None:
            step.use_manifest_quietly(conf.get("migration_id"))
        if step.audit is not None and step.state is not None:
            step.record("documented", detail={"status": document})
            report["timeline"] = step.audit.events(step.rollback_id)
            chain = step.audit.verify()
            report["audit_chain"] = {"ok": chain.ok, "events": chain.events, "head_hash": chain.head_hash}
            if step.state.get_run(step.rollback_id) is not None:
                step.state.finish_run(
                    step.rollback_id,
                    status=status,
                    status_document=document,
                    report=report,
                    report_markdown=render_markdown(report),
                )
        log.info("rollback report:\n%s", render_markdown(report))
        return document

    def execute(self, context: Any) -> Any:
        document = super().execute(context)
        if document["rollback_status"] == "failed":
            context["ti"].xcom_push(key="return_value", value=document)
            raise AirflowFailException(f"rollback {document['rollback_id']} failed; see its report")
        return document

    @staticmethod
    def _started_at(plan: RollbackPlan | None, step: StepRun) -> Any:
        from datetime import datetime

        if plan is not None:
            return datetime.fromisoformat(plan.started_at)
        dag_run = step.context.get("dag_run")
        return getattr(dag_run, "start_date", None) or step.started_at
