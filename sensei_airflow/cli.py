"""The ``sensei`` command: operator tools outside a DAG run.

``sensei audit verify --conn-id sensei_state [--anchors LOCATION ...] [--migration-id ID]`` checks
the audit trail's chain and its anchors (run records, anchor files at the report locations).
``sensei audit init --conn-id OWNER_CONN --grant-to ROLE`` creates the state schema as its owner
and grants the state role only what it needs.
``sensei backups list [--migration-id ID] [--conn-id sensei_state]`` lists backups, status and expiry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
