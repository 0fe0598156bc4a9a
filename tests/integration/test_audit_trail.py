"""The audit trail on a real PostgreSQL state store: append-only, hash-chained, verifiable."""

from __future__ import annotations

import pytest

from sensei_airflow.audit import GENESIS_HASH, AuditEvent, AuditTrail, chain_hash
from sensei_airflow.cli import main as sensei_cli
from sensei_airflow.state import StateStore


@pytest.fixture
def trail(databases) -> AuditTrail:
    trail = AuditTrail(StateStore("sensei_state"))
    for n in range(5):
        trail.append(
            AuditEvent(
                step="execute",
                action=f"action {n}",
                rollback_id="run_1",
                migration_id="mig",
                task_id="execute_truncate",
                try_number=1,
                sql=["TRUNCATE TABLE x"],
                rows_affected=n,
                detail={"n": n, "text": "données ✓"},
            )
        )
    return trail


def as_superuser(databases, *statements: str) -> None:
    with databases.connect("state") as conn:
        conn.execute("ALTER TABLE sensei.audit_events DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
        conn.execute("ALTER TABLE sensei.audit_events ENABLE TRIGGER USER")


def test_chain_links_every_event_to_the_one_before(trail, databases):
    report = trail.verify()
    assert report.ok and report.events == 5
    with databases.connect("state") as conn:
        rows = conn.execute(
            "SELECT seq, payload, prev_hash, hash FROM sensei.audit_events ORDER BY seq"
        ).fetchall()
    assert rows[0][2] == GENESIS_HASH
    for (_, payload, prev, digest), (_, _, next_prev, _) in zip(
        rows, [*rows[1:], (None, None, None, None)], strict=True
    ):
        assert digest == chain_hash(prev, payload)
        if next_prev is not None:
            assert next_prev == digest
    assert report.head_hash == rows[-1][3]
    assert [e["action"] for e in trail.events("run_1")] == [f"action {n}" for n in range(5)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE sensei.audit_events SET action = 'nothing' WHERE seq = 2",
        "DELETE FROM sensei.audit_events WHERE seq = 2",
        "TRUNCATE sensei.audit_events",
    ],
)
def test_the_table_refuses_changes(trail, databases, statement):
    import psycopg

    with (
        databases.connect("state") as conn,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        conn.execute(statement)
    assert trail.verify().ok


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            "UPDATE sensei.audit_events SET payload = replace(payload, 'action 2', 'action X') WHERE seq = 3",
            "event 3 was altered",
        ),
        ("DELETE FROM sensei.audit_events WHERE seq = 3", "event 3 is missing"),
        (
            "UPDATE sensei.audit_events SET action = 'harmless' WHERE seq = 4",
            "event 4 column action differs from its hashed payload",
        ),
    ],
)
def test_tampering_is_detected_and_located(trail, databases, tamper, problem):
    as_superuser(databases, tamper)
    report = trail.verify()
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems
    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state"]) == 1


def test_rewriting_an_event_and_its_hash_breaks_the_next_link(trail, databases):
    with databases.connect("state") as conn:
        prev, payload = conn.execute(
            "SELECT prev_hash, payload FROM sensei.audit_events WHERE seq = 2"
        ).fetchone()
    forged = payload.replace("action 1", "action Z")
    as_superuser(
        databases,
        f"UPDATE sensei.audit_events SET payload = '{forged}', action = 'action Z', "  # noqa: S608
        f"hash = '{chain_hash(prev, forged)}' WHERE seq = 2",
    )
    report = trail.verify()
    assert not report.ok
    assert "event 3 does not link to the event before it" in report.problems


def test_cli_reports_an_intact_chain(trail, capsys):
    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state"]) == 0
    assert "audit chain intact: 5 events" in capsys.readouterr().out


def test_concurrent_appends_never_fork_the_chain(databases):
    from concurrent.futures import ThreadPoolExecutor

    trail = AuditTrail(StateStore("sensei_state"))
    trail.store.ensure_schema()

    def append(n: int) -> int:
        return AuditTrail(StateStore("sensei_state")).append(AuditEvent(step="assess", action=f"a{n}"))[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        seqs = list(pool.map(append, range(40)))
    assert sorted(seqs) == list(range(1, 41))
    assert trail.verify().ok
