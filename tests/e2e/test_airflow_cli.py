"""The package as Airflow sees it: provider registration, DAG import errors, `airflow dags test -c`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensei_airflow.state import StateStore

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def airflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )


def json_output(result: subprocess.CompletedProcess[str]) -> object:
    """The JSON document Airflow printed (its log lines share stdout)."""
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_registered_as_a_provider():
    result = airflow("providers", "list", "--output", "json")
    assert result.returncode == 0, result.stderr
    providers = {p["package_name"]: p for p in json_output(result)}
    assert "sensei-airflow" in providers
    assert providers["sensei-airflow"]["version"] == __import__("sensei_airflow").__version__


@pytest.mark.parametrize("lazy_providers", ["True", "False"])
def test_the_api_plugin_is_registered_once(lazy_providers: str) -> None:
    """Shown by `airflow plugins` with its app at /sensei, and never refused as a duplicate.

    Airflow loads ``airflow.plugins`` entry points always, and plugins listed in a provider's info
    only with lazy provider discovery off: the plugin is in the entry point only (ADR 0300).
    """
    env = {**os.environ, "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy_providers}
    listed = subprocess.run(
        [AIRFLOW, "plugins", "--output", "json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    plugins = [p for p in json_output(listed) if p["name"] == "sensei"]
    assert [[app["url_prefix"] for app in p["fastapi_apps"]] for p in plugins] == [["/sensei"]]
    assert "group='airflow.plugins'" in plugins[0]["source"]
    errors = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airflow import plugins_manager; print(plugins_manager._get_plugins()[1])",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert errors.returncode == 0, errors.stderr
    assert errors.stdout.strip().splitlines()[-1] == "{}"


def test_no_import_errors_with_good_and_bad_manifests(migrations_dir, airflow_db):
    from sensei_airflow.demo import shop

    (migrations_dir / "mig_shop_2026.yaml").write_text(shop.manifest_yaml())
    (migrations_dir / "broken.yaml").write_text("id: [oops\n")
    result = airflow("dags", "list-import-errors", "--local", "--output", "json")
    assert result.returncode == 0, result.stderr
    assert json_output(result) == []
    listed = airflow("dags", "list", "--local", "--output", "json")
    dag_ids = {d["dag_id"] for d in json_output(listed)}
    assert {"sensei_rollback", "sensei_demo_migration"} <= dag_ids


def test_airflow_dags_test_with_conf_runs_a_rollback(migrated, databases):
    conf = {
        "migration_id": "mig_shop_2026",
        "strategy": "truncate",
        "scope": "phase",
        "phase": 3,
        "reason": "cutover failed",
    }
    result = airflow("dags", "test", "sensei_rollback", "-c", json.dumps(conf))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert databases.scalar("target", "SELECT count(*) FROM sales.order_items") == 0
    assert databases.scalar("target", "SELECT count(*) FROM sales.orders") == migrated["sales.orders"]
    record = StateStore("sensei_state").latest_run("mig_shop_2026")
    assert record["status"] == "completed" and record["reason"] == "cutover failed"
