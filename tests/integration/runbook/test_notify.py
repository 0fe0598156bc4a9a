"""Notification channels, each through its provider notifier, against real local servers.

An SMTP server (aiosmtpd) and an HTTP receiver stand for the mail relay, the webhook and Slack
(both Slack connection types take the receiver's URL as their base).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from sensei_airflow import notify
from sensei_airflow.manifest import NotifyChannel
from sensei_airflow.redaction import webhook_url


def _event() -> notify.RollbackEvent:
    return notify.RollbackEvent(
        event=notify.FINISHED,
        migration_id="mig_shop_2026",
        rollback_id="manual__2026-11-25T00:00:00",
        summary="Rollback manual__2026-11-25T00:00:00 of mig_shop_2026: completed",
        status={"rollback_status": "completed", "strategy_used": "truncate"},
    )


def test_mail_and_webhook_receive_the_event(smtp_server, webhook_server):
    channels = [
        NotifyChannel(conn_id="ops_smtp", to=["dba@example.com"]),
        NotifyChannel(conn_id="ops_webhook"),
    ]

    deliveries = notify.notify_all(channels, _event())

    assert [(d.kind, d.ok, d.attempts) for d in deliveries] == [("email", True, 1), ("webhook", True, 1)]
    (mail,) = smtp_server.wait_for(1)
    assert mail["to"] == ["dba@example.com"]
    assert "mig_shop_2026: completed" in mail["subject"]
    assert mail["headers"]["X-Sensei-Event"] == "rollback.finished"
    assert "&quot;strategy_used&quot;: &quot;truncate&quot;" in mail["body"]
    (hook,) = webhook_server.events
    assert hook["path"] == "/hooks/sensei"
    assert hook["content_type"] == "application/json"
    assert hook["json"]["status"] == {"rollback_status": "completed", "strategy_used": "truncate"}
    assert hook["json"]["rollback_id"] == "manual__2026-11-25T00:00:00"


def test_a_flaky_channel_is_retried(webhook_server, monkeypatch):
    webhook_server.fail_first = 2
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_ATTEMPTS", "3")

    (delivery,) = notify.notify_all([NotifyChannel(conn_id="ops_webhook")], _event())

    assert (delivery.ok, delivery.attempts) == (True, 3)
    assert webhook_server.requests == 3
    assert len(webhook_server.events) == 1


def test_a_failing_channel_is_recorded_and_never_stops_the_others(smtp_server, webhook_server, monkeypatch):
    webhook_server.fail_first = 100
    monkeypatch.setenv("AIRFLOW__SENSEI__NOTIFY_ATTEMPTS", "2")
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_NOWHERE", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9})
    )
    channels = [
        NotifyChannel(conn_id="ops_webhook"),
        NotifyChannel(conn_id="ops_nowhere"),
        NotifyChannel(conn_id="not_defined"),
        NotifyChannel(conn_id="ops_smtp", to=["dba@example.com"]),
    ]

    deliveries = notify.notify_all(channels, _event())

    by_id = {d.conn_id: d for d in deliveries}
    assert not by_id["ops_webhook"].ok and "503" in by_id["ops_webhook"].error
    assert by_id["ops_webhook"].attempts == 2
    assert not by_id["ops_nowhere"].ok and "ConnectionError" in by_id["ops_nowhere"].error
    assert not by_id["not_defined"].ok and by_id["not_defined"].attempts == 1
    assert by_id["ops_smtp"].ok
    assert len(smtp_server.wait_for(1)) == 1


def test_webhook_url_from_connection_fields():
    class Conn:
        conn_type = "http"
        host = "hooks.example.com"
        port = 8443
        schema = "https"
        extra_dejson = {"endpoint": "/v1/events"}

    assert webhook_url(Conn()) == "https://hooks.example.com:8443/v1/events"
    Conn.host, Conn.extra_dejson = "https://hooks.example.com/base", {}
    assert webhook_url(Conn()) == "https://hooks.example.com/base"


def test_slack_channels_go_through_the_slack_notifiers(webhook_server, monkeypatch):
    """Slack's incoming webhook and its Web API, both pointed at the local receiver."""
    webhook_server.reply = b'{"ok": true}'
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_SLACK_HOOK",
        json.dumps({"conn_type": "slackwebhook", "host": webhook_server.url, "password": "T000/B000/xyz"}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_SLACK_API",
        json.dumps(
            {"conn_type": "slack", "password": "xoxb-1", "extra": {"base_url": f"{webhook_server.url}/api/"}}
        ),
    )
    channels = [
        NotifyChannel(conn_id="ops_slack_hook"),
        NotifyChannel(conn_id="ops_slack_api", to=["#dba", "#Bestellungen café"]),
    ]

    deliveries = notify.notify_all(channels, _event())

    assert [(d.kind, d.ok, d.attempts) for d in deliveries] == [("slack", True, 1), ("slack", True, 1)]
    hook, *api = webhook_server.events
    assert hook["path"] == "/T000/B000/xyz"
    assert "mig_shop_2026: completed" in hook["json"]["text"]
    assert [(e["path"], e["json"]["channel"]) for e in api] == [
        ("/api/chat.postMessage", "#dba"),
        ("/api/chat.postMessage", "#Bestellungen café"),
    ]
    assert api[0]["headers"]["Authorization"] == "Bearer xoxb-1"


def test_the_webhook_goes_through_httphook_with_its_own_headers(webhook_server, monkeypatch):
    """The connection's ``headers`` are sent as headers, its ``endpoint`` is the path, not a header."""
    connection = json.loads(os.environ["AIRFLOW_CONN_OPS_WEBHOOK"])
    connection["extra"]["headers"] = {"X-Team": "DBA Bereitschaft"}
    monkeypatch.setenv("AIRFLOW_CONN_OPS_WEBHOOK", json.dumps(connection))

    (delivery,) = notify.notify_all([NotifyChannel(conn_id="ops_webhook")], _event())

    assert delivery.ok, delivery.error
    (hook,) = webhook_server.events
    assert hook["headers"]["X-Team"] == "DBA Bereitschaft"
    assert not {"endpoint", "headers"} & {k.lower() for k in hook["headers"]}


def test_retries_wait_longer_each_time_then_succeed(webhook_server, monkeypatch):
    """tenacity: the third try goes through; the waits grow by the configured delay."""
    import tenacity

    waits: list[float] = []
    monkeypatch.setattr(tenacity.nap, "time", SimpleNamespace(sleep=waits.append))
    webhook_server.fail_first = 2

    delivery = notify.send(NotifyChannel(conn_id="ops_webhook"), _event(), attempts=4, retry_delay=1.5)

    assert (delivery.ok, delivery.attempts, webhook_server.requests) == (True, 3, 3)
    assert waits == [1.5, 3.0]


SECRET_PATH = "SECRETPATH-b4d9c1e7a0"
TOKEN = "t0ken-in-the-query-9f3a"


def test_a_404_webhook_is_recorded_without_its_url(monkeypatch):
    """The webhook's URL is its secret: the failure says what happened and never where."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_SECRET_HOOK",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": server.server_address[1],
                "extra": {"endpoint": f"/T000/{SECRET_PATH}?token={TOKEN}"},
            }
        ),
    )
    try:
        channels = [NotifyChannel(conn_id="ops_secret_hook"), NotifyChannel(conn_id="not_defined")]
        deliveries = [notify.send(c, _event(), attempts=2, retry_delay=0) for c in channels]
    finally:
        server.shutdown()
        server.server_close()

    refused, missing = deliveries
    assert (refused.ok, refused.attempts, refused.error) == (
        False,
        2,
        "WebhookRefused: the webhook answered 404 Not Found",
    )
    assert not missing.ok  # the next channel is still tried: nothing blocks
    assert SECRET_PATH not in json.dumps(refused.as_json()) and TOKEN not in json.dumps(refused.as_json())


def test_the_failure_callback_is_found_through_the_provider_info(webhook_server, migrations_dir, monkeypatch):
    """Airflow's providers manager lists the failure notifier; called with a task's context, it notifies."""
    from importlib import import_module

    from airflow.providers_manager import ProvidersManager

    from tests.integration.runbook.support import write_manifest

    write_manifest(migrations_dir, notify=[{"conn_id": "ops_webhook"}])
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE", "postgres://nobody@127.0.0.1:9/none")
    registered = [n for n in ProvidersManager().notification if n.startswith("sensei_airflow.")]
    assert registered == ["sensei_airflow.notify.RollbackFailureNotifier"]
    module, _, name = registered[0].rpartition(".")
    notifier = getattr(import_module(module), name)()

    class DagRun:
        conf = {"migration_id": "mig_shop_2026"}
        run_id = "manual__2026-11-25"

    class Ti:
        task_id = "execute_truncate"

    notifier({"dag_run": DagRun(), "ti": Ti(), "exception": RuntimeError('lock timeout on "Order Items"')})

    (hook,) = webhook_server.events
    assert hook["json"]["event"] == "rollback.failed"
    assert (
        hook["json"]["summary"]
        == "Rollback manual__2026-11-25 of mig_shop_2026: task execute_truncate failed."
    )
    assert hook["json"]["detail"]["error"] == 'RuntimeError: lock timeout on "Order Items"'
    assert hook["json"]["detail"]["consumers_still_halted"].startswith("unknown: ")
