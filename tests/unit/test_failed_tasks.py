"""Which watched tasks failed: read from one request for the run's task states (mapped tasks too)."""

from __future__ import annotations

from typing import Any

from sensei_airflow.operators.base import TaskRun


class StatesOnly:
    """The part of a task instance that ``TaskRun.failed`` uses: the run's task states, as the API keys them."""

    dag_id = "sensei_rollback"

    def __init__(self, states: dict[str, dict[str, str]]) -> None:
        self.states = states
        self.asked: list[dict[str, Any]] = []

    def get_task_states(self, **criteria: Any) -> dict[str, dict[str, str]]:
        self.asked.append(criteria)
        return self.states


def test_failed_tasks_in_watch_order_mapped_ones_by_any_instance() -> None:
    run_id = "manual__2026-12-03"
    ti = StatesOnly(
        {
            run_id: {
                "assess": "success",
                "execute_reverse_migration_stage_0": "success",
                "execute_reverse_migration_stage_1": "failed",
                "execute_reverse_migration": "upstream_failed",
                "verify": "failed",
                "resume": "skipped",
            },
            "another run": {"assess": "failed"},
        }
    )
    run = TaskRun.__new__(TaskRun)
    run.ti, run.run_id = ti, run_id
    watched = ["verify", "assess", "execute_reverse_migration", "execute_reverse_migration_stage", "resume"]

    assert run.failed(watched) == ["verify", "execute_reverse_migration_stage"]
    assert ti.asked == [{"dag_id": "sensei_rollback", "task_ids": watched, "run_ids": [run_id]}]


def test_a_task_whose_name_only_starts_like_a_failed_one_did_not_fail() -> None:
    ti = StatesOnly({"r": {"execute_truncate_x": "failed", "execute_truncate_1b": "failed"}})
    run = TaskRun.__new__(TaskRun)
    run.ti, run.run_id = ti, "r"

    assert run.failed(["execute_truncate"]) == []
