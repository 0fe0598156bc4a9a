"""The status document (CONTRACT.md "Rollback status"): every status it can take, and no value outside it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from sensei_airflow.plan import PlannedTable, RollbackPlan
from sensei_airflow.status import StatusDocument
from sensei_airflow.verify import Verification
from tests.e2e.seed_payloads import STATUS_KEYS, assert_status_shape

STARTED = datetime(2026, 2, 2, 7, 59, tzinfo=UTC)
FINISHED = STARTED + timedelta(seconds=847)
TABLES = ['sales."order"', 'crm."user"', "crm.Kundenstämme"]


def plan(*, dry_run: bool = False, strategy: str = "point_in_time") -> RollbackPlan:
    return RollbackPlan(
        migration_id="mig_shop_2026",
        rollback_id="manual__2026-02-02 ✓",
        strategy=strategy,  # type: ignore[arg-type]
        requested_strategy="auto",
        scope={"scope": "all"},
        tables=[PlannedTable(target=t, source=f"src.{i}", phase=1, rows=3) for i, t in enumerate(TABLES)],
        restore_to="2026-02-02T07:59:00+00:00" if strategy == "point_in_time" else None,
        dry_run=dry_run,
        started_at=STARTED.isoformat(),
    )


PASSED = Verification(source_comparison="passed", record_counts_match=True, sample_verification="passed")
FAILED = Verification(source_comparison="failed", record_counts_match=False, sample_verification="skipped")


def of_run(**kwargs: object) -> StatusDocument:
    args: dict[str, object] = {
        "migration_id": "mig_shop_2026",
        "rollback_id": "manual__2026-02-02 ✓",
        "plan": plan(),
        "executed": True,
        "verification": PASSED,
        "started_at": STARTED,
        "finished_at": FINISHED,
    }
    return StatusDocument.of_run(**{**args, **kwargs})  # type: ignore[arg-type]


def test_a_verified_rollback_is_completed_in_the_seed_shape():
    document = of_run().as_json()
    assert_status_shape(document)
    assert document == {
        "migration_id": "mig_shop_2026",
        "rollback_id": "manual__2026-02-02 ✓",
        "rollback_status": "completed",
        "strategy_used": "point_in_time",
        "restored_to": "2026-02-02T07:59:00+00:00",
        "scope": {"scope": "all", "tables": TABLES},
        "verification": {
            "source_comparison": "passed",
            "record_counts_match": True,
            "sample_verification": "passed",
        },
        "duration_seconds": 847,
    }


def test_a_dry_run_is_planned_and_verifies_nothing():
    document = of_run(plan=plan(dry_run=True), executed=False, verification=PASSED)
    assert document.rollback_status == "planned"
    assert document.verification.model_dump() == {
        "source_comparison": "skipped",
        "record_counts_match": None,
        "sample_verification": "skipped",
    }


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("verification failed", {"verification": FAILED}),
        ("nothing was executed", {"executed": False}),
        ("verify did not run", {"verification": None}),
        ("assess failed", {"plan": None, "executed": False, "verification": None}),
    ],
)
def test_a_rollback_that_did_not_verify_is_failed(why, kwargs):
    document = of_run(**kwargs)
    assert document.rollback_status == "failed", why
    assert document.failed
    assert set(document.as_json()) == STATUS_KEYS


def test_a_run_without_a_plan_keeps_the_requested_scope_and_migration():
    document = of_run(plan=None, executed=False, verification=None, scope={"scope": "phase"}).as_json()
    assert (document["migration_id"], document["strategy_used"], document["scope"]) == (
        "mig_shop_2026",
        None,
        {"scope": "phase", "tables": []},
    )


def test_a_rejected_plan_says_who_rejected_it_and_nothing_else_changes():
    approval = {
        "required": True,
        "approved": False,
        "answer": "Reject",
        "by": "Zoë Ops",
        "at": "2026-02-02",
        "x": 1,
    }
    document = of_run(executed=False, verification=None, approval=approval).as_json()
    assert document["rollback_status"] == "rejected"
    assert_status_shape(document)
    assert document["approval"] == {"answer": "Reject", "by": "Zoë Ops", "at": "2026-02-02"}
    assert set(document) == STATUS_KEYS | {"approval"}


def test_an_approved_plan_is_not_rejected():
    approval = {"required": True, "approved": True, "answer": "Approve", "by": "Zoë Ops", "at": "2026-02-02"}
    document = of_run(approval=approval)
    assert document.rollback_status == "completed"
    assert "approval" not in document.as_json()


def test_a_running_record_is_built_from_its_plan():
    record = {
        "migration_id": "mig_shop_2026",
        "rollback_id": "r1",
        "status": "running",
        "strategy": "truncate",
        "plan": plan(strategy="truncate").model_dump(mode="json"),
        "request": {"scope": "all"},
        "started_at": STARTED,
        "status_document": None,
    }
    document = StatusDocument.of_record(record, now=STARTED + timedelta(seconds=12)).as_json()
    assert document["rollback_status"] == "running"
    assert document["scope"] == {"scope": "all", "tables": TABLES}
    assert (document["strategy_used"], document["duration_seconds"]) == ("truncate", 12)


def test_a_documented_record_answers_its_stored_document():
    stored = of_run().as_json()
    record = {
        "migration_id": "mig_shop_2026",
        "rollback_id": "r1",
        "status": "completed",
        "status_document": stored,
    }
    assert StatusDocument.of_record(record, now=FINISHED).as_json() == stored


@pytest.mark.parametrize(
    ("airflow_state", "status"), [("queued", "running"), ("running", "running"), ("failed", "failed")]
)
def test_a_queued_run_is_running_or_failed(airflow_state, status):
    document = StatusDocument.queued(
        migration_id="mig_shop_2026",
        rollback_id="r1",
        airflow_state=airflow_state,
        conf={"scope": "tables"},
        started=STARTED,
        now=STARTED + timedelta(seconds=3),
    ).as_json()
    assert (document["rollback_status"], document["scope"], document["duration_seconds"]) == (
        status,
        {"scope": "tables", "tables": []},
        3,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rollback_status": "done"}, "rollback_status"),
        ({"verification": {"source_comparison": "ok"}}, "verification.source_comparison"),
        ({"verification": {"sample_verification": "maybe"}}, "verification.sample_verification"),
        ({"verification": {"checks": []}}, "verification.checks"),
        ({"status": "completed"}, "status"),
    ],
)
def test_a_value_outside_the_contract_is_refused(change, field):
    good = of_run().as_json()
    with pytest.raises(ValidationError) as refused:
        StatusDocument.model_validate({**good, **change})
    assert [".".join(str(p) for p in e["loc"]) for e in refused.value.errors()] == [field]


def test_a_stored_document_outside_the_contract_is_refused_not_answered():
    record = {
        "migration_id": "m",
        "rollback_id": "r1",
        "status": "completed",
        "status_document": {"rollback_status": "ok"},
    }
    with pytest.raises(ValidationError):
        StatusDocument.of_record(record, now=FINISHED)
