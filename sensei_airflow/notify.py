"""Notifications: tell the manifest's channels that a rollback starts, fails, and ends.

Each channel of the manifest's ``notify`` list is an Airflow connection; its connection type
picks how the event is sent (:data:`SENDER_BY_CONN_TYPE`):

- ``smtp`` / ``email``: an e-mail through the smtp provider's ``SmtpHook`` to the channel's ``to``;
- ``http`` / ``https``: a webhook, an HTTP POST of the event as JSON (``httpx``) to the
  connection's URL (host, port, schema, and ``endpoint`` in the extra);
- ``slackwebhook`` / ``slack``: a Slack message through the slack provider (extra ``slack``).

A channel that fails is retried a few times, then recorded as failed; sending never raises,
so notifications never block a rollback. A channel's secrets (password, URL userinfo, webhook
path and query) are registered with Airflow's secrets masker before it is used, and a delivery's
error is redacted before it is returned (it goes to XCom, the audit trail and the report). :func:`notify_failure` is usable as an
``on_failure_callback``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urljoin

from sensei_airflow.manifest import NotifyChannel
from sensei_airflow.redaction import mask_connection, redact_error

log = logging.getLogger(__name__)

STARTED = "rollback.started"
FAILED = "rollback.failed"
FINISHED = "rollback.finished"
APPROVAL = "rollback.awaiting_approval"


@dataclass(frozen=True)
class RollbackEvent:
    """What a channel is told: which rollback, what happened, and the details."""

    event: str
    migration_id: str | None
    rollback_id: str
    summary: str
    status: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "migration_id": self.migration_id,
            "rollback_id": self.rollback_id,
            "summary": self.summary,
            "status": dict(self.status) if self.status is not None else None,
            "detail": dict(self.detail),
        }

    @property
    def subject(self) -> str:
        return f"[sensei] {self.summary}"

    def text(self) -> str:
        body = [self.summary, ""]
        if self.status is not None:
            body += ["Status:", json.dumps(dict(self.status), indent=2, default=str), ""]
        if self.detail:
            body += ["Details:", json.dumps(dict(self.detail), indent=2, default=str)]
        return "\n".join(body)


@dataclass(frozen=True)
class Delivery:
    """One channel's outcome: sent or not, after how many attempts, and the last error."""

    conn_id: str
    kind: str
    ok: bool
    attempts: int
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "kind": self.kind,
            "ok": self.ok,
            "attempts": self.attempts,
            "error": self.error,
        }


Sender = Callable[[Any, NotifyChannel, RollbackEvent], None]


def _send_email(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> None:
    try:
        from airflow.providers.smtp.hooks.smtp import SmtpHook
    except ImportError as exc:
        _missing("notify", "e-mail notifications", exc)
    if not channel.to:
        raise ValueError(f"notify channel {channel.conn_id}: an e-mail channel needs a 'to' list")
    html = f"<pre>{escape(event.text())}</pre>"
    with SmtpHook(smtp_conn_id=channel.conn_id) as hook:
        hook.send_email_smtp(
            to=list(channel.to),
            subject=event.subject,
            html_content=html,
            from_email=(conn.extra_dejson or {}).get("from_email") or conn.login or "sensei@localhost",
            custom_headers={"X-Sensei-Event": event.event, "X-Sensei-Rollback": event.rollback_id},
        )


def webhook_url(conn: Any) -> str:
    """The URL a webhook connection posts to: host (or full URL), port, schema, extra ``endpoint``."""
    host = conn.host or ""
    if "://" in host:
        base = host
    else:
        scheme = conn.schema or "http"
        if conn.conn_type == "https":
            scheme = "https"
        base = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    endpoint = (conn.extra_dejson or {}).get("endpoint") or ""
    return (
        urljoin(base if base.endswith("/") or not endpoint else base + "/", endpoint.lstrip("/"))
        if endpoint
        else base
    )


def _send_webhook(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> None:
    import httpx

    auth = (conn.login, conn.password or "") if conn.login else None
    extra = conn.extra_dejson or {}
    headers = {"Content-Type": "application/json", **(extra.get("headers") or {})}
    response = httpx.post(
        webhook_url(conn),
        content=json.dumps(event.as_json(), default=str),
        headers=headers,
        auth=auth,
        timeout=float(extra.get("timeout", 10)),
    )
    if response.is_error:
        # not httpx's own error: its message carries the full URL (a webhook's path is its secret)
        raise WebhookRefused(f"the webhook answered {response.status_code} {response.reason_phrase}")


class WebhookRefused(Exception):
    """The webhook answered with an error status (the message never holds its URL)."""


def _send_slack_webhook(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> None:
    try:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    except ImportError as exc:
        _missing("slack", "Slack notifications", exc)
    SlackWebhookHook(slack_webhook_conn_id=channel.conn_id).send(
        text=f"*{event.summary}*\n```{event.text()}```"
    )


def _send_slack_api(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> None:
    try:
        from airflow.providers.slack.hooks.slack import SlackHook
    except ImportError as exc:
        _missing("slack", "Slack notifications", exc)
    if not channel.to:
        raise ValueError(f"notify channel {channel.conn_id}: a Slack API channel needs 'to' (channel names)")
    hook = SlackHook(slack_conn_id=channel.conn_id)
    for slack_channel in channel.to:
        hook.client.chat_postMessage(channel=slack_channel, text=f"*{event.summary}*\n```{event.text()}```")


def _missing(extra: str, what: str, exc: Exception) -> None:
    from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException

    raise AirflowOptionalProviderFeatureException(
        f"{what} need the {extra} extra: pip install 'sensei-airflow[{extra}]' ({exc})"
    ) from exc


#: Airflow connection type -> (kind, sender).
SENDER_BY_CONN_TYPE: dict[str, tuple[str, Sender]] = {
    "smtp": ("email", _send_email),
    "email": ("email", _send_email),
    "http": ("webhook", _send_webhook),
    "https": ("webhook", _send_webhook),
    "slackwebhook": ("slack", _send_slack_webhook),
    "slack": ("slack", _send_slack_api),
}


def send(
    channel: NotifyChannel, event: RollbackEvent, *, attempts: int = 3, retry_delay: float = 2.0
) -> Delivery:
    """Send one event to one channel, retrying; never raises."""
    from airflow.sdk import BaseHook

    kind = "unknown"
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            conn = BaseHook.get_connection(channel.conn_id)
            mask_connection(conn)  # the task log, and every error stored below, never show its secrets
            if conn.conn_type not in SENDER_BY_CONN_TYPE:
                supported = ", ".join(sorted(SENDER_BY_CONN_TYPE))
                return Delivery(
                    channel.conn_id,
                    kind,
                    False,
                    attempt,
                    f"connection type {conn.conn_type!r} cannot notify (supported: {supported})",
                )
            kind, sender = SENDER_BY_CONN_TYPE[conn.conn_type]
            sender(conn, channel, event)
            return Delivery(channel.conn_id, kind, True, attempt)
        except Exception as exc:  # a channel must never break the rollback
            error = redact_error(exc)
            log.warning("notify %s: attempt %d of %d failed: %s", channel.conn_id, attempt, attempts, error)
            if type(exc).__name__ in ("AirflowNotFoundException", "AirflowOptionalProviderFeatureException"):
                return Delivery(channel.conn_id, kind, False, attempt, error)
            if attempt < attempts:
                time.sleep(retry_delay * attempt)
    return Delivery(channel.conn_id, kind, False, attempts, error)


def retry_settings() -> tuple[int, float]:
    """``[sensei] notify_attempts`` and ``notify_retry_delay_seconds``."""
    from airflow.sdk import conf

    return (
        conf.getint("sensei", "notify_attempts", fallback=3),
        conf.getfloat("sensei", "notify_retry_delay_seconds", fallback=2.0),
    )


def notify_all(channels: Sequence[NotifyChannel], event: RollbackEvent) -> list[Delivery]:
    """Send an event to every channel; one channel's failure never stops the others."""
    attempts, delay = retry_settings()
    deliveries = [send(channel, event, attempts=attempts, retry_delay=delay) for channel in channels]
    for delivery in deliveries:
        if not delivery.ok:
            log.warning(
                "notify %s failed after %d attempts: %s", delivery.conn_id, delivery.attempts, delivery.error
            )
    return deliveries


def notify_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback``: tell the migration's channels that a rollback task failed.

    The migration comes from the run's conf (``migration_id``); consumers still halted for it are
    named, so the message says they stay halted. Never raises.
    """
    try:
        from sensei_airflow.manifest import load_manifests

        dag_run = context.get("dag_run")
        conf = dict(getattr(dag_run, "conf", None) or {})
        migration_id = conf.get("migration_id") or dict(context.get("params") or {}).get("migration_id")
        manifest = load_manifests().manifests.get(migration_id or "")
        if manifest is None or not manifest.notify:
            return
        ti = context.get("ti") or context.get("task_instance")
        task_id = getattr(ti, "task_id", "?")
        exception = context.get("exception")
        detail: dict[str, Any] = {
            "task_id": task_id,
            "error": redact_error(exception) if exception else None,
        }
        try:
            from sensei_airflow.state import StateStore

            holds = StateStore(manifest.state.conn_id).open_holds(manifest.id)
            detail["consumers_still_halted"] = [h.as_json() for h in holds]
        except Exception as exc:  # the state store may be what failed
            detail["consumers_still_halted"] = f"unknown: {redact_error(exc)}"
        halted = detail["consumers_still_halted"]
        suffix = (
            " Consumers stay halted until a rollback verifies." if isinstance(halted, list) and halted else ""
        )
        rollback_id = context.get("run_id") or getattr(dag_run, "run_id", "?")
        event = RollbackEvent(
            event=FAILED,
            migration_id=manifest.id,
            rollback_id=str(rollback_id),
            summary=f"Rollback {rollback_id} of {manifest.id}: task {task_id} failed.{suffix}",
            detail=detail,
        )
        notify_all(manifest.notify, event)
    except Exception:
        log.exception("the failure notification could not be sent")
