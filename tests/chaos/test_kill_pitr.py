# ruff: noqa: F811 - the point-in-time fixtures are imported from tests/e2e/test_pitr_table_level.py
"""kill -9 a table-level point-in-time rollback while it replaces the live tables, then run it again.

The scratch cluster is recovered and the live transaction has locked the tables when the kill
lands (it waits for a sequence lock the test holds before emptying them). The live target must
be exactly as before; the scratch cluster the killed run could not remove is found and stopped
by the test; the rollback started again restores the tables.
"""

from __future__ import annotations

import pytest

from sensei_airflow.demo import shop
from tests.chaos.harness import kill_when_blocked, release_crashed_lock, wait_until_gone
from tests.e2e.test_pitr_table_level import (  # noqa: F401 - fixtures
    MIGRATED,
    archiving,
    migrate_then_change,
    pitr_target,
    state_of,
)
from tests.fixtures import run_dag

pytestmark = pytest.mark.e2e


def stop_scratch_leftovers(archiving) -> list[str]:
    """Stop and remove scratch clusters a killed run left running; their names."""
    import shutil

    from sensei_airflow.local_postgres import LocalCluster

    found = archiving.scratch_leftovers()
    for name in found:
        base = archiving.scratch / name
        LocalCluster(base, 0).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return found


def test_killed_while_replacing_the_tables_then_run_again(
    databases, archiving, pitr_target, migrations_dir, airflow_db
):
    _, before_migration = migrate_then_change(archiving, pitr_target, migrations_dir)
    changed = state_of(archiving, pitr_target)
    live = archiving.cluster.dsn(pitr_target)
    conf = {"migration_id": shop.DEMO_MIGRATION_ID, "strategy": "point_in_time"}
    try:

        def scratch_is_up(_: str) -> None:
            assert archiving.scratch_leftovers(), "the scratch cluster should be up at this point"

        query = kill_when_blocked(
            live,
            ["ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 1"],
            conf,
            "the copy back into the live tables",
            while_blocked=scratch_is_up,
        )
        assert query.startswith("TRUNCATE TABLE")
        wait_until_gone(live, *[databases.cluster.dsn(getattr(databases, s)) for s in ("source", "state")])
        assert state_of(archiving, pitr_target) == changed  # the live target is untouched
    finally:
        leftovers = stop_scratch_leftovers(archiving)
    assert len(leftovers) == 1
    release_crashed_lock()

    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    now = state_of(archiving, pitr_target)
    for table in MIGRATED:
        assert now[table] == before_migration[table], table
    assert now["crm.campaigns"] == changed["crm.campaigns"]  # outside the scope: untouched
    assert archiving.scratch_leftovers() == []
