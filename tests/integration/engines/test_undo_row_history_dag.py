"""The undo_log strategy through the Snowflake engine in real rollback DAG runs (Airflow real, state
store and audit trail on real PostgreSQL): the mark taken as a migration tool takes it, then a
dry run and a rollback.

No Snowflake runs here and fakesnow has neither ``CHANGES`` nor ``AT``: the provider hook is a
recording fake. It answers the catalog with the rows stated below and plays the target's row
counts and checksums from a small state: as migrated until a ``MERGE`` of the table has run, as at
the mark after it (``restores=False``: the MERGE leaves the table as it was). It never computes an
answer from the SQL. What is shown: the runbook takes the undo from the history since the mark
(the statements, one transaction), reports the dry run's counts, and verifies each table against
the counts and ``HASH_AGG`` the mark recorded, so a table the undo did not give back fails the run
naming it.
"""

from __future__ import annotations

import json
from typing import Any

from sensei_airflow.engines.snowflake import SnowflakeEngine
from tests.fixtures import run_dag
from tests.integration.engines.conftest import RecordingHook, one_line

MANIFEST = """
id: mig_snow_undo
source: {conn_id: shop_source}
target: {conn_id: snow_undo}
state: {conn_id: sensei_state}
phases:
  - phase: 1
    tables:
      - {source: public.customers, target: crm.customers, key: [id]}
  - phase: 2
    tables:
      - {source: public.order_items, target: '"Sales Data"."Order Items"', key: ['"Order ID"']}
rollback:
  preferred_strategy: undo_log
  undo_log: {enabled: true}
"""
CONN = {"conn_type": "snowflake", "login": "sensei", "password": "unused", "schema": "CRM",
        "extra": {"account": "sensei-test", "database": "SHOP", "warehouse": "WH"}}  # fmt: skip
TABLES = {"CRM.CUSTOMERS": ("CRM", "CUSTOMERS"), "Sales Data.Order Items": ("Sales Data", "Order Items")}
COLUMNS = {
    ("CRM", "CUSTOMERS"): [("ID", "NUMBER", 38, 0), ("Display Name", "TEXT", None, None)],
    ("Sales Data", "Order Items"): [("Order ID", "NUMBER", 38, 0), ('Zoë "Q"', "TEXT", None, None)],
}
AT_MARK = {"CRM.CUSTOMERS": (40, "111"), "Sales Data.Order Items": (120, "222"), "CRM.CAMPAIGNS": (2, "333")}
MIGRATED = {"CRM.CUSTOMERS": (45, "444"), "Sales Data.Order Items": (131, "555"), "CRM.CAMPAIGNS": (2, "333")}


class Target:
    """The target's counts and checksums as the fake plays them: migrated until a table's MERGE ran."""

    def __init__(self, restores: bool) -> None:
        self.restores = restores
        self.marking = True
        self.merged: set[str] = set()

    def state(self, table: str) -> tuple[int, str]:
        if self.marking or table in self.merged:
            return AT_MARK[table]
        return MIGRATED[table]

    def counts(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if "HASH_AGG" in sql:
            return [(t, *self.state(t)) for t in params]
        return [(t, self.state(t)[0]) for t in params]

    def merge(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        table = next(t for t, (s, n) in TABLES.items() if f'INTO "{s}"."{n}"' in sql)
        if self.restores:
            self.merged.add(table)
        return [(1, 2, 3)]


def hook_for(target: Target) -> RecordingHook:
    return RecordingHook(
        answers={
            "CONVERT_TIMEZONE": lambda s, p: [(_now(),)],
            "CURRENT_DATABASE": [("SHOP",)],
            "table_schema, table_name FROM information_schema.tables": [
                ("CRM", "CAMPAIGNS"),
                ("CRM", "CUSTOMERS"),
                ("Sales Data", "Order Items"),
            ],
            "retention_time": [
                (s, n, 1, _now(), _now()) for s, n in (*TABLES.values(), ("CRM", "CAMPAIGNS"))
            ],
            "information_schema.columns": lambda s, p: COLUMNS.get(tuple(p), []),
            "SHOW TABLES": lambda s, p: [
                (n, "OFF")
                for schema, n in TABLES.values()
                if f"LIKE '{n}'" in s and f'SCHEMA "{schema}"' in s
            ],
            "COUNT\\(CASE": [(16, 1, 4, 11)],
            "FETCH FIRST": [(41, "delete")],
            "COUNT": target.counts,
            "^MERGE": target.merge,
        },
        columns={"SHOW TABLES": ["name", "change_tracking"]},
        rowcounts={"^MERGE": 16},
    )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def marked(
    restores: bool, migrations_dir: Any, monkeypatch: Any, databases: Any
) -> tuple[RecordingHook, Target]:
    from sensei_airflow.manifest import load_manifests
    from sensei_airflow.mark import take_mark

    target = Target(restores)
    hook = hook_for(target)
    monkeypatch.setattr(SnowflakeEngine, "_make_hook", lambda self: hook)
    monkeypatch.setenv("AIRFLOW_CONN_SNOW_UNDO", json.dumps(CONN))
    (migrations_dir / "mig_snow_undo.yaml").write_text(MANIFEST)
    mark, _ = take_mark(load_manifests(migrations_dir).get("mig_snow_undo"))
    assert mark.undo_log["enabled"] == ["CRM.CUSTOMERS", "Sales Data.Order Items"]
    assert mark.tables["Sales Data.Order Items"] == {"rows": 120, "checksum": "222"}
    target.marking = False  # the migration (and the application after cutover) wrote since
    return hook, target


def test_dry_run_then_undo_log_sets_both_tables_back_and_verifies_them_against_the_mark(
    databases, migrations_dir, airflow_db, monkeypatch
):
    hook, _ = marked(True, migrations_dir, monkeypatch, databases)
    turned_on = hook.sql("CHANGE_TRACKING = TRUE")
    assert [one_line(s) for s in turned_on] == [
        'ALTER TABLE "CRM"."CUSTOMERS" SET CHANGE_TRACKING = TRUE',
        'ALTER TABLE "Sales Data"."Order Items" SET CHANGE_TRACKING = TRUE',
    ]

    dry = run_dag(
        "sensei_rollback", {"migration_id": "mig_snow_undo", "strategy": "undo_log", "dry_run": True}
    )
    assert dry.state == "success", dry.task_states
    changes = {t["target"]: t["changes"] for t in dry.xcoms["assess"]["tables"]}
    assert changes["Sales Data.Order Items"]["insert"] == 1 and changes["CRM.CUSTOMERS"]["delete"] == 11
    assert not hook.sql("^MERGE")

    out = run_dag("sensei_rollback", {"migration_id": "mig_snow_undo", "strategy": "undo_log"})
    assert out.state == "success", out.task_states
    merges = [one_line(s) for s in hook.sql("^MERGE")]
    assert [m.split(" t USING")[0] for m in merges] == [
        'MERGE INTO "CRM"."CUSTOMERS"',  # parents first
        'MERGE INTO "Sales Data"."Order Items"',
    ]
    assert "CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP =>" in merges[1]
    document = out.xcoms["document"]
    assert document["rollback_status"] == "completed"
    assert document["verification"]["record_counts_match"] is True
    checks = out.xcoms["verify"]["checks"]
    summed = {
        c["table"]: (c["expected"], c["actual"]) for c in checks if c["check"] == "checksum at the start mark"
    }
    assert summed == {"CRM.CUSTOMERS": ("111", "111"), "Sales Data.Order Items": ("222", "222")}


def test_an_undo_that_did_not_give_a_table_back_fails_verification_naming_it(
    databases, migrations_dir, airflow_db, monkeypatch
):
    marked(False, migrations_dir, monkeypatch, databases)
    out = run_dag("sensei_rollback", {"migration_id": "mig_snow_undo", "strategy": "undo_log"})
    assert out.state == "failed"
    assert out.task_states["execute_undo_log"] == "success" and out.task_states["verify"] == "failed"
    document = out.xcoms["document"]
    assert document["verification"]["record_counts_match"] is False
