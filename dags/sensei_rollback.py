"""sensei_rollback: roll back a data migration through the eight-step runbook."""

from sensei_airflow.factories import build_rollback_dag

dag = build_rollback_dag()
