"""sensei-airflow: roll back data migrations safely, as an audited Airflow runbook."""

__version__ = "0.1.0"
