"""A real rollback run tells Airflow which tables it changed: asset events through the alias.

``dag.test`` runs ``sensei_rollback`` (truncate of the demo migration) on real PostgreSQL; the
execute and resume tasks add, through the ``sensei_rollback_tables`` alias, one event per
target table, and Airflow stores them against each table's Asset (the URI a DAG author writes
to schedule on that table).
"""

from __future__ import annotations

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.manifest import load_manifests
from tests.fixtures import migrate_demo, run_dag
from tests.integration.runbook.support import write_manifest

pytestmark = pytest.mark.e2e


def asset_events(run_id: str) -> list[tuple[str, str, dict]]:
    """(task, asset URI, extra) of every asset event this run's tasks emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter_by(source_dag_id="sensei_rollback", source_run_id=run_id)
        return sorted((e.source_task_id, e.asset.uri, dict(e.extra or {})) for e in events)


def test_execute_and_resume_emit_an_event_per_changed_table(databases, migrations_dir, airflow_db):
    write_manifest(migrations_dir)
    migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"), customers=30)

    outcome = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})

    assert outcome.state == "success", outcome.task_states
    target = get_engine("shop_target")
    tables = outcome.xcoms["assess"]["tables"]
    uris = sorted(target.asset_uri(t["target"]) for t in tables)
    assert len(uris) == 3 and all(u.startswith("postgres://127.0.0.1:") for u in uris)
    extra = {"migration_id": "mig_shop_2026", "rollback_id": outcome.run_id, "strategy": "truncate"}
    assert asset_events(outcome.run_id) == sorted(
        [("execute_truncate", uri, {**extra, "step": "execute"}) for uri in uris]
        + [("resume", uri, {**extra, "step": "resume"}) for uri in uris]
    )
    assert sorted(outcome.xcoms["execute_truncate"]["asset_events"]) == uris
    assert sorted(outcome.xcoms["resume"]["asset_events"]) == uris


def test_a_dry_run_emits_nothing(databases, migrations_dir, airflow_db):
    write_manifest(migrations_dir)
    migrate_demo(load_manifests(migrations_dir).get("mig_shop_2026"), customers=10)

    outcome = run_dag(
        "sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate", "dry_run": True}
    )

    assert outcome.state == "success", outcome.task_states
    assert asset_events(outcome.run_id) == []
