"""sensei_window_check: warn before a migration's rollback windows close."""

from sensei_airflow.factories import build_window_check_dag

dag = build_window_check_dag()
