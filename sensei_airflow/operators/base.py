"""What every runbook operator shares: the plan from assess, the state store, and audit events."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar

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
ERROR_XCOM_KEY = "error"


def lock_ttl() -> timedelta:
    """``[sensei] lock_ttl_seconds``: how long a run's lock lasts once nothing renews it (a crash)."""
    from airflow.sdk import conf

    fallback = int(DEFAULT_LOCK_TTL.total_seconds())
    return timedelta(seconds=conf.getint("sensei", "lock_ttl_seconds", fallback=fallback))


class StepRun:
    """One try of one runbook task: its context, the plan, and the way to the audit trail."""

    def __init__(self, operator: RunbookOperator, context: Any) -> None:
        self.operator = operator
        self.context = context
        self.ti = context["ti"]
        self.rollback_id: str = context["run_id"]
        self.started_at: datetime = utcnow()
        dag_run = context.get("dag_run")
        self.actor: str | None = getattr(dag_run, "triggering_user_name", None)
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
        """Append an event for this step to the audit trail (and the task log)."""
        log.info("%s: %s %s", self.operator.step, action, detail or "")
        if self.audit is None:
            return
        self.audit.append(
            AuditEvent(
                step=self.operator.step,
                action=action,
                rollback_id=self.rollback_id,
                migration_id=self.manifest.id if self.manifest else None,
                task_id=self.ti.task_id,
                try_number=self.ti.try_number,
                actor=self.actor,
                reason=self.plan.reason if self.plan else None,
                sql=list(sql),
                rows_affected=rows_affected,
                started_at=self.started_at,
                ended_at=utcnow() if finished else None,
                detail=detail or {},
            )
        )

    def pull(self, task_ids: str | list[str], key: str = "return_value") -> Any:
        return self.ti.xcom_pull(task_ids=task_ids, key=key)

    @contextmanager
    def fence(self, plan: RollbackPlan, strategy: Strategy | None = None) -> Iterator[None]:
        """The block changes the migration's databases: only while this run holds the lock.

        Holds the lock row in use for the whole block (no takeover meanwhile) and the migration's
        change lock on the target, and on the source when ``strategy`` (default: the plan's) is a
        reverse migration, which writes it. See :meth:`sensei_airflow.lock.MigrationLocks.fence`.
        """
        from sensei_airflow.engines import get_engine

        assert self.manifest is not None and self.state is not None
        databases = [get_engine(self.manifest.target.conn_id)]
        if (strategy or plan.strategy) == Strategy.REVERSE_MIGRATION:
            databases.append(get_engine(self.manifest.source.conn_id))
        with MigrationLocks(self.state).fence(
            plan.migration_id, self.rollback_id, plan.lock_token, lock_ttl(), databases
        ):
            yield


class RunbookOperator(BaseOperator):
    """Base of the runbook steps: records started / finished / failed events around :meth:`run`.

    A ``RefusedError`` (the rollback must not go on) fails the task without retries; any other
    error is left to Airflow's task retries.

    :param assess_task_id: task id of the assess step whose plan this step follows.
    """

    step: ClassVar[str]
    #: whether a dry run skips this step (only assess, investigate and document run in a dry run).
    skipped_in_dry_run: ClassVar[bool] = True
    #: whether the run's lock is kept alive (heartbeat) while this step works.
    keeps_lock_alive: ClassVar[bool] = True
    ui_color = "#e8f0fe"

    def __init__(self, *, assess_task_id: str = ASSESS_TASK_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.assess_task_id = assess_task_id

    def execute(self, context: Any) -> Any:
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
        try:
            with self._heartbeat(step):
                result = self.run(step)
        except AirflowSkipException as exc:
            step.record("skipped", detail={"why": str(exc)}, finished=True)
            raise
        except Exception as exc:
            self._record_failure(step, exc)
            if isinstance(exc, RefusedError):
                raise AirflowFailException(redact(str(exc))) from None
            raise
        step.record("finished", detail=self.summary(result), finished=True)
        return result

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

    def run(self, step: StepRun) -> Any:
        raise NotImplementedError

    def summary(self, result: Any) -> dict[str, Any]:
        """What of the result goes into the 'finished' audit event."""
        return result if isinstance(result, dict) else {"result": result}

    @staticmethod
    def require_plan(step: StepRun) -> RollbackPlan:
        if step.plan is None:
            raise AirflowFailException("no rollback plan: the assess step did not succeed")
        return step.plan
