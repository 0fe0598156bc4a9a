"""The truncate strategy, unchanged, through the Oracle and SQL Server engines in a real rollback DAG
run (state store on real PostgreSQL). No server of either can run here: the provider hook is a
recording fake whose row counts drop to zero once a table was emptied and committed, so verify
sees what a server would report; the SQL the run sent is asserted exactly."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from sensei_airflow.engines.mssql import MsSqlEngine
from sensei_airflow.engines.oracle import OracleEngine
from tests.fixtures import run_dag
from tests.integration.engines.conftest import RecordingHook

MANIFEST = """
id: mig_{kind}
source: {{conn_id: shop_source}}
target: {{conn_id: {kind}_target}}
state: {{conn_id: sensei_state}}
started_at: "{started_at}"
phases:
  - phase: 1
    tables:
      - {{source: public.customers, target: {schema}.customers, key: [id]}}
  - phase: 2
    tables:
      - {{source: public.orders, target: {schema}.orders, key: [id]}}
rollback:
  preferred_strategy: truncate
"""


def emptied_after_commit(hook: RecordingHook, quoted: str) -> bool:
    """A TRUNCATE / DELETE of the table ran and a commit followed it."""
    seen = False
    for call in hook.calls:
        if call[0] == "execute" and re.match(rf"(TRUNCATE TABLE|DELETE FROM) {re.escape(quoted)}$", call[1]):
            seen = True
        elif call[0] == "commit" and seen:
            return True
    return False


def scripted_hook(engine_cls, tables: dict[str, int], catalog: dict[str, list]) -> RecordingHook:
    hook = RecordingHook()
    quoter = engine_cls("x")
    quoter.__dict__["hook"] = hook

    def counts(sql, params):
        return [
            (name, 0 if emptied_after_commit(hook, quoter.quote_table(name)) else tables[name])
            for name in params
        ]

    hook.answers.update({**catalog, "COUNT": counts})
    return hook


CASES = {
    "oracle": dict(
        engine=OracleEngine,
        conn={"conn_type": "oracle", "host": "db", "login": "shop", "password": "x", "schema": "ORCL"},
        schema="shop",
        tables={"SHOP.CUSTOMERS": 40, "SHOP.ORDERS": 120, "SHOP.CAMPAIGNS": 2},
        catalog={
            "CURRENT_SCHEMA": [("SHOP",)],
            "DB_UNIQUE_NAME": [("ORCL", "PDB1")],
            "all_tables t JOIN all_users": [("SHOP", "CAMPAIGNS"), ("SHOP", "CUSTOMERS"), ("SHOP", "ORDERS")],
            "constraint_type = 'R'": [("FK_ORD_CUST", "SHOP", "ORDERS", "SHOP", "CUSTOMERS", "ENABLED")],
        },
        statements=[
            'LOCK TABLE "SHOP"."ORDERS", "SHOP"."CUSTOMERS" IN EXCLUSIVE MODE WAIT 30',
            'DELETE FROM "SHOP"."ORDERS"',
            'DELETE FROM "SHOP"."CUSTOMERS"',
        ],
    ),
    "mssql": dict(
        engine=MsSqlEngine,
        conn={"conn_type": "mssql", "host": "db", "login": "sa", "password": "x", "schema": "shop"},
        schema="dbo",
        tables={"dbo.customers": 40, "dbo.orders": 120, "dbo.campaigns": 2},
        catalog={
            "@@SERVERNAME": [("sql1", "shop")],
            "FROM sys.tables t JOIN sys.schemas": [
                ("dbo", "campaigns"),
                ("dbo", "customers"),
                ("dbo", "orders"),
            ],
            "sys.foreign_keys": [("FK_orders_customers", "dbo", "orders", "dbo", "customers")],
        },
        statements=[
            "SET LOCK_TIMEOUT 30000",
            "TRUNCATE TABLE [dbo].[orders]",
            "DELETE FROM [dbo].[customers]",
        ],
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_truncate_rollback_runs_through_the_engine(kind, databases, migrations_dir, airflow_db, monkeypatch):
    case = CASES[kind]
    hook = scripted_hook(case["engine"], case["tables"], case["catalog"])
    monkeypatch.setattr(case["engine"], "_make_hook", lambda self: hook)
    monkeypatch.setenv(f"AIRFLOW_CONN_{kind.upper()}_TARGET", json.dumps(case["conn"]))
    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    (migrations_dir / f"mig_{kind}.yaml").write_text(
        MANIFEST.format(kind=kind, schema=case["schema"], started_at=started)
    )

    out = run_dag("sensei_rollback", {"migration_id": f"mig_{kind}", "strategy": "truncate"})

    assert out.state == "success", out.task_states
    status = out.xcoms["document"]
    assert status["rollback_status"] == "completed"
    assert status["verification"]["record_counts_match"] is True
    changes = hook.sql("^(LOCK|SET LOCK|TRUNCATE|DELETE|COMMIT)")
    assert changes == case["statements"]
    campaigns = next(t for t in case["tables"] if t.lower().endswith("campaigns"))
    assert not any(campaigns.split(".")[1] in s for s in hook.sql("TRUNCATE|DELETE"))
