"""kill -9 in execute_undo_log, then the rollback again; and an undo applied twice: nothing is applied twice."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.harness import dsns, kill_when_blocked, release_crashed_lock, wait_until_gone
from tests.fixtures import run_dag
from tests.integration.undo.conftest import MIG, MIGRATED, table_rows

pytestmark = pytest.mark.e2e
#: the undo sets the sequences back last, inside its transaction: holding one stops it just before the commit.
SEQUENCE_HOLD = "ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 1"


def test_killed_before_its_commit_then_run_again(marked: dict[str, Any]) -> None:
    databases = marked["databases"]
    before = table_rows(databases)
    conf = {"migration_id": MIG, "strategy": "undo_log", "reason": "Zoë's drill: «kill -9»"}
    query = kill_when_blocked(
        databases.cluster.dsn(databases.target),
        [SEQUENCE_HOLD],
        conf,
        "the undo's sequence reset, its rows written",
    )
    assert query.startswith("SELECT setval")
    wait_until_gone(*dsns(databases))

    assert table_rows(databases) == before  # nothing was committed
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    now = table_rows(databases)
    for table in MIGRATED:
        assert now[table] == marked["at_mark"][table], table
    assert now["crm.campaigns"] == before["crm.campaigns"]


def test_an_undo_committed_then_retried_changes_nothing_more(marked: dict[str, Any]) -> None:
    """A retry after the commit (the task died before reporting) reads the same changes and writes none."""
    from sensei_airflow.mark import load_mark
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.undo_log import UndoLogStrategy

    databases = marked["databases"]
    first = run_dag("sensei_rollback", {"migration_id": MIG, "strategy": "undo_log"})
    assert first.state == "success", first.task_states
    assert sum(first.xcoms["execute_undo_log"]["rows_affected"].values()) > 0
    restored = table_rows(databases)

    state = StateStore("sensei_state")
    strategy = UndoLogStrategy(marked["manifest"], state)
    from sensei_airflow.plan import RollbackPlan

    plan = RollbackPlan.model_validate(first.xcoms["assess"])
    retried = strategy.execute(plan)
    assert retried.rows_affected == dict.fromkeys(MIGRATED, 0)
    assert table_rows(databases) == restored
    assert load_mark(state, MIG).undo_log_open  # the undo log stays for later rollbacks
