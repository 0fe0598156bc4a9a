"""Secrets never stored: what sensei writes to XCom, the audit trail, reports, the API or a log is redacted.

Two layers:

- :func:`mask_connection` registers a connection's secrets with Airflow's own secrets masker, as
  Airflow does for a connection's password and extra, plus what Airflow does not know to be
  secret: the userinfo, path and query values of a webhook's URL (a Slack-style webhook path
  *is* its credential). The task log is masked by Airflow with everything registered.
- :func:`redact` is the one function every place that stores an error or a message goes through
  (the runbook's failure records, notification deliveries, the report, backup jobs): Airflow's
  masker first, then what is secret by its shape wherever it comes from: the userinfo of any
  URL, the query string of any URL, and ``password=``/``token=``-style pairs.

See docs/adr/0007-secrets-never-stored.md.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

#: what replaces a secret.
MASK = "***"
#: ``scheme://user:password@`` -> ``scheme://***@``.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@'\"]+@")
#: the query string of a URL (tokens, signatures): ``https://host/path?token=x`` -> ``...?***``.
_QUERY = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s?'\"]*)\?[^\s'\"#]*")
#: ``password=secret``, ``token: secret``, ``"api_key": "secret"`` (libpq DSNs, headers, JSON).
_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|access[_-]?token|api[_-]?key|authorization)"
    r"[\"']?\s*[=:]\s*[\"']?)(?P<value>(?:Bearer\s+|Basic\s+)?[^\s\"',;&}]+)",
    re.IGNORECASE,
)
#: a URL path shorter than this is not registered as a secret (``/``, ``/api``).
_MIN_PATH = 6
#: a single path segment is registered on its own from this length (a token, not a word).
_MIN_TOKEN = 16


def _airflow_mask(secret: str) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - outside Airflow (benchmarks, scripts)
        return
    mask_secret(secret)


def _airflow_redact(text: str) -> str:
    try:
        from airflow.sdk.log import redact as masker_redact
    except ImportError:  # pragma: no cover - outside Airflow
        return text
    return str(masker_redact(text))


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that are credentials: userinfo, a path long enough to be a token, query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [p for p in (parts.username, parts.password) if p]
    path = parts.path.strip("/")
    if len(path) >= _MIN_PATH:
        found.append(path)
        # a segment long enough to be a token (Slack's last one is 24 characters); short ones
        # (``services``, ``hooks``) are ordinary words that must not be masked everywhere
        found += [segment for segment in path.split("/") if len(segment) >= _MIN_TOKEN]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=False) if value]
    if parts.query:
        found.append(parts.query)
    return found


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


def connection_secrets(conn: Any) -> list[str]:
    """Every secret of an Airflow connection: password, sensitive extra values, header values, and
    the secret parts of the URL it posts to (webhooks)."""
    found: list[str] = []
    if getattr(conn, "password", None):
        found.append(str(conn.password))
    extra = getattr(conn, "extra_dejson", None) or {}
    found += _sensitive_values(extra)
    for value in (extra.get("headers") or {}).values():
        if value:
            found.append(str(value))
    if getattr(conn, "conn_type", None) in ("http", "https", "slackwebhook", "slack"):
        found += url_secrets(webhook_url(conn))
        endpoint = extra.get("endpoint")
        if endpoint:
            found += url_secrets(f"http://host/{str(endpoint).lstrip('/')}")
    return [s for s in dict.fromkeys(found) if s]


def _sensitive_values(extra: dict[str, Any]) -> list[str]:
    try:
        from airflow.sdk._shared.secrets_masker import should_hide_value_for_key
    except ImportError:  # pragma: no cover - outside Airflow
        return []
    found: list[str] = []
    for key, value in extra.items():
        if isinstance(value, dict):
            found += _sensitive_values(value)
        elif value and should_hide_value_for_key(key):
            found.append(str(value))
    return found


def mask_connection(conn: Any) -> list[str]:
    """Register the connection's secrets with Airflow's masker (task logs, and :func:`redact`).

    :returns: the secrets registered (for the caller's own use; never log them).
    """
    secrets = connection_secrets(conn)
    for secret in secrets:
        _airflow_mask(secret)
    return secrets


def redact(text: str) -> str:
    """``text`` fit to store or show: masked secrets, URL userinfo and query strings, secret pairs.

    :param text: an error message, a log line, a delivery's outcome.
    """
    if not text:
        return text
    masked = _airflow_redact(text)
    masked = _USERINFO.sub(rf"\g<scheme>{MASK}@", masked)
    masked = _QUERY.sub(rf"\g<url>?{MASK}", masked)
    return _PAIR.sub(rf"\g<key>{MASK}", masked)


def redact_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, redacted."""
    return redact(f"{type(exc).__name__}: {exc}")


class RedactingFilter(logging.Filter):
    """Redacts each record of the logger it is attached to (its message, args folded in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


#: loggers that write a request's full URL (a webhook's URL is its secret), at DEBUG.
URL_LOGGERS = ("urllib3.connectionpool", "slack_sdk.webhook.client", "slack_sdk.web.base_client")


def redact_url_loggers(names: tuple[str, ...] = URL_LOGGERS) -> None:
    """Attach :class:`RedactingFilter` to the loggers that log request URLs (once per logger).

    Airflow masks the task log it writes, but a record also reaches every other handler (a
    debugging handler, a test's capture) as it was logged: the filter masks it at the source.

    :param names: the loggers' names.
    """
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
