"""What every sensei operator shares: one try's context, its audit events and outcome; for the runbook
steps also the plan from assess, the state store and the lock."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from sensei_airflow.audit import AuditEvent, AuditTrail
from sensei_airflow.lock import Heartbeat, LockUnverified, MigrationLock, MigrationLocks
from sensei_airflow.manifest import Manifest, Strategy, load_manifests
from sensei_airflow.plan import RefusedError, RollbackPlan
from sensei_airflow.redaction import redact, redact_error
from sensei_airflow.runbook import DEFAULT_LOCK_TTL
from sensei_airflow.state import StateStore, utcnow

log = logging.getLogger(__name__)

ASSESS_TASK_ID = "assess"
#: a runbook task's failure: task, try, error, and whether a retry may help.
ERROR_XCOM_KEY = "error"
#: how a backup task's try ended (``ok``, ``skipped`` or ``error``), for the outcome task.
OUTCOME_XCOM_KEY = "outcome"


def lock_ttl() -> timedelta:
    """``[sensei] lock_ttl_seconds``: how long a run's lock lasts once nothing renews it (a crash)."""
    from airflow.sdk import conf

    fallback = int(DEFAULT_LOCK_TTL.total_seconds())
    return timedelta(seconds=conf.getint("sensei", "lock_ttl_seconds", fallback=fallback))


class TaskRun:
    """One try of one sensei task: its context, who triggered it, and the way to the audit trail."""

    def __init__(self, operator: SenseiOperator, context: Any) -> None:
        self.operator = operator
        self.context = context
        self.ti = context["ti"]
        self.run_id: str = context["run_id"]
        self.started_at: datetime = utcnow()
        self.dag_run = context.get("dag_run")
        self.actor: str | None = getattr(self.dag_run, "triggering_user_name", None)

    def conf(self) -> dict[str, Any]:
        """The run's params, overridden by its conf."""
        return {**dict(self.context.get("params") or {}), **dict(getattr(self.dag_run, "conf", None) or {})}

    def pull(self, task_ids: str | list[str], key: str = "return_value") -> Any:
        return self.ti.xcom_pull(task_ids=task_ids, key=key)

    def failed(self, task_ids: Sequence[str]) -> list[str]:
        """Which of ``task_ids`` failed in this run (a mapped task: any of its instances), in order.

        One request for the run's task states, instead of one XCom read per task.
        """
        states = self.ti.get_task_states(
            dag_id=self.ti.dag_id, task_ids=list(task_ids), run_ids=[self.run_id]
        )
        failed = {key for key, state in states.get(self.run_id, {}).items() if state == "failed"}

        def is_failed(task_id: str) -> bool:
            # a mapped task's instances are keyed "<task_id>_<map_index>"
            return task_id in failed or any(
                key.startswith(f"{task_id}_") and key[len(task_id) + 1 :].isdigit() for key in failed
            )

        return [task_id for task_id in task_ids if is_failed(task_id)]

    def append(
        self,
        trail: AuditTrail,
        action: str,
        *,
        migration_id: str | None,
        rollback_id: str | None = None,
        reason: str | None = None,
        sql: Sequence[str] = (),
        rows_affected: int | None = None,
        detail: dict[str, Any] | None = None,
        finished: bool = False,
    ) -> None:
        """Append an event of this task's step to ``trail`` (and the task log).

        :param finished: the event ends the step (it carries the end time).
        """
        log.info("%s: %s %s %s", self.operator.step, action, migration_id or "", detail or "")
        trail.append(
            AuditEvent(
                step=self.operator.step,
                action=action,
                rollback_id=rollback_id,
                migration_id=migration_id,
                task_id=self.ti.task_id,
                try_number=self.ti.try_number,
                actor=self.actor,
                reason=reason,
                sql=list(sql),
                rows_affected=rows_affected,
                started_at=self.started_at,
                ended_at=utcnow() if finished else None,
                detail=detail or {},
            )
        )


class StepRun(TaskRun):
    """One try of one runbook task: also the plan from assess, its manifest and state store."""

    def __init__(self, operator: RunbookOperator, context: Any) -> None:
        super().__init__(operator, context)
        self.operator: RunbookOperator = operator
        self.rollback_id: str = self.run_id
        self.plan: RollbackPlan | None = None
        self.manifest: Manifest | None = None
        self.state: StateStore | None = None
        self.audit: AuditTrail | None = None
        raw_plan = self.ti.xcom_pull(task_ids=operator.assess_task_id)
        if raw_plan:
            self.plan = RollbackPlan.model_validate(raw_plan)
            self.use_manifest(load_manifests().get(self.plan.migration_id))

    def use_manifest(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.state = StateStore(manifest.state.conn_id)
        self.audit = AuditTrail(self.state)

    def use_manifest_quietly(self, migration_id: str | None) -> None:
        """Use the manifest if it loads (to document a run whose assess failed)."""
        manifest = load_manifests().manifests.get(migration_id or "")
        if manifest is not None:
            self.use_manifest(manifest)

    def record(
        self,
        action: str,
        *,
        sql: Sequence[str] = (),
        rows_affected: int | None = None,
        detail: dict[str, Any] | None = None,
        finished: bool = False,
    ) -> None:
        """Append an event for this step to the run's audit trail (and the task log)."""
        if self.audit is None:
            log.info("%s: %s %s", self.operator.step, action, detail or "")
            return
        self.append(
            self.audit,
            action,
            migration_id=self.manifest.id if self.manifest else None,
            rollback_id=self.rollback_id,
            reason=self.plan.reason if self.plan else None,
            sql=sql,
            rows_affected=rows_affected,
            detail=detail,
            finished=finished,
        )

    @contextmanager
    def fence(
        self, plan: RollbackPlan, strategy: Strategy | None = None, *, shared: bool = False
    ) -> Iterator[None]:
        """The block changes the migration's databases: only while this run holds the lock.

        Holds the lock row in use for the whole block (no takeover meanwhile) and the migration's
        change lock on each database ``strategy`` (default: the plan's) writes (its ``written_sides``). See :meth:`sensei_airflow.lock.MigrationLocks.fence`.
        ``shared``: the change locks in share mode, for tasks of one run that work side by side
        (the mapped reverse staging tasks).
        """
        from sensei_airflow.engines import get_engine
        from sensei_airflow.strategies import strategy_class
        from sensei_airflow.strategies.base import side_conn_id

        assert self.manifest is not None and self.state is not None
        sides = strategy_class(strategy or plan.strategy).written_sides
        databases = [get_engine(side_conn_id(self.manifest, side)) for side in sides]
        with MigrationLocks(self.state).fence(
            plan.migration_id, self.rollback_id, plan.lock_token, lock_ttl(), databases, shared=shared
        ):
            yield


RunT = TypeVar("RunT", bound=TaskRun)


class SenseiOperator(BaseOperator, Generic[RunT]):
    """Base of every sensei task: runs :meth:`run` for one try and hands on how it ended.

    :meth:`outcome` is told whether the try finished, skipped or failed, and records it (audit
    events, XComs). A ``RefusedError`` (what was asked must not go on) fails the task without
    retries; any other error is left to Airflow's task retries.
    """

    step: ClassVar[str]

    def execute(self, context: Any) -> Any:
        task = self.begin(context)
        try:
            with self.working(task):
                result = self.run(task)
        except AirflowSkipException as exc:
            self.outcome(task, {"skipped": str(exc)})
            raise
        except Exception as exc:
            self.outcome(task, {"error": redact_error(exc)}, exc)
            if isinstance(exc, RefusedError):
                raise AirflowFailException(redact(str(exc))) from None
            raise
        self.outcome(task, {"ok": True}, result=result)
        return result

    def begin(self, context: Any) -> RunT:
        """The try's :class:`TaskRun`; may refuse or skip before :meth:`run`."""
        raise NotImplementedError

    def working(self, task: RunT) -> AbstractContextManager[None]:
        """What surrounds :meth:`run` (the runbook keeps the run's lock alive)."""
        return nullcontext()

    def outcome(
        self, task: RunT, outcome: dict[str, Any], exc: Exception | None = None, result: Any = None
    ) -> None:
        """Record how the try ended: ``{"ok": True}``, ``{"skipped": why}`` or ``{"error": text}``.

        :param exc: the error, when it failed.
        :param result: :meth:`run`'s result, when it finished.
        """
        task.ti.xcom_push(key=OUTCOME_XCOM_KEY, value=outcome)

    def run(self, task: RunT) -> Any:
        raise NotImplementedError


class RunbookOperator(SenseiOperator[StepRun]):
    """Base of the runbook steps: records started / finished / skipped / failed events around :meth:`run`.

    :param assess_task_id: task id of the assess step whose plan this step follows.
    """

    #: whether a dry run skips this step (only assess, investigate and document run in a dry run).
    skipped_in_dry_run: ClassVar[bool] = True
    #: whether the run's lock is kept alive (heartbeat) while this step works.
    keeps_lock_alive: ClassVar[bool] = True
    ui_color = "#e8f0fe"

    def __init__(self, *, assess_task_id: str = ASSESS_TASK_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.assess_task_id = assess_task_id

    def begin(self, context: Any) -> StepRun:
        step = StepRun(self, context)
        if step.plan is not None and step.plan.dry_run and self.skipped_in_dry_run:
            step.record("skipped", detail={"why": "dry run: nothing is changed"}, finished=True)
            raise AirflowSkipException("dry run: nothing is changed")
        try:
            step.record("started")
        except Exception as exc:
            failure = self._state_store_away(step, exc)
            self._record_failure(step, failure)
            raise failure from None
        return step

    def working(self, task: StepRun) -> AbstractContextManager[None]:
        return self._heartbeat(task)

    def outcome(
        self, task: StepRun, outcome: dict[str, Any], exc: Exception | None = None, result: Any = None
    ) -> None:
        if "skipped" in outcome:
            task.record("skipped", detail={"why": outcome["skipped"]}, finished=True)
        elif exc is not None:
            self._record_failure(task, exc)
        else:
            task.record("finished", detail=self.summary(result), finished=True)

    @staticmethod
    def _state_store_away(step: StepRun, exc: Exception) -> Exception:
        """The step cannot even record that it starts: say so in one line (a retry may find it back)."""
        import psycopg

        if not isinstance(exc, psycopg.OperationalError) or step.state is None:
            return exc
        what = (
            f"rollback {step.rollback_id} cannot check that it still holds the lock of migration "
            f"{step.plan.migration_id}"
            if step.plan is not None
            else f"rollback {step.rollback_id} cannot record its {step.operator.step} step"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return LockUnverified(
            f"{what}: the state store ({step.state.conn_id}) does not answer ({type(exc).__name__}: {first}); "
            f"{step.ti.task_id} does not start; nothing more is changed"
        )

    @contextmanager
    def _heartbeat(self, step: StepRun) -> Iterator[None]:
        """Keep the run's lock alive while :meth:`run` works; record it if the lock is found lost."""
        plan = step.plan
        if (
            not self.keeps_lock_alive
            or plan is None
            or plan.dry_run
            or plan.lock_token is None
            or step.state is None
        ):
            yield
            return

        def lost(holder: MigrationLock | None) -> None:
            step.record(
                "lock lost",
                detail={
                    "token": plan.lock_token,
                    "holder": holder.as_json() if holder else None,
                    "why": "the migration's lock no longer carries this run's token: the next change is refused",
                },
            )

        with Heartbeat(MigrationLocks(step.state), plan.migration_id, plan.lock_token, lock_ttl(), lost):
            yield

    def _record_failure(self, step: StepRun, exc: Exception) -> None:
        error = {
            "task_id": self.task_id,
            "try_number": step.ti.try_number,
            "error": redact_error(exc),
            "retryable": not isinstance(exc, RefusedError | AirflowFailException),
        }
        step.ti.xcom_push(key=ERROR_XCOM_KEY, value=error)
        try:
            step.record("failed", detail=error, finished=True)
        except Exception:  # the state store may be what failed; the task log still has it
            log.exception("could not record the failure in the audit trail")

    def summary(self, result: Any) -> dict[str, Any]:
        """What of the result goes into the 'finished' audit event."""
        return result if isinstance(result, dict) else {"result": result}

    @staticmethod
    def require_plan(step: StepRun) -> RollbackPlan:
        if step.plan is None:
            raise AirflowFailException("no rollback plan: the assess step did not succeed")
        return step.plan
