"""What a DBA needs when a rollback failed: the evidence the investigate step gathers.

Plain Python over the target's engine: the tables' states (row counts before and now,
fingerprints at halt and now), and the key ranges where a failing table differs from what
verification expected, located by bisection (:func:`sensei_airflow.verify.localise_differences`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from sensei_airflow.manifest import Manifest
from sensei_airflow.plan import RollbackPlan
from sensei_airflow.redaction import redact_error
from sensei_airflow.state import StateStore
from sensei_airflow.verify import localise_differences

#: what an audit event shows in the investigation's timeline.
TIMELINE_KEYS = ("seq", "recorded_at", "task_id", "try_number", "step", "action")


class EmptySide:
    """The expected side of a table that should be empty: no rows anywhere."""

    columns: ClassVar[list[str]] = []

    def checksum(self, key_range: Any) -> tuple[int, int]:
        return 0, 0

    def boundaries(self, key_range: Any, parts: int) -> list[Any]:
        return []

    def sample_keys(self, n: int) -> list[Any]:
        return []

    def rows(self, keys: Any) -> dict[Any, Any]:
        return {}


def failed_checks(verification: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The checks of a verification result (its XCom) that failed."""
    return [c for c in (verification or {}).get("checks", []) if not c["ok"]]


def localised_ranges(checks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The key ranges the failed checks' comparisons already localised, per table."""
    ranges: dict[str, Any] = {}
    for check in checks:
        actual = check.get("actual")
        if isinstance(actual, Mapping) and actual.get("differing_key_ranges"):
            ranges[check["table"]] = list(actual["differing_key_ranges"])
    return ranges


def left_over(checks: Sequence[Mapping[str, Any]], localised: Mapping[str, Any]) -> list[str]:
    """Tables that should be empty and are not, whose differing rows no comparison localised."""
    return [c["table"] for c in checks if c.get("expected") == 0 and c["table"] not in localised]


def bisect_leftovers(target: Any, manifest: Manifest, tables: Sequence[str]) -> dict[str, Any]:
    """The key ranges of the rows left in tables that should be empty, located by bisection over the key.

    :param target: the target's engine.
    :param tables: qualified target table names; a table the manifest does not map, or without a
        usable key, is left out.
    """
    by_target = {target.qualify(t.target): t for t in manifest.tables}
    ranges: dict[str, Any] = {}
    for table in tables:
        mapping = by_target.get(table)
        source = target.row_source(table, mapping.key) if mapping is not None else None
        if source is not None:
            ranges[table] = [d.as_json() for d in localise_differences(source, EmptySide())]  # type: ignore[arg-type]
    return ranges


def differing_key_ranges(
    target: Any, manifest: Manifest, checks: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Key ranges where each failing table differs from what verification expected.

    Ranges a comparison already localised are taken from its check; for a table that should be
    empty, the rows left are located by bisection over the key.

    :param target: the target's engine.
    :param checks: the failed checks (:func:`failed_checks`).
    """
    ranges = localised_ranges(checks)
    return {**ranges, **bisect_leftovers(target, manifest, left_over(checks, ranges))}


def table_states(target: Any, plan: RollbackPlan, fingerprints_at_halt: Mapping[str, Any]) -> dict[str, Any]:
    """Per table in scope: rows before the rollback and now, fingerprints at halt and now."""
    now = target.row_counts(plan.table_names)
    fingerprints = target.table_fingerprints(plan.table_names)
    return {
        t: {
            "before": plan.counts_before.get(t),
            "now": now.get(t),
            "fingerprint_at_halt": fingerprints_at_halt.get(t),
            "fingerprint_now": fingerprints.get(t),
        }
        for t in plan.table_names
    }


def gather_evidence(
    *,
    errors: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    plan: RollbackPlan | None,
    manifest: Manifest | None,
    target: Callable[[], Any],
    fingerprints_at_halt: Mapping[str, Any],
    state: StateStore | None,
) -> dict[str, Any]:
    """The investigation of a run: nothing when no task failed and every check passed.

    The target may be what failed: an error reading it is part of the evidence, not a failure.

    :param errors: the failed tasks' errors.
    :param checks: the failed verification checks.
    :param plan: the plan that was executed (None when assess failed: only the errors are known).
    :param target: opens the target's engine.
    :param fingerprints_at_halt: the tables' fingerprints taken by the halt step.
    :param state: the state store, which knows the consumers still halted for the migration.
    """
    if not errors and not checks:
        return {"needed": False}
    evidence: dict[str, Any] = {"needed": True, "errors": errors, "failed_checks": checks}
    if plan is None or manifest is None or state is None:
        return evidence
    try:
        evidence["table_states"] = table_states(target(), plan, fingerprints_at_halt)
    except Exception as exc:
        evidence["table_states_error"] = redact_error(exc)
    try:
        ranges = localised_ranges(checks)
        leftovers = left_over(checks, ranges)
        evidence["differing_key_ranges"] = {
            **ranges,
            **(bisect_leftovers(target(), manifest, leftovers) if leftovers else {}),
        }
    except Exception as exc:
        evidence["differing_key_ranges_error"] = redact_error(exc)
    evidence["consumers_still_halted"] = [h.as_json() for h in state.open_holds(plan.migration_id)]
    return evidence
