"""Fixtures of the runbook tests (see support.py)."""

from tests.integration.runbook.support import api_server, smtp_server, webhook_server

__all__ = ["api_server", "smtp_server", "webhook_server"]
