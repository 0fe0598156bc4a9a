"""Target truncate through the whole runbook DAG (dag.test), on real PostgreSQL source, target and state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sensei_airflow.audit import AuditTrail
from sensei_airflow.demo import shop
from sensei_airflow.state import StateStore
from tests.fixtures import run_dag

MIGRATED = ["crm.customers", "sales.orders", "sales.order_items"]
STATUS_KEYS = {
    "migration_id",
    "rollback_id",
    "rollback_status",
    "strategy_used",
    "restored_to",
    "scope",
    "verification",
    "duration_seconds",
}


def counts(databases, which: str = "target") -> dict[str, int]:
    tables = (
        [*MIGRATED, "crm.campaigns"]
        if which == "target"
        else ["public.customers", "public.orders", "public.order_items"]
    )
    with databases.connect(which) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # noqa: S608


def assess_error(outcome) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="sensei_rollback", run_id=outcome.run_id, task_id="assess", key="error")
            .one()
        )
        return XComModel.deserialize_value(row)["error"]


def test_demo_migration_dag_copies_every_phase(databases, migrations_dir, airflow_db):
    (migrations_dir / "mig_shop_2026.yaml").write_text(shop.manifest_yaml())
    outcome = run_dag("sensei_demo_migration")
    assert outcome.state == "success", outcome.task_states
    target = counts(databases)
    source = counts(databases, "source")
    assert target["crm.customers"] == source["public.customers"] > 0
    assert target["sales.order_items"] == source["public.order_items"] > 0
    balance = databases.scalar("target", "SELECT balance_cents FROM crm.customers WHERE id = 1")
    source_balance = databases.scalar("source", "SELECT balance FROM public.customers WHERE id = 1")
    assert balance == int(source_balance * 100)
    assert outcome.xcoms["migrate_phase_3"] == {"sales.order_items": target["sales.order_items"]}
    marked = outcome.xcoms["start_mark"]
    assert marked["taken"] is True
    assert {t: v["rows"] for t, v in marked["tables"].items()} == dict.fromkeys(MIGRATED, 0)


def test_full_truncate_empties_the_migration_and_nothing_else(migrated, databases):
    source_before = counts(databases, "source")
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert outcome.state == "success", outcome.task_states
    after = counts(databases)
    assert [after[t] for t in MIGRATED] == [0, 0, 0]
    assert after["crm.campaigns"] == 2
    assert counts(databases, "source") == source_before

    document = outcome.xcoms["document"]
    assert set(document) == STATUS_KEYS
    assert document["rollback_status"] == "completed"
    assert document["strategy_used"] == "truncate"
    assert document["rollback_id"] == outcome.run_id
    assert document["scope"] == {
        "scope": "all",
        "tables": ["sales.order_items", "sales.orders", "crm.customers"],
    }
    assert document["verification"] == {
        "source_comparison": "skipped",
        "record_counts_match": True,
        "sample_verification": "skipped",
    }
    assert outcome.task_states["execute_truncate"] == "success"

    store = StateStore("sensei_state")
    record = store.latest_run("mig_shop_2026")
    assert record["status_document"] == document
    assert "# Rollback" in record["report_markdown"] and "TRUNCATE TABLE" in record["report_markdown"]
    chain = AuditTrail(store).verify()
    assert chain.ok, chain.problems
    assert record["report"]["audit_chain"]["ok"] is True
    events = AuditTrail(store).events(outcome.run_id)
    executed = next(e for e in events if e["action"] == "executed")
    assert executed["rows_affected"] == sum(v for k, v in migrated.items() if k in MIGRATED)
    assert any("TRUNCATE TABLE" in sql for sql in executed["sql"])
    assert {e["step"] for e in events} >= {
        "assess",
        "notify",
        "halt",
        "execute",
        "verify",
        "resume",
        "investigate",
        "document",
    }

    # identity sequences restarted: the application's next customer gets id 1 again
    with databases.connect("target") as conn:
        new_id = conn.execute(
            "INSERT INTO crm.customers (name, email_address, balance_cents, created_at) "
            "VALUES ('n', 'n@example.com', 0, now()) RETURNING id"
        ).fetchone()[0]
    assert new_id == 1


def test_truncate_one_phase(migrated, databases):
    outcome = run_dag(
        "sensei_rollback",
        {"migration_id": "mig_shop_2026", "strategy": "truncate", "scope": "phase", "phase": 3},
    )
    assert outcome.state == "success", outcome.task_states
    after = counts(databases)
    assert after["sales.order_items"] == 0
    assert after["sales.orders"] == migrated["sales.orders"]
    assert after["crm.customers"] == migrated["crm.customers"]
    assert outcome.xcoms["document"]["scope"] == {
        "scope": "phase",
        "phase": 3,
        "tables": ["sales.order_items"],
    }


def test_truncate_named_tables(migrated, databases):
    outcome = run_dag(
        "sensei_rollback",
        {
            "migration_id": "mig_shop_2026",
            "strategy": "truncate",
            "scope": "tables",
            "tables": ["orders", "order_items"],
        },
    )
    assert outcome.state == "success", outcome.task_states
    after = counts(databases)
    assert after["sales.orders"] == after["sales.order_items"] == 0
    assert after["crm.customers"] == migrated["crm.customers"]
    assert outcome.xcoms["document"]["scope"]["tables"] == ["sales.order_items", "sales.orders"]


def test_phase_by_phase_rollback_ends_with_delete_when_an_empty_table_still_references(migrated, databases):
    """Phase 1 alone, after phases 3 and 2: orders (outside the scope) is empty but still references customers."""
    for phase in (3, 2, 1):
        outcome = run_dag(
            "sensei_rollback",
            {"migration_id": "mig_shop_2026", "strategy": "truncate", "scope": "phase", "phase": phase},
        )
        assert outcome.state == "success", (phase, outcome.task_states)
    assert [counts(databases)[t] for t in MIGRATED] == [0, 0, 0]
    statements = outcome.xcoms["execute_truncate"]["statements"]
    assert any(s.startswith('DELETE FROM "crm"."customers"') for s in statements), statements
    assert any(s.startswith("ALTER SEQUENCE") for s in statements), statements


def test_dry_run_returns_the_plan_and_changes_nothing(migrated, databases):
    before = counts(databases)
    outcome = run_dag(
        "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate", "dry_run": True}
    )
    assert outcome.state == "success", outcome.task_states
    assert counts(databases) == before
    plan = outcome.xcoms["assess"]
    assert [t["target"] for t in plan["tables"]] == ["sales.order_items", "sales.orders", "crm.customers"]
    assert [t["rows"] for t in plan["tables"]] == [before[t] for t in reversed(MIGRATED)]
    assert plan["statements"][-1] == (
        'TRUNCATE TABLE "sales"."order_items", "sales"."orders", "crm"."customers" RESTART IDENTITY'
    )
    assert outcome.task_states["execute_truncate"] == "skipped"
    assert outcome.xcoms["document"]["rollback_status"] == "planned"
    assert StateStore("sensei_state").latest_run("mig_shop_2026")["status"] == "planned"


REFUSALS = [
    pytest.param({"strategy": "truncate", "stratgy": "x"}, "stratgy: unknown key", id="unknown-key"),
    pytest.param({"migration_id": "mig_nope"}, "unknown migration 'mig_nope'", id="unknown-migration"),
    pytest.param(
        {"scope": "tables", "tables": ["invoices"]}, "'invoices' is not part of migration", id="unknown-table"
    ),
    pytest.param(
        {"scope": "tables", "tables": ["orders; DROP TABLE x"]},
        "'orders; DROP TABLE x' is not part",
        id="hostile-sql",
    ),
    pytest.param(
        {"scope": "tables", "tables": ['orders" --']},
        "holds a double quote: quote the part and write the quote twice",
        id="hostile-quote",
    ),
    pytest.param(
        {"scope": "tables", "tables": ["ordérs"]}, "'ordérs' is not part of migration", id="hostile-unicode"
    ),
    pytest.param({"scope": "phase", "phase": 7}, "phase 7 does not exist", id="phase-out-of-range"),
    pytest.param({"scope": "phase"}, "scope 'phase' needs a phase number", id="phase-missing"),
    pytest.param(
        {"scope": "phase", "phase": 1},
        "sales.orders (outside the scope) references crm.customers",
        id="fk-from-outside-scope",
    ),
]


@pytest.mark.parametrize(("conf", "message"), REFUSALS)
def test_bad_input_fails_in_assess_and_changes_nothing(migrated, databases, conf, message):
    before = counts(databases)
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate", **conf})
    assert outcome.state == "failed"
    assert outcome.task_states["assess"] == "failed"
    assert outcome.task_states["execute_truncate"] == "upstream_failed"
    assert message in assess_error(outcome)
    assert counts(databases) == before
    assert outcome.xcoms["document"]["rollback_status"] == "failed"


def test_params_schema_rejects_an_unknown_strategy_before_the_run(migrated):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match="strategy"):
        run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "nuke"})


def test_closed_window_is_refused(databases, migrations_dir, airflow_db):
    started = datetime.now(UTC) - timedelta(hours=200)
    (migrations_dir / "mig_shop_2026.yaml").write_text(shop.manifest_yaml(started_at=started))
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    assert outcome.task_states["assess"] == "failed"
    assert "rollback window of mig_shop_2026 closed at" in assess_error(outcome)


def test_state_store_on_the_target_is_refused(migrated, databases, monkeypatch, migrations_dir):
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_ON_TARGET", databases.cluster.uri(databases.target))
    (migrations_dir / "mig_shop_2026.yaml").write_text(shop.manifest_yaml(state_conn_id="audit_on_target"))
    before = counts(databases)
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    assert outcome.task_states["assess"] == "failed"
    assert "is the target database itself" in assess_error(outcome)
    assert counts(databases) == before


def test_rows_held_before_the_migration_refuse_truncate(databases, migrations_dir, airflow_db):
    """The start mark counted rows the target held before the migration: truncate would destroy them."""
    from sensei_airflow.demo.migration import prepare_target
    from sensei_airflow.engines import get_engine
    from tests.fixtures import migrate_demo, write_demo_manifest

    manifest = write_demo_manifest(migrations_dir)
    prepare_target(get_engine(manifest.target.conn_id))
    with databases.connect("target") as conn:
        conn.execute("INSERT INTO crm.customers VALUES (900001, 'Zoë O''Brien', 'zoe@example.com', 1, now())")
    migrate_demo(manifest)  # takes the start mark, then copies
    before = counts(databases)
    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    error = assess_error(outcome)
    assert "crm.customers held 1 rows before the migration began" in error
    assert "use backup_restore or point_in_time" in error
    assert counts(databases) == before


def test_retried_execute_after_commit_does_not_fail_or_lose_rows(migrated, databases):
    """A retry after a committed truncate (worker lost before reporting) finds empty tables and succeeds."""
    from sensei_airflow.manifest import load_manifests
    from sensei_airflow.plan import RollbackPlan
    from sensei_airflow.strategies.truncate import TruncateStrategy

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    plan = RollbackPlan.model_validate(outcome.xcoms["assess"])
    manifest = load_manifests().get("mig_shop_2026")
    strategy = TruncateStrategy(manifest, StateStore("sensei_state"))
    again = strategy.execute(plan)
    assert again.rows_affected == dict.fromkeys(plan.table_names, 0)
    assert strategy.verify(plan).passed
