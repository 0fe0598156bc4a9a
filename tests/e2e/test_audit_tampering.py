"""Tampering with the audit trail the way someone with the state store's rights would, after real rollbacks.

Each test runs dry-run rollbacks through the ``sensei_rollback`` DAG (``dag.test``), so the anchors
are the ones the document step writes: in the run records and as anchor files at the manifest's
``rollback.backup_location``. The tampering is done as the owner of ``sensei.audit_events`` would
(the test's superuser connection): disable the append-only trigger, change, enable it again.
Then ``sensei audit verify`` must exit 1 and name what happened in its first line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sensei_airflow.audit import AuditKey, AuditTrail, chain_hash
from sensei_airflow.cli import main as sensei_cli
from sensei_airflow.state import StateStore
from tests.fixtures import (
    DagOutcome,
    aws_client,
    migrate_demo,
    run_dag,
    use_aws_connection,
    write_demo_manifest,
)

#: a line of Airflow's own log (the S3 hook logs to stdout), not of the command.
AIRFLOW_LOG = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[\w+\s*\] ")
KEY = "clé d'audit ✓ 7f3a9c1e5b2d4f6a8c0e1f2a3b4c5d6e"
REASON = "nightly load duplicated the orders of Zürich"


def first_keyed_seq(databases: Any) -> int:
    """The seq of the next event: the first one keyed once the key is configured (the start mark's
    events, written while the demo migrated, came before it)."""
    return int(databases.scalar("state", "SELECT coalesce(max(seq), 0) + 1 FROM sensei.audit_events"))


def use_audit_key(monkeypatch: pytest.MonkeyPatch) -> AuditKey:
    monkeypatch.setenv("AIRFLOW_CONN_SENSEI_AUDIT_KEY", json.dumps({"conn_type": "generic", "password": KEY}))
    return AuditKey(KEY.encode())


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "rapports d'audit ✓"


@pytest.fixture
def shop(databases, migrations_dir, airflow_db, reports) -> Any:
    """The demo migration done, its manifest writing reports (and anchors) to a local folder."""
    manifest = write_demo_manifest(migrations_dir, backup_location=str(reports))
    migrate_demo(manifest, customers=20)
    return manifest


def xcom(outcome: DagOutcome, key: str) -> Any:
    """What the document task pushed under ``key``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="sensei_rollback", run_id=outcome.run_id, task_id="document", key=key)
            .one()
        )
        return XComModel.deserialize_value(row)


def dry_run(reason: str = REASON) -> DagOutcome:
    outcome = run_dag(
        "sensei_rollback",
        {"migration_id": "mig_shop_2026", "strategy": "truncate", "dry_run": True, "reason": reason},
    )
    assert outcome.state == "success", outcome.task_states
    return outcome


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()  # what the DAG runs printed
    code = sensei_cli(["audit", "verify", "--conn-id", "sensei_state", *args])
    return code, [line for line in capsys.readouterr().out.splitlines() if not AIRFLOW_LOG.match(line)]


def documented(databases, rollback_id: str) -> tuple[int, str]:
    """The seq and hash of the run's documented event: where its document step anchored the chain."""
    with databases.connect("state") as conn:
        return conn.execute(
            "SELECT seq, hash FROM sensei.audit_events WHERE rollback_id = %s AND action = 'documented'",
            (rollback_id,),
        ).fetchone()


def anchored(databases, rollback_id: str) -> tuple[int, int, str]:
    """The (events, head seq, head hash) the run record holds."""
    with databases.connect("state") as conn:
        return conn.execute(
            "SELECT audit_events, audit_head_seq, audit_head_hash FROM sensei.rollback_runs WHERE rollback_id = %s",
            (rollback_id,),
        ).fetchone()


def seqs_of(databases, rollback_id: str, action: str | None = None) -> list[int]:
    with databases.connect("state") as conn:
        rows = conn.execute(
            "SELECT seq FROM sensei.audit_events WHERE rollback_id = %s AND (%s::text IS NULL OR action = %s) "
            "ORDER BY seq",
            (rollback_id, action, action),
        ).fetchall()
    return [r[0] for r in rows]


def as_owner(databases, statement: str, params: tuple[Any, ...] = ()) -> None:
    """What the owner of sensei.audit_events can do: step around the append-only trigger."""
    with databases.connect("state") as conn:
        conn.execute("ALTER TABLE sensei.audit_events DISABLE TRIGGER USER")
        conn.execute(statement, params)
        conn.execute("ALTER TABLE sensei.audit_events ENABLE TRIGGER USER")


def rewrite_and_rehash(databases, seq: int, old: str, new: str, kind: str | None = None) -> dict[int, str]:
    """Rewrite event ``seq`` and recompute every hash from it on, without the key; returns the new hashes.

    :param kind: also set the link kind from ``seq`` on (a downgrade to ``sha256``).
    """
    with databases.connect("state") as conn:
        rows = conn.execute(
            "SELECT seq, payload, prev_hash FROM sensei.audit_events WHERE seq >= %s ORDER BY seq", (seq,)
        ).fetchall()
        prev = rows[0][2]
        updates, hashes = [], {}
        for n, payload, _ in rows:
            if n == seq:
                assert old in payload
                payload = payload.replace(old, new)
            hashes[n] = chain_hash(prev, payload)
            updates.append((payload, prev, hashes[n], n))
            prev = hashes[n]
        conn.execute("ALTER TABLE sensei.audit_events DISABLE TRIGGER USER")
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE sensei.audit_events SET payload = %s, prev_hash = %s, hash = %s WHERE seq = %s",
                updates,
            )
            if kind is not None:
                cur.execute("UPDATE sensei.audit_events SET hash_kind = %s WHERE seq >= %s", (kind, seq))
        conn.execute("ALTER TABLE sensei.audit_events ENABLE TRIGGER USER")
    return hashes


def test_a_clean_trail_verifies_against_every_anchor(shop, reports, databases, monkeypatch, capsys):
    key = use_audit_key(monkeypatch)
    keyed_from = first_keyed_seq(databases)
    first, second = dry_run(), dry_run("a second look at Zürich ✓")

    code, lines = verify(capsys)

    assert code == 0, lines
    total = databases.scalar("state", "SELECT count(*) FROM sensei.audit_events")
    assert lines[0].startswith(f"audit chain intact: {total} events, head ")
    assert lines[0].endswith(f"(HMAC-SHA256 from seq {keyed_from}, key {key.key_id})")
    assert lines[1] == f"anchors: 2 run record(s) and 2 anchor file(s) agree (at {reports})"
    assert verify(capsys, "--migration-id", "mig_shop_2026")[1][1] == lines[1]
    assert (
        verify(capsys, "--migration-id", "mig_other")[1][1]
        == "anchors: 0 run record(s) and 0 anchor file(s) agree"
    )
    # one anchor file per run beside the reports, signed, saying what the run record says
    files = sorted((reports / "reports" / "mig_shop_2026" / "anchors").iterdir())
    assert len(files) == 2
    written = json.loads(files[-1].read_text(encoding="utf-8"))
    in_record = anchored(databases, second.run_id)
    head_seq, head_hash = documented(databases, second.run_id)
    assert (written["events"], written["head_seq"], written["head_hash"]) == in_record
    assert in_record[1:] == (head_seq, head_hash) and written["rollback_id"] == second.run_id
    assert written["signature"].startswith(f"hmac-sha256:{key.key_id}:")
    assert anchored(databases, first.run_id)[1:] == documented(databases, first.run_id)
    # the report says where the anchor went; the state role here is a superuser: warned at document time
    run = StateStore("sensei_state").get_run(second.run_id)
    report = run["report"]
    assert report["audit_chain"]["anchor_written"] == str(files[-1])
    assert report["audit_chain"]["anchor"] == written == xcom(second, "audit_anchor")
    assert (
        f"- Anchored at event {head_seq} ({written['events']} events, hash `{head_hash}`, signed"
        in (run["report_markdown"])
    )
    assert f"- Anchor written to {files[-1]}" in run["report_markdown"]
    assert any("is a superuser" in w for w in report["audit_chain"]["warnings"])
    assert any(line.startswith("warning: the state role postgres is a superuser") for line in lines)
    # the key itself is stored nowhere: not in the events, the run records, the reports or anchors
    stored = databases.scalar(
        "state",
        "SELECT (SELECT string_agg(e::text, '') FROM sensei.audit_events e) "
        "|| (SELECT string_agg(r::text, '') FROM sensei.rollback_runs r)",
    )
    written_files = "".join(p.read_text(encoding="utf-8") for p in reports.rglob("*") if p.is_file())
    assert KEY not in stored and KEY not in written_files
    assert key.key_id in stored and key.key_id in written_files


def test_deleting_the_newest_events_is_found(shop, databases, monkeypatch, capsys):
    use_audit_key(monkeypatch)
    first, second = dry_run(), dry_run()
    last_of_first = seqs_of(databases, first.run_id)[-1]
    head_seq, head_hash = documented(databases, second.run_id)

    as_owner(databases, "DELETE FROM sensei.audit_events WHERE seq > %s", (last_of_first,))

    assert AuditTrail(StateStore("sensei_state")).verify().ok  # what is left is a valid chain
    code, lines = verify(capsys)
    assert code == 1
    assert lines[0].startswith(
        f"audit trail BROKEN: the newest {head_seq - last_of_first} events are missing: the chain ends at "
        f"seq {last_of_first} but run {second.run_id} anchored seq {head_seq} (hash {head_hash[:16]}..."
    ), lines


@pytest.mark.parametrize("downgrade", [False, True], ids=["link-kind-kept", "downgraded-to-sha256"])
def test_rewriting_an_event_and_every_hash_after_it_is_found_by_the_hmac(
    shop, databases, monkeypatch, capsys, downgrade
):
    key = use_audit_key(monkeypatch)
    keyed_from = first_keyed_seq(databases)
    dry_run()
    second = dry_run()
    planned = seqs_of(databases, second.run_id, "planned")[0]

    rewrite_and_rehash(databases, planned, REASON, "routine check", kind="sha256" if downgrade else None)

    code, lines = verify(capsys)
    assert code == 1
    if downgrade:
        assert lines[0].startswith(
            f"audit trail BROKEN: event {planned} is unkeyed (plain sha256) after keyed event {keyed_from}: the chain "
            "was downgraded"
        ), lines
    else:
        assert lines[0] == (
            f"audit trail BROKEN: event {planned} was rewritten: the chain's HMAC does not match "
            f"(key {key.key_id})"
        ), lines


def test_without_a_key_a_recomputed_rewrite_is_found_only_by_the_report_anchors(
    shop, reports, databases, capsys
):
    first, second = dry_run(), dry_run()
    report = StateStore("sensei_state").get_run(second.run_id)["report"]
    assert any(w.startswith("no audit key is configured") for w in report["audit_chain"]["warnings"])
    first_seq, _ = documented(databases, first.run_id)
    second_seq, second_hash = documented(databases, second.run_id)
    planned = seqs_of(databases, second.run_id, "planned")[0]

    new = rewrite_and_rehash(databases, planned, REASON, "routine check")
    with databases.connect("state") as conn:  # and the run records, which the state role may update
        conn.execute(
            "UPDATE sensei.rollback_runs SET audit_head_hash = %s WHERE rollback_id = %s",
            (new[second_seq], second.run_id),
        )

    # the documented blind spot: without a key, the recomputed chain holds
    assert AuditTrail(StateStore("sensei_state")).verify().ok
    code, lines = verify(capsys)
    assert code == 1
    anchor_file = reports / "reports" / "mig_shop_2026" / "anchors"
    assert lines[0].startswith(
        f"audit trail BROKEN: an event between seq {first_seq + 1} and {second_seq} was rewritten and the "
        f"hashes after it recomputed: event {second_seq} has hash {new[second_seq][:16]}... but run "
        f"{second.run_id} anchored seq {second_seq} (hash {second_hash[:16]}..., {anchor_file}/"
    ), lines
    assert any(line.startswith("warning: no audit key is configured") for line in lines)


def test_dropping_the_audit_table_is_found(shop, databases, monkeypatch, capsys):
    use_audit_key(monkeypatch)
    dry_run()
    second = dry_run()
    head_seq, head_hash = documented(databases, second.run_id)

    with databases.connect("state") as conn:
        conn.execute("DROP TABLE sensei.audit_events")

    code, lines = verify(capsys)  # its first use recreates the table, empty
    assert databases.scalar("state", "SELECT count(*) FROM sensei.audit_events") == 0
    assert code == 1
    assert lines[0].startswith(
        f"audit trail BROKEN: sensei.audit_events holds 0 events but 4 anchor(s) say it held {head_seq} or "
        f"more (newest: run {second.run_id} anchored seq {head_seq} (hash {head_hash[:16]}..."
    ), lines

    # the next rollback's document step notices it from the run records, and verify still does
    third = dry_run()
    chain = StateStore("sensei_state").get_run(third.run_id)["report"]["audit_chain"]
    tip = seqs_of(databases, third.run_id)[-1]
    assert chain["ok"] is False
    missing = f"the newest {head_seq - chain['head_seq']} events are missing: the chain ends at seq {chain['head_seq']}"
    assert chain["problems"][0].startswith(missing), chain["problems"]
    code, lines = verify(capsys)
    assert code == 1
    assert lines[0].startswith(f"audit trail BROKEN: the newest {head_seq - tip} events are missing"), lines


def test_dropping_the_sensei_schema_is_found_by_the_anchor_files_on_s3(
    databases, migrations_dir, airflow_db, moto_endpoint, monkeypatch, capsys
):
    use_aws_connection(monkeypatch, "aws_default", moto_endpoint)
    aws_client("s3", moto_endpoint).create_bucket(Bucket="sensei-reports")
    location = "s3://sensei-reports/prod reports ✓/"
    migrate_demo(write_demo_manifest(migrations_dir, backup_location=location), customers=20)
    use_audit_key(monkeypatch)
    dry_run()
    second = dry_run()
    head_seq, head_hash = documented(databases, second.run_id)

    with databases.connect("state") as conn:
        conn.execute("DROP SCHEMA sensei CASCADE")

    expected = (
        f"audit trail BROKEN: sensei.audit_events holds 0 events but 2 anchor(s) say it held {head_seq} or "
        f"more (newest: run {second.run_id} anchored seq {head_seq} (hash {head_hash[:16]}..., "
        f"{location}reports/mig_shop_2026/anchors/"
    )
    code, lines = verify(capsys)
    assert code == 1
    assert lines[0].startswith(expected), lines
    # the manifest gone too: the location given by hand
    (migrations_dir / "mig_shop_2026.yaml").unlink()
    code, lines = verify(capsys, "--anchors", location)
    assert code == 1
    assert lines[0].startswith(expected), lines
