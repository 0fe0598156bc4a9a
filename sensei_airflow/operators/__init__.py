"""Airflow operators: one per runbook step and one per rollback strategy."""
