"""The sensei REST API, served by Airflow's api-server under ``/sensei``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class SenseiApiPlugin(AirflowPlugin):
    name = "sensei"
