"""Truncate and a row inserted, by another session, into a table outside the scope that references it.

The outside table is empty when assess looks, and its foreign key cascades deletes. Another
session then inserts a row into it that references a migrated customer, and commits only once the
rollback's execute is waiting for its locks: execute must find the row under its own lock and
refuse, with nothing changed (before, the row was deleted through the cascade without a word).
Real PostgreSQL; the two sessions are real concurrent connections.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from sensei_airflow.conf import RollbackRequest
from sensei_airflow.manifest import load_manifests
from sensei_airflow.plan import RefusedError
from sensei_airflow.runbook import RunContext, assess
from sensei_airflow.state import StateStore, utcnow
from sensei_airflow.strategies.truncate import TruncateStrategy

NOTES_DDL = """
CREATE TABLE crm."customer notes" (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customers (id) ON DELETE CASCADE,
    "note" text NOT NULL
)
"""


def waiting_for_a_lock(databases: Any, deadline: float) -> None:
    """Return once a session of the target database waits for a lock (generous deadline)."""
    with databases.connect("target") as conn:
        while True:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]
            if waiting:
                return
            assert time.monotonic() < deadline, "the rollback never waited for its locks"
            time.sleep(0.05)


def test_row_inserted_outside_the_scope_after_assess_refuses_under_lock(databases, migrations_dir, migrated):
    with databases.connect("target") as conn:
        conn.execute(NOTES_DDL)
        customer = conn.execute("SELECT min(id) FROM crm.customers").fetchone()[0]
    manifest = load_manifests(migrations_dir).get("mig_shop_2026")
    state = StateStore("sensei_state")
    request = RollbackRequest.parse({"migration_id": manifest.id, "strategy": "truncate"})
    plan = assess(manifest, request, RunContext(rollback_id="manual__race", actor="dba", now=utcnow()))
    assert any('LOCK TABLE "crm"."customer notes" IN SHARE MODE' in s for s in plan.statements)

    # another session writes into the outside table and holds its transaction open
    writer = psycopg.connect(databases.cluster.dsn(databases.target))
    writer.execute(
        'INSERT INTO crm."customer notes" (customer_id, "note") VALUES (%s, %s)', (customer, "Grüße, bleibt!")
    )
    outcome: dict[str, Any] = {}

    def execute() -> None:
        try:
            outcome["result"] = TruncateStrategy(manifest, state).execute(plan)
        except BaseException as exc:
            outcome["error"] = exc

    rollback = threading.Thread(target=execute)
    rollback.start()
    try:
        waiting_for_a_lock(databases, time.monotonic() + 60)
    finally:
        writer.commit()
        writer.close()
    rollback.join(120)
    assert not rollback.is_alive()

    error = outcome.get("error")
    assert isinstance(error, RefusedError), outcome
    assert str(error) == (
        "truncate would break foreign keys: crm.customer notes (outside the scope) references crm.customers "
        "through customer notes_customer_id_fkey and holds 1 rows (found under lock, after assess); "
        "nothing was changed"
    )
    with databases.connect("target") as conn:
        assert conn.execute('SELECT "note" FROM crm."customer notes"').fetchall() == [("Grüße, bleibt!",)]
        for table, rows in migrated.items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows, table  # noqa: S608
