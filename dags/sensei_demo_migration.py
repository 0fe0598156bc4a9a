"""sensei_demo_migration: the demo forward migration, so that there is something to roll back."""

from sensei_airflow.factories import build_demo_migration_dag

dag = build_demo_migration_dag()
