"""Step 4, execute: one operator per rollback strategy.

Each runs only when assess chose its strategy (the others skip), so the DAG shows which
strategy ran. The work is the strategy's; the operator records it in the audit trail.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk.exceptions import AirflowSkipException

from sensei_airflow import lineage
from sensei_airflow.manifest import Strategy
from sensei_airflow.operators.base import RunbookOperator, StepRun
from sensei_airflow.strategies import strategy_class


class ExecuteStrategyOperator(RunbookOperator):
    """Run one strategy's execute, if assess chose it, inside the run's fence.

    The fence (:meth:`StepRun.fence`) refuses before anything changes when this run no longer
    holds the migration's lock, and keeps it held until the strategy's changes have committed.
    Afterwards the changed tables' asset events and lineage go to Airflow (:mod:`sensei_airflow.lineage`).
    """

    step = "execute"
    strategy: ClassVar[Strategy]
    ui_color = "#f8d7da"

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        if plan.strategy != self.strategy:
            raise AirflowSkipException(f"assess chose {plan.strategy}, not {self.strategy}")
        assert step.manifest is not None and step.state is not None
        with step.fence(plan):
            execution = strategy_class(self.strategy)(step.manifest, step.state).execute(plan)
        step.record(
            "executed",
            sql=execution.statements,
            rows_affected=sum(execution.rows_affected.values()),
            detail={"rows_affected": execution.rows_affected, **execution.detail},
            finished=True,
        )
        # the changed tables' asset events and lineage (best effort, never failing the step)
        return {**execution.as_xcom(), **lineage.tell_airflow(step.context, step.manifest, plan, self.step)}

    def summary(self, result: Any) -> dict[str, Any]:
        return {"rows_affected": result["rows_affected"]}


class TruncateOperator(ExecuteStrategyOperator):
    """Target truncate: empty the tables in scope, children first, in one transaction."""

    strategy = Strategy.TRUNCATE


class ReverseMigrationOperator(ExecuteStrategyOperator):
    """Reverse migration: the source made equal to the inverse of the target; resumes from its checkpoints.

    In the runbook it follows the staging tasks (:class:`ReverseStagingOperator`) and finds every
    range staged: it applies them in one source transaction (ADR 0200). Any range still pending
    (no staging tasks ran, as in the fallback) it stages itself first.
    """

    strategy = Strategy.REVERSE_MIGRATION


def _reverse(step: StepRun) -> Any:
    """The run's reverse migration strategy (imported on use: DAG parsing stays light)."""
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    assert step.manifest is not None and step.state is not None
    return ReverseMigrationStrategy(step.manifest, step.state)


class ReverseStagingChunksOperator(RunbookOperator):
    """Reverse migration, first part: cut the tables into key ranges and share them out (ADR 0208).

    The ranges are checkpointed on the source (``sensei_staging.reverse_chunks``); the XCom is one
    small ``{"group": i, "groups": n}`` per staging task, ``n`` = ``[sensei] reverse_staging_tasks``
    but never more than the ranges. Runs inside the run's fence, like every change.
    """

    step = "execute"
    ui_color = "#f8d7da"

    def run(self, step: StepRun) -> list[dict[str, int]]:
        plan = self.require_plan(step)
        if plan.strategy != Strategy.REVERSE_MIGRATION:
            raise AirflowSkipException(f"assess chose {plan.strategy}, not {Strategy.REVERSE_MIGRATION}")
        with step.fence(plan, shared=True):
            return _reverse(step).staging_groups(plan)

    def summary(self, result: Any) -> dict[str, Any]:
        return {"staging_tasks": len(result)}


class ReverseStagingOperator(RunbookOperator):
    """Reverse migration, second part: stage one group of key ranges into the source's staging tables.

    Mapped over the groups (``expand_kwargs``), so a Celery or Kubernetes deployment spreads the
    reading and staging over its workers. Each range is staged with its checkpoint in one source
    transaction: a retried task redoes only the ranges its killed try had not committed. The run's
    fence holds for the whole task, its change locks in share mode (the sibling tasks hold them too;
    another run's apply cannot).

    :param group: which group this task stages, ``0 <= group < groups``.
    :param groups: how many groups the ranges were shared into.
    """

    step = "execute"
    ui_color = "#f8d7da"

    def __init__(self, *, group: int = 0, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self.groups = groups

    def run(self, step: StepRun) -> dict[str, Any]:
        plan = self.require_plan(step)
        if plan.strategy != Strategy.REVERSE_MIGRATION:
            raise AirflowSkipException(f"assess chose {plan.strategy}, not {Strategy.REVERSE_MIGRATION}")
        with step.fence(plan, shared=True):
            return _reverse(step).stage(plan, self.group, self.groups)


class PointInTimeOperator(ExecuteStrategyOperator):
    """Point-in-time recovery: the tables in scope return to their content at restore_to."""

    strategy = Strategy.POINT_IN_TIME


class BackupRestoreOperator(ExecuteStrategyOperator):
    """Backup restore: the tables in scope get back a catalogued backup's rows, in one transaction."""

    strategy = Strategy.BACKUP_RESTORE


class UndoLogOperator(ExecuteStrategyOperator):
    """Undo log: every change to the tables in scope since the start mark undone, in one transaction."""

    strategy = Strategy.UNDO_LOG


#: the execute operator of each strategy, for the DAG factory.
EXECUTE_OPERATORS: dict[Strategy, type[ExecuteStrategyOperator]] = {
    Strategy.TRUNCATE: TruncateOperator,
    Strategy.REVERSE_MIGRATION: ReverseMigrationOperator,
    Strategy.POINT_IN_TIME: PointInTimeOperator,
    Strategy.BACKUP_RESTORE: BackupRestoreOperator,
    Strategy.UNDO_LOG: UndoLogOperator,
}
