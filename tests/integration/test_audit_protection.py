"""Who may do what to the audit trail, on a real PostgreSQL state store.

The state role (the ``sensei_state`` connection) appends events but cannot change, disable or drop
the trail; its owner is another role, used only by ``sensei audit init``. The audit key links
events by HMAC from the moment it is configured.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from sensei_airflow.audit import AuditEvent, AuditKey, AuditKeyError, AuditTrail
from sensei_airflow.backups.catalog import BackupCatalog
from sensei_airflow.cli import main as sensei_cli
from sensei_airflow.state import SCHEMA_VERSION, StateSchemaMissing, StateStore

KEY = AuditKey("Prüfschlüssel für den Audit-Trail ✓ 4e1d".encode())


def event(n: int) -> AuditEvent:
    return AuditEvent(
        step="assess", action=f"planned {n}", rollback_id="manual__2026-12-02 ✓", migration_id="mig_shop"
    )


@pytest.fixture
def roles(databases, pg_cluster, monkeypatch) -> Iterator[tuple[str, str]]:
    """An owner role and a state role (names with spaces and non-ASCII letters), as connections."""
    suffix = uuid.uuid4().hex[:6]
    owner, app = f"Sensei Owner {suffix}", f"sensei app ✓ {suffix}"
    with databases.connect("state") as conn:
        for role in (owner, app):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(databases.state), sql.Identifier(owner)
            )
        )
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE_OWNER", pg_cluster.uri(databases.state, user=owner))
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_STATE", pg_cluster.uri(databases.state, user=app))
    yield owner, app
    with databases.connect("state") as conn:
        for role in (app, owner):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def connect_as(pg_cluster, databases, role: str) -> psycopg.Connection:
    return psycopg.connect(pg_cluster.uri(databases.state, user=role), autocommit=True)


def test_a_state_role_that_does_not_own_the_trail_appends_but_cannot_change_disable_or_drop_it(
    databases, pg_cluster, roles, capsys
):
    _, app = roles
    assert sensei_cli(["audit", "init", "--conn-id", "sensei_state_owner", "--grant-to", app]) == 0
    out = capsys.readouterr().out
    assert f'REVOKE UPDATE, DELETE, TRUNCATE ON sensei.audit_events FROM "{app}";' in out
    with databases.connect("state") as conn:  # what README asks the DBA for, after init
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(databases.state), sql.Identifier(app)
            )
        )

    store = StateStore("sensei_state")
    trail = AuditTrail(store, key=None)
    seq, digest = 0, ""
    for n in range(3):
        seq, digest = trail.append(event(n))
    store.record_run("manual__2026-12-02 ✓", "mig_shop", status="running", request={})
    store.record_audit_anchor("manual__2026-12-02 ✓", events=3, head_seq=seq, head_hash=digest)
    assert BackupCatalog(store).list(None) == []  # tables made on first use are the state role's own

    with connect_as(pg_cluster, databases, app) as conn:
        for statement, refusal in [
            ("ALTER TABLE sensei.audit_events DISABLE TRIGGER USER", "must be owner of table audit_events"),
            ("DROP TABLE sensei.audit_events", "must be owner of table audit_events"),
            ("DROP SCHEMA sensei CASCADE", "must be owner of schema sensei"),
            ("DELETE FROM sensei.audit_events", "permission denied for table audit_events"),
            ("UPDATE sensei.audit_events SET action = 'nothing'", "permission denied for table audit_events"),
            ("TRUNCATE sensei.audit_events", "permission denied for table audit_events"),
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal):
                conn.execute(statement)

    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("audit chain intact: 3 events")
    assert lines[1] == "anchors: 1 run record(s) and 0 anchor file(s) agree"
    assert not [line for line in lines if "state role" in line]


def test_verify_warns_when_the_state_role_owns_the_trail(roles, capsys):
    owner, app = roles
    assert sensei_cli(["audit", "init", "--conn-id", "sensei_state_owner", "--grant-to", app]) == 0
    AuditTrail(StateStore("sensei_state_owner"), key=None).append(event(1))
    capsys.readouterr()

    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state_owner"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"warning: the state role {owner} owns sensei.audit_events (as {owner}): it can disable the "
        "append-only trigger of sensei.audit_events or drop the table; connect sensei as a role that does "
        "not own it (sensei audit init --conn-id <owner connection> --grant-to <state role>; README: State "
        "role grants)"
    ) in lines


def test_init_refuses_to_grant_to_a_role_that_could_act_as_the_owner(roles, capsys):
    owner, _ = roles
    assert sensei_cli(["audit", "init", "--conn-id", "sensei_state_owner", "--grant-to", owner]) == 1
    assert capsys.readouterr().err.strip() == (
        f"refused: role {owner} is {owner} or a member of it: it could disable the append-only trigger; "
        "grant to a role of its own"
    )


def test_a_state_role_that_may_not_create_the_schema_is_told_who_must(databases, roles):
    _, app = roles
    with pytest.raises(StateSchemaMissing) as refused:
        StateStore("sensei_state").ensure_schema()
    assert str(refused.value) == (
        "the sensei schema of state store sensei_state is missing (this sensei-airflow needs version "
        f"{SCHEMA_VERSION}) and "
        f"the state role {app} may not create it (permission denied for database {databases.state}): have "
        f"its owner run: sensei audit init --conn-id <owner connection> --grant-to {app}"
    )


def test_a_chain_started_without_a_key_verifies_from_the_switch_on(databases):
    store = StateStore("sensei_state")
    plain, keyed = AuditTrail(store, key=None), AuditTrail(store, key=KEY)
    for n in range(3):
        plain.append(event(n))
    for n in range(3, 6):
        keyed.append(event(n))

    report = keyed.verify()
    assert report.ok, report.problems
    assert (report.events, report.keyed_from, report.key_id) == (6, 4, KEY.key_id)
    assert report.warnings == [
        "events 1-3 are unkeyed (plain sha256, written before the audit key was configured): a rewrite of "
        "them with recomputed hashes is caught only by the anchors"
    ]
    assert databases.scalar("state", "SELECT hash_kind FROM sensei.audit_events WHERE seq = 4") == KEY.kind
    # without the key the keyed links cannot be checked
    assert plain.verify().problems == [
        f"event 4 is linked with audit key {KEY.key_id} but no audit key is configured (Airflow connection "
        "sensei_audit_key): its HMAC cannot be checked"
    ]


def test_a_process_without_the_key_may_not_continue_a_keyed_chain(databases):
    store = StateStore("sensei_state")
    AuditTrail(store, key=KEY).append(event(1))
    other = AuditKey(b"another key")

    with pytest.raises(AuditKeyError) as no_key:
        AuditTrail(store, key=None).append(event(2))
    with pytest.raises(AuditKeyError) as wrong_key:
        AuditTrail(store, key=other).append(event(2))

    assert str(no_key.value) == (
        f"the audit trail is linked with audit key {KEY.key_id} but this process has no audit key "
        "(Airflow connection sensei_audit_key): the event is not recorded"
    )
    assert f"but this process has audit key {other.key_id}" in str(wrong_key.value)
    assert databases.scalar("state", "SELECT count(*) FROM sensei.audit_events") == 1


def test_the_key_comes_from_the_configured_connection(databases, monkeypatch):
    monkeypatch.setenv("AIRFLOW__SENSEI__AUDIT_KEY_CONN_ID", "vault_audit_key")
    monkeypatch.setenv(
        "AIRFLOW_CONN_VAULT_AUDIT_KEY",
        json.dumps({"conn_type": "generic", "password": KEY.secret.decode()}),
    )
    trail = AuditTrail(StateStore("sensei_state"))
    trail.append(event(1))
    assert databases.scalar("state", "SELECT hash_kind FROM sensei.audit_events") == KEY.kind
    assert AuditTrail(StateStore("sensei_state"), key=KEY).verify().ok

    monkeypatch.setenv("AIRFLOW_CONN_VAULT_AUDIT_KEY", json.dumps({"conn_type": "generic"}))
    with pytest.raises(AuditKeyError, match="the audit key connection vault_audit_key has no password"):
        AuditTrail(StateStore("sensei_state")).append(event(2))


def test_a_trigger_left_disabled_by_the_owner_is_a_problem(databases, roles, capsys):
    _, app = roles
    assert sensei_cli(["audit", "init", "--conn-id", "sensei_state_owner", "--grant-to", app]) == 0
    AuditTrail(StateStore("sensei_state"), key=None).append(event(1))
    with databases.connect("state") as conn:
        conn.execute("ALTER TABLE sensei.audit_events DISABLE TRIGGER audit_events_no_update")
    capsys.readouterr()

    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        "audit trail BROKEN: the append-only trigger audit_events_no_update of sensei.audit_events is "
        "disabled: events can be changed or deleted; its owner must restore it (any sensei command run as "
        "the owner does)"
    )
    # any sensei command run as the owner restores it
    assert sensei_cli(["audit", "verify", "--conn-id", "sensei_state_owner"]) == 0
    enabled = "SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_events_no_update'"
    assert databases.scalar("state", enabled) == "O"
