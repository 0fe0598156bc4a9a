# ruff: noqa: F811 - the fixtures imported from tests.integration.runbook.support are parameters here
"""The whole runbook with its consumers: a running Airflow api-server pauses and unpauses DAGs,
a PostgreSQL role loses and regains its grants, mails and webhooks arrive, the report is written.

``dag.test`` runs the rollback in this process; its halt and resume tasks reach the api-server
(a child process on the same metadata database) through Airflow's REST API.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.lock import MigrationLocks
from sensei_airflow.state import StateStore
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import (  # noqa: F401 - fixtures
    PauseWatcher,
    api_server,
    consumer_dags,
    paused,
    smtp_server,
    webhook_server,
    write_manifest,
)

DAGS = ["consumer_daily", "consumer_paused", "consumer_on_orders", "bystander"]
GRANTS_OF = """
SELECT n.nspname || '.' || c.relname, a.privilege_type, a.is_grantable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
WHERE r.rolname = %s ORDER BY 1, 2
"""


def grants_of(databases, role):
    with databases.connect("target") as conn:
        return [tuple(r) for r in conn.execute(GRANTS_OF, (role,)).fetchall()]


@pytest.fixture
def setup(
    databases, migrations_dir, airflow_db, api_server, smtp_server, webhook_server, tmp_path, monkeypatch
):
    """Demo migration done, consumers in place, channels and the API connection defined."""
    from sensei_airflow.manifest import load_manifests

    role = f"analyst_{uuid.uuid4().hex[:6]}"
    backups = tmp_path / "backups"
    write_manifest(
        migrations_dir,
        backup_location=str(backups),
        downstream={"dags": ["consumer_daily", "consumer_paused"], "db_roles": [role]},
        notify=[{"conn_id": "ops_smtp", "to": ["dba@example.com"]}, {"conn_id": "ops_webhook"}],
    )
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_AIRFLOW_API", api_server.connection_env())
    manifest = load_manifests(migrations_dir).get("mig_shop_2026")
    migrate_demo(manifest)
    with databases.connect("target") as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT SELECT, INSERT ON sales.orders TO {role}")
        conn.execute(f"GRANT SELECT ON crm.customers TO {role} WITH GRANT OPTION")
        conn.execute(f"GRANT SELECT ON crm.campaigns TO {role}")
    orders_uri = get_engine("shop_target").asset_uri("sales.orders")
    consumer_dags(tmp_path / "consumer_dags", orders_uri)
    yield {"role": role, "backups": backups, "manifest": manifest}
    with databases.connect("target") as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_consumers_halted_during_the_rollback_and_restored_after(
    setup, databases, api_server, smtp_server, webhook_server
):
    role = setup["role"]
    grants_before = grants_of(databases, role)

    with PauseWatcher(api_server, DAGS) as watcher:
        outcome = run_dag(
            "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate", "reason": "bad load"}
        )

    assert outcome.state == "success", outcome.task_states
    status = outcome.xcoms["document"]
    assert status["rollback_status"] == "completed"
    # paused while the rollback ran, and unpaused after; paused before stays paused; others untouched
    assert watcher.seen["consumer_daily"] == {False, True}
    assert watcher.seen["consumer_on_orders"] == {False, True}
    assert watcher.seen["consumer_paused"] == {True}
    assert watcher.seen["bystander"] == {False}
    assert paused(DAGS) == {
        "consumer_daily": False,
        "consumer_paused": True,
        "consumer_on_orders": False,
        "bystander": False,
    }
    halted = outcome.xcoms["halt"]
    assert {d["dag_id"]: d["was_paused"] for d in halted["dags"]} == {
        "consumer_daily": False,
        "consumer_paused": True,
        "consumer_on_orders": False,
    }
    assert "asset" in next(d["why"] for d in halted["dags"] if d["dag_id"] == "consumer_on_orders")
    # the role lost its grants on the tables in scope during the rollback, and has exactly them back
    assert {(g["role"], g["table"]) for g in halted["grants"]} == {
        (role, "crm.customers"),
        (role, "sales.orders"),
    }
    assert grants_of(databases, role) == grants_before
    # sequences follow the (now empty) tables
    sequences = outcome.xcoms["execute_sequences"]["sequences"]
    assert {s["table"]: s["next_value"] for s in sequences} == {"crm.customers": 1, "sales.orders": 1}
    # start and end were sent to both channels
    mails = smtp_server.wait_for(2)
    assert [m["headers"]["X-Sensei-Event"] for m in mails] == ["rollback.started", "rollback.finished"]
    assert [e["json"]["event"] for e in webhook_server.events] == ["rollback.started", "rollback.finished"]
    assert webhook_server.events[-1]["json"]["status"] == status
    # the report: state store and backup_location, with the chain head of the documented event
    store = StateStore("sensei_state")
    run = store.get_run(outcome.run_id)
    report = run["report"]
    written = json.loads(Path(report["published"][0]).read_text())
    assert written["status"] == status
    documented = [e for e in report["timeline"] if e["action"] == "documented"][-1]
    assert report["audit_chain"]["ok"] and report["audit_chain"]["head_hash"] == documented["hash"]
    assert report["rows_affected"]["sales.orders"] > 0
    assert any(s.startswith("REVOKE") for s in report["sql_executed"])
    assert any(s.startswith("GRANT") for s in report["sql_executed"])
    assert any(s.startswith("TRUNCATE") for s in report["sql_executed"])
    assert {"halt", "execute_truncate", "verify", "resume"} <= set(report["timings"])
    markdown = Path(report["published"][1]).read_text()
    assert "## Consumers halted and resumed" in markdown
    assert "DAG consumer_paused left paused (was paused)" in markdown
    assert MigrationLocks(store).holder("mig_shop_2026") is None
    assert store.open_holds("mig_shop_2026") == []


REFILL = """
CREATE FUNCTION public.refill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crm.customers (id, name, email_address, balance_cents, created_at)
    SELECT i, 'ghost', 'ghost' || i || '@example.com', 0, now()
    FROM (SELECT generate_series(1, 100) UNION ALL SELECT generate_series(5000, 5080)) AS g(i);
    RETURN NULL;
END $$;
CREATE TRIGGER refill AFTER TRUNCATE ON crm.customers FOR EACH STATEMENT EXECUTE FUNCTION public.refill();
"""


def test_a_failed_verification_keeps_consumers_halted_and_investigates(
    setup, databases, api_server, smtp_server, webhook_server
):
    role = setup["role"]
    grants_before = grants_of(databases, role)
    with databases.connect("target") as conn:
        conn.execute(REFILL)

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert outcome.state == "failed"
    states = outcome.task_states
    assert (states["verify"], states["resume"], states["investigate"]) == (
        "failed",
        "upstream_failed",
        "success",
    )
    assert outcome.xcoms["document"]["rollback_status"] == "failed"
    # consumers stay halted
    assert paused(DAGS)["consumer_daily"] is True and paused(DAGS)["consumer_on_orders"] is True
    assert grants_of(databases, role) == [("crm.campaigns", "SELECT", False)]
    # investigate located the rows left, by key range, and the report shows them
    evidence = outcome.xcoms["investigate"]
    assert [error["task_id"] for error in evidence["errors"]] == ["verify"]  # the one task that failed
    ranges = evidence["differing_key_ranges"]["crm.customers"]
    assert sum(r["source_rows"] for r in ranges) == 181
    assert all(r["expected_rows"] == 0 for r in ranges)
    assert len(ranges) >= 2  # two clusters of keys, apart
    assert {h["name"] for h in evidence["consumers_still_halted"]} >= {"consumer_daily", role}
    assert evidence["table_states"]["crm.customers"]["now"] == 181
    report = StateStore("sensei_state").get_run(outcome.run_id)
    assert "### Differing key ranges (located by bisection)" in report["report_markdown"]
    # the channels were told, and that consumers stay halted
    failed = [e["json"] for e in webhook_server.events if e["json"]["event"] == "rollback.failed"]
    assert failed and any("stay halted" in e["summary"] for e in failed)
    assert any(e["detail"].get("task_id") == "verify" for e in failed)

    # fixed, a later run rolls back and resumes the consumers the failed run halted
    with databases.connect("target") as conn:
        conn.execute("DROP TRIGGER refill ON crm.customers")
    again = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert again.state == "success", again.task_states
    assert paused(DAGS) == {
        "consumer_daily": False,
        "consumer_paused": True,
        "consumer_on_orders": False,
        "bystander": False,
    }
    assert grants_of(databases, role) == grants_before
    resumed = again.xcoms["resume"]["resumed"]
    assert {r["halted_by"] for r in resumed} == {outcome.run_id}
