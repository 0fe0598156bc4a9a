"""The seed's rollback API bodies, exactly as in its curl examples, and what each must leave behind.

A payload whose strategy this installation does not offer yet (not in ``STRATEGY_CLASSES``) must
be refused by the API with a clear reason; one it offers must be accepted and run to completion.
To cover a new strategy end to end, add its expected outcome to ``EMPTIED``/``OUTCOMES``.
"""

from __future__ import annotations

from typing import Any

#: name -> body, verbatim from the seed.
SEED_PAYLOADS: dict[str, dict[str, Any]] = {
    "truncate": {"strategy": "truncate"},
    "reverse_migration": {"strategy": "reverse_migration", "verify_after": True},
    "point_in_time": {"strategy": "point_in_time", "restore_to": "2026-02-02T07:59:00Z"},
    "backup_restore": {"strategy": "backup_restore", "backup_id": "bkp_abc123"},
    "truncate_phase_3": {"strategy": "truncate", "scope": "phase", "phase": 3},
    "truncate_tables": {"strategy": "truncate", "scope": "tables", "tables": ["orders", "order_items"]},
}

DEMO_TABLES = ("crm.customers", "sales.orders", "sales.order_items")

#: payload -> the demo target tables it must leave empty (the others keep every row).
EMPTIED: dict[str, tuple[str, ...]] = {
    "truncate": DEMO_TABLES,
    "truncate_phase_3": ("sales.order_items",),
    "truncate_tables": ("sales.orders", "sales.order_items"),
}

#: the keys of the seed's status response, plus the contract's ids and scope.
STATUS_KEYS = {
    "migration_id",
    "rollback_id",
    "rollback_status",
    "strategy_used",
    "restored_to",
    "scope",
    "verification",
    "duration_seconds",
}
VERIFICATION_KEYS = {"source_comparison", "record_counts_match", "sample_verification"}


def strategy_available(name: str) -> bool:
    from sensei_airflow.strategies import STRATEGY_CLASSES

    return SEED_PAYLOADS[name]["strategy"] in STRATEGY_CLASSES


def assert_status_shape(document: dict[str, Any]) -> None:
    """The seed's status response shape (CONTRACT.md)."""
    assert document["rollback_status"] in {"planned", "running", "completed", "failed", "rejected"}
    # a rejected rollback also says who rejected it and when
    extra = {"approval"} if document["rollback_status"] == "rejected" else set()
    assert set(document) == STATUS_KEYS | extra, document
    assert set(document["verification"]) == VERIFICATION_KEYS, document
    for key in ("source_comparison", "sample_verification"):
        assert document["verification"][key] in {"passed", "failed", "skipped"}, document
    assert set(document["scope"]) >= {"scope", "tables"}, document
    assert isinstance(document["duration_seconds"], int), document
