# ruff: noqa: F811 - the fixtures imported from tests.integration.runbook.support are parameters here
"""The approval gate answered through Airflow's REST API, and one rollback per migration at a time.

``dag.test`` runs the rollback in a thread of this process and waits in the ``approve`` task;
the test answers through the api-server (a child process on the same metadata database), as the
UI's Required Actions page does.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sensei_airflow.audit import AuditTrail
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.manifest import load_manifests
from sensei_airflow.plugins.api import document_from_record
from sensei_airflow.state import StateStore, utcnow
from tests.e2e.seed_payloads import assert_status_shape
from tests.e2e.test_truncate_e2e import assess_error
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import (  # noqa: F401 - fixtures
    api_server,
    webhook_server,
    write_manifest,
)


class Approver:
    """In a thread: wait for the approval request, then reject it (``dag.test`` needs the main thread)."""

    def __init__(self, server: Any, store: StateStore) -> None:
        self.server = server
        self.store = store
        self.seen: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.server.client() as client:
                request = wait_for_approval_request(client)
                run_id = request["task_instance"]["dag_run_id"]
                self.seen["request"] = request
                self.seen["lock_holder"] = MigrationLocks(self.store).holder("mig_shop_2026").rollback_id
                answer = client.patch(
                    f"/api/v2/dags/sensei_rollback/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
                    json={"chosen_options": ["Reject"], "params_input": {}},
                )
                self.seen["answer"] = (answer.status_code, answer.text)
        except BaseException as exc:
            self.error = exc

    def join(self) -> dict[str, Any]:
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        return self.seen


def wait_for_approval_request(client, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/api/v2/dags/sensei_rollback/dagRuns/~/hitlDetails")
        response.raise_for_status()
        waiting = [d for d in response.json()["hitl_details"] if not d.get("response_received")]
        if waiting:
            return waiting[0]
        time.sleep(0.5)
    raise AssertionError("no approval request appeared")


def test_a_rejected_approval_stops_the_run_with_nothing_changed(
    databases, migrations_dir, airflow_db, api_server, webhook_server, monkeypatch
):
    # the channels are told where to answer: the approval page of this run's approve task, on
    # the api-server of the Airflow API connection
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_AIRFLOW_API", api_server.connection_env())
    write_manifest(
        migrations_dir,
        require_approval=True,
        approvers=["sensei_admin"],
        notify=[{"conn_id": "ops_webhook"}],
    )
    counts = migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"))
    store = StateStore("sensei_state")

    approver = Approver(api_server, store)
    outcome = run_dag(
        "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate", "reason": "a yes?"}
    )
    seen = approver.join()

    request, run_id = seen["request"], outcome.run_id
    assert request["task_instance"]["dag_run_id"] == run_id
    assert request["subject"] == "Roll back mig_shop_2026 with truncate?"
    assert "| 1 | sales.order_items |" in request["body"]
    assert "TRUNCATE TABLE" in request["body"]
    assert seen["answer"][0] == 200, seen["answer"]
    assert request["assigned_users"] == [{"id": "sensei_admin", "name": "sensei_admin"}]
    asked = next(
        e["json"] for e in webhook_server.events if e["json"]["event"] == "rollback.awaiting_approval"
    )
    link = f"{api_server.url}/dags/sensei_rollback/runs/{run_id}/tasks/approve/required_actions?map_index=-1"
    assert asked["detail"]["approval_link"] == link
    assert asked["summary"] == f"Rollback {run_id} of mig_shop_2026 awaits approval: {link}"
    # while it waited for the answer, the rollback held the migration's lock
    assert seen["lock_holder"] == run_id

    assert outcome.state == "success", outcome.task_states
    states = outcome.task_states
    assert states["approve"] == "success"
    assert {states[t] for t in ("notify", "halt", "execute_truncate", "verify", "resume")} == {"skipped"}
    status = outcome.xcoms["document"]
    assert_status_shape(status)
    assert status["rollback_status"] == "rejected"
    assert status["approval"]["answer"] == "Reject"
    assert status["approval"]["by"] == "sensei_admin"
    assert store.get_run(run_id)["status"] == "rejected"
    # the REST API's status endpoint answers from that record: the same document
    assert document_from_record(store.get_run(run_id), utcnow()) == status
    for table, rows in counts.items():
        assert databases.scalar("target", f"SELECT count(*) FROM {table}") == rows  # noqa: S608
    actions = [e["action"] for e in AuditTrail(store).events(run_id)]
    assert "awaiting approval" in actions and "rejected" in actions
    assert "executed" not in actions
    assert MigrationLocks(store).holder("mig_shop_2026") is None
    assert "REJECTED (nothing was changed)" in store.get_run(run_id)["report_markdown"]


def test_a_crashed_runs_lock_refuses_until_it_expires(databases, migrations_dir, airflow_db):
    write_manifest(migrations_dir)
    migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"))
    store = StateStore("sensei_state")
    locks = MigrationLocks(store)
    locks.acquire("mig_shop_2026", "manual__crashed", timedelta(minutes=10))

    refused = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert refused.task_states["assess"] == "failed"
    reason = assess_error(refused)
    assert "rollback manual__crashed of mig_shop_2026 is already running" in reason
    # the refusal says how to clear a crashed run's lock
    assert "sensei lock release mig_shop_2026 --force" in reason
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") > 0
    # nobody renews the crashed run's lock: it runs out
    locks.acquire("mig_shop_2026", "manual__crashed", timedelta(seconds=1))
    time.sleep(1.2)

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert outcome.state == "success", outcome.task_states
    notes = outcome.xcoms["assess"]["notes"]
    assert any(n.startswith("took over the lock of rollback manual__crashed") for n in notes)
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") == 0
    assert MigrationLocks(store).holder("mig_shop_2026") is None
