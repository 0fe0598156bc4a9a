"""sensei_backup: scheduled backups of the migrations' tables, with verification and retention."""

from sensei_airflow.factories import build_backup_dag

dag = build_backup_dag()
