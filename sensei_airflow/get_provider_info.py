"""Provider registration, read by Airflow's ProvidersManager through the entry point."""

from __future__ import annotations

from typing import Any

from sensei_airflow import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "sensei-airflow",
        "name": "Sensei",
        "description": "Roll back data migrations safely: target truncate, reverse migration, "
        "point-in-time recovery and backup restore, run as an audited eight-step runbook.",
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "Sensei",
                "python-modules": [
                    "sensei_airflow.operators.runbook",
                    "sensei_airflow.operators.strategies",
                ],
            }
        ],
        "integrations": [
            {"integration-name": "Sensei", "external-doc-url": "https://pypi.org/project/sensei-airflow/"}
        ],
        "plugins": [{"name": "sensei", "plugin-class": "sensei_airflow.plugins.api.SenseiApiPlugin"}],
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
