"""What a rollback will do: which tables, in which order, by which strategy, and why.

Pure functions over the manifest, the request and the target's catalog (foreign keys), so the
plan can be shown (dry run) before anything runs, and tested without a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines.base import Engine, dependency_order
from sensei_airflow.manifest import Manifest, Strategy, TableMapping

__all__ = [
    "PlannedTable",
    "RefusedError",
    "RollbackPlan",
    "check_names",
    "dependency_order",
    "resolve_scope",
    "strategy_candidates",
]


class RefusedError(Exception):
    """The rollback cannot be done safely; the message says why, in one line."""


def resolve_scope(manifest: Manifest, request: RollbackRequest) -> list[TableMapping]:
    """The manifest tables a request covers, in manifest order.

    :raises RefusedError: for a phase that does not exist or a table not in the migration.
    """
    if request.scope == "all":
        return manifest.tables
    if request.scope == "phase":
        phase = manifest.phase(request.phase or 0)
        if phase is None:
            known = ", ".join(str(p.phase) for p in manifest.phases)
            raise RefusedError(
                f"phase {request.phase} does not exist in migration {manifest.id} (phases: {known})"
            )
        return [t for t in manifest.tables if t in phase.tables]
    chosen: list[TableMapping] = []
    for name in request.tables or []:
        try:
            table = manifest.resolve_table(name)
        except LookupError as exc:
            raise RefusedError(str(exc)) from None
        if table not in chosen:
            chosen.append(table)
    return [t for t in manifest.tables if t in chosen]


def check_names(engine: Engine, scope: Sequence[TableMapping], side: str = "target") -> None:
    """Refuse, in one line, a table or column name of the scope that the engine cannot hold.

    PostgreSQL, for one, would silently cut a name longer than 63 bytes and then act on another
    table. ``side`` is ``target`` (target tables, keys and target columns) or ``source``.

    :raises RefusedError: naming the table, the name and the limit.
    """
    from sensei_airflow.transforms import source_columns, target_columns

    for table in scope:
        if side == "target":
            name = table.target
            columns = [*table.key, *(c for m in table.columns or [] for c in target_columns(m))]
        else:
            name = table.source
            columns = [c for m in table.columns or [] for c in source_columns(m)]
        problems = engine.name_problems(name, columns)
        if problems:
            raise RefusedError(f"{side} {problems[0]}: the database cannot hold it; correct the manifest")


def strategy_candidates(manifest: Manifest, request: RollbackRequest) -> list[Strategy]:
    """The strategies to try, in order: the requested one, or the manifest's preferred then fallback."""
    if request.strategy != "auto":
        return [Strategy(request.strategy)]
    candidates = [manifest.rollback.preferred_strategy]
    if manifest.rollback.fallback_strategy is not None:
        candidates.append(manifest.rollback.fallback_strategy)
    return candidates


class PlannedTable(BaseModel):
    """One table of the plan, in execution order."""

    model_config = ConfigDict(frozen=True)

    target: str
    source: str
    phase: int
    rows: int | None = Field(None, description="rows the table holds now (what a truncate would remove)")
    changes: dict[str, Any] | None = Field(
        None,
        description="source rows a reverse migration will insert, update and delete ({insert, update, delete, "
        "exact}), computed without changing anything",
    )


class RollbackPlan(BaseModel):
    """Everything assess decided; the XCom every later runbook step works from."""

    model_config = ConfigDict(frozen=True)

    migration_id: str
    rollback_id: str
    strategy: Strategy
    requested_strategy: str
    fallback: Strategy | None = None
    scope: dict[str, Any]
    tables: list[PlannedTable]
    restore_to: str | None = None
    backup_id: str | None = None
    verify_after: bool = True
    dry_run: bool = False
    statements: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    counts_before: dict[str, int] = Field(default_factory=dict)
    triggered_by: str | None = None
    reason: str | None = None
    started_at: str
    lock_token: int | None = Field(
        None, description="fencing token of the migration's lock taken by assess (None: dry run)"
    )

    @property
    def table_names(self) -> list[str]:
        return [t.target for t in self.tables]

    def status_scope(self) -> dict[str, Any]:
        return {**self.scope, "tables": self.table_names}
