"""A webhook whose URL is its secret answers 404: the secret appears nowhere sensei writes.

The channel's connection holds a password, a Slack-style secret path and a token in the query
string; a local HTTP server answers 404 to it. After a real rollback run (``dag.test``), neither
secret is in any XCom of the run, the audit events, the stored report (JSON and Markdown), the
status document the API serves, or the run's log output.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.manifest import load_manifests
from sensei_airflow.plugins.api import document_from_record
from sensei_airflow.state import StateStore, utcnow
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import write_manifest

pytestmark = pytest.mark.e2e

PASSWORD = "Pa55-w0rd-never-stored"
SECRET_PATH = "SECRETPATH-b4d9c1"
TOKEN = "t0ken-in-the-query-9f3a"
SECRETS = (PASSWORD, SECRET_PATH, TOKEN)


@pytest.fixture
def secret_webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Connection ``ops_webhook``: a URL with a secret path and token, a password; the server says 404."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": server.server_address[1],
        "schema": "http",
        "login": "hooks",
        "password": PASSWORD,
        "extra": {"endpoint": f"/T000/B000/{SECRET_PATH}?token={TOKEN}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPS_WEBHOOK", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_RETRY_DELAY_SECONDS", "0")
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_ATTEMPTS", "2")
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def all_xcoms(run_id: str) -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id="sensei_rollback", run_id=run_id).all()
        return [{"task": r.task_id, "key": r.key, "value": XComModel.deserialize_value(r)} for r in rows]


def leaked(where: str, value: Any) -> list[str]:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [f"{secret} in {where}" for secret in SECRETS if secret in text]


def test_secret_webhook_that_answers_404_leaves_no_secret_anywhere(
    databases, migrations_dir, airflow_db, secret_webhook, caplog, capfd
):
    write_manifest(migrations_dir, notify=[{"conn_id": "ops_webhook"}])
    migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"), customers=40)
    caplog.set_level(logging.DEBUG)

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert outcome.state == "success", outcome.task_states
    assert secret_webhook and all(SECRET_PATH in path and TOKEN in path for path in secret_webhook)
    deliveries = outcome.xcoms["notify"]["deliveries"]
    assert [(d["ok"], d["error"]) for d in deliveries] == [
        (False, "WebhookRefused: the webhook answered 404 Not Found")
    ]

    store = StateStore("sensei_state")
    record = store.get_run(outcome.run_id)
    assert record is not None and record["report"]["notifications"]["end"][0]["ok"] is False
    logged = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(capfd.readouterr())
    found = [
        *leaked("XCom", all_xcoms(outcome.run_id)),
        *leaked("audit events", AuditTrail(store).events(outcome.run_id)),
        *leaked("report", record["report"]),
        *leaked("Markdown report", record["report_markdown"]),
        *leaked("status API", document_from_record(record, utcnow())),
        *leaked("log", logged),
    ]
    assert found == []
    assert "the webhook answered 404" in logged  # the failure itself is logged, without the secret
