"""Notification channels against a real SMTP server and a real HTTP webhook receiver."""

from __future__ import annotations

import json

from sensei_airflow import notify
from sensei_airflow.manifest import NotifyChannel


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
    assert not by_id["ops_nowhere"].ok and "ConnectError" in by_id["ops_nowhere"].error
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

    assert notify.webhook_url(Conn()) == "https://hooks.example.com:8443/v1/events"
    Conn.host, Conn.extra_dejson = "https://hooks.example.com/base", {}
    assert notify.webhook_url(Conn()) == "https://hooks.example.com/base"


def test_slack_channels_go_through_the_slack_provider(monkeypatch):
    """No Slack can run here: the message is checked by the calls on the provider's hooks."""
    from airflow.providers.slack.hooks.slack import SlackHook
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(SlackWebhookHook, "send", lambda self, **kw: sent.append(("webhook", kw)))

    class Client:
        def chat_postMessage(self, **kw):
            sent.append(("api", kw))

    monkeypatch.setattr(SlackHook, "client", property(lambda self: Client()))
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPS_SLACK_HOOK", json.dumps({"conn_type": "slackwebhook", "password": "T/B/x"})
    )
    monkeypatch.setenv("AIRFLOW_CONN_OPS_SLACK_API", json.dumps({"conn_type": "slack", "password": "xoxb-1"}))
    channels = [NotifyChannel(conn_id="ops_slack_hook"), NotifyChannel(conn_id="ops_slack_api", to=["#dba"])]

    deliveries = notify.notify_all(channels, _event())

    assert [(d.kind, d.ok) for d in deliveries] == [("slack", True), ("slack", True)]
    assert sent[0][0] == "webhook" and "mig_shop_2026: completed" in sent[0][1]["text"]
    assert sent[1][0] == "api" and sent[1][1]["channel"] == "#dba"
