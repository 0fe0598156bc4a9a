"""The runbook steps: assess, approve, notify, halt, (execute: see strategies.py), verify, resume,
investigate, document.

Each step is a thin operator over plain modules: :mod:`sensei_airflow.runbook` (assess, status),
:mod:`sensei_airflow.notify` (channels), :mod:`sensei_airflow.consumers` (halt and resume),
the strategies and the engines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, ClassVar

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk.execution_time.hitl import HITLUser

from sensei_airflow import consumers, investigate, lineage, notify
from sensei_airflow.anchors import Anchor
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.manifest import load_manifests
from sensei_airflow.mark import start_mark_summary
from sensei_airflow.names import markdown_cell
from sensei_airflow.operators.base import ERROR_XCOM_KEY, RunbookOperator, StepRun, lock_ttl, log
from sensei_airflow.plan import RefusedError, RollbackPlan
from sensei_airflow.redaction import redact
from sensei_airflow.report import RunOutcome, build_report, check_and_anchor, publish, timings
from sensei_airflow.runbook import (
    FallbackRefused,
    NoFallback,
    RunContext,
    assess,
    fallback_reason,
    find_manifest,
    parse_request,
    plan_fallback,
)
from sensei_airflow.state import utcnow
from sensei_airflow.status import StatusDocument
from sensei_airflow.strategies import strategy_class
from sensei_airflow.strategies.base import side_conn_id, side_tables
from sensei_airflow.verify import Verification

RUNBOOK_TASK_IDS = ("assess", "notify", "halt", "verify", "resume", "investigate", "document")
APPROVE_TASK_ID = "approve"
APPROVAL_XCOM_KEY = "approval"
#: the document step's anchor of the audit chain, also kept in Airflow's metadata database.
AUDIT_ANCHOR_XCOM_KEY = "audit_anchor"
FALLBACK_TASK_ID = "execute_fallback"
SEQUENCES_TASK_ID = "execute_sequences"
#: reverse migration's tasks before its apply (``execute_reverse_migration``): ranges cut, then staged
#: by one mapped task per group of ranges (ADR 0208).
REVERSE_CHUNKS_TASK_ID = "execute_reverse_migration_chunks"
REVERSE_STAGING_TASK_ID = "execute_reverse_migration_stage"


def execute_task_id(strategy: str) -> str:
    return f"execute_{strategy}"


def _staging_error(step: StepRun, plan: RollbackPlan) -> dict[str, Any] | None:
    """A reverse migration's failed staging task (its apply then never ran): the first error found.

    Staging writes only the run's own staging tables, so a fallback after it is as safe as after a
    failed apply (the target's fingerprints are still compared).
    """
    if plan.strategy != "reverse_migration":
        return None
    for task_id in (REVERSE_CHUNKS_TASK_ID, REVERSE_STAGING_TASK_ID):
        found = step.pull(task_id, key=ERROR_XCOM_KEY)
        errors = found if isinstance(found, list) else [found]
        for error in errors:
            if error:
                return dict(error)
    return None


def executed(step: StepRun) -> tuple[RollbackPlan | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The plan that was executed (the fallback's when it ran), its execution, and the fallback record."""
    plan = step.plan
    if plan is None:
        return None, None, None
    fallback = step.pull(FALLBACK_TASK_ID)
    if fallback:
        return RollbackPlan.model_validate(fallback["plan"]), fallback["execution"], fallback
    return plan, step.pull(execute_task_id(plan.strategy)), None


class AssessOperator(RunbookOperator):
    """Step 1, assess: validate the request and the manifest, choose the strategy, and plan.

    Refuses (fails without retry, before anything is changed) on a bad request, an unknown
    migration, a closed rollback window, a strategy that cannot apply, a state store that is the
    target itself, or another rollback of the same migration still running (its lock is held).
    Returns the plan (also stored in the run record).
    """

    step = "assess"
    skipped_in_dry_run = False
    ui_color = "#fff3cd"

    def run(self, step: StepRun) -> dict[str, Any]:
        request = parse_request(step.conf())
        manifest = find_manifest(load_manifests(), request.migration_id)
        step.use_manifest(manifest)
        assert step.state is not None
        step.record("received", detail={"request": request.conf()})
        run = RunContext(rollback_id=step.rollback_id, actor=step.actor, now=utcnow())
        try:
            plan = assess(manifest, request, run, lock_ttl())
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
            step.record("refused", detail={"why": redact(str(exc))})
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


def approval_body(plan: RollbackPlan) -> str:
    """The plan and its impact, in Markdown, for the approver."""
    lines = [
        f"**Rollback {plan.rollback_id} of `{plan.migration_id}`**",
        "",
        f"- Strategy: **{plan.strategy}** (requested: {plan.requested_strategy})"
        + (f"; fallback: {plan.fallback}" if plan.fallback else ""),
        f"- Requested by: {plan.triggered_by or 'unknown'}; reason: {plan.reason or 'not given'}",
        f"- Verification afterwards: {'yes' if plan.verify_after else 'NO'}",
    ]
    if plan.restore_to:
        lines.append(f"- Restore to: {plan.restore_to}")
    lines += ["", "| order | table | rows now |", "|---|---|---|"]
    lines += [
        f"| {i + 1} | {markdown_cell(t.target)} | {t.rows if t.rows is not None else '?'} |"
        for i, t in enumerate(plan.tables)
    ]
    for warning in plan.warnings:
        lines.append(f"\n> Warning: {warning}")
    if plan.statements:
        lines += ["", "SQL:", "```sql", *[f"{s};" for s in plan.statements], "```"]
    return "\n".join(lines)


class ApproveOperator(ApprovalOperator):
    """Optional approval gate after assess: a human approves or rejects the plan in the Airflow UI.

    Asks only when the manifest sets ``rollback.require_approval`` (never for a dry run); otherwise
    it returns at once. The plan and its impact are the request's body. A rejection skips the rest
    of the runbook (investigate and document still run, so the run ends cleanly and nothing is
    changed); approvals and rejections are audited with who answered and when.
    """

    step: ClassVar[str] = "approve"
    ui_color = "#fde2e4"

    def __init__(self, *, assess_task_id: str = "assess", **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Approve the rollback plan")
        super().__init__(**kwargs)
        self.assess_task_id = assess_task_id

    def execute(self, context: Any) -> Any:
        step = StepRun(self, context)  # type: ignore[arg-type]
        plan = step.plan
        if plan is None:
            raise AirflowFailException("no rollback plan: the assess step did not succeed")
        assert step.manifest is not None
        if plan.dry_run or not step.manifest.rollback.require_approval:
            why = "dry run" if plan.dry_run else "the manifest does not require approval"
            step.record("not required", detail={"why": why}, finished=True)
            context["ti"].xcom_push(key=APPROVAL_XCOM_KEY, value={"required": False, "why": why})
            return {"required": False, "why": why}
        self.subject = f"Roll back {plan.migration_id} with {plan.strategy}?"
        self.body = approval_body(plan)
        self.response_timeout = timedelta(hours=step.manifest.rollback.approval_timeout_hours)
        self.assigned_users = [
            HITLUser(id=a.id, name=a.name) for a in step.manifest.rollback.approvers
        ] or None
        step.record("awaiting approval", detail={"subject": self.subject})
        self.notifiers = [
            notify.ApprovalNotifier(
                channels=step.manifest.notify,
                migration_id=plan.migration_id,
                rollback_id=plan.rollback_id,
                plan=self.body,
            )
        ]
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        step = StepRun(self, context)  # type: ignore[arg-type]
        answer = event.get("chosen_options") or []
        approved = answer == [self.APPROVE]
        by = event.get("responded_by_user") or {}
        detail = {
            "answer": answer[0] if answer else None,
            "by": by.get("name") if isinstance(by, Mapping) else str(by),
            "at": str(event.get("responded_at")),
            "error": event.get("error"),
        }
        step.record("approved" if approved else "rejected", detail=detail, finished=True)
        outcome = {"required": True, "approved": approved, **detail}
        # pushed under its own key too: a task resumed from awaiting input may not push its return value
        context["ti"].xcom_push(key=APPROVAL_XCOM_KEY, value=outcome)
        result = super().execute_complete(context, event)
        return {**outcome, "response": json.loads(json.dumps(result, default=str))}


class NotifyOperator(RunbookOperator):
    """Step 2, notify: tell the manifest's channels that the rollback starts.

    A channel that fails is retried and recorded, never failing the step.
    """

    step = "notify"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        assert step.manifest is not None
        event = notify.RollbackEvent(
            event=notify.STARTED,
            migration_id=plan.migration_id,
            rollback_id=plan.rollback_id,
            summary=(
                f"Rollback {plan.rollback_id} of {plan.migration_id} starting: strategy {plan.strategy}, "
                f"tables {', '.join(plan.table_names)}; reason: {plan.reason or 'not given'}"
            ),
            detail={
                "plan": {
                    "strategy": plan.strategy.value,
                    "tables": plan.table_names,
                    "triggered_by": plan.triggered_by,
                    "fallback": plan.fallback,
                }
            },
        )
        deliveries = [d.as_json() for d in notify.notify_all(step.manifest.notify, event)]
        step.record("notified", detail={"event": event.event, "deliveries": deliveries})
        return {"event": event.event, "summary": event.summary, "deliveries": deliveries}


class _ConsumerStep(RunbookOperator):
    """Halt and resume share the API client and the target engine."""

    @cached_property
    def api(self) -> consumers.AirflowApi | None:
        return consumers.connect_api()

    @staticmethod
    def target(step: StepRun) -> Any:
        from sensei_airflow.engines import get_engine

        assert step.manifest is not None
        return get_engine(step.manifest.target.conn_id)


class HaltOperator(_ConsumerStep):
    """Step 3, halt: pause the consumer DAGs and suspend the consumer roles' privileges.

    DAGs: the manifest's ``downstream.dags`` plus the DAGs scheduled on the target tables as
    Assets, paused through Airflow's REST API. Roles: ``downstream.db_roles`` lose their direct
    privileges on the tables in scope. Each is recorded in the state store first. Afterwards the
    target tables' fingerprints are taken, so a failed execute can tell whether it changed them.
    """

    step = "halt"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        assert step.manifest is not None and step.state is not None
        target = self.target(step)
        with step.fence(plan):
            result = consumers.halt(
                step.manifest, step.rollback_id, step.state, target, plan.table_names, self.api
            )
        step.record("halted", sql=result.statements, detail=result.as_json())
        return {**result.as_json(), "fingerprints": target.table_fingerprints(plan.table_names)}

    def summary(self, result: Any) -> dict[str, Any]:
        return {"dags": [d["dag_id"] for d in result["dags"]], "grants": len(result["grants"])}


def _skip_unless_plan(step: StepRun) -> RollbackPlan:
    if step.plan is None:
        raise AirflowSkipException("no rollback plan: the assess step did not succeed")
    return step.plan


class FallbackOperator(RunbookOperator):
    """Step 4b, execute the fallback: when the preferred strategy failed without changing the target.

    Only with ``strategy: auto`` and a ``fallback_strategy``. Runs after the preferred strategy's
    execute whatever its outcome; skips unless that execute failed after its retries and the
    target tables' fingerprints still equal those taken at halt. The fallback strategy is then
    assessed afresh (it may refuse too) and executed; the audit trail records why.
    """

    step = "execute"
    ui_color = "#f8d7da"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = _skip_unless_plan(step)
        assert step.manifest is not None and step.state is not None
        why = self._why(step, plan)
        request = parse_request(step.conf())
        run = RunContext(rollback_id=step.rollback_id, actor=step.actor, now=utcnow())
        with step.fence(plan, plan.fallback):
            fallback = plan_fallback(step.manifest, request, run, plan, why, lock_ttl())
            step.record("falling back", detail={"from": plan.strategy, "to": fallback.strategy, "why": why})
            execution = strategy_class(fallback.strategy)(step.manifest, step.state).execute(fallback)
        step.record(
            "executed",
            sql=execution.statements,
            rows_affected=sum(execution.rows_affected.values()),
            detail={"strategy": fallback.strategy, "rows_affected": execution.rows_affected},
            finished=True,
        )
        step.state.record_run(
            step.rollback_id,
            plan.migration_id,
            status="running",
            request=request.model_copy(update={"strategy": fallback.strategy.value}).conf(),
            strategy=fallback.strategy.value,
            plan=fallback.model_dump(mode="json"),
            triggered_by=step.actor,
            reason=plan.reason,
        )
        return {
            "from": plan.strategy.value,
            "to": fallback.strategy.value,
            "why": why,
            "plan": fallback.model_dump(mode="json"),
            "execution": execution.as_xcom(),
        }

    @staticmethod
    def _why(step: StepRun, plan: RollbackPlan) -> str:
        """Why the fallback runs (:func:`~sensei_airflow.runbook.fallback_reason`), or skip, or refuse."""
        primary = execute_task_id(plan.strategy)
        error = step.pull(primary, key=ERROR_XCOM_KEY) or _staging_error(step, plan)
        try:
            return fallback_reason(
                plan,
                halted=step.pull("halt"),
                primary_result=step.pull(primary),
                primary_error=error,
                fingerprints_now=lambda: HaltOperator.target(step).table_fingerprints(plan.table_names),
            )
        except NoFallback as exc:
            raise AirflowSkipException(str(exc)) from None
        except FallbackRefused as exc:
            step.record(
                "fallback refused", detail={"why": "target changed", "tables": exc.changed, "error": error}
            )
            raise

    def summary(self, result: Any) -> dict[str, Any]:
        return {"from": result["from"], "to": result["to"], "why": result["why"]}


class ResetSequencesOperator(RunbookOperator):
    """Step 4c, after any strategy: set the sequences and identities of the tables in scope.

    The next value of each serial or identity column follows the highest key left (an empty
    table starts over), on every database the strategy wrote (its ``written_sides``: with
    reverse migration, the source tables' sequences are set too).
    Engines that cannot do it yet are reported, not failed.
    """

    step = "execute"
    ui_color = "#f8d7da"

    def run(self, step: StepRun) -> dict[str, Any]:
        from sensei_airflow.engines import get_engine

        plan, execution, _ = executed(step)
        if plan is None or execution is None:
            raise AirflowSkipException("no strategy was executed")
        assert step.manifest is not None
        resets: list[dict[str, Any]] = []
        warnings: list[str] = []
        with step.fence(plan):
            for side in strategy_class(plan.strategy).written_sides:
                engine = get_engine(side_conn_id(step.manifest, side))
                try:
                    resets += [
                        {"side": side, **r.as_json()} for r in engine.reset_sequences(side_tables(plan, side))
                    ]
                except NotImplementedError as exc:
                    warnings.append(f"{side}: {exc}")
        step.record("sequences reset", detail={"sequences": resets, "warnings": warnings})
        return {"sequences": resets, "warnings": warnings}

    def summary(self, result: Any) -> dict[str, Any]:
        return {"sequences": len(result["sequences"]), "warnings": result["warnings"]}


class VerifyOperator(RunbookOperator):
    """Step 5, verify: counts, checksums, samples and source comparison, as the strategy defines them.

    Fails (after recording the result) when verification fails, so consumers stay halted.
    ``verify_after: false`` marks every check ``skipped``, never ``passed``.
    """

    step = "verify"
    ui_color = "#d1e7dd"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan, _, _ = executed(step)
        plan = plan or self.require_plan(step)
        assert step.manifest is not None and step.state is not None
        if not plan.verify_after:
            return Verification.skipped().model_dump(mode="json")
        verification = strategy_class(plan.strategy)(step.manifest, step.state).verify(plan)
        result = verification.model_dump(mode="json")
        if not verification.passed:
            step.ti.xcom_push(key="return_value", value=result)
            first = verification.failures[0] if verification.failures else None
            detail = (
                f"{first.table} {first.check}: expected {first.expected}, found {first.actual}"
                if first
                else ""
            )
            raise RefusedError(f"verification failed: {detail}; consumers stay halted")
        return result


class ResumeOperator(_ConsumerStep):
    """Step 6, resume: restore exactly the consumers that were halted (only after verification passed).

    Restores every consumer still recorded as halted for the migration, also those a crashed
    earlier run halted: DAGs are unpaused only if they were unpaused before; roles get exactly
    their recorded grants back. Then an asset event for each table the rollback changed tells
    the DAGs scheduled on them that the data is back and theirs to read.
    """

    step = "resume"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        assert step.manifest is not None and step.state is not None
        with step.fence(plan):
            result = consumers.resume(
                step.manifest, step.rollback_id, step.state, self.target(step), self.api
            )
        step.record("resumed", sql=result["statements"], detail=result)
        changed, execution, _ = executed(step)
        if changed is not None and execution is not None:  # consumers may now read the rolled-back tables
            result.update(
                lineage.tell_airflow(step.context, step.manifest, changed, self.step, lineage=False)
            )
        return result

    def summary(self, result: Any) -> dict[str, Any]:
        return {"resumed": len(result["resumed"])}


def _errors(step: StepRun, task_ids: list[str]) -> list[dict[str, Any]]:
    """The recorded errors of those of ``task_ids`` that failed."""
    failed = step.failed(task_ids)
    found = (step.pull(failed, key=ERROR_XCOM_KEY) or []) if failed else []
    if isinstance(found, dict):
        found = [found]
    return [e for e in found if e]


class InvestigateOperator(RunbookOperator):
    """Step 7, investigate: when anything failed, gather what a DBA needs before re-attempting.

    Runs whatever happened upstream. Collects the failing tasks and their errors, the failed
    verification checks, per-table row counts (before and now) and fingerprints (count and
    in-database checksum), the key ranges where tables differ (located by bisection), the
    consumers still halted, and the run's timeline from the audit trail.
    """

    step = "investigate"
    skipped_in_dry_run = False

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched_task_ids = watched_task_ids

    def run(self, step: StepRun) -> dict[str, Any]:
        plan, _, _ = executed(step)
        evidence = investigate.gather_evidence(
            errors=_errors(step, self.watched_task_ids),
            checks=investigate.failed_checks(step.pull("verify")),
            plan=plan,
            manifest=step.manifest,
            target=lambda: HaltOperator.target(step),
            fingerprints_at_halt=(step.pull("halt") or {}).get("fingerprints") or {},
            state=step.state,
        )
        if evidence["needed"] and step.audit is not None:
            evidence["timeline"] = [
                {k: e.get(k) for k in investigate.TIMELINE_KEYS} for e in step.audit.events(step.rollback_id)
            ]
        return evidence

    def summary(self, result: Any) -> dict[str, Any]:
        return {"needed": result["needed"], "errors": len(result.get("errors", []))}


class DocumentOperator(RunbookOperator):
    """Step 8, document: write the final report, tell the channels, release the lock, return the status.

    The report (JSON and Markdown: who, why, when, the plan, the SQL executed, rows affected,
    verification, timings, halted and resumed consumers, the investigation, the timeline and the
    audit chain, verified against the run records' anchors) goes to the state store and to the
    manifest's ``rollback.backup_location``. The chain is anchored at this run's ``documented``
    event: an anchor file at ``rollback.backup_location`` first (signed with the audit key when
    one is configured), then the run record (``audit_events``, ``audit_head_seq``,
    ``audit_head_hash``), and the XCom ``audit_anchor``. The status document (CONTRACT.md) is the
    task's XCom. The task fails after documenting a failed rollback, so the DAG run shows the
    outcome; a rejected approval ends as ``rejected`` (nothing was changed) and the run succeeds.
    """

    step = "document"
    skipped_in_dry_run = False
    #: document gives the lock back; nothing it does needs the lock kept alive.
    keeps_lock_alive = False
    ui_color = "#cfe2ff"

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched_task_ids = watched_task_ids

    def run(self, step: StepRun) -> dict[str, Any]:
        outcome = self._outcome(step)
        document = StatusDocument.of_run(
            migration_id=step.conf().get("migration_id"),
            rollback_id=step.rollback_id,
            plan=outcome.plan,
            executed=outcome.execution is not None,
            verification=Verification.model_validate(outcome.verification) if outcome.verification else None,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            approval=outcome.approval,
            scope={"scope": step.conf().get("scope")},
        )
        report = build_report(document, outcome)
        if step.manifest is None:
            step.use_manifest_quietly(document.migration_id)
        if step.state is not None and step.manifest is not None:
            report["start_mark"] = start_mark_summary(step.state, step.manifest.id)
        self._release(step, report)
        if step.manifest is not None and step.manifest.notify:
            report["notifications"]["end"] = self._notify_end(step, document, report)
        anchor = self._anchor(step, document, report)
        markdown = publish(step.manifest.rollback.backup_location if step.manifest else None, report, anchor)
        if step.state is not None and step.state.get_run(step.rollback_id) is not None:
            if anchor is not None:
                step.state.record_audit_anchor(
                    step.rollback_id,
                    events=anchor.events,
                    head_seq=anchor.head_seq,
                    head_hash=anchor.head_hash,
                )
            step.state.finish_run(
                step.rollback_id, document=document, report=report, report_markdown=markdown
            )
        log.info("rollback report:\n%s", markdown)
        return document.as_json()

    @staticmethod
    def _release(step: StepRun, report: dict[str, Any]) -> None:
        """Note the consumers still halted, and give the run's lock back (only while it carries its token)."""
        if step.state is None or step.manifest is None:
            return
        report["consumers"]["still_halted"] = [h.as_json() for h in step.state.open_holds(step.manifest.id)]
        token = step.plan.lock_token if step.plan is not None else None
        if token is not None:
            # only while the lock still carries this run's token: never another run's lock
            report["lock_released"] = MigrationLocks(step.state).release(step.manifest.id, token)

    def _outcome(self, step: StepRun) -> RunOutcome:
        """What the run's tasks left (their XComs), as of now."""
        plan, execution, fallback = executed(step)
        return RunOutcome(
            assessed_plan=step.plan,
            plan=plan,
            execution=execution,
            fallback=fallback,
            approval=step.pull(APPROVE_TASK_ID, key=APPROVAL_XCOM_KEY) if plan else None,
            verification=step.pull("verify") if plan else None,
            halted=step.pull("halt"),
            resumed=step.pull("resume"),
            sequences=step.pull(SEQUENCES_TASK_ID),
            notified=step.pull("notify"),
            investigation=step.pull("investigate"),
            errors=_errors(step, self.watched_task_ids),
            triggered_by=step.actor,
            reason=plan.reason if plan else step.conf().get("reason"),
            started_at=self._started_at(plan, step),
            finished_at=utcnow(),
        )

    @staticmethod
    def _anchor(step: StepRun, document: StatusDocument, report: dict[str, Any]) -> Anchor | None:
        """Record the documented event, add the timeline to the report, and anchor the chain there."""
        if step.audit is None or step.state is None:
            return None
        step.record("documented", detail={"status": document.as_json()})
        events = step.audit.events(step.rollback_id)
        report["timeline"] = events
        report["timings"] = timings(events)
        anchor, report["audit_chain"] = check_and_anchor(
            step.audit, document.migration_id, step.rollback_id, events
        )
        step.ti.xcom_push(key=AUDIT_ANCHOR_XCOM_KEY, value=anchor.as_json())
        return anchor

    @staticmethod
    def _notify_end(step: StepRun, document: StatusDocument, report: dict[str, Any]) -> list[dict[str, Any]]:
        assert step.manifest is not None
        still = report["consumers"].get("still_halted") or []
        summary = f"Rollback {document.rollback_id} of {document.migration_id}: {document.rollback_status}"
        if document.failed and still:
            summary += f"; {len(still)} consumer(s) stay halted until a rollback verifies"
        if document.approval:
            summary += " (rejected: nothing was changed)"
        event = notify.RollbackEvent(
            event=notify.FAILED if document.failed else notify.FINISHED,
            migration_id=document.migration_id,
            rollback_id=document.rollback_id,
            summary=summary,
            status=document.as_json(),
            detail={"consumers_still_halted": still, "errors": report["errors"]},
        )
        deliveries = [d.as_json() for d in notify.notify_all(step.manifest.notify, event)]
        step.record("notified", detail={"event": event.event, "deliveries": deliveries})
        return deliveries

    def execute(self, context: Any) -> Any:
        document = super().execute(context)
        if document["rollback_status"] == "failed":
            context["ti"].xcom_push(key="return_value", value=document)
            raise AirflowFailException(f"rollback {document['rollback_id']} failed; see its report")
        return document

    @staticmethod
    def _started_at(plan: RollbackPlan | None, step: StepRun) -> Any:
        if plan is not None:
            return datetime.fromisoformat(plan.started_at)
        dag_run = step.context.get("dag_run")
        return getattr(dag_run, "start_date", None) or step.started_at
