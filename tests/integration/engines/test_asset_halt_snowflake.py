# ruff: noqa: F811 - the fixtures imported from tests.integration.runbook.support are parameters here
"""Halt finds the DAGs scheduled on a Snowflake table's Asset, through Airflow's REST API.

The target is Snowflake (fakesnow); the DAGs live in the tests' metadata database and the
api-server answers about them. Each DAG's Asset is written as a DAG author writes it: the
snowflake provider's URI, names percent-encoded where they hold spaces or non-ASCII letters.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sensei_airflow import consumers
from sensei_airflow.airflow_api import AirflowApi
from sensei_airflow.engines import get_engine
from sensei_airflow.manifest import load_manifests
from sensei_airflow.state import StateStore
from tests.integration.runbook.support import API_USER, api_server, paused, sync_dags  # noqa: F401

SNOWFLAKE_CONSUMERS = """
from datetime import datetime

from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

for dag_id, uri in (
    ("reads_orders", "snowflake://sensei-test/SHOP/CRM/ORDERS"),
    ("reads_bestellungen", "snowflake://sensei-test/SHOP/Bestellungen%20Caf%C3%A9/Order%20Items"),
    ("reads_other_account", "snowflake://other-account/SHOP/CRM/ORDERS"),
):
    with DAG(dag_id, schedule=[Asset(uri)], start_date=datetime(2026, 1, 1), catchup=False) as dag:
        EmptyOperator(task_id="read")
    globals()[dag_id] = dag
"""


def test_halt_pauses_the_dags_scheduled_on_snowflake_tables(
    fake_snowflake, databases, migrations_dir, airflow_db, api_server, tmp_path: Path
):
    from sensei_airflow.demo import shop

    fake_snowflake.run(
        "CREATE TABLE CRM.ORDERS (ID INT)",
        'CREATE SCHEMA "Bestellungen Café"',
        'CREATE TABLE "Bestellungen Café"."Order Items" (ID INT)',
    )
    document = shop.manifest()
    document["target"] = {"conn_id": "snow_target"}
    (migrations_dir / "mig_shop_2026.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    manifest = load_manifests(migrations_dir).get("mig_shop_2026")
    folder = tmp_path / "snowflake_consumers"
    folder.mkdir()
    (folder / "consumers.py").write_text(SNOWFLAKE_CONSUMERS)
    dag_ids = sync_dags(folder)
    api = AirflowApi(api_server.url, *API_USER)
    for dag_id in dag_ids:
        api.set_paused(dag_id, False)
    target = get_engine(manifest.target.conn_id)

    halted = consumers.halt(
        manifest,
        "run_snow",
        StateStore(manifest.state.conn_id),
        target,
        ["orders", '"Bestellungen Café"."Order Items"'],
        api,
    )

    assert {d["dag_id"]: d["why"] for d in halted.dags} == {
        "reads_orders": "scheduled on asset snowflake://sensei-test/SHOP/CRM/ORDERS",
        "reads_bestellungen": (
            "scheduled on asset snowflake://sensei-test/SHOP/Bestellungen%20Caf%C3%A9/Order%20Items"
        ),
    }
    assert paused(dag_ids) == {"reads_orders": True, "reads_bestellungen": True, "reads_other_account": False}
