"""What every rollback strategy provides to the runbook: assess, execute, verify."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.engines import Engine, ForeignKey, get_engine
from sensei_airflow.engines.base import checksum_kind
from sensei_airflow.manifest import Manifest, Strategy, TableMapping
from sensei_airflow.mark import StartMark
from sensei_airflow.plan import RollbackPlan
from sensei_airflow.state import StateStore
from sensei_airflow.verify import Outcome, TableCheck, Verification, count_checks

#: a database of the migration: the target (rolled back) or the source (the migration read it).
Side = Literal["target", "source"]


def side_conn_id(manifest: Manifest, side: Side) -> str:
    """The Airflow connection of one side of the migration."""
    return manifest.target.conn_id if side == "target" else manifest.source.conn_id


def side_tables(plan: RollbackPlan, side: Side) -> list[str]:
    """The plan's tables on one side: the target tables in scope, or their source tables."""
    return plan.table_names if side == "target" else [t.source for t in plan.tables]


@dataclass
class Assessment:
    """A strategy's answer to "can you do this, and how?" (it raises ``RefusedError`` if not)."""

    tables: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    #: per table: source rows the rollback will insert, update and delete (reverse migration).
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Execution:
    """What execute did: the SQL run and the rows affected per table."""

    statements: list[str]
    rows_affected: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_xcom(self) -> dict[str, Any]:
        return {"statements": self.statements, "rows_affected": self.rows_affected, "detail": self.detail}


@dataclass
class MarkChecks:
    """The tables in scope against the start mark: what a strategy restoring the mark's state must give back.

    ``checksums`` holds only tables whose checksum both the mark and the engine now give: a check
    with nothing to compare with could not fail. ``warnings`` says, one line each, what was
    compared by row count only or not at all.
    """

    counts: list[TableCheck]
    checksums: list[TableCheck]
    warnings: list[str]

    @property
    def checks(self) -> list[TableCheck]:
        return [*self.counts, *self.checksums]

    @property
    def checksum_outcome(self) -> Outcome:
        """``skipped`` when no checksum could be compared: never ``passed`` for a check not made."""
        if not self.checksums:
            return "skipped"
        return "passed" if all(c.ok for c in self.checksums) else "failed"


class RollbackStrategy(ABC):
    """One way of undoing a migration. Engine differences stay in the engine."""

    name: ClassVar[Strategy]
    #: the databases execute writes: it holds their change lock (the fence), and their sequences
    #: are set after it (the execute_sequences step).
    written_sides: ClassVar[tuple[Side, ...]] = ("target",)

    def __init__(self, manifest: Manifest, state: StateStore) -> None:
        self.manifest = manifest
        self.state = state

    @cached_property
    def target(self) -> Engine:
        return get_engine(self.manifest.target.conn_id)

    def references_from_outside(self, tables: list[str]) -> list[tuple[ForeignKey, int]]:
        """Foreign keys from tables outside ``tables`` into them, each with its referencing table's rows."""
        outside = [fk for fk in self.target.foreign_keys() if fk.parent in tables and fk.child not in tables]
        counts = self.target.row_counts({fk.child for fk in outside})
        return [(fk, counts[fk.child]) for fk in outside]

    def scope_count_checks(
        self, plan: RollbackPlan, check: str, expected: dict[str, int], *, others: bool = True
    ) -> list[TableCheck]:
        """Row counts of the tables in scope against ``expected``, and (``others``) every other table of
        the target against its count in assess ("untouched outside the scope")."""
        in_scope = set(plan.table_names)
        untouched = {t: n for t, n in plan.counts_before.items() if t not in in_scope} if others else {}
        after = self.target.row_counts([*plan.table_names, *untouched])
        return [
            *count_checks(check, expected, after),
            *count_checks("untouched outside the scope", untouched, after),
        ]

    def mark_checks(
        self,
        plan: RollbackPlan,
        mark: StartMark,
        *,
        others: bool = False,
        now: dict[str, Any] | None = None,
    ) -> MarkChecks:
        """Each table in scope against its row count and checksum at the start mark; they must match exactly.

        Shared by the strategies that give back the mark's state (undo_log; point_in_time to the
        mark; backup_restore of the backup the mark took), so that "restored to the mark" means the
        same everywhere. Where the mark recorded no checksum, or the engine computes none, the
        table is compared by row count only, and a warning says so.

        :param others: also every other table of the target against its count in assess.
        :param now: the tables' checksums when the caller has just read them (one scan less).
        """
        recorded = [t for t in plan.table_names if t in mark.tables]
        warnings: list[str] = []
        unrecorded = [t for t in plan.table_names if t not in mark.tables]
        if unrecorded:
            warnings.append(f"the start mark did not record {', '.join(unrecorded)}: not compared with it")
        counts = self.scope_count_checks(
            plan, "rows at the start mark", {t: mark.rows()[t] for t in recorded}, others=others
        )
        sums = mark.checksums()
        expected = {t: sums[t] for t in recorded if sums[t] is not None}
        unsummed = [t for t in recorded if t not in expected]
        if unsummed:
            warnings.append(
                f"the start mark recorded no checksum of {', '.join(unsummed)}: compared with it by row "
                "count only"
            )
        if now is not None and any(
            checksum_kind(getattr(now.get(t), "checksum", None)) != checksum_kind(s)
            for t, s in expected.items()
        ):
            now = None  # read the other way (a backup's kind): read again the mark's way
        if expected and now is None:
            try:
                now = self.target.table_checksums(list(expected), like=expected)
            except NotImplementedError:
                now = {}
        actual = {t: getattr((now or {}).get(t), "checksum", None) for t in expected}
        uncomputed = [t for t, s in actual.items() if s is None]
        if uncomputed:
            warnings.append(
                f"{self.target.engine_title} computes no checksum of {', '.join(uncomputed)} here: compared "
                "with the start mark by row count only"
            )
        checksums = [
            TableCheck(
                table=t,
                check="checksum at the start mark",
                expected=expected[t],
                actual=actual[t],
                ok=actual[t] == expected[t],
            )
            for t in expected
            if actual[t] is not None
        ]
        return MarkChecks(counts, checksums, warnings)

    @abstractmethod
    def assess(self, scope: list[TableMapping], request: RollbackRequest) -> Assessment:
        """Check the strategy can apply and say what it will do; raise ``RefusedError`` if not."""

    @abstractmethod
    def execute(self, plan: RollbackPlan) -> Execution:
        """Do it. Must be safe to retry: a retry redoes or resumes, never duplicates."""

    @abstractmethod
    def verify(self, plan: RollbackPlan) -> Verification:
        """Check the result against the plan."""
