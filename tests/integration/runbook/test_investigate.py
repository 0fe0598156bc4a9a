"""Investigate's bisection as a plain function, on a real PostgreSQL target with names as real schemas hold them."""

from __future__ import annotations

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.investigate import differing_key_ranges, failed_checks, gather_evidence
from sensei_airflow.plan import PlannedTable, RollbackPlan
from tests import hostile_shop as shop

USERS, ORDERS, ITEMS = shop.TARGETS


@pytest.fixture
def left_over(databases, migrations_dir):
    """The target after a truncate that did not hold: two clusters of rows, far apart, in a table
    with a composite key whose columns hold a space and a ``#``."""
    manifest = shop.write_manifest(migrations_dir)
    with databases.connect("target") as conn:
        shop.prepare_target(conn)
        conn.execute("""INSERT INTO "Sales Data"."user" (id, "Display Name") VALUES (1, 'Zoë Ünal')""")
        conn.execute(
            """INSERT INTO "Sales Data"."order" ("Order No", "user id", "Total Cents")
               SELECT n, 1, n FROM generate_series(1, 40) n UNION ALL SELECT n, 1, n FROM generate_series(9001, 9030) n"""
        )
        conn.execute(
            """INSERT INTO "Straße.Ümlaut"."Order Items, 2026" ("Order No", "Line #", "a""b")
               SELECT o, l, 'Ärger | "quote"' FROM generate_series(1, 40) o, generate_series(1, 5) l
               UNION ALL SELECT o, 1, 'spät' FROM generate_series(9001, 9030) o"""
        )
    return manifest


def check(table: str, actual: object, expected: object = 0) -> dict[str, object]:
    return {"table": table, "check": "row count", "expected": expected, "actual": actual, "ok": False}


def test_rows_left_in_a_table_that_should_be_empty_are_located_by_key_range(databases, left_over):
    target = get_engine("shop_target")
    items = target.qualify(ITEMS)

    ranges = differing_key_ranges(target, left_over, [check(items, 230)])

    found = ranges[items]
    assert sum(r["source_rows"] for r in found) == 230
    assert all(r["expected_rows"] == 0 for r in found)
    assert len(found) >= 2  # the two clusters are apart: no range spans the gap between them
    assert not any(r.get("after") is None and r.get("up_to") is None for r in found)


def test_ranges_a_comparison_already_localised_are_kept_and_other_checks_ignored(databases, left_over):
    target = get_engine("shop_target")
    localised = [{"after": None, "up_to": ["7"], "source_rows": 7, "expected_rows": 6}]
    checks = [
        check(target.qualify(USERS), {"differing_key_ranges": localised}, expected={"checksum": "x"}),
        check(target.qualify(ORDERS), 70, expected=12),  # not expected empty: nothing to bisect
        check("Sales Data.not in the manifest", 3),
    ]

    assert differing_key_ranges(target, left_over, checks) == {target.qualify(USERS): localised}


def test_evidence_keeps_a_target_that_cannot_be_read_as_evidence(databases, left_over):
    from sensei_airflow.state import StateStore

    plan = RollbackPlan(
        migration_id=left_over.id,
        rollback_id="manual__Zürich ✓",
        strategy="truncate",  # type: ignore[arg-type]
        requested_strategy="truncate",
        scope={"scope": "all"},
        tables=[
            PlannedTable(target=t, source=s, phase=1, rows=0)
            for t, s in zip(shop.TARGETS, shop.SOURCES, strict=True)
        ],
        started_at="2026-02-02T07:59:00+00:00",
    )

    def unreachable() -> object:
        raise ConnectionError("target shop_target does not answer")

    checks = failed_checks({"checks": [check(ITEMS, 230), {**check(USERS, 0), "ok": True}]})
    evidence = gather_evidence(
        errors=[],
        checks=checks,
        plan=plan,
        manifest=left_over,
        target=unreachable,
        fingerprints_at_halt={},
        state=StateStore("sensei_state"),
    )

    assert evidence["needed"] is True and evidence["failed_checks"] == [check(ITEMS, 230)]
    assert evidence["table_states_error"] == "ConnectionError: target shop_target does not answer"
    assert evidence["differing_key_ranges_error"] == "ConnectionError: target shop_target does not answer"
    assert evidence["consumers_still_halted"] == []


def test_nothing_failed_needs_no_investigation():
    evidence = gather_evidence(
        errors=[],
        checks=[],
        plan=None,
        manifest=None,
        target=lambda: None,
        fingerprints_at_halt={},
        state=None,
    )
    assert evidence == {"needed": False}
