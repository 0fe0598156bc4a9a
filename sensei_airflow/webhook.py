"""The webhook channel: the http provider's ``HttpNotifier`` on ``HttpHook``, for a URL that is a secret.

Two adjustments to the provider's classes (ADR 0408):

- :class:`WebhookHook` takes sensei's own keys (``endpoint``, ``headers``) out of the connection's
  extra, which ``HttpHook`` would otherwise send as request headers (a webhook's endpoint is its
  secret; ``headers`` is a mapping, not a header);
- :class:`WebhookNotifier` judges the answer itself: an error status raises
  :class:`WebhookRefused`, whose message never holds the URL (``HttpHook``'s own check would log
  the answer's body and the provider's errors can carry the URL).

Imported only when a webhook channel is used (the ``notify`` extra).
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import attrs
from airflow.providers.http.hooks.http import HttpHook
from airflow.providers.http.notifications.http import HttpNotifier

#: the webhook's own keys in an http connection's extra.
WEBHOOK_EXTRA_KEYS = ("endpoint", "headers")
#: seconds a webhook may take, unless the connection's extra says ``timeout``.
WEBHOOK_TIMEOUT = 10.0


class WebhookRefused(Exception):
    """The webhook answered with an error status (the message never holds its URL)."""


class WebhookHook(HttpHook):  # type: ignore[misc]
    """``HttpHook`` on a webhook connection: ``endpoint`` and ``headers`` are not sent as headers;
    an ``https`` connection type means the https scheme."""

    @classmethod
    def get_connection(cls, conn_id: str) -> Any:
        conn = super().get_connection(conn_id)
        extra = {k: v for k, v in (conn.extra_dejson or {}).items() if k not in WEBHOOK_EXTRA_KEYS}
        if conn.conn_type == "https" and "://" not in (conn.host or ""):
            conn = attrs.evolve(conn, schema="https")
        return attrs.evolve(conn, extra=json.dumps(extra))


class WebhookNotifier(HttpNotifier):  # type: ignore[misc]
    """``HttpNotifier`` through :class:`WebhookHook` that raises :class:`WebhookRefused` on an error status.

    Takes ``HttpNotifier``'s arguments (``http_conn_id``, ``endpoint``, ``json``, ``headers``,
    ``extra_options``).
    """

    @cached_property
    def hook(self) -> HttpHook:
        return WebhookHook(method=self.method, http_conn_id=self.http_conn_id)

    def notify(self, context: Any) -> None:
        response = self.hook.run(
            endpoint=self.endpoint,
            json=self.json,
            headers=self.headers,
            extra_options={**self.extra_options, "check_response": False},
        )
        if not response.ok:
            raise WebhookRefused(f"the webhook answered {response.status_code} {response.reason}")
