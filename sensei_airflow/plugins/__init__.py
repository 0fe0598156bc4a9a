"""Airflow plugins of sensei-airflow."""
