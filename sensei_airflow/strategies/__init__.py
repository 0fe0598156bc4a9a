"""The strategy registry: each rollback strategy by its public name."""

from __future__ import annotations

from importlib import import_module

from sensei_airflow.manifest import Strategy
from sensei_airflow.plan import RefusedError
from sensei_airflow.strategies.base import Assessment, Execution, RollbackStrategy

#: strategy -> "module:Class". A strategy missing here cannot be chosen (assess says so).
STRATEGY_CLASSES: dict[Strategy, str] = {
    Strategy.TRUNCATE: "sensei_airflow.strategies.truncate:TruncateStrategy",
    Strategy.REVERSE_MIGRATION: "sensei_airflow.strategies.reverse:ReverseMigrationStrategy",
    Strategy.POINT_IN_TIME: "sensei_airflow.strategies.point_in_time:PointInTimeStrategy",
    Strategy.BACKUP_RESTORE: "sensei_airflow.strategies.backup_restore:BackupRestoreStrategy",
    Strategy.UNDO_LOG: "sensei_airflow.strategies.undo_log:UndoLogStrategy",
}


def strategy_class(name: Strategy) -> type[RollbackStrategy]:
    try:
        module_name, class_name = STRATEGY_CLASSES[name].split(":")
    except KeyError:
        available = ", ".join(sorted(STRATEGY_CLASSES))
        raise RefusedError(
            f"strategy {name} is not available in this installation (available: {available})"
        ) from None
    return getattr(import_module(module_name), class_name)


__all__ = ["STRATEGY_CLASSES", "Assessment", "Execution", "RollbackStrategy", "strategy_class"]
