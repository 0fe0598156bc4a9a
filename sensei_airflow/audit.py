"""The append-only, tamper-evident audit trail of every rollback.

Each event is stored as canonical JSON (``payload``) and linked to the one before it: with an
audit key, ``hash = HMAC-SHA256(key, prev_hash + "\\n" + payload)``; without one,
``hash = sha256(prev_hash + "\\n" + payload)``. Each event records which kind of link it uses
(``hash_kind``: ``sha256`` or ``hmac-sha256:<key id>``), so a chain started without a key verifies
and one that switched to a key verifies from the switch on. An event changed, removed or inserted
out of turn breaks the chain and :meth:`AuditTrail.verify` says at which event; with a key, even
someone who rewrites an event and recomputes every hash after it cannot make the links match.
The table refuses UPDATE, DELETE and TRUNCATE; appends are serialised by an advisory lock so the
chain never forks. What the chain alone cannot show (its newest events deleted, the table dropped)
the anchors show: see :mod:`sensei_airflow.anchors`.

The key is the ``password`` of an Airflow connection (``[sensei] audit_key_conn_id``, default
``sensei_audit_key``), so it can live in any secrets backend. It is never logged or stored: events
and anchors carry only its id, the first 16 hex digits of a SHA-256 of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Final, NamedTuple

from sensei_airflow.state import APPEND_ONLY_TRIGGERS, CHAIN_LOCK, StateStore, utcnow

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
#: the link kind of an event hashed without a key.
PLAIN = "sha256"
#: prefix of the link kind of an event hashed with a key (followed by the key's id).
KEYED_PREFIX = "hmac-sha256:"
DEFAULT_KEY_CONN_ID = "sensei_audit_key"

#: columns copied out of the payload for querying; verify checks they still agree with it.
_INDEXED = ("rollback_id", "migration_id", "task_id", "try_number", "step", "action", "actor")


class AuditKeyError(RuntimeError):
    """The audit key is misconfigured, or this process's key does not continue the chain."""


@dataclass(frozen=True)
class AuditKey:
    """The secret that links events by HMAC; only its id is ever shown or stored.

    :param secret: the key's bytes (from the connection's password).
    :param conn_id: the Airflow connection it came from (for messages).
    """

    secret: bytes = field(repr=False)
    conn_id: str = DEFAULT_KEY_CONN_ID

    @cached_property
    def key_id(self) -> str:
        """A fingerprint that names the key without revealing it."""
        return hashlib.sha256(b"sensei audit key id\n" + self.secret).hexdigest()[:16]

    @property
    def kind(self) -> str:
        return f"{KEYED_PREFIX}{self.key_id}"

    def link(self, prev_hash: str, payload: str) -> str:
        return self.sign(f"{prev_hash}\n{payload}")

    def sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()


def audit_key_conn_id() -> str:
    """``[sensei] audit_key_conn_id`` (default ``sensei_audit_key``)."""
    from airflow.sdk import conf

    return conf.get("sensei", "audit_key_conn_id", fallback=DEFAULT_KEY_CONN_ID) or DEFAULT_KEY_CONN_ID


def load_audit_key(conn_id: str | None = None) -> AuditKey | None:
    """The audit key from its Airflow connection's password; ``None`` when the connection is not defined.

    :param conn_id: the connection (default: ``[sensei] audit_key_conn_id``).
    :raises AuditKeyError: when the connection exists but holds no password.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = conn_id or audit_key_conn_id()
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    if not conn.password:
        raise AuditKeyError(
            f"the audit key connection {conn_id} has no password: put the key in its password field"
        )
    return AuditKey(conn.password.encode(), conn_id)


class _Configured:
    """Marker: take the key from the configured Airflow connection."""


CONFIGURED_KEY: Final = _Configured()


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
    """The plain (unkeyed) link of an event."""
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


def key_id_of(kind: str) -> str | None:
    """The key id of a keyed link kind, ``None`` for a plain one."""
    return kind[len(KEYED_PREFIX) :] if kind.startswith(KEYED_PREFIX) else None


class ChainRow(NamedTuple):
    """One stored event as verify reads it."""

    seq: int
    payload: str
    prev_hash: str
    hash: str
    hash_kind: str
    indexed: tuple[Any, ...]


@dataclass(frozen=True)
class ChainReport:
    """The result of checking the whole chain.

    ``head_seq``/``head_hash`` are those of the last event that verified; ``keyed_from`` the first
    event linked with the key; ``warnings`` what the chain cannot prove (no key, unkeyed events).
    """

    ok: bool
    events: int
    head_hash: str
    problems: list[str]
    head_seq: int = 0
    keyed_from: int | None = None
    key_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.ok:
            return f"audit chain BROKEN after {self.events} events: " + "; ".join(self.problems)
        links = (
            f"HMAC-SHA256 from seq {self.keyed_from}, key {self.key_id}"
            if self.keyed_from is not None
            else "plain sha256"
        )
        return f"audit chain intact: {self.events} events, head {self.head_hash} ({links})"

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "keyed_from": self.keyed_from,
            "key_id": self.key_id,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def no_key_warning(conn_id: str) -> str:
    return (
        f"no audit key is configured (Airflow connection {conn_id}): whoever can write "
        "sensei.audit_events can rewrite an event and recompute every hash after it, and the chain "
        "still verifies; only an anchor that recorded the old head hash catches it"
    )


def check_chain(rows: Iterable[ChainRow], key: AuditKey | None, key_conn_id: str) -> ChainReport:
    """Recompute every link, check the numbering, the link kinds and the indexed columns.

    Plain links are accepted only before the first keyed one: a plain link after it is a
    downgrade (someone without the key rewrote the chain from there). The first problem ends the
    walk; every problem of that event is reported.

    :param key_conn_id: the key's connection id, for messages.
    """
    problems: list[str] = []
    expected_prev, expected_seq = GENESIS_HASH, 1
    count = head_seq = 0
    keyed_from: int | None = None
    unkeyed: list[int] = []
    for row in rows:
        seq, payload, prev_hash, digest = row.seq, row.payload, row.prev_hash, row.hash
        count += 1
        if seq != expected_seq:
            problems.append(f"event {expected_seq} is missing (next is {seq})")
        if prev_hash != expected_prev:
            problems.append(f"event {seq} does not link to the event before it")
        key_id = key_id_of(row.hash_kind)
        if row.hash_kind == PLAIN:
            if keyed_from is not None:
                problems.append(
                    f"event {seq} is unkeyed (plain sha256) after keyed event {keyed_from}: the chain was "
                    "downgraded, so it was rewritten from here by someone without the key"
                )
            elif not hmac.compare_digest(chain_hash(prev_hash, payload), digest):
                problems.append(f"event {seq} was altered (hash mismatch)")
            else:
                unkeyed.append(seq)
        elif key_id is not None:
            keyed_from = seq if keyed_from is None else keyed_from
            if key is None:
                problems.append(
                    f"event {seq} is linked with audit key {key_id} but no audit key is configured "
                    f"(Airflow connection {key_conn_id}): its HMAC cannot be checked"
                )
            elif key_id != key.key_id:
                problems.append(
                    f"event {seq} is linked with another audit key ({key_id}; the configured key is "
                    f"{key.key_id})"
                )
            elif not hmac.compare_digest(key.link(prev_hash, payload), digest):
                problems.append(f"event {seq} was rewritten: the chain's HMAC does not match (key {key_id})")
        else:
            problems.append(f"event {seq} has an unknown link kind {row.hash_kind!r}")
        body = json.loads(payload)
        for name, value in zip(_INDEXED, row.indexed, strict=True):
            if body.get(name) != value:
                problems.append(f"event {seq} column {name} differs from its hashed payload")
        if problems:
            break
        expected_prev, expected_seq, head_seq = digest, seq + 1, seq
    warnings: list[str] = []
    if key is None:
        warnings.append(no_key_warning(key_conn_id))
    elif unkeyed:
        warnings.append(
            f"events {unkeyed[0]}-{unkeyed[-1]} are unkeyed (plain sha256, written before the audit key "
            "was configured): a rewrite of them with recomputed hashes is caught only by the anchors"
        )
    return ChainReport(
        ok=not problems,
        events=count,
        head_hash=expected_prev,
        problems=problems,
        head_seq=head_seq,
        keyed_from=keyed_from,
        key_id=key.key_id if key else None,
        warnings=warnings,
    )


class AuditTrail:
    """Append to and read the audit trail in a state store.

    :param store: the state store.
    :param key: the audit key; by default the one of ``[sensei] audit_key_conn_id``, looked up once
        on first use (``None``: link without a key).
    """

    def __init__(self, store: StateStore, key: AuditKey | _Configured | None = CONFIGURED_KEY) -> None:
        self.store = store
        self._key = key

    @cached_property
    def key_conn_id(self) -> str:
        if isinstance(self._key, AuditKey):
            return self._key.conn_id
        return audit_key_conn_id()

    @cached_property
    def key(self) -> AuditKey | None:
        if isinstance(self._key, _Configured):
            return load_audit_key(self.key_conn_id)
        return self._key

    def append(self, event: AuditEvent) -> tuple[int, str]:
        """Append one event; returns its sequence number and hash.

        :raises AuditKeyError: when the chain is keyed and this process has no key or another one
            (the event is not recorded: a plain link after keyed ones would break the chain).
        """
        recorded_at = utcnow()
        payload = event.payload(recorded_at)
        key = self.key
        with self.store.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
            cur.execute("SELECT seq, hash, hash_kind FROM sensei.audit_events ORDER BY seq DESC LIMIT 1")
            head = cur.fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
            head_key = key_id_of(head[2]) if head else None
            if head_key is not None and (key is None or key.key_id != head_key):
                mine = "no audit key" if key is None else f"audit key {key.key_id}"
                raise AuditKeyError(
                    f"the audit trail is linked with audit key {head_key} but this process has {mine} "
                    f"(Airflow connection {self.key_conn_id}): the event is not recorded"
                )
            kind, digest = (
                (key.kind, key.link(prev_hash, payload)) if key else (PLAIN, chain_hash(prev_hash, payload))
            )
            cur.execute(
                """
                INSERT INTO sensei.audit_events (seq, recorded_at, rollback_id, migration_id, task_id,
                    try_number, step, action, actor, payload, prev_hash, hash, hash_kind)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
                    kind,
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

    def verify(self, cur: Any = None) -> ChainReport:
        """Recompute every link (HMAC where keyed), check the numbering and the indexed columns.

        :param cur: a cursor to read with (to share a snapshot with other checks); default: a new
            transaction.
        """
        if cur is None:
            with self.store.transaction() as own:
                return self.verify(own)
        columns = ", ".join(_INDEXED)
        cur.execute(
            f"SELECT seq, payload, prev_hash, hash, hash_kind, {columns} FROM sensei.audit_events ORDER BY seq"  # noqa: S608
        )
        rows = (ChainRow(r[0], r[1], r[2], r[3], r[4], tuple(r[5:])) for r in cur)
        return check_chain(rows, self.key, self.key_conn_id)


@dataclass(frozen=True)
class Protection:
    """Whether the append-only protection of ``sensei.audit_events`` holds for the connecting role."""

    problems: list[str]
    warnings: list[str]


def check_protection(cur: Any) -> Protection:
    """Are the append-only triggers enabled, and could the connecting role disable them or drop the table?

    A superuser, the table's owner or the schema's owner (or a member of those roles) can
    ``ALTER TABLE ... DISABLE TRIGGER`` or drop the table; sensei should connect as a role that is
    none of them (``sensei audit init``).
    """
    cur.execute(
        """
        SELECT current_user, r.rolsuper,
               pg_has_role(current_user, c.relowner, 'MEMBER'),
               pg_has_role(current_user, n.nspowner, 'MEMBER'),
               pg_get_userbyid(c.relowner)
        FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE r.rolname = current_user AND c.oid = 'sensei.audit_events'::regclass
        """
    )
    role, superuser, owns_table, owns_schema, owner = cur.fetchone()
    cur.execute(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'sensei.audit_events'::regclass "
        "AND NOT tgisinternal"
    )
    enabled = {name: state != "D" for name, state in cur.fetchall()}
    problems = [
        f"the append-only trigger {name} of sensei.audit_events is "
        f"{'disabled' if name in enabled else 'missing'}: events can be changed or deleted; its owner "
        "must restore it (any sensei command run as the owner does)"
        for name in APPEND_ONLY_TRIGGERS
        if not enabled.get(name)
    ]
    fix = (
        "connect sensei as a role that does not own it (sensei audit init --conn-id <owner connection> "
        "--grant-to <state role>; README: State role grants)"
    )
    can = "can disable the append-only trigger of sensei.audit_events or drop the table"
    if superuser:
        what = f"is a superuser: it {can}"
    elif owns_table:
        what = f"owns sensei.audit_events (as {owner}): it {can}"
    elif owns_schema:
        what = "owns the schema sensei: it can drop sensei.audit_events"
    else:
        what = ""
    warnings = [f"the state role {role} {what}; {fix}"] if what else []
    return Protection(problems=problems, warnings=warnings)


def grant_statements(role: str) -> list[Any]:
    """What the state role needs, granted by the owner of the ``sensei`` schema.

    Everything on sensei's tables except changing the audit trail: USAGE on the schema (every
    table is created by the owner's ``init``, from the numbered steps of :mod:`sensei_airflow.state`),
    SELECT/INSERT/UPDATE/DELETE on the tables, only SELECT and INSERT on ``sensei.audit_events``,
    USAGE on the sequences. The role never owns the audit
    table or the schema, so it cannot disable the append-only trigger or drop the table.

    :param role: the role the ``sensei_state`` connection logs in as (quoted as an identifier).
    """
    from psycopg import sql

    grantee = sql.Identifier(role)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA sensei TO {}").format(grantee),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sensei TO {}").format(grantee),
        sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON sensei.audit_events FROM {}").format(grantee),
        sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA sensei TO {}").format(grantee),
    ]


def init_state_store(store: StateStore, role: str) -> list[str]:
    """Create or upgrade the ``sensei`` schema as the store's (owner) role and grant ``role`` what it needs.

    :returns: the statements run, as text.
    :raises ValueError: when ``role`` does not exist, or could act as the owner (it is the owner,
        a member of it, or a superuser).
    """
    store.ensure_schema()
    done: list[str] = []
    with store.transaction() as cur:
        cur.execute(
            "SELECT current_user, r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') FROM pg_roles r, "
            "pg_class c WHERE r.rolname = %s AND c.oid = 'sensei.audit_events'::regclass",
            (role,),
        )
        row = cur.fetchone()
        if row is None:
            raise ValueError(f"role {role} does not exist")
        owner, superuser, member = row
        if superuser or member:
            why = "is a superuser" if superuser else f"is {owner} or a member of it"
            raise ValueError(
                f"role {role} {why}: it could disable the append-only trigger; grant to a role of its own"
            )
        for statement in grant_statements(role):
            cur.execute(statement)
            done.append(statement.as_string(cur))
    return done
