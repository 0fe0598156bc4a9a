"""What every rollback strategy provides to the runbook: assess, execute, verify."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines import Engine, get_engine
from sensei_airflow.manifest import Manifest, Strategy, TableMapping
from sensei_airflow.plan import RollbackPlan
from sensei_airflow.state import StateStore
from sensei_airflow.verify import Verification


@dataclass
class Assessment:
    """A strategy's answer to "can you do this, and how?" (it raises ``RefusedError`` if not)."""

    tables: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Execution:
    """What execute did: the SQL run and the rows affected per table."""

    statements: list[str]
    rows_affected: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_xcom(self) -> dict[str, Any]:
        return {"statements": self.statements, "rows_affected": self.rows_affected, "detail": self.detail}


class RollbackStrategy(ABC):
    """One way of undoing a migration. Engine differences stay in the engine."""

    name: ClassVar[Strategy]

    def __init__(self, manifest: Manifest, state: StateStore) -> None:
        self.manifest = manifest
        self.state = state

    @cached_property
    def target(self) -> Engine:
        return get_engine(self.manifest.target.conn_id)

    @abstractmethod
    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        """Check the strategy can apply and say what it will do; raise ``RefusedError`` if not."""

    @abstractmethod
    def execute(self, plan: RollbackPlan) -> Execution:
        """Do it. Must be safe to retry: a retry redoes or resumes, never duplicates."""

    @abstractmethod
    def verify(self, plan: RollbackPlan) -> Verification:
        """Check the result against the plan."""
