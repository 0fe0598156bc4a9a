"""Anchors of the audit chain outside ``sensei.audit_events``, and the check of the chain against them.

A hash chain proves that the events it holds are the ones appended, in order; it cannot show that
its newest events were deleted, or that the table was dropped and recreated empty: what is left is
still a valid chain. So each rollback's document step anchors the chain as of that step (event
count, head seq, head hash):

- in the run record (``sensei.rollback_runs``: ``audit_events``, ``audit_head_seq``,
  ``audit_head_hash``), in the same database: it catches a dropped or emptied audit table, and
  deleted events whose run records were left alone;
- in an anchor file beside the report at the manifest's ``rollback.backup_location``
  (``reports/<migration>/anchors/<head seq>-<rollback id>.json``), outside the state database and
  signed with the audit key when one is configured: it survives the whole ``sensei`` schema
  being dropped, and cannot be forged without the key.

:func:`verify_trail` checks the chain (:meth:`AuditTrail.verify`), the protection of the table,
and every anchor: the event it names must exist, have the hash it recorded, and the chain must hold
as many events up to it.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sensei_airflow.audit import (
    AuditKey,
    AuditTrail,
    ChainReport,
    canonical_json,
    check_protection,
    key_id_of,
)
from sensei_airflow.state import utcnow

ANCHOR_FORMAT = 1
#: ``reports/<migration>/anchors/<file>.json`` below a report location.
_ANCHOR_NAME = re.compile(r"^reports/[^/]+/anchors/[^/]+\.json$")


def safe_name(rollback_id: str) -> str:
    """A rollback id as a file name (run ids hold ``:`` and ``+``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in rollback_id)


def anchor_name(migration_id: str, rollback_id: str, head_seq: int) -> str:
    """Where a run's anchor goes below the report location; names sort by head seq."""
    return f"reports/{migration_id}/anchors/{head_seq:012d}-{safe_name(rollback_id)}.json"


@dataclass(frozen=True)
class Anchor:
    """The chain as one run's document step saw it: ``events`` events, the newest ``head_seq``/``head_hash``.

    :param state: the identity of the state store whose chain this is (anchor files only: a report
        location may be shared by several state stores).
    :param signature: ``hmac-sha256:<key id>:<hex>`` over the other fields, when a key was configured.
    :param where: where it was read from (a file's URL, or "its run record"); not part of it.
    """

    migration_id: str | None
    rollback_id: str
    events: int
    head_seq: int
    head_hash: str
    state: str | None = None
    anchored_at: str | None = None
    signature: str | None = None
    where: str = field(default="", compare=False)

    @property
    def in_file(self) -> bool:
        return self.state is not None

    def body(self) -> dict[str, Any]:
        return {
            "format": ANCHOR_FORMAT,
            "migration_id": self.migration_id,
            "rollback_id": self.rollback_id,
            "state": self.state,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "anchored_at": self.anchored_at,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    def signed(self, key: AuditKey | None) -> Anchor:
        if key is None:
            return self
        return replace(self, signature=f"{key.kind}:{key.sign(canonical_json(self.body()))}")

    @classmethod
    def from_json(cls, data: Any, where: str) -> Anchor:
        """Parse an anchor file's content.

        :raises ValueError: naming what is wrong.
        """
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not a sensei audit anchor (format {ANCHOR_FORMAT})")
        try:
            return cls(
                migration_id=data["migration_id"],
                rollback_id=str(data["rollback_id"]),
                events=int(data["events"]),
                head_seq=int(data["head_seq"]),
                head_hash=str(data["head_hash"]),
                state=str(data["state"]),
                anchored_at=data.get("anchored_at"),
                signature=data.get("signature"),
                where=where,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"field {exc} is missing or malformed") from None

    def said(self) -> str:
        """Who anchored what, for messages."""
        return f"run {self.rollback_id} anchored seq {self.head_seq} (hash {self.head_hash[:16]}..., {self.where})"

    def signature_problem(self, key: AuditKey) -> str | None:
        """What is wrong with the signature under ``key`` (``None``: it holds)."""
        kind, _, mac = (self.signature or "").rpartition(":")
        key_id = key_id_of(kind)
        if key_id != key.key_id:
            return f"anchor {self.where} is signed with another audit key ({key_id}; the configured key is {key.key_id})"
        if not hmac.compare_digest(key.sign(canonical_json(self.body())), mac):
            return f"anchor {self.where} was altered: its HMAC does not match (key {key_id})"
        return None


def make_anchor(
    trail: AuditTrail, migration_id: str | None, rollback_id: str, head_seq: int, head_hash: str
) -> Anchor:
    """The anchor of the chain up to event ``head_seq`` (signed when the trail has a key)."""
    with trail.store.transaction() as cur:
        cur.execute("SELECT count(*) FROM sensei.audit_events WHERE seq <= %s", (head_seq,))
        events = int(cur.fetchone()[0])
    anchor = Anchor(
        migration_id=migration_id,
        rollback_id=rollback_id,
        events=events,
        head_seq=head_seq,
        head_hash=head_hash,
        state=trail.store.identity(),
        anchored_at=utcnow().isoformat(),
    )
    return anchor.signed(trail.key)


def write_anchor(location: str, anchor: Anchor) -> str:
    """Write an anchor file below a report location; returns its URL."""
    from sensei_airflow.backups.storage import storage_for

    if anchor.migration_id is None:
        raise ValueError("an anchor file needs the migration id")
    storage = storage_for(location)
    name = anchor_name(anchor.migration_id, anchor.rollback_id, anchor.head_seq)
    with storage.open_write(name) as out:
        out.write(json.dumps(anchor.as_json(), indent=2, sort_keys=True, ensure_ascii=False).encode())
    return storage.url_of(name)


@dataclass
class _Found:
    anchors: list[Anchor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_anchor_files(location: str, migration_id: str | None = None) -> _Found:
    """Every anchor file below a report location (of one migration, or all)."""
    from sensei_airflow.backups.storage import storage_for

    found = _Found()
    try:
        storage = storage_for(location)
        names = storage.list(f"reports/{migration_id}/anchors/" if migration_id else "reports/")
    except Exception as exc:
        found.problems.append(f"the anchors at {location} cannot be listed: {type(exc).__name__}: {exc}")
        return found
    for name in names:
        if not _ANCHOR_NAME.match(name):
            continue
        url = storage.url_of(name)
        try:
            with storage.open_read(name) as source:
                data = json.loads(source.read().decode("utf-8"))
            found.anchors.append(Anchor.from_json(data, url))
        except Exception as exc:
            found.problems.append(f"anchor {url} cannot be read: {type(exc).__name__}: {exc}")
    return found


def run_record_anchors(cur: Any, migration_id: str | None = None) -> list[Anchor]:
    """The anchors stored in the run records."""
    cur.execute(
        "SELECT migration_id, rollback_id, audit_events, audit_head_seq, audit_head_hash "
        "FROM sensei.rollback_runs WHERE audit_head_seq IS NOT NULL AND (%s::text IS NULL OR migration_id = %s) "
        "ORDER BY audit_head_seq",
        (migration_id, migration_id),
    )
    return [
        Anchor(
            migration_id=m, rollback_id=r, events=int(e), head_seq=int(s), head_hash=h, where="its run record"
        )
        for m, r, e, s, h in cur.fetchall()
    ]


def manifest_locations(conn_id: str, migration_id: str | None = None) -> tuple[list[str], list[str]]:
    """The report locations of the manifests whose state store is ``conn_id``; and warnings."""
    from sensei_airflow.manifest import load_manifests

    manifests = load_manifests()
    locations = [
        m.rollback.backup_location
        for m in manifests
        if m.state.conn_id == conn_id
        and m.rollback.backup_location
        and (migration_id is None or m.id == migration_id)
    ]
    warnings = (
        [
            f"{len(manifests.errors)} manifest problem(s) in {manifests.directory} (first: {manifests.errors[0]}): "
            "the report locations of bad manifests were not searched for anchors"
        ]
        if manifests.errors
        else []
    )
    return list(dict.fromkeys(locations)), warnings


@dataclass(frozen=True)
class TrailCheck:
    """The chain, its protection, and every anchor, checked together."""

    chain: ChainReport
    run_records: int
    files: int
    locations: list[str]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """What ``sensei audit verify`` prints: the verdict (the first problem) first, one line each."""
        if self.problems:
            out = [f"audit trail BROKEN: {self.problems[0]}", *(f"also: {p}" for p in self.problems[1:])]
        else:
            where = f" (at {', '.join(self.locations)})" if self.locations else ""
            out = [
                str(self.chain),
                f"anchors: {self.run_records} run record(s) and {self.files} anchor file(s) agree{where}",
            ]
        return out + [f"warning: {w}" for w in self.warnings]

    def as_json(self) -> dict[str, Any]:
        return {
            **self.chain.as_json(),
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "anchors_checked": {"run_records": self.run_records, "files": self.files},
        }


def verify_trail(
    trail: AuditTrail, *, locations: Sequence[str] = (), migration_id: str | None = None
) -> TrailCheck:
    """Check the chain, the append-only protection, the run records' anchors and the anchor files.

    The anchor files are read first, then the chain and the run records in one snapshot: every
    anchor read names events committed before it was written, so a rollback documented meanwhile
    cannot look like missing events.

    :param locations: report locations whose anchor files to check.
    :param migration_id: only this migration's run records and anchor files (the chain is checked whole).
    """
    problems: list[str] = []
    warnings: list[str] = []
    files: list[Anchor] = []
    read_problems: list[str] = []
    identity = trail.store.identity() if locations else None
    for location in dict.fromkeys(locations):
        found = read_anchor_files(location, migration_id)
        read_problems += found.problems
        theirs = [a for a in found.anchors if a.state != identity]
        if theirs:
            warnings.append(
                f"{len(theirs)} anchor file(s) at {location} belong to another state store "
                f"({theirs[0].state}; this one is {identity}) and were not checked"
            )
        files += [a for a in found.anchors if a.state == identity]
    files, signature_problems, signature_warnings = _check_signatures(files, trail.key)
    warnings += signature_warnings
    with trail.store.transaction() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        chain = trail.verify(cur)
        protection = check_protection(cur)
        records = run_record_anchors(cur, migration_id)
        anchors = [*files, *records]
        cur.execute("SELECT coalesce(max(seq), 0), count(*) FROM sensei.audit_events")
        tip, total = (int(v) for v in cur.fetchone())
        seqs = sorted({a.head_seq for a in anchors})
        cur.execute(
            "SELECT s, e.hash, (SELECT count(*) FROM sensei.audit_events c WHERE c.seq <= s) "
            "FROM unnest(%s::bigint[]) AS s LEFT JOIN sensei.audit_events e ON e.seq = s",
            (seqs,),
        )
        at = {int(s): (h, int(n)) for s, h, n in cur.fetchall()}
    problems += chain.problems
    problems += compare(anchors, tip=tip, total=total, at=at)
    problems += protection.problems + signature_problems + read_problems
    warnings = chain.warnings + protection.warnings + warnings
    return TrailCheck(
        chain=chain,
        run_records=len(records),
        files=len(files),
        locations=list(dict.fromkeys(locations)),
        problems=problems,
        warnings=warnings,
    )


def _check_signatures(files: list[Anchor], key: AuditKey | None) -> tuple[list[Anchor], list[str], list[str]]:
    """Anchor files whose signature holds (or that are unsigned), and what is wrong with the others."""
    problems: list[str] = []
    warnings: list[str] = []
    kept: list[Anchor] = []
    unsigned = [a for a in files if not a.signature]
    if key is None:
        if len(unsigned) < len(files):
            warnings.append("the signatures of the anchor files were not checked: no audit key is configured")
        return files, problems, warnings
    for anchor in files:
        problem = anchor.signature_problem(key) if anchor.signature else None
        if problem:
            problems.append(problem)
        else:
            kept.append(anchor)
    if unsigned:
        warnings.append(
            f"{len(unsigned)} anchor file(s) are unsigned (written before the audit key was configured), "
            f"e.g. {unsigned[0].where}"
        )
    return kept, problems, warnings


def compare(
    anchors: Iterable[Anchor], *, tip: int, total: int, at: dict[int, tuple[str | None, int]]
) -> list[str]:
    """What the anchors say that the chain contradicts.

    :param tip: the highest seq in the chain; ``total`` its number of events.
    :param at: for each anchored seq, the chain's hash there (``None`` if missing) and its event count up to it.
    """
    anchors = list(anchors)
    if not anchors:
        return []
    problems: list[str] = []
    newest = max(anchors, key=lambda a: (a.head_seq, a.in_file))
    if total == 0:
        return [
            f"sensei.audit_events holds 0 events but {len(anchors)} anchor(s) say it held {newest.head_seq} "
            f"or more (newest: {newest.said()}): it was emptied, or dropped and recreated"
        ]
    if newest.head_seq > tip:
        problems.append(
            f"the newest {newest.head_seq - tip} events are missing: the chain ends at seq {tip} but "
            f"{newest.said()}"
        )
    present = [a for a in anchors if a.head_seq <= tip]
    differing = [a for a in present if at[a.head_seq][0] != a.head_hash]
    agreeing = [a for a in present if at[a.head_seq][0] == a.head_hash]
    if differing:
        first = min(differing, key=lambda a: (a.head_seq, not a.in_file))
        actual = at[first.head_seq][0]
        below = [a.head_seq for a in agreeing if a.head_seq < first.head_seq]
        if actual is None:
            problems.append(f"event {first.head_seq} is missing but {first.said()}")
        else:
            span = (
                f"an event between seq {max(below) + 1} and {first.head_seq}"
                if below
                else f"an event up to seq {first.head_seq}"
            )
            problems.append(
                f"{span} was rewritten and the hashes after it recomputed: event {first.head_seq} has hash "
                f"{actual[:16]}... but {first.said()}"
            )
    for anchor in agreeing:
        if at[anchor.head_seq][1] != anchor.events:
            problems.append(
                f"the chain holds {at[anchor.head_seq][1]} events up to seq {anchor.head_seq} but run "
                f"{anchor.rollback_id} counted {anchor.events} ({anchor.where})"
            )
            break
    return problems
