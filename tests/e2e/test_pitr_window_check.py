"""The scheduled rollback-window check: warns once, through the notify channels and the audit trail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import yaml

from sensei_airflow.demo import shop
from tests.fixtures import run_dag


@pytest.fixture
def webhook(monkeypatch) -> Iterator[list[dict[str, Any]]]:
    """A local HTTP endpoint as Airflow connection ``ops_webhook``; yields the JSON bodies it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_OPS_WEBHOOK", f"http://127.0.0.1:{server.server_port}/?endpoint=%2Fhook")
    yield received
    server.shutdown()
    server.server_close()


def test_window_check_warns_once_before_a_window_closes(databases, migrations_dir, airflow_db, webhook):
    started_at = datetime.now(UTC) - timedelta(hours=150)  # rollback_window_hours 168: closes in ~18 h
    document = shop.manifest(started_at=started_at)
    document["notify"] = [{"conn_id": "ops_webhook"}]
    document["rollback"]["pre_migration_backup"] = {"enabled": True, "retention_days": 30}
    (migrations_dir / f"{shop.DEMO_MIGRATION_ID}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))

    first = run_dag("sensei_window_check")
    assert first.state == "success", first.task_states
    windows = {w["strategy"]: w for w in first.xcoms["check_windows"]}
    closes = started_at + timedelta(hours=168)
    assert datetime.fromisoformat(windows["truncate"]["closes_at"]) == closes
    assert windows["truncate"]["warned"] is True
    assert windows["backup_restore"]["limit"].startswith("rollback_window_hours")  # 168 h < 30 d
    # no point-in-time settings: the window is unknown, and the check says why
    assert windows["point_in_time"]["closes_at"] is None
    assert "does not say where" in windows["point_in_time"]["error"]
    assert {body["event"] for body in webhook} == {"rollback.window_closing"}
    assert {body["detail"]["strategy"] for body in webhook} == {
        "truncate",
        "reverse_migration",
        "backup_restore",
    }

    with databases.connect("state") as conn:
        events = conn.execute(
            "SELECT payload FROM sensei.audit_events WHERE step = 'window_check' AND action = 'window_closing'"
        ).fetchall()
    assert len(events) == 3

    second = run_dag("sensei_window_check")
    assert second.state == "success"
    assert not any(w["warned"] for w in second.xcoms["check_windows"])
    assert len(webhook) == 3  # warned once per window


def test_window_check_dag_is_scheduled():
    from tests.fixtures import load_dag

    dag = load_dag("sensei_window_check")
    assert str(dag.schedule) == "@hourly"
    assert [t.task_id for t in dag.tasks] == ["check_windows"]
