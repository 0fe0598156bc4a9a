"""Fixtures of the end-to-end tests that need a running Airflow (see airflow_server.py)."""

from tests.e2e.airflow_server import airflow_server

__all__ = ["airflow_server"]
