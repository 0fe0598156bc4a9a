"""One rollback per migration, for real: two runs started at the same moment, and an execute outliving the TTL.

The first test triggers two ``sensei_rollback`` runs of one migration at once on a running Airflow
(scheduler, LocalExecutor): exactly one may change the target. The second runs a rollback whose
execute waits (for a table lock the test holds) longer than a short ``lock_ttl_seconds`` and
starts a second rollback meanwhile: the heartbeat keeps the first run's lock, so the second is
refused, and the first completes.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.manifest import load_manifests
from sensei_airflow.state import StateStore
from tests.chaos.harness import DEADLINE, hold, start_rollback, task_error
from tests.e2e.airflow_server import AirflowServer
from tests.e2e.test_truncate_e2e import assess_error
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import write_manifest

pytestmark = pytest.mark.e2e
MIG = "mig_shop_2026"
SCOPE = ["crm.customers", "sales.orders", "sales.order_items"]
LONG_TTL = timedelta(minutes=10)


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


class BlockingWebhook:
    """A webhook receiver that holds every request until :attr:`gate` is set (a step paused at will)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.gate = threading.Event()
        self.received: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.gate.wait(DEADLINE)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_run_that_lost_its_lock_stops_before_its_next_change_and_says_so(
    databases, migrations_dir, airflow_db, monkeypatch
):
    """Notify is held (its webhook does not answer) while the lock is cleared and taken by another run."""
    write_manifest(migrations_dir, notify=[{"conn_id": "ops_webhook"}])
    migrate_demo(load_manifests(migrations_dir).get(MIG))
    before = databases.scalar("target", "SELECT count(*) FROM sales.orders")
    hook = BlockingWebhook()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_WEBHOOK",
        json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": hook.port, "extra": {"timeout": DEADLINE}}
        ),
    )
    store = StateStore("sensei_state")
    locks = MigrationLocks(store)
    other = "manual__2026-12-02T03:12:00+00:00 (the other one)"
    try:
        run = start_rollback(
            {"migration_id": MIG, "strategy": "truncate"}, env={"AIRFLOW__SENSEI__LOCK_TTL_SECONDS": "3"}
        )
        try:
            limit = time.monotonic() + DEADLINE
            while not hook.received:  # notify is sending its start event: the step is held there
                assert run.alive() and time.monotonic() < limit, run.tail()
                time.sleep(0.05)
            lost = locks.holder(MIG)
            assert locks.force_release(MIG, actor="Zoë the DBA", reason="thought it dead") is not None
            taken = locks.acquire(MIG, other, LONG_TTL)
            trail = AuditTrail(store)
            while "lock lost" not in {e["action"] for e in trail.events(lost.rollback_id)}:
                assert run.alive() and time.monotonic() < limit, "the heartbeat never noticed"
                time.sleep(0.05)
            hook.gate.set()
            result = run.finish()
        finally:
            run.stop()
    finally:
        hook.close()

    assert result["state"] == "failed"
    reason = task_error(lost.rollback_id, "halt")
    assert (
        f"rollback {lost.rollback_id} lost the lock of migration {MIG} to rollback {other} (token {taken.lock.token}"
        in reason
    )
    assert "nothing more is changed" in reason and "\n" not in reason
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") == before
    actions = [e["action"] for e in AuditTrail(store).events(lost.rollback_id)]
    assert "halted" not in actions and "executed" not in actions
    assert locks.holder(MIG).token == taken.lock.token  # its document did not release the other run's lock
