"""Fixtures of the end-to-end tests that need a running Airflow (see airflow_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.airflow_server import _airflow_server_slot, airflow_server, release_airflow_server

__all__ = ["_airflow_server_slot", "airflow_server"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test's own teardown, stop the worker's Airflow if its next test does not need it."""
    try:
        return (yield)
    finally:
        if "airflow_server" in getattr(item, "fixturenames", ()):
            release_airflow_server(nextitem)
