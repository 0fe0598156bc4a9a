"""One rollback per migration, for real: two runs started at the same moment, and an execute outliving the TTL.

The first test triggers two ``sensei_rollback`` runs of one migration at once on a running Airflow
(scheduler, LocalExecutor): exactly one may change the target. The second runs a rollback whose
execute waits (for a table lock the test holds) longer than a short ``lock_ttl_seconds`` and
starts a second rollback meanwhile: the heartbeat keeps the first run's lock, so the second is
refused, and the first completes.
"""

from __future__ import annotations

import threading
import time

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.state import StateStore
from tests.chaos.harness import hold, start_rollback
from tests.e2e.airflow_server import AirflowServer
from tests.e2e.test_truncate_e2e import assess_error
from tests.fixtures import run_dag

pytestmark = pytest.mark.e2e
MIG = "mig_shop_2026"
SCOPE = ["crm.customers", "sales.orders", "sales.order_items"]


def test_two_rollbacks_triggered_at_the_same_moment_only_one_changes_anything(airflow_server: AirflowServer):
    airflow_server.migrate_demo()
    campaigns = airflow_server.scalar("target", "SELECT count(*) FROM crm.campaigns")
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict]] = []

    def trigger(reason: str) -> None:
        with airflow_server.client() as client:
            barrier.wait()
            response = client.post(
                f"/sensei/v1/migrations/{MIG}/rollback", json={"strategy": "truncate", "reason": reason}
            )
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=trigger, args=(f"Zoë's rollback #{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [code for code, _ in answers] == [202, 202], answers
    run_ids = [body["rollback_id"] for _, body in answers]
    runs = {r: airflow_server.wait_for_run("sensei_rollback", r, timeout=400) for r in run_ids}
    tasks = {r: airflow_server.task_states("sensei_rollback", r) for r in run_ids}

    [winner] = [r for r in run_ids if tasks[r]["execute_truncate"] == "success"]
    [loser] = [r for r in run_ids if r != winner]
    assert runs[winner]["state"] == "success", tasks[winner]
    assert runs[loser]["state"] == "failed"
    assert tasks[loser]["assess"] == "failed"
    assert tasks[loser]["execute_truncate"] != "success" and tasks[loser]["halt"] != "success"
    with airflow_server.connections():
        store = StateStore("sensei_state")
        trail = AuditTrail(store)
        refused = [e for e in trail.events(loser) if e["action"] == "refused"]
        assert len(refused) == 1
        assert f"rollback {winner} of {MIG} is already running" in refused[0]["detail"]["why"]
        assert [r for r in run_ids if "executed" in {e["action"] for e in trail.events(r)}] == [winner]
        assert MigrationLocks(store).holder(MIG) is None
    for table in SCOPE:
        assert airflow_server.scalar("target", f"SELECT count(*) FROM {table}") == 0  # noqa: S608
    assert airflow_server.scalar("target", "SELECT count(*) FROM crm.campaigns") == campaigns


def test_an_execute_longer_than_the_lock_ttl_keeps_the_lock(migrated, databases):
    ttl = 3
    conf = {"migration_id": MIG, "strategy": "truncate", "reason": "the long one"}
    store = StateStore("sensei_state")
    locks = MigrationLocks(store)
    with hold(
        databases.cluster.dsn(databases.target), "LOCK TABLE sales.order_items IN ACCESS SHARE MODE"
    ) as held:
        first = start_rollback(conf, lock_timeout="3min", env={"AIRFLOW__SENSEI__LOCK_TTL_SECONDS": str(ttl)})
        try:
            _, query = held.blocked(first.alive, "execute_truncate's LOCK TABLE")
            assert query.startswith("LOCK TABLE")
            lock = locks.holder(MIG)
            # the execute now waits for more than two TTLs; unrenewed, the lock would run out meanwhile
            with databases.connect("state") as conn:
                waiting_since = conn.execute("SELECT now()").fetchone()[0]
                deadline = time.monotonic() + 120
                while not conn.execute(
                    "SELECT now() > %s + %s * interval '2 s'", (waiting_since, ttl)
                ).fetchone()[0]:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            renewed = locks.holder(MIG)
            assert renewed.token == lock.token and not renewed.expired
            assert renewed.renewed_at > waiting_since  # the execute step's heartbeat

            second = run_dag("sensei_rollback", {**conf, "reason": "the impatient one"})

            assert second.task_states["assess"] == "failed"
            assert f"rollback {lock.rollback_id} of {MIG} is already running" in assess_error(second)
            assert databases.scalar("target", "SELECT count(*) FROM sales.orders") > 0
            held.release()
            result = first.finish()
        finally:
            first.stop()

    assert result["state"] == "success", first.tail()
    for table in SCOPE:
        assert databases.scalar("target", f"SELECT count(*) FROM {table}") == 0  # noqa: S608
    trail = AuditTrail(store)
    assert "executed" in {e["action"] for e in trail.events(lock.rollback_id)}
    assert "executed" not in {e["action"] for e in trail.events(second.run_id)}
    assert locks.holder(MIG) is None
