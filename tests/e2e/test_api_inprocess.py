"""The sensei REST API in-process: Airflow's own app (``create_app()``) under ``TestClient``.

Airflow's real auth manager and permissions answer; the DAGs are synced into the test's metadata
database as the dag processor would; the run an API call queues is then run with ``dag.test``
using exactly the conf the API stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.seed_payloads import EMPTIED, SEED_PAYLOADS, assert_status_shape, strategy_available
from tests.fixtures import REPO, run_dag

pytestmark = pytest.mark.e2e
MIG = "mig_shop_2026"
ROLLBACK = f"/sensei/v1/migrations/{MIG}/rollback"


def _sync_dags() -> None:
    """Write the repository's DAGs into the metadata database, as the dag processor does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=str(REPO / "dags"), bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)


@pytest.fixture
def api(migrated: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``TestClient`` on Airflow's api-server app, with the sensei plugin mounted; demo migrated."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer,op:op")
    _sync_dags()
    with TestClient(create_app()) as client:
        yield client


def _token(role: str) -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=role, role=role))
    return {"Authorization": f"Bearer {jwt}"}


def _queued_conf(run_id: str) -> dict[str, Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="sensei_rollback", run_id=run_id).one()
        assert str(run.state) == "queued"
        assert run.triggering_user_name == "admin"
        return dict(run.conf)


def _without_duration(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "duration_seconds"}


@pytest.mark.parametrize("payload", list(SEED_PAYLOADS))
def test_seed_payload_accepted_then_run(api: Any, databases: Any, payload: str) -> None:
    body = SEED_PAYLOADS[payload]
    response = api.post(ROLLBACK, json=body, headers=_token("admin"))
    if not strategy_available(payload):
        assert response.status_code == 422, response.text
        assert (
            f"strategy {body['strategy']} is not available in this installation" in response.json()["detail"]
        )
        return
    assert response.status_code == 202, response.text
    run_id = response.json()["rollback_id"]
    conf = _queued_conf(run_id)
    assert conf == {**conf, **body, "migration_id": MIG}

    queued = api.get(f"{ROLLBACK}/status", headers=_token("viewer"))
    assert queued.status_code == 200, queued.text
    this_run = api.get(response.json()["status_url"], headers=_token("viewer"))
    # the same run either way; its duration keeps growing while it runs, so it is left out
    assert _without_duration(this_run.json()) == _without_duration(queued.json())
    assert_status_shape(queued.json())
    assert queued.json()["rollback_id"] == run_id
    assert queued.json()["rollback_status"] == "running"

    outcome = run_dag("sensei_rollback", conf)
    status = api.get(f"{ROLLBACK}/status", params={"rollback_id": outcome.run_id}, headers=_token("viewer"))
    assert status.status_code == 200, status.text
    document = status.json()
    assert_status_shape(document)
    assert document == outcome.xcoms["document"]
    if payload in EMPTIED:
        assert outcome.state == "success", outcome.task_states
        assert document["rollback_status"] == "completed"
        for table in EMPTIED[payload]:
            assert databases.scalar("target", f"SELECT count(*) FROM {table}") == 0  # noqa: S608


def test_authentication_and_permissions(api: Any) -> None:
    body = {"strategy": "truncate"}
    assert api.post(ROLLBACK, json=body).status_code == 401
    assert api.get("/sensei/v1/migrations").status_code == 401
    assert api.post(ROLLBACK, json=body, headers={"Authorization": "Bearer forged"}).status_code in (401, 403)
    refused = api.post(ROLLBACK, json=body, headers=_token("viewer"))
    assert refused.status_code == 403, refused.text
    assert api.get("/sensei/v1/migrations", headers=_token("viewer")).status_code == 200
    assert api.post(ROLLBACK, json=body, headers=_token("op")).status_code == 202


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"strategy": "truncate", "force": True}, 422, "force: unknown key"),
        ({"strategy": "rm -rf"}, 422, "strategy: Input should be"),
        ({"strategy": "truncate", "scope": "tables"}, 422, "scope 'tables' needs a non-empty list of tables"),
        ({"strategy": "truncate", "scope": "phase", "phase": 0}, 422, "phase: Input should be greater than"),
        ({"strategy": "truncate", "scope": "phase", "phase": 7}, 422, "phase 7 does not exist"),
        ({"strategy": "truncate", "scope": "tables", "tables": ["o'rders"]}, 422, "is not part of"),
        ({"strategy": "truncate", "tables": ["orders"]}, 422, "tables is only used with scope 'tables'"),
        ({"strategy": "truncate", "restore_to": "2026-02-02T07:59:00Z"}, 422, "restore_to is only used"),
        ({"strategy": "point_in_time", "restore_to": "2026-02-02 07:59"}, 422, "restore_to"),
        ({"strategy": "truncate", "dry_run": "maybe"}, 422, "dry_run"),
    ],
)
def test_bad_bodies(api: Any, body: dict[str, Any], status: int, reason: str) -> None:
    response = api.post(ROLLBACK, json=body, headers=_token("admin"))
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"], response.text


def test_unknown_migration_and_no_rollback_yet(api: Any, migrations_dir: Any) -> None:
    from tests.fixtures import write_demo_manifest

    write_demo_manifest(migrations_dir, migration_id="mig_quiet_2026")
    unknown = api.post("/sensei/v1/migrations/mig_nope/rollback", json={}, headers=_token("admin"))
    assert unknown.status_code == 404
    assert "known: mig_quiet_2026, mig_shop_2026" in unknown.json()["detail"]
    none_yet = api.get("/sensei/v1/migrations/mig_quiet_2026/rollback/status", headers=_token("admin"))
    assert none_yet.status_code == 404
    assert "no rollback of mig_quiet_2026 yet" in none_yet.json()["detail"]


def test_plan_is_a_dry_run(api: Any, databases: Any, migrated: dict[str, int]) -> None:
    response = api.get(
        f"{ROLLBACK}/plan",
        params={"strategy": "truncate", "scope": "phase", "phase": 3},
        headers=_token("op"),
    )
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["dry_run"] is True
    assert [t["target"] for t in plan["tables"]] == ["sales.order_items"]
    assert plan["tables"][0]["rows"] == migrated["sales.order_items"]
    assert (
        databases.scalar("target", "SELECT count(*) FROM sales.order_items") == migrated["sales.order_items"]
    )
    refused = api.get(
        f"{ROLLBACK}/plan",
        params={"strategy": "truncate", "scope": "phase", "phase": 2},
        headers=_token("op"),
    )
    assert refused.status_code == 409, refused.text
    assert "sales.order_items (outside the scope) references sales.orders" in refused.json()["detail"]


def test_listing(api: Any, migrations_dir: Any) -> None:
    (migrations_dir / "mig_broken.yaml").write_text("id: mig_broken\nphases: []\n")
    response = api.get("/sensei/v1/migrations", headers=_token("viewer"))
    assert response.status_code == 200, response.text
    assert any(error.startswith("mig_broken.yaml: ") for error in response.json()["errors"])
    assert str(migrations_dir) not in response.text  # the file's name, not where it lives
    (migration,) = response.json()["migrations"]
    assert migration["id"] == MIG
    assert migration["rollback_window"]["open"] is True
    assert migration["preferred_strategy"] == "truncate"
    assert "backups_error" not in migration, migration


# -- limits, docs and what errors may show (ADR 0305) ---------------------------------------------
def test_a_viewer_may_not_ask_for_a_plan(api: Any) -> None:
    response = api.get(f"{ROLLBACK}/plan", params={"strategy": "truncate"}, headers=_token("viewer"))
    assert response.status_code == 403, response.text


def test_docs_are_off_and_the_schema_needs_a_login(api: Any) -> None:
    for page in ("/sensei/docs", "/sensei/redoc"):
        assert api.get(page).status_code == 404
        assert api.get(page, headers=_token("viewer")).status_code == 404
    assert api.get("/sensei/openapi.json").status_code == 401
    schema = api.get("/sensei/openapi.json", headers=_token("viewer"))
    assert schema.status_code == 200, schema.text
    assert "/v1/migrations/{migration_id}/rollback" in schema.json()["paths"]


def test_bodies_and_tables_lists_have_limits(api: Any) -> None:
    huge = {"strategy": "truncate", "reason": "x" * 70_000}
    declared = api.post(ROLLBACK, json=huge, headers=_token("admin"))
    assert declared.status_code == 413, declared.text
    assert declared.json()["detail"] == (
        "request body larger than 65536 bytes: a rollback request is a small JSON object"
    )
    body = json.dumps(huge).encode()
    streamed = api.post(  # no Content-Length: counted as it arrives
        ROLLBACK,
        content=(body[i : i + 8192] for i in range(0, len(body), 8192)),
        headers={**_token("admin"), "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413, streamed.text
    many = {"strategy": "truncate", "scope": "tables", "tables": [f"t{n}" for n in range(1001)]}
    listed = api.post(ROLLBACK, json=many, headers=_token("admin"))
    assert listed.status_code == 422, listed.text
    assert "tables: List should have at most 1000 items" in listed.json()["detail"]
    queried = api.get(
        f"{ROLLBACK}/plan",
        params={"strategy": "truncate", "scope": "tables", "tables": ",".join(f"t{n}" for n in range(1001))},
        headers=_token("op"),
    )
    assert queried.status_code == 422, queried.text


def test_an_unreachable_state_store_shows_no_host_user_or_path(
    api: Any, migrations_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE", "postgresql://statekeeper:hunter2@127.0.0.1:9/sensei")
    listing = api.get("/sensei/v1/migrations", headers=_token("viewer"))
    assert listing.status_code == 200, listing.text
    (migration,) = listing.json()["migrations"]
    assert migration["backups_error"] == (
        "the backup catalog in state store sensei_state cannot be read (OperationalError); the api-server "
        "log has the details"
    )
    status = api.get(f"{ROLLBACK}/status", headers=_token("viewer"))
    assert status.status_code == 503, status.text
    assert status.json()["detail"] == (
        "the state store sensei_state cannot be read (OperationalError); the api-server log has the details"
    )
    unknown = api.get("/sensei/v1/migrations/mig_nope/rollback/status", headers=_token("viewer"))
    assert unknown.status_code == 404 and str(migrations_dir) not in unknown.text
    for answer in (listing, status, unknown):
        for revealing in ("statekeeper", "hunter2", "127.0.0.1", "port 9", str(migrations_dir)):
            assert revealing not in answer.text, (revealing, answer.text)


# -- a paused sensei_rollback (Airflow's default for a new DAG; ADR 0300) -------------------------
def _pause_rollback_dag(paused: bool) -> None:
    """Set the pause flag as the UI toggle does: the tests' Airflow creates DAGs unpaused."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == "sensei_rollback").values(is_paused=paused))


@pytest.fixture
def paused(api: Any) -> Iterator[None]:
    """``sensei_rollback`` paused, as a fresh install has it; unpaused again for the tests after."""
    _pause_rollback_dag(True)
    yield
    _pause_rollback_dag(False)


def _is_paused() -> bool:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return bool(session.get(DagModel, "sensei_rollback").is_paused)


def _rollback_runs() -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter_by(dag_id="sensei_rollback").count()


def _unpause_events(databases: Any) -> list[tuple[Any, ...]]:
    with databases.connect("state") as conn:
        return conn.execute(
            "SELECT action, actor, migration_id, payload::jsonb -> 'detail' ->> 'dag_id' "
            "FROM sensei.audit_events WHERE step = 'api' ORDER BY seq"
        ).fetchall()


def test_a_paused_rollback_dag_is_refused_with_the_fix(api: Any, databases: Any, paused: None) -> None:
    before = _rollback_runs()
    response = api.post(ROLLBACK, json={"strategy": "truncate"}, headers=_token("admin"))
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == (
        "sensei_rollback is paused and Airflow runs nothing of a paused DAG, so no rollback was queued: "
        "unpause it (the toggle in the UI, or `airflow dags unpause sensei_rollback`) or repeat this "
        "request with ?unpause=true to unpause it here (recorded in the audit trail)"
    )
    assert _rollback_runs() == before, "no run may wait forever behind the pause"
    assert _is_paused()


def test_unpause_true_unpauses_audited_then_queues(api: Any, databases: Any, paused: None) -> None:
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    response = api.post(
        ROLLBACK,
        params={"unpause": "true"},
        json={"strategy": "truncate", "reason": "Bestellungen doppelt"},
        headers=_token("op"),
    )
    assert response.status_code == 202, response.text
    assert not _is_paused()
    assert _unpause_events(databases) == [("dag_unpaused", "op", MIG, "sensei_rollback")]
    seq = databases.scalar("state", "SELECT max(seq) FROM sensei.audit_events WHERE step = 'api'")
    assert response.json()["unpaused"] == {"audit_seq": seq}
    payload = databases.scalar("state", "SELECT payload FROM sensei.audit_events WHERE seq = %s", (seq,))
    assert json.loads(payload)["reason"] == "Bestellungen doppelt"
    with create_session() as session:
        logged = session.query(Log).filter_by(event="sensei_unpause_dag", dag_id="sensei_rollback").all()
    assert [(entry.owner, json.loads(entry.extra)["audit_seq"]) for entry in logged] == [("op", seq)]
    assert _queued_conf_of(response.json()["rollback_id"])["strategy"] == "truncate"

    # an unpaused DAG is left alone: nothing more is recorded
    again = api.post(
        ROLLBACK, params={"unpause": "true"}, json={"strategy": "truncate"}, headers=_token("op")
    )
    assert again.status_code == 202, again.text
    assert "unpaused" not in again.json()
    assert len(_unpause_events(databases)) == 1


def test_unpause_needs_the_right_to_edit_the_dag(
    api: Any, databases: Any, paused: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An auth manager that lets a user trigger runs but not edit the DAG (FAB can) gets 403, still paused."""
    from airflow.api_fastapi.app import get_auth_manager

    manager = type(get_auth_manager())
    allowed = manager.is_authorized_dag

    def no_dag_edits(
        self: Any, *, method: str, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if method == "PUT" and access_entity is None:
            return False
        return allowed(self, method=method, user=user, access_entity=access_entity, details=details)

    monkeypatch.setattr(manager, "is_authorized_dag", no_dag_edits)
    response = api.post(
        ROLLBACK, params={"unpause": "true"}, json={"strategy": "truncate"}, headers=_token("op")
    )
    assert response.status_code == 403, response.text
    assert (
        response.json()["detail"]
        == "sensei_rollback is paused and unpausing it needs the right to edit that DAG"
    )
    assert _is_paused()
    assert _unpause_events(databases) == []


def test_an_unrecordable_unpause_leaves_the_dag_paused(
    api: Any, databases: Any, paused: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE", "postgresql://statekeeper:hunter2@127.0.0.1:9/sensei")
    response = api.post(
        ROLLBACK, params={"unpause": "true"}, json={"strategy": "truncate"}, headers=_token("op")
    )
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == (
        "sensei_rollback stays paused: the unpause could not be recorded in state store sensei_state "
        "(OperationalError); the api-server log has the details"
    )
    assert _is_paused()


def _queued_conf_of(run_id: str) -> dict[str, Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return dict(session.query(DagRun).filter_by(dag_id="sensei_rollback", run_id=run_id).one().conf)
