"""Airflow operators: one per runbook step and one per rollback strategy, and the migration's start mark."""

from __future__ import annotations

from typing import Any

__all__ = ["MigrationStartOperator"]


def __getattr__(name: str) -> Any:
    # imported on use: the runbook's DAG file must not pay for modules it does not need
    if name == "MigrationStartOperator":
        from sensei_airflow.operators.mark import MigrationStartOperator

        return MigrationStartOperator
    raise AttributeError(name)
