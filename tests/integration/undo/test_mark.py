"""The public start mark: by the REST API (then undo_log by the API), by the CLI, idempotent, --restart audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_api_inprocess import _queued_conf, _sync_dags, _token
from tests.fixtures import Databases, run_dag
from tests.integration.undo.conftest import (
    MIG,
    MIGRATED,
    after_cutover,
    migrate,
    rows_before,
    table_rows,
    write_manifest,
)

START = f"/sensei/v1/migrations/{MIG}/start"


@pytest.fixture
def prepared(logical_databases: Databases, migrations_dir: Path, airflow_db: None) -> dict[str, Any]:
    """Source filled, target created with rows before the migration; no mark yet."""
    from sensei_airflow.demo.migration import prepare_source, prepare_target
    from sensei_airflow.engines import get_engine

    manifest = write_manifest(migrations_dir)
    prepare_source(get_engine(manifest.source.conn_id), customers=20)
    prepare_target(get_engine(manifest.target.conn_id))
    rows_before(logical_databases)
    return {"manifest": manifest, "databases": logical_databases, "at_mark": table_rows(logical_databases)}


@pytest.fixture
def api(prepared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer,op:op")
    _sync_dags()
    with TestClient(create_app()) as client:
        yield client


def test_mark_and_undo_log_through_the_rest_api(api: Any, prepared: dict[str, Any]) -> None:
    databases = prepared["databases"]
    assert api.post(START, headers=_token("viewer")).status_code == 403
    first = api.post(START, headers=_token("admin"))
    assert first.status_code == 200, first.text
    assert first.json()["taken"] is True
    assert first.json()["undo_log"] == "sensei_undo_mig_shop_2026"
    assert first.json()["tables"]["crm.customers"]["rows"] == 3
    again = api.post(START, headers=_token("admin"))
    assert again.json()["taken"] is False
    assert again.json()["name"] == first.json()["name"]

    migrate(prepared["manifest"])
    after_cutover(databases)
    response = api.post(
        f"/sensei/v1/migrations/{MIG}/rollback", json={"strategy": "undo_log"}, headers=_token("admin")
    )
    assert response.status_code == 202, response.text
    outcome = run_dag("sensei_rollback", _queued_conf(response.json()["rollback_id"]))
    assert outcome.state == "success", outcome.task_states
    now = table_rows(databases)
    for table in MIGRATED:
        assert now[table] == prepared["at_mark"][table], table
    assert (3, "after cutover | Ünal") in now["crm.campaigns"]


def test_cli_start_is_idempotent_and_restart_is_audited(
    prepared: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from sensei_airflow.cli import main
    from sensei_airflow.state import StateStore

    assert main(["migration", "start", MIG, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["taken"] is True and first["restarts"] == 0
    assert main(["migration", "start", MIG]) == 0
    assert "kept" in capsys.readouterr().out
    assert (
        main(["migration", "start", MIG, "--restart", "--reason", "migration re-planned", "--actor", "dba"])
        == 0
    )
    assert "restarted" in capsys.readouterr().out
    assert main(["migration", "status", MIG, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["mark"]["restarts"] == 1
    assert status["mark"]["name"] != first["name"]
    assert status["mark"]["undo_log_open"] is True
    assert status["mark"]["undo_log_retained"]["exists"] is True
    with StateStore("sensei_state").transaction() as cur:
        cur.execute(
            "SELECT action, actor, payload::jsonb->>'reason' FROM sensei.audit_events "
            "WHERE migration_id = %s AND step = 'mark' ORDER BY seq",
            (MIG,),
        )
        events = cur.fetchall()
    assert [e[0] for e in events] == ["start marked", "start mark restarted"]
    assert events[1][1:] == ("dba", "migration re-planned")


def test_window_check_drops_the_slot_when_the_window_closes(prepared: dict[str, Any]) -> None:
    """The undo log lives for rollback_window_hours: the scheduled check closes it, and undo_log then refuses."""
    from datetime import timedelta

    from sensei_airflow.mark import load_mark, take_mark
    from sensei_airflow.state import StateStore
    from sensei_airflow.windows import check_all

    databases = prepared["databases"]
    mark, _ = take_mark(prepared["manifest"])
    open_report = check_all([prepared["manifest"]], now=mark.taken_at + timedelta(hours=1), run_id="check-1")
    [undo] = [w for w in open_report if w["strategy"] == "undo_log"]
    assert "retains" in undo["line"] and "MiB of WAL" in undo["line"]
    assert databases.scalar("target", "SELECT count(*) FROM pg_replication_slots") == 1
    truncate_triggers = "SELECT count(*) FROM pg_trigger WHERE tgname = 'sensei_undo_mig_shop_2026'"
    assert databases.scalar("target", truncate_triggers) == len(prepared["manifest"].tables)

    closed = check_all([prepared["manifest"]], now=mark.taken_at + timedelta(hours=169), run_id="check-2")
    assert any(entry.get("closed") for entry in closed), closed
    assert databases.scalar("target", "SELECT count(*) FROM pg_replication_slots") == 0
    # the TRUNCATE journals and their triggers go with the slot
    assert databases.scalar("target", "SELECT to_regnamespace('sensei_undo_mig_shop_2026')") is None
    assert databases.scalar("target", truncate_triggers) == 0
    assert (
        databases.scalar("target", "SELECT relreplident FROM pg_class WHERE oid = 'crm.customers'::regclass")
        == "d"
    )
    assert load_mark(StateStore("sensei_state"), MIG).undo_log_closed_at is not None
