"""The rollback status document (CONTRACT.md "Rollback status"), built here and nowhere else.

The document step returns it (its XCom) and stores it in the run record; the REST API answers
it (``GET /sensei/v1/migrations/{id}/rollback/status``), from the run record once the run is
documented, from the run record's plan while it runs, and from Airflow's run before its first
task wrote a record. Every one of those goes through :class:`StatusDocument`, so a value
outside the contract fails where it is made, not in a DBA's client (ADR 0008).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sensei_airflow.plan import RollbackPlan
    from sensei_airflow.verify import Verification

RollbackStatus = Literal["planned", "running", "completed", "failed", "rejected"]
CheckOutcome = Literal["passed", "failed", "skipped"]


class VerificationSummary(BaseModel):
    """The document's ``verification`` block: the three outcomes of the contract."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_comparison: CheckOutcome = "skipped"
    record_counts_match: bool | None = None
    sample_verification: CheckOutcome = "skipped"


class StatusDocument(BaseModel):
    """What a rollback run is, or came to: the contract's keys, and ``approval`` for a rejection.

    :param approval: who rejected the plan and when (``answer``, ``by``, ``at``); only with
        ``rollback_status`` ``rejected``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    migration_id: str | None
    rollback_id: str
    rollback_status: RollbackStatus
    strategy_used: str | None = None
    restored_to: str | None = None
    scope: dict[str, Any] = Field(default_factory=lambda: {"scope": None, "tables": []})
    verification: VerificationSummary = Field(default_factory=VerificationSummary)
    duration_seconds: int | None = None
    approval: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The document as the contract shows it (``approval`` only when there is one)."""
        return self.model_dump(mode="json", exclude={"approval"} if self.approval is None else set())

    @property
    def failed(self) -> bool:
        return self.rollback_status == "failed"

    # -- the places a document comes from ------------------------------------------------------
    @classmethod
    def of_run(
        cls,
        *,
        migration_id: str | None,
        rollback_id: str,
        plan: RollbackPlan | None,
        executed: bool,
        verification: Verification | None,
        started_at: datetime,
        finished_at: datetime,
        approval: Mapping[str, Any] | None = None,
        scope: Mapping[str, Any] | None = None,
    ) -> StatusDocument:
        """The document of a run that ends (the document step).

        ``planned`` for a dry run; ``rejected`` when an approver said no (nothing changed);
        ``completed`` when a strategy executed and verification passed; ``failed`` otherwise.

        :param plan: the plan that was executed (the fallback's when it ran); None when assess failed.
        :param executed: whether a strategy's execute returned.
        :param approval: the approve step's outcome, if it ran.
        :param scope: the request's scope, for a run without a plan.
        """
        rejected = bool(approval and approval.get("required") and not approval.get("approved"))
        if rejected:
            status: RollbackStatus = "rejected"
        elif plan is None:
            status = "failed"
        elif plan.dry_run:
            status = "planned"
        elif not executed or verification is None or not verification.passed:
            status = "failed"
        else:
            status = "completed"
        return cls(
            migration_id=plan.migration_id if plan else migration_id,
            rollback_id=rollback_id,
            rollback_status=status,
            strategy_used=plan.strategy.value if plan else None,
            restored_to=plan.restore_to if plan else None,
            scope=plan.status_scope() if plan else {"scope": (scope or {}).get("scope"), "tables": []},
            verification=VerificationSummary.model_validate(verification.status_block())
            if verification is not None and not (plan is not None and plan.dry_run)
            else VerificationSummary(),
            duration_seconds=round((finished_at - started_at).total_seconds()),
            approval={k: approval.get(k) for k in ("answer", "by", "at")} if rejected and approval else None,
        )

    @classmethod
    def of_record(cls, record: Mapping[str, Any], now: datetime) -> StatusDocument:
        """The document of a run record: the stored one once documented, else from the record's plan."""
        if record.get("status_document"):
            return cls.model_validate(record["status_document"])
        plan = record.get("plan") or {}
        scope = {**(plan.get("scope") or {"scope": (record.get("request") or {}).get("scope", "all")})}
        scope["tables"] = [t["target"] for t in plan.get("tables", [])]
        started = record.get("started_at")
        return cls(
            migration_id=record["migration_id"],
            rollback_id=record["rollback_id"],
            rollback_status=record["status"],
            strategy_used=record.get("strategy"),
            restored_to=plan.get("restore_to"),
            scope=scope,
            duration_seconds=round((now - started).total_seconds())
            if isinstance(started, datetime)
            else None,
        )

    @classmethod
    def queued(
        cls,
        *,
        migration_id: str,
        rollback_id: str,
        airflow_state: str,
        conf: Mapping[str, Any],
        started: datetime | None,
        now: datetime,
    ) -> StatusDocument:
        """A run Airflow holds whose first task has not written its record yet.

        :param airflow_state: the Airflow run's state (``queued``, ``running``, ``failed``, ...).
        :param started: when Airflow started (or queued) the run.
        """
        return cls(
            migration_id=migration_id,
            rollback_id=rollback_id,
            rollback_status="failed" if airflow_state == "failed" else "running",
            scope={"scope": conf.get("scope", "all"), "tables": []},
            duration_seconds=round((now - started).total_seconds()) if started else 0,
        )
