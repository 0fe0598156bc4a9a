"""The append-only, tamper-evident audit trail of every rollback.

Each event is stored as canonical JSON (``payload``) with ``hash = sha256(prev_hash + payload)``,
so an event changed, removed or inserted out of turn breaks the chain, and :func:`verify_chain`
says at which event. The table refuses UPDATE, DELETE and TRUNCATE; appends are serialised by an
advisory lock so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sensei_airflow.state import CHAIN_LOCK, StateStore, utcnow

GENESIS_HASH = "0" * 64

#: columns copied out of the payload for querying; verify checks they still agree with it.
_INDEXED = ("rollback_id", "migration_id", "task_id", "try_number", "step", "action", "actor")


@dataclass(frozen=True)
class AuditEvent:
    """One thing a runbook task did or decided."""

    step: str
    action: str
    rollback_id: str | None = None
    migration_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None
    actor: str | None = None
    reason: str | None = None
    sql: Sequence[str] = ()
    rows_affected: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def payload(self, recorded_at: datetime) -> str:
        body = {
            "recorded_at": recorded_at.isoformat(),
            "step": self.step,
            "action": self.action,
            "rollback_id": self.rollback_id,
            "migration_id": self.migration_id,
            "task_id": self.task_id,
            "try_number": self.try_number,
            "actor": self.actor,
            "reason": self.reason,
            "sql": list(self.sql),
            "rows_affected": self.rows_affected,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "detail": dict(self.detail),
        }
        return canonical_json(body)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(prev_hash: str, payload: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """The result of checking the whole chain."""

    ok: bool
    events: int
    head_hash: str
    problems: list[str]

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.events} events, head {self.head_hash}"
        return f"audit chain BROKEN after {self.events} events: " + "; ".join(self.problems)


class AuditTrail:
    """Append to and read the audit trail in a state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def append(self, event: AuditEvent) -> tuple[int, str]:
        """Append one event; returns its sequence number and hash."""
        recorded_at = utcnow()
        payload = event.payload(recorded_at)
        with self.store.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
            cur.execute("SELECT seq, hash FROM sensei.audit_events ORDER BY seq DESC LIMIT 1")
            head = cur.fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
            digest = chain_hash(prev_hash, payload)
            cur.execute(
                """
                INSERT INTO sensei.audit_events (seq, recorded_at, rollback_id, migration_id, task_id,
                    try_number, step, action, actor, payload, prev_hash, hash)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    seq,
                    recorded_at,
                    event.rollback_id,
                    event.migration_id,
                    event.task_id,
                    event.try_number,
                    event.step,
                    event.action,
                    event.actor,
                    payload,
                    prev_hash,
                    digest,
                ),
            )
        return seq, digest

    def events(self, rollback_id: str) -> list[dict[str, Any]]:
        """The events of one rollback, oldest first, as their payloads plus seq and hash."""
        with self.store.transaction() as cur:
            cur.execute(
                "SELECT seq, payload, hash FROM sensei.audit_events WHERE rollback_id = %s ORDER BY seq",
                (rollback_id,),
            )
            return [{"seq": seq, "hash": digest, **json.loads(payload)} for seq, payload, digest in cur]

    def verify(self) -> ChainReport:
        """Recompute every hash, check every link and the indexed columns."""
        problems: list[str] = []
        expected_prev = GENESIS_HASH
        expected_seq = 1
        count = 0
        columns = ", ".join(_INDEXED)
        with self.store.transaction() as cur:
            cur.execute(
                f"SELECT seq, payload, prev_hash, hash, {columns} FROM sensei.audit_events ORDER BY seq"  # noqa: S608
            )
            for row in cur:
                seq, payload, prev_hash, digest, *indexed = row
                count += 1
                if seq != expected_seq:
                    problems.append(f"event {expected_seq} is missing (next is {seq})")
                if prev_hash != expected_prev:
                    problems.append(f"event {seq} does not link to the event before it")
                if chain_hash(prev_hash, payload) != digest:
                    problems.append(f"event {seq} was altered (hash mismatch)")
                body = json.loads(payload)
                for name, value in zip(_INDEXED, indexed, strict=True):
                    if body.get(name) != value:
                        problems.append(f"event {seq} column {name} differs from its hashed payload")
                if problems:
                    break
                expected_prev, expected_seq = digest, seq + 1
        return ChainReport(ok=not problems, events=count, head_hash=expected_prev, problems=problems)
