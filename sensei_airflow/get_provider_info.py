"""Provider registration, read by Airflow's ProvidersManager through the entry point.

The REST API plugin is not listed here: it is registered once, by the ``airflow.plugins`` entry
point, which every Airflow process loads (provider-info plugins are loaded only with
``[core] lazy_discover_providers = False``, and then the second registration is refused as a
duplicate). See docs/adr/0300-rest-api-plugin-behind-airflow-auth.md.
"""

from __future__ import annotations

from typing import Any

from sensei_airflow import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "sensei-airflow",
        "name": "Sensei",
        "description": "Roll back data migrations safely: target truncate, reverse migration, "
        "point-in-time recovery, backup restore and the undo log since the migration's start mark, "
        "run as an audited eight-step runbook.",
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "Sensei",
                "python-modules": [
                    "sensei_airflow.operators.runbook",
                    "sensei_airflow.operators.strategies",
                    "sensei_airflow.operators.backup",
                    "sensei_airflow.operators.mark",
                ],
            }
        ],
        "integrations": [
            {"integration-name": "Sensei", "external-doc-url": "https://pypi.org/project/sensei-airflow/"}
        ],
        "notifications": ["sensei_airflow.notify.RollbackFailureNotifier"],
        "config": {
            "sensei": {
                "description": "Settings of the sensei rollback DAGs.",
                "options": {
                    "task_retries": {
                        "description": "Default retries of each runbook task.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "3",
                        "default": "2",
                    },
                    "retry_delay_seconds": {
                        "description": "Delay between retries of a runbook task.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "60",
                        "default": "30",
                    },
                    "lock_ttl_seconds": {
                        "description": "How long a rollback's lock on its migration holds without "
                        "being renewed; a running step renews it every third of it (at most every "
                        "60 s), a crashed run's lock expires after it (or sensei lock release --force).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "3600",
                        "default": "21600",
                    },
                    "airflow_api_conn_id": {
                        "description": "HTTP connection to Airflow's REST API (base URL, login) used by "
                        "halt and resume to pause and unpause downstream DAGs.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "sensei_airflow_api",
                        "default": "sensei_airflow_api",
                    },
                    "notify_attempts": {
                        "description": "Attempts per notification channel before it is recorded as failed.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "3",
                        "default": "3",
                    },
                    "notify_retry_delay_seconds": {
                        "description": "Delay between notification attempts.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "2.0",
                        "default": "2.0",
                    },
                    "reverse_chunk_rows": {
                        "description": "Rows per key range a reverse migration stages and checkpoints.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "100000",
                        "default": "100000",
                    },
                    "reverse_staging_tasks": {
                        "description": "How many tasks stage a reverse migration's key ranges at once "
                        "(mapped tasks, spread over the Celery or Kubernetes workers); never more than the "
                        "ranges. One task applies them after.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "4",
                        "default": "4",
                    },
                    "reverse_bulk_rows": {
                        "description": "From about this many rows to move, a reverse migration loads "
                        "empty PostgreSQL source tables in bulk: keys and indexes set aside and checked "
                        "once, each key range copied from the target straight into its table inside the "
                        "apply (no staging).",
                        "version_added": "0.2.0",
                        "type": "integer",
                        "example": "50000",
                        "default": "50000",
                    },
                    "reverse_plan_max_rows": {
                        "description": "A reverse migration's plan counts the source rows it will insert, "
                        "update and delete for tables up to this many rows (one checksum scan of each side).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "10000000",
                        "default": "10000000",
                    },
                    "window_check_schedule": {
                        "description": "Schedule of the sensei_window_check DAG.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "@hourly",
                        "default": "@hourly",
                    },
                    "aws_conn_id": {
                        "description": "AWS connection for s3:// backup and report locations.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "aws_default",
                        "default": "aws_default",
                    },
                    "gcp_conn_id": {
                        "description": "Google Cloud connection for gs:// backup and report locations.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "google_cloud_default",
                        "default": "google_cloud_default",
                    },
                    "audit_key_conn_id": {
                        "description": "Airflow connection whose password is the audit key: audit events "
                        "are then linked by HMAC-SHA256 and report anchors signed. Without that connection, "
                        "plain SHA-256 links.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "sensei_audit_key",
                        "default": "sensei_audit_key",
                    },
                    "migrations_dir": {
                        "description": "Folder of migration manifests; the environment variable "
                        "SENSEI_MIGRATIONS_DIR wins. Default: migrations/ in the dags folder.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/dags/migrations",
                        "default": "",
                    },
                },
            }
        },
    }
