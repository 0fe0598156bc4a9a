"""The ``sensei`` command: operator tools outside a DAG run.

``sensei audit verify --conn-id sensei_state`` checks the audit trail's hash chain.
``sensei backups list [--migration-id ID] [--conn-id sensei_state]`` lists backups, status and expiry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _audit_verify(args: argparse.Namespace) -> int:
    from sensei_airflow.audit import AuditTrail
    from sensei_airflow.state import StateStore

    report = AuditTrail(StateStore(args.conn_id)).verify()
    print(report)
    return 0 if report.ok else 1


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
    verify = audit.add_parser("verify", help="check the audit trail's hash chain")
    verify.add_argument("--conn-id", default="sensei_state", help="Airflow connection of the state store")
    verify.set_defaults(func=_audit_verify)

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
