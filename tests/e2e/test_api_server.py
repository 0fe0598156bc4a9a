"""The sensei REST API on a running ``airflow standalone``: seed payloads, auth, permissions, bad bodies.

Every seed payload runs to completion through the same API app in ``test_api_inprocess`` (with
``dag.test``). Here, through the real scheduler and LocalExecutor, run the two that take the paths a
scheduler treats differently: a ``tables`` list from the REST body, and reverse migration's mapped
staging tasks. Running the other four here again would prove nothing more (ADR 0010).
"""

from __future__ import annotations

import pytest

from tests.e2e.airflow_server import ADMIN, VIEWER, AirflowServer
from tests.e2e.seed_payloads import (
    DEMO_TABLES,
    EMPTIED,
    SEED_PAYLOADS,
    assert_status_shape,
    strategy_available,
)

pytestmark = pytest.mark.e2e
MIG = "mig_shop_2026"
ROLLBACK = f"/sensei/v1/migrations/{MIG}/rollback"


def _counts(server: AirflowServer) -> dict[str, int]:
    return {t: server.scalar("target", f"SELECT count(*) FROM {t}") for t in (*DEMO_TABLES, "crm.campaigns")}  # noqa: S608


#: the seed payloads run through the real scheduler (see the module docstring).
THROUGH_THE_SCHEDULER = ("truncate_tables", "reverse_migration")


@pytest.mark.parametrize("payload", THROUGH_THE_SCHEDULER)
def test_seed_payload_runs_to_completion(airflow_server: AirflowServer, payload: str) -> None:
    body = SEED_PAYLOADS[payload]
    airflow_server.migrate_demo()
    before = _counts(airflow_server)
    assert all(before[t] > 0 for t in DEMO_TABLES), before

    with airflow_server.client(ADMIN) as client:
        response = client.post(ROLLBACK, json=body)
        if not strategy_available(payload):
            assert response.status_code == 422, response.text
            assert f"strategy {body['strategy']} is not available" in response.json()["detail"]
            assert _counts(airflow_server) == before
            return
        assert response.status_code == 202, response.text
        started = response.json()
        run_id = started["rollback_id"]
        assert started["request"]["migration_id"] == MIG
        assert {k: started["request"][k] for k in body} == body
        run = airflow_server.wait_for_run("sensei_rollback", run_id)
        assert run["conf"]["migration_id"] == MIG
        status = client.get(f"{ROLLBACK}/status")
        assert status.status_code == 200, status.text
        document = status.json()
    assert_status_shape(document)
    assert document["rollback_id"] == run_id
    assert document["migration_id"] == MIG
    assert document["scope"]["scope"] == body.get("scope", "all")
    emptied = EMPTIED.get(payload)
    if emptied is None:
        # Offered here, but its outcome on the demo is not pinned down in EMPTIED yet: the run must
        # still end, and its status document must tell the truth about how it ended.
        assert document["rollback_status"] == {"success": "completed", "failed": "failed"}[run["state"]]
        return
    assert run["state"] == "success", airflow_server.task_states("sensei_rollback", run_id)
    assert document["rollback_status"] == "completed"
    assert document["strategy_used"] == body["strategy"]
    after = _counts(airflow_server)
    assert sorted(document["scope"]["tables"]) == sorted(emptied)
    assert {t: after[t] for t in emptied} == dict.fromkeys(emptied, 0)
    kept = [t for t in after if t not in emptied]
    assert {t: after[t] for t in kept} == {t: before[t] for t in kept}


def test_no_credentials_is_401(airflow_server: AirflowServer) -> None:
    with airflow_server.client(None) as client:
        for method, path in (
            ("POST", ROLLBACK),
            ("GET", f"{ROLLBACK}/status"),
            ("GET", "/sensei/v1/migrations"),
        ):
            response = client.request(
                method, path, json={"strategy": "truncate"} if method == "POST" else None
            )
            assert response.status_code == 401, (path, response.text)
        forged = client.post(
            ROLLBACK, json={"strategy": "truncate"}, headers={"Authorization": "Bearer not-a-jwt"}
        )
        assert forged.status_code in (401, 403), forged.text


def test_viewer_may_read_but_not_trigger(airflow_server: AirflowServer) -> None:
    before = _run_count(airflow_server)
    with airflow_server.client(VIEWER) as client:
        refused = client.post(ROLLBACK, json={"strategy": "truncate"})
        assert refused.status_code == 403, refused.text
        listing = client.get("/sensei/v1/migrations")
        assert listing.status_code == 200, listing.text
        assert [m["id"] for m in listing.json()["migrations"]] == [MIG]
    assert _run_count(airflow_server) == before


def _run_count(server: AirflowServer) -> int:
    with server.client(ADMIN) as client:
        response = client.get("/api/v2/dags/sensei_rollback/dagRuns")
        response.raise_for_status()
        return int(response.json()["total_entries"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"strategy": "truncate", "force": True}, "force: unknown key"),
        ({"strategy": "drop_everything"}, "strategy: Input should be"),
        ({"strategy": "truncate", "scope": "phase"}, "scope 'phase' needs a phase number"),
        ({"strategy": "truncate", "scope": "phase", "phase": 9}, "phase 9 does not exist"),
        ({"strategy": "truncate", "scope": "tables", "tables": ["invoices"]}, "'invoices' is not part of"),
        ({"strategy": "truncate", "scope": "tables", "tables": ["orders; DROP TABLE x"]}, "is not part of"),
        ({"strategy": "truncate", "migration_id": "mig_other"}, "the path names 'mig_shop_2026'"),
        ({"restore_to": "yesterday", "strategy": "point_in_time"}, "restore_to"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(
    airflow_server: AirflowServer, body: dict, reason: str
) -> None:
    before = _run_count(airflow_server)
    with airflow_server.client(ADMIN) as client:
        response = client.post(ROLLBACK, json=body)
    assert response.status_code in (400, 422), response.text
    assert reason in response.json()["detail"], response.text
    assert _run_count(airflow_server) == before


def test_not_json_object_and_unknown_migration(airflow_server: AirflowServer) -> None:
    with airflow_server.client(ADMIN) as client:
        assert client.post(ROLLBACK, json=["truncate"]).status_code == 422
        assert (
            client.post(
                ROLLBACK, content=b"{not json", headers={"Content-Type": "application/json"}
            ).status_code
            == 422
        )
        unknown = client.post("/sensei/v1/migrations/mig_nope/rollback", json={"strategy": "truncate"})
        assert unknown.status_code == 404, unknown.text
        assert "unknown migration 'mig_nope'" in unknown.json()["detail"]
        assert client.get("/sensei/v1/migrations/mig_nope/rollback/status").status_code == 404


def test_plan_changes_nothing_and_starts_nothing(airflow_server: AirflowServer) -> None:
    airflow_server.migrate_demo()
    before, runs = _counts(airflow_server), _run_count(airflow_server)
    with airflow_server.client(ADMIN) as client:
        response = client.get(
            f"{ROLLBACK}/plan",
            params={"strategy": "truncate", "scope": "tables", "tables": "orders,order_items"},
        )
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["dry_run"] is True
    assert [t["target"] for t in plan["tables"]] == ["sales.order_items", "sales.orders"]
    assert [t["rows"] for t in plan["tables"]] == [before["sales.order_items"], before["sales.orders"]]
    assert any("TRUNCATE" in s.upper() for s in plan["statements"]), plan["statements"]
    assert _counts(airflow_server) == before
    assert _run_count(airflow_server) == runs


def test_listing_shows_windows(airflow_server: AirflowServer) -> None:
    with airflow_server.client(ADMIN) as client:
        response = client.get("/sensei/v1/migrations")
    assert response.status_code == 200, response.text
    (migration,) = response.json()["migrations"]
    assert migration["id"] == MIG
    assert migration["rollback_window"]["open"] is True
    assert migration["rollback_window"]["hours"] == 168
    assert [p["tables"] for p in migration["phases"]] == [[t] for t in DEMO_TABLES]
    assert isinstance(migration["backups"], list)
