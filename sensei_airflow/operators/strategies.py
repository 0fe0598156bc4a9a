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
    """Reverse migration: the source made equal to the inverse of the target; resumes from its checkpoints."""

    strategy = Strategy.REVERSE_MIGRATION


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
