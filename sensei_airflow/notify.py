"""Notifications: tell the manifest's channels that a rollback starts, awaits approval, fails, ends.

Each channel of the manifest's ``notify`` list is an Airflow connection; its connection type
picks the provider notifier that sends the event (:data:`NOTIFIERS_BY_CONN_TYPE`):

- ``smtp`` / ``email``: the smtp provider's ``SmtpNotifier``, to the channel's ``to``;
- ``http`` / ``https``: the http provider's ``HttpNotifier`` (``HttpHook``), an HTTP POST of the
  event as JSON to the connection's URL (host, port, schema, and ``endpoint`` in the extra);
- ``slackwebhook``: the slack provider's ``SlackWebhookNotifier``;
- ``slack``: the slack provider's ``SlackNotifier``, one message per channel of ``to``.

A channel that fails is retried (tenacity), then recorded as failed; sending never raises, so
notifications never block a rollback (ADR 0405). A channel's secrets (password, URL userinfo,
webhook path and query) are registered with Airflow's secrets masker before it is used, and a
delivery's error is redacted before it is returned (it goes to XCom, the audit trail and the
report). The texts sent are never Jinja-rendered: they hold the databases' names.

:class:`RollbackFailureNotifier` (``notify_failure``) is the runbook's ``on_failure_callback``
and :class:`ApprovalNotifier` tells the channels where to approve a plan (ADR 0408).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier

from sensei_airflow.extras import missing_extra
from sensei_airflow.manifest import NotifyChannel
from sensei_airflow.redaction import mask_connection, redact_error, redact_url_loggers

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


class ChannelUnusable(Exception):
    """The channel cannot be used at all (a retry would not help): its type, or a missing key."""


def _webhook_notifier(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> list[BaseNotifier]:
    try:
        from sensei_airflow.webhook import WEBHOOK_TIMEOUT, WebhookNotifier
    except ImportError as exc:
        raise missing_extra("notify", "HTTP", "webhook notifications") from exc
    extra = conn.extra_dejson or {}
    return [
        WebhookNotifier(
            http_conn_id=channel.conn_id,
            endpoint=extra.get("endpoint") or None,
            json=event.as_json(),
            headers={"Content-Type": "application/json", **(extra.get("headers") or {})},
            extra_options={"timeout": float(extra.get("timeout", WEBHOOK_TIMEOUT))},
        )
    ]


def _email_notifier(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> list[BaseNotifier]:
    try:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    except ImportError as exc:
        raise missing_extra("notify", "SMTP", "e-mail notifications") from exc
    if not channel.to:
        raise ChannelUnusable(f"notify channel {channel.conn_id}: an e-mail channel needs a 'to' list")
    return [
        SmtpNotifier(
            smtp_conn_id=channel.conn_id,
            to=list(channel.to),
            from_email=(conn.extra_dejson or {}).get("from_email") or conn.login or "sensei@localhost",
            subject=event.subject,
            html_content=f"<pre>{escape(event.text())}</pre>",
            custom_headers={"X-Sensei-Event": event.event, "X-Sensei-Rollback": event.rollback_id},
        )
    ]


def _slack_text(event: RollbackEvent) -> str:
    return f"*{event.summary}*\n```{event.text()}```"


def _slack_webhook_notifier(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> list[BaseNotifier]:
    try:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
    except ImportError as exc:
        raise missing_extra("slack", "Slack", "Slack notifications") from exc
    return [SlackWebhookNotifier(slack_webhook_conn_id=channel.conn_id, text=_slack_text(event))]


def _slack_api_notifier(conn: Any, channel: NotifyChannel, event: RollbackEvent) -> list[BaseNotifier]:
    try:
        from airflow.providers.slack.notifications.slack import SlackNotifier
    except ImportError as exc:
        raise missing_extra("slack", "Slack", "Slack notifications") from exc
    if not channel.to:
        raise ChannelUnusable(
            f"notify channel {channel.conn_id}: a Slack API channel needs 'to' (channel names)"
        )
    return [
        SlackNotifier(slack_conn_id=channel.conn_id, channel=slack_channel, text=_slack_text(event))
        for slack_channel in channel.to
    ]


NotifierFactory = Callable[[Any, NotifyChannel, RollbackEvent], list[BaseNotifier]]

#: Airflow connection type -> (kind, the provider notifiers that send an event to the channel).
NOTIFIERS_BY_CONN_TYPE: dict[str, tuple[str, NotifierFactory]] = {
    "smtp": ("email", _email_notifier),
    "email": ("email", _email_notifier),
    "http": ("webhook", _webhook_notifier),
    "https": ("webhook", _webhook_notifier),
    "slackwebhook": ("slack", _slack_webhook_notifier),
    "slack": ("slack", _slack_api_notifier),
}


def _final(exc: BaseException) -> bool:
    """Errors a retry cannot mend: no such connection, a missing extra, an unusable channel."""
    names = {"AirflowNotFoundException", "AirflowOptionalProviderFeatureException"}
    return isinstance(exc, ChannelUnusable) or type(exc).__name__ in names


def send(
    channel: NotifyChannel,
    event: RollbackEvent,
    *,
    attempts: int = 3,
    retry_delay: float = 2.0,
    context: Mapping[str, Any] | None = None,
) -> Delivery:
    """Send one event to one channel through its provider notifier, retrying; never raises.

    :param channel: the manifest's channel (connection id, recipients).
    :param event: what to tell.
    :param attempts: tries before the channel is recorded as failed.
    :param retry_delay: seconds before the second try; each further try waits that much longer.
    :param context: the task's context, handed to the notifiers (none of them needs it).
    """
    import tenacity
    from airflow.sdk import BaseHook

    kind = "unknown"
    pending: list[BaseNotifier] | None = None

    def _log_retry(state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        error = redact_error(failure) if failure else "?"
        log.warning(
            "notify %s: attempt %d of %d failed: %s", channel.conn_id, state.attempt_number, attempts, error
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(attempts, 1)),
        wait=tenacity.wait_incrementing(start=retry_delay, increment=retry_delay),
        retry=tenacity.retry_if_exception(lambda exc: not _final(exc)),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                if pending is None:
                    conn = BaseHook.get_connection(channel.conn_id)
                    # the task log, every error stored below and the HTTP clients' request lines
                    # never show the channel's secrets
                    mask_connection(conn)
                    redact_url_loggers()
                    if conn.conn_type not in NOTIFIERS_BY_CONN_TYPE:
                        supported = ", ".join(sorted(NOTIFIERS_BY_CONN_TYPE))
                        raise ChannelUnusable(
                            f"connection type {conn.conn_type!r} cannot notify (supported: {supported})"
                        )
                    kind, make = NOTIFIERS_BY_CONN_TYPE[conn.conn_type]
                    pending = make(conn, channel, event)
                while pending:  # a retry sends only what has not gone yet
                    pending[0].notify(dict(context or {}))  # type: ignore[arg-type]
                    pending.pop(0)
    except Exception as exc:  # a channel must never break the rollback
        tries = retrying.statistics.get("attempt_number", 1)
        return Delivery(channel.conn_id, kind, False, tries, redact_error(exc))
    return Delivery(channel.conn_id, kind, True, retrying.statistics.get("attempt_number", 1))


def retry_settings() -> tuple[int, float]:
    """``[sensei] notify_attempts`` and ``notify_retry_delay_seconds``."""
    from airflow.sdk import conf

    return (
        conf.getint("sensei", "notify_attempts", fallback=3),
        conf.getfloat("sensei", "notify_retry_delay_seconds", fallback=2.0),
    )


def notify_all(
    channels: Sequence[NotifyChannel], event: RollbackEvent, context: Mapping[str, Any] | None = None
) -> list[Delivery]:
    """Send an event to every channel; one channel's failure never stops the others.

    :param channels: the manifest's ``notify`` list.
    :param event: what to tell.
    :param context: the task's context, if any.
    """
    attempts, delay = retry_settings()
    deliveries = [
        send(channel, event, attempts=attempts, retry_delay=delay, context=context) for channel in channels
    ]
    for delivery in deliveries:
        if not delivery.ok:
            log.warning(
                "notify %s failed after %d attempts: %s", delivery.conn_id, delivery.attempts, delivery.error
            )
    return deliveries


class RollbackFailureNotifier(BaseNotifier):  # type: ignore[misc]
    """``on_failure_callback`` of the runbook's tasks: tell the migration's channels a task failed.

    The migration comes from the run's conf (``migration_id``); consumers still halted for it are
    named, so the message says they stay halted. Never raises. Registered in the provider info
    (``notifications``), so Airflow lists it among the notifiers.
    """

    def notify(self, context: Any) -> None:
        try:
            self._notify(context)
        except Exception:
            log.exception("the failure notification could not be sent")

    @staticmethod
    def _notify(context: Mapping[str, Any]) -> None:
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
        notify_all(manifest.notify, event, context)


#: the runbook's failure callback (an instance: Airflow calls it with the task's context).
notify_failure = RollbackFailureNotifier()


class ApprovalNotifier(BaseNotifier):  # type: ignore[misc]
    """Tells the channels that a rollback awaits approval, with the link to the approval page.

    Given to the approve task as its ``notifiers``: the human-in-the-loop operator calls it once
    the request is written, with the task's context, so the link is the Airflow UI's "required
    actions" page of that very task (:func:`approval_link`).

    :param channels: the manifest's ``notify`` list.
    :param migration_id: the migration being rolled back.
    :param rollback_id: the rollback's run id.
    :param plan: the plan and its impact, as the approver sees it (Markdown).
    """

    def __init__(
        self, *, channels: Sequence[NotifyChannel], migration_id: str, rollback_id: str, plan: str
    ) -> None:
        super().__init__()
        self.channels = list(channels)
        self.migration_id = migration_id
        self.rollback_id = rollback_id
        self.plan = plan
        self.deliveries: list[Delivery] = []

    def notify(self, context: Any) -> None:
        try:
            self._notify(context)
        except Exception:  # the approval request is written: a channel never stops it
            log.exception("the approval notification could not be sent")

    def _notify(self, context: Any) -> None:
        link = approval_link(context)
        where = f": {link}" if link else " in Airflow (Required Actions)"
        event = RollbackEvent(
            event=APPROVAL,
            migration_id=self.migration_id,
            rollback_id=self.rollback_id,
            summary=f"Rollback {self.rollback_id} of {self.migration_id} awaits approval{where}",
            detail={"approval_link": link, "plan": self.plan},
        )
        self.deliveries = notify_all(self.channels, event, context)


def approval_link(context: Mapping[str, Any]) -> str | None:
    """The approval page of the context's human-in-the-loop task.

    On ``[api] base_url``, else on the URL of the Airflow API connection halt and resume use
    (the same api-server serves the UI); None when neither is set.
    """
    from airflow.providers.standard.operators.hitl import HITLOperator
    from airflow.sdk import conf

    from sensei_airflow.airflow_api import connect_api

    base_url = conf.get("api", "base_url", fallback=None)
    if not base_url:
        api = connect_api()
        base_url = api.base_url if api is not None else None
    if not base_url:
        log.warning("no link to the approval page: set [api] base_url")
        return None
    return str(HITLOperator.generate_link_to_ui_from_context(context=context, base_url=base_url))  # type: ignore[arg-type]
