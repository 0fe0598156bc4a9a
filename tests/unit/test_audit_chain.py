"""The rules of the audit chain and its anchors, on chains built in memory."""

from __future__ import annotations

import json
from dataclasses import replace

from sensei_airflow.anchors import Anchor, _check_signatures, compare, read_anchor_files
from sensei_airflow.audit import (
    _INDEXED,
    GENESIS_HASH,
    PLAIN,
    AuditKey,
    ChainReport,
    ChainRow,
    chain_hash,
    check_chain,
)

KEY = AuditKey("schlüssel ✓ 0f1e2d3c".encode())


def chain(kinds: list[str], key: AuditKey = KEY) -> list[ChainRow]:
    """A valid chain: one event per kind, ``plain`` or ``keyed``."""
    rows, prev = [], GENESIS_HASH
    for seq, kind in enumerate(kinds, start=1):
        body = {
            "rollback_id": "manual__2026-12-02T03:00:00+00:00",
            "migration_id": "mig_shop",
            "task_id": "assess",
            "try_number": 1,
            "step": "assess",
            "action": f"action {seq}",
            "actor": "José",
            "reason": "the orders of Zürich were loaded twice",
        }
        payload = json.dumps(body, ensure_ascii=False)
        keyed = kind == "keyed"
        digest = key.link(prev, payload) if keyed else chain_hash(prev, payload)
        indexed = tuple(body[name] for name in _INDEXED)
        rows.append(ChainRow(seq, payload, prev, digest, key.kind if keyed else PLAIN, indexed))
        prev = digest
    return rows


def rehash_from(rows: list[ChainRow], seq: int, kind: str | None = None) -> list[ChainRow]:
    """Rewrite event ``seq`` and recompute every hash after it, without the key."""
    out, prev = rows[: seq - 1], rows[seq - 2].hash if seq > 1 else GENESIS_HASH
    for row in rows[seq - 1 :]:
        payload = row.payload.replace("Zürich", "Basel") if row.seq == seq else row.payload
        digest = chain_hash(prev, payload)
        out.append(
            row._replace(payload=payload, prev_hash=prev, hash=digest, hash_kind=kind or row.hash_kind)
        )
        prev = digest
    return out


def check(rows: list[ChainRow], key: AuditKey | None = KEY) -> ChainReport:
    return check_chain(rows, key, "sensei_audit_key")


def test_a_keyed_chain_verifies_and_says_from_where():
    report = check(chain(["plain", "plain", "keyed", "keyed"]))
    assert report.ok and (report.events, report.head_seq, report.keyed_from) == (4, 4, 3)
    assert report.warnings[0].startswith("events 1-2 are unkeyed")


def test_a_rewrite_with_recomputed_hashes_breaks_the_hmac():
    rows = rehash_from(chain(["keyed"] * 5), 3)
    assert check(rows).problems == [
        f"event 3 was rewritten: the chain's HMAC does not match (key {KEY.key_id})"
    ]
    # the same rewrite of an unkeyed chain holds: the blind spot without a key
    assert check(rehash_from(chain(["plain"] * 5), 3), key=None).ok


def test_a_plain_link_after_a_keyed_one_is_a_downgrade():
    rows = rehash_from(chain(["plain", "keyed", "keyed", "keyed"]), 3, kind=PLAIN)
    assert check(rows).problems[0].startswith("event 3 is unkeyed (plain sha256) after keyed event 2")


def test_a_link_made_with_another_key_is_named():
    rows = chain(["keyed"] * 2, key=AuditKey(b"an older key"))
    assert check(rows).problems == [
        f"event 1 is linked with another audit key ({AuditKey(b'an older key').key_id}; the configured key is "
        f"{KEY.key_id})"
    ]


def test_the_key_is_never_shown():
    assert "schlüssel" not in repr(KEY)
    assert len(KEY.key_id) == 16 and KEY.key_id not in KEY.secret.decode()


def anchor(seq: int, digest: str, events: int | None = None, where: str = "s3://b/a.json") -> Anchor:
    return Anchor(
        "mig",
        f"manual__{seq}",
        events if events is not None else seq,
        seq,
        digest,
        "postgres:1/st",
        "t",
        None,
        where,
    )


def test_an_altered_anchor_file_is_refused_and_an_unsigned_one_noted():
    signed = anchor(3, "a" * 64).signed(KEY)
    lowered = replace(signed, head_seq=2, events=2)
    unsigned = anchor(4, "b" * 64, where="s3://b/old.json")

    kept, problems, warnings = _check_signatures([signed, lowered, unsigned], KEY)

    assert kept == [signed, unsigned]
    assert problems == [f"anchor s3://b/a.json was altered: its HMAC does not match (key {KEY.key_id})"]
    assert warnings == [
        "1 anchor file(s) are unsigned (written before the audit key was configured), e.g. s3://b/old.json"
    ]
    other = AuditKey(b"other")
    assert _check_signatures([signed], other)[1] == [
        f"anchor s3://b/a.json is signed with another audit key ({KEY.key_id}; the configured key is "
        f"{other.key_id})"
    ]


def test_anchors_name_what_the_chain_contradicts():
    assert compare([], tip=0, total=0, at={}) == []
    at = {3: ("c" * 64, 3), 5: (None, 4)}
    # an event count that disagrees, and an anchored event that is gone from the middle
    assert compare([anchor(3, "c" * 64, events=4)], tip=7, total=6, at=at) == [
        "the chain holds 3 events up to seq 3 but run manual__3 counted 4 (s3://b/a.json)"
    ]
    assert compare([anchor(5, "e" * 64)], tip=7, total=6, at=at) == [
        f"event 5 is missing but run manual__5 anchored seq 5 (hash {'e' * 16}..., s3://b/a.json)"
    ]


def test_an_anchor_file_that_cannot_be_read_is_a_problem(tmp_path):
    folder = tmp_path / "reports ✓" / "reports" / "mig_shop" / "anchors"
    folder.mkdir(parents=True)
    (folder / "000000000007-manual__1.json").write_text("{not json", encoding="utf-8")
    (folder / "000000000009-manual__2.json").write_text(json.dumps({"format": 1, "rollback_id": "x"}))
    (folder.parent / "manual__1.json").write_text("{}")  # a report, not an anchor

    found = read_anchor_files(str(tmp_path / "reports ✓"))

    assert found.anchors == []
    assert [p.split(": ", 1)[0] for p in found.problems] == [
        f"anchor {folder}/000000000007-manual__1.json cannot be read",
        f"anchor {folder}/000000000009-manual__2.json cannot be read",
    ]
    assert found.problems[1].endswith("ValueError: field 'migration_id' is missing or malformed")
