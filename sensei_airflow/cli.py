"""The ``sensei`` command: operator tools outside a DAG run.

``sensei audit verify --conn-id sensei_state [--anchors LOCATION ...] [--migration-id ID]`` checks
the audit trail's chain and its anchors (run records, anchor files at the report locations).
``sensei audit init --conn-id OWNER_CONN --grant-to ROLE`` creates the state schema as its owner
and grants the state role only what it needs.
``sensei backups list [--migration-id ID] [--conn-id sensei_state]`` lists backups, status and expiry.
``sensei lock status MIGRATION_ID`` shows who holds a migration's rollback lock;
``sensei lock release MIGRATION_ID --force [--reason ...]`` clears a crashed run's lock (audited).
``sensei migration start MIGRATION_ID [--restart]`` takes the migration's start mark (mark.py).
``sensei migration status MIGRATION_ID [--json]`` sums up a migration: its mark, its lock, its newest rollback,
and staging left on the source by crashed reverse migrations.

The state store and the databases are the manifest's connections, resolved as any Airflow CLI does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sensei_airflow.manifest import Manifest
    from sensei_airflow.state import StateStore


def _audit_verify(args: argparse.Namespace) -> int:
    from sensei_airflow.anchors import manifest_locations, verify_trail
    from sensei_airflow.audit import AuditKeyError, AuditTrail, load_audit_key
    from sensei_airflow.state import StateSchemaMissing, StateStore

    locations, warnings = manifest_locations(args.conn_id, args.migration_id)
    locations += args.anchors
    try:
        trail = AuditTrail(StateStore(args.conn_id), key=load_audit_key(args.key_conn_id))
        check = verify_trail(trail, locations=locations, migration_id=args.migration_id)
    except (AuditKeyError, StateSchemaMissing) as exc:
        print(f"audit trail NOT verified: {exc}", file=sys.stderr)
        return 1
    for line in check.lines():
        print(line)
    if not locations:
        warnings.append(
            "no report location was searched for anchor files (no manifest of this state store sets "
            "rollback.backup_location, and no --anchors): a dropped sensei schema cannot be noticed"
        )
    for warning in warnings:
        print(f"warning: {warning}")
    return 0 if check.ok else 1


def _audit_init(args: argparse.Namespace) -> int:
    from sensei_airflow.audit import init_state_store
    from sensei_airflow.state import StateStore

    try:
        statements = init_state_store(StateStore(args.conn_id), args.grant_to)
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"the sensei schema of {args.conn_id} is ready; granted to {args.grant_to}:")
    for statement in statements:
        print(f"  {statement};")
    return 0


def _backups_list(args: argparse.Namespace) -> int:
    import json

    from sensei_airflow.backups.catalog import BackupCatalog, render_listing
    from sensei_airflow.state import StateStore

    entries = BackupCatalog(StateStore(args.conn_id)).list(args.migration_id)
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2))
    else:
        print(render_listing(entries))
    return 0


def _manifest(migration_id: str) -> Manifest:
    from sensei_airflow.manifest import load_manifests

    return load_manifests().get(migration_id)


def _state_of(args: argparse.Namespace) -> StateStore:
    """``--conn-id``, else the manifest's state store, else ``sensei_state``."""
    from sensei_airflow.state import StateStore

    if args.conn_id:
        return StateStore(args.conn_id)
    try:
        return StateStore(_manifest(args.migration_id).state.conn_id)
    except LookupError:
        return StateStore("sensei_state")


def _lock_status(args: argparse.Namespace) -> int:
    from sensei_airflow.lock import MigrationLocks

    holder = MigrationLocks(_state_of(args)).holder(args.migration_id)
    if args.json:
        print(json.dumps(holder.as_json() if holder else None, indent=2))
    elif holder is None:
        print(f"{args.migration_id}: no rollback holds the lock")
    else:
        print(f"{args.migration_id}: held by {holder.describe()}")
    return 0


def _lock_release(args: argparse.Namespace) -> int:
    from sensei_airflow.lock import LockHeld, MigrationLocks, os_user, release_command

    locks = MigrationLocks(_state_of(args))
    holder = locks.holder(args.migration_id)
    if holder is None:
        print(f"{args.migration_id}: no rollback holds the lock; nothing to release")
        return 0
    if not args.force:
        print(
            f"refused without --force: {args.migration_id} is locked by {holder.describe()}. Release it only "
            f"if that run is dead (its task was killed or its worker lost): {release_command(args.migration_id)}",
            file=sys.stderr,
        )
        return 1
    try:
        released = locks.force_release(args.migration_id, actor=args.actor or os_user(), reason=args.reason)
    except LockHeld as exc:
        print(f"refused: {exc}; it is alive: wait for it instead", file=sys.stderr)
        return 1
    if released is None:
        print(f"{args.migration_id}: the lock was released meanwhile; nothing to release")
        return 0
    print(
        f"released the lock of {args.migration_id} held by {released.describe()}; recorded in the audit trail "
        f"(by {args.actor or os_user()}, reason: {args.reason or 'not given'})"
    )
    return 0


def _status_lock(manifest: Manifest, state: StateStore) -> tuple[Any, list[str]]:
    from sensei_airflow.lock import MigrationLocks, release_command

    holder = MigrationLocks(state).holder(manifest.id)
    if holder is None:
        return None, ["lock: free"]
    lines = [f"lock: held by {holder.describe()}"]
    if holder.expired:
        lines.append(f"  it has run out: the next rollback takes it over, or {release_command(manifest.id)}")
    return holder.as_json(), lines


def _status_last_run(manifest: Manifest, state: StateStore) -> tuple[Any, list[str]]:
    run = state.latest_run(manifest.id)
    if run is None:
        return None, ["newest rollback: none"]
    summary = {
        k: run[k] for k in ("rollback_id", "status", "strategy", "dry_run", "started_at", "finished_at")
    }
    ended = f", finished {run['finished_at'].isoformat()}" if run["finished_at"] else ""
    return summary, [
        f"newest rollback: {run['rollback_id']} ({run['status']}, {run['strategy'] or 'no strategy'}, "
        f"started {run['started_at'].isoformat()}{ended})"
    ]


def _status_staging(manifest: Manifest, state: StateStore) -> tuple[Any, list[str]]:
    from sensei_airflow.strategies.reverse import leftover_staging

    found = leftover_staging(manifest, state)
    where = f"the source {manifest.source.conn_id} (schema sensei_staging)"
    if not found:
        return [], [f"staging: none on {where}"]
    return [s.as_json() for s in found], ["staging: " + s.describe(where) for s in found]


def _status_mark(manifest: Manifest, state: StateStore) -> tuple[Any, list[str]]:
    from sensei_airflow.mark import load_mark

    mark = load_mark(state, manifest.id)
    if mark is None:
        start = manifest.started_at.isoformat() if manifest.started_at else "not set"
        return None, [
            f"start mark: none (started_at: {start}); take it with: sensei migration start {manifest.id}"
        ]
    lines = [
        f"start mark: {mark.name} at {mark.taken_at.isoformat()} (position {mark.position or '-'}"
        + (f", restarted {mark.restarts}x" if mark.restarts else "")
        + ")"
    ]
    lines += [f"  {t}: {v['rows']} rows, checksum {v.get('checksum') or '-'}" for t, v in mark.tables.items()]
    if mark.backup_id:
        lines.append(f"  pre-migration backup: {mark.backup_id}")
    summary = mark.summary()
    if mark.undo_log is not None:
        state_text = "open" if mark.undo_log_open else f"closed at {mark.undo_log_closed_at}"
        retained: dict[str, Any] = {}
        if mark.undo_log_open:
            from sensei_airflow.engines import get_engine

            retained = get_engine(manifest.target.conn_id).undo_log_retained(mark.undo_log)
            summary["undo_log_retained"] = retained
        kept = retained.get("retained_wal_bytes")
        extra = f", retains {kept / 1048576:.1f} MiB of WAL" if kept is not None else ""
        lines.append(f"  undo log: slot {mark.undo_log.get('slot')} {state_text}{extra}")
    return summary, lines


def _migration_start(args: argparse.Namespace) -> int:
    from sensei_airflow.engines.base import MarkRefused
    from sensei_airflow.lock import os_user
    from sensei_airflow.mark import take_mark

    manifest = _manifest(args.migration_id)
    try:
        mark, taken = take_mark(
            manifest, restart=args.restart, actor=args.actor or os_user(), reason=args.reason
        )
    except MarkRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"taken": taken, **mark.summary()}, indent=2, default=str))
    elif taken:
        verb = "restarted" if mark.restarts else "taken"
        print(
            f"start mark of {manifest.id} {verb}: {mark.name} at {mark.taken_at.isoformat()} ({mark.position})"
        )
    else:
        print(
            f"start mark of {manifest.id} kept: {mark.name} at {mark.taken_at.isoformat()} (taken earlier; "
            "--restart replaces it)"
        )
    return 0


#: the sections of ``sensei migration status``, in order: (name, function of manifest and state store
#: returning its JSON value and its text lines). Add a section by adding an entry.
STATUS_SECTIONS: list[tuple[str, Callable[[Manifest, StateStore], tuple[Any, list[str]]]]] = [
    ("mark", _status_mark),
    ("lock", _status_lock),
    ("last_rollback", _status_last_run),
    ("staging", _status_staging),
]


def _migration_status(args: argparse.Namespace) -> int:
    from sensei_airflow.state import StateStore

    manifest = _manifest(args.migration_id)
    state = StateStore(manifest.state.conn_id)
    document: dict[str, Any] = {"migration_id": manifest.id}
    lines = [f"migration {manifest.id}" + (f": {manifest.description}" if manifest.description else "")]
    for name, section in STATUS_SECTIONS:
        try:
            document[name], text = section(manifest, state)
        except Exception as exc:  # one section that cannot be read does not hide the others
            document[name] = {"error": f"{type(exc).__name__}: {exc}"}
            text = [f"{name}: cannot be read: {type(exc).__name__}: {exc}"]
        lines += text
    print(json.dumps(document, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensei", description="sensei-airflow operator tools")
    commands = parser.add_subparsers(dest="command", required=True)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser(
        "verify",
        help="check the audit trail's chain against its anchors (run records and the anchor files at the "
        "report locations of the manifests that use this state store); exit 1 on any problem",
    )
    verify.add_argument("--conn-id", default="sensei_state", help="Airflow connection of the state store")
    verify.add_argument(
        "--anchors",
        action="extend",
        nargs="+",
        default=[],
        metavar="LOCATION",
        help="more report locations to read anchor files from (local path, file://, s3://, gs://)",
    )
    verify.add_argument(
        "--migration-id", default=None, help="only this migration's run records and anchor files"
    )
    verify.add_argument(
        "--key-conn-id",
        default=None,
        help="Airflow connection holding the audit key ([sensei] audit_key_conn_id)",
    )
    verify.set_defaults(func=_audit_verify)
    init = audit.add_parser(
        "init",
        help="create or upgrade the state schema as its owner and grant the state role only what it needs "
        "(it may append to the audit trail, never change, disable or drop it)",
    )
    init.add_argument("--conn-id", required=True, help="Airflow connection that logs in as the owner role")
    init.add_argument("--grant-to", required=True, metavar="ROLE", help="the role the state connection uses")
    init.set_defaults(func=_audit_init)

    backups = commands.add_parser("backups", help="the backup catalog").add_subparsers(
        dest="backups_command", required=True
    )
    listing = backups.add_parser("list", help="backups with their status and expiry, newest first")
    listing.add_argument("--migration-id", default=None, help="only this migration's backups")
    listing.add_argument("--conn-id", default="sensei_state", help="Airflow connection of the state store")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_backups_list)

    lock = commands.add_parser("lock", help="a migration's rollback lock").add_subparsers(
        dest="lock_command", required=True
    )
    status = lock.add_parser("status", help="which rollback holds the lock, since when, until when")
    status.add_argument("migration_id")
    status.add_argument("--conn-id", default=None, help="state store connection (default: the manifest's)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_lock_status)
    release = lock.add_parser("release", help="clear the lock of a crashed rollback (needs --force; audited)")
    release.add_argument("migration_id")
    release.add_argument("--force", action="store_true", help="release it whoever holds it")
    release.add_argument("--reason", default=None, help="why (recorded in the audit trail)")
    release.add_argument("--actor", default=None, help="who releases it (default: the OS user)")
    release.add_argument("--conn-id", default=None, help="state store connection (default: the manifest's)")
    release.set_defaults(func=_lock_release)

    migration = commands.add_parser("migration", help="one migration").add_subparsers(
        dest="migration_command", required=True
    )
    mstatus = migration.add_parser("status", help="lock, newest rollback, leftover staging")
    mstatus.add_argument("migration_id")
    mstatus.add_argument("--json", action="store_true", help="print JSON")
    mstatus.set_defaults(func=_migration_status)
    mstart = migration.add_parser(
        "start",
        help="take the migration's start mark before it writes (idempotent: the first mark stands)",
    )
    mstart.add_argument("migration_id")
    mstart.add_argument("--restart", action="store_true", help="replace an existing mark (audited)")
    mstart.add_argument("--reason", default=None, help="why (recorded in the audit trail)")
    mstart.add_argument("--actor", default=None, help="who takes it (default: the OS user)")
    mstart.add_argument("--json", action="store_true", help="print JSON")
    mstart.set_defaults(func=_migration_start)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
