"""The state store goes away in the middle of a rollback: the run stops before its next change and says so.

The state store runs on a cluster of its own, stopped while execute_truncate is inside its fence
(waiting for a sequence lock the test holds). The truncate that was under way finishes as one
transaction; the fence then reports the lost state store, and every later step refuses to start.
Once the state store is back, the failed run's lock is released and the rollback run again.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.local_postgres import LocalCluster, free_port, new_cluster_dir
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.state import StateStore
from tests.chaos.harness import (
    MIG,
    hold,
    release_crashed_lock,
    rows,
    start_rollback,
    task_error,
    task_states,
)
from tests.fixtures import migrate_demo, run_dag, write_demo_manifest

pytestmark = pytest.mark.e2e
SCOPE = ["crm.customers", "sales.orders", "sales.order_items"]


@pytest.fixture
def state_cluster(databases, monkeypatch) -> Iterator[LocalCluster]:
    """A cluster of its own for the state store (``sensei_state``), so it can be stopped alone."""
    cluster = LocalCluster(new_cluster_dir("sensei-chaos-state-"), free_port())
    cluster.start()
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE", cluster.create_database("state_alone"))
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


def test_state_store_gone_mid_execute_stops_the_run_before_its_next_change(
    databases, migrations_dir, airflow_db, state_cluster
):
    migrate_demo(write_demo_manifest(migrations_dir))
    campaigns = rows(databases, "target", ["crm.campaigns"])
    conf = {"migration_id": MIG, "strategy": "truncate"}
    with hold(
        databases.cluster.dsn(databases.target), "ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 1"
    ) as held:
        child = start_rollback(conf)
        try:
            held.blocked(child.alive, "execute_truncate's TRUNCATE")
            crashed = MigrationLocks(StateStore("sensei_state")).holder(MIG).rollback_id
            state_cluster.stop("fast")
            held.release()
            run = child.finish()
        finally:
            child.stop()

    assert run["state"] == "failed" and run["run_id"] == crashed
    # the change under way was one transaction: all done, never half
    assert rows(databases, "target", SCOPE) == {t: [] for t in SCOPE}
    assert rows(databases, "target", ["crm.campaigns"]) == campaigns
    error = task_error(crashed, "execute_truncate")
    assert "LockUnverified: the state store (sensei_state) went away while rollback" in error
    assert "that change finished, but nothing more is changed until the state store answers" in error
    refused = task_error(crashed, "execute_sequences")
    assert f"rollback {crashed} cannot check that it still holds the lock of migration {MIG}" in refused
    assert "the state store (sensei_state) does not answer" in refused
    assert "execute_sequences does not start; nothing more is changed" in refused
    states = task_states(crashed)
    assert states["verify"] != "success" and states["resume"] != "success"

    state_cluster.start()
    store = StateStore("sensei_state")
    assert MigrationLocks(store).holder(MIG).rollback_id == crashed  # nobody could give it back
    assert AuditTrail(store).verify().ok
    assert release_crashed_lock() == crashed
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    assert rows(databases, "target", SCOPE) == {t: [] for t in SCOPE}
    assert MigrationLocks(store).holder(MIG) is None
