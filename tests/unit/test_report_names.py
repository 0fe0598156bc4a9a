"""Reports and the approval request show names in canonical form; a "|" in a name never breaks a table."""

from __future__ import annotations

from sensei_airflow.plan import PlannedTable, RollbackPlan
from sensei_airflow.report import render_markdown

TABLES = ["Sales Data.Länder | Countries", 'Sales Data."Order.Items"']


def _rows_of(markdown: str, needle: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and needle in line]


def test_markdown_report_escapes_a_pipe_in_a_name():
    status = {
        "migration_id": "mig",
        "rollback_id": "r1",
        "rollback_status": "completed",
        "strategy_used": "truncate",
        "restored_to": None,
        "scope": {"scope": "all", "tables": TABLES},
        "verification": {
            "source_comparison": "skipped",
            "record_counts_match": True,
            "sample_verification": "skipped",
        },
        "duration_seconds": 1,
    }
    report = {
        "status": status,
        "plan": {
            "requested_strategy": "truncate",
            "tables": [{"target": t, "source": "src.x|y", "phase": 1, "rows": 2} for t in TABLES],
        },
        "execution": {
            "statements": ['TRUNCATE TABLE "Sales Data"."Länder | Countries"'],
            "rows_affected": {TABLES[0]: 2},
        },
        "verification": {
            "checks": [{"table": TABLES[0], "check": "empty", "expected": 0, "actual": 0, "ok": True}]
        },
    }
    markdown = render_markdown(report)
    rows = _rows_of(markdown, "Länder")
    assert len(rows) == 3  # plan, executed, verification
    for row in rows:
        assert "Sales Data.Länder \\| Countries" in row
        # every row keeps its columns: unescaped pipes are the cell borders only
        assert row.replace("\\|", "").count("|") in (3, 6, 7)
    # the SQL block is code, not a table: left as it ran
    assert 'TRUNCATE TABLE "Sales Data"."Länder | Countries";' in markdown


def test_the_approval_request_escapes_a_pipe_in_a_name():
    from sensei_airflow.operators.runbook import approval_body

    plan = RollbackPlan(
        migration_id="mig",
        rollback_id="r1",
        strategy="truncate",
        requested_strategy="truncate",
        scope={"scope": "all"},
        tables=[PlannedTable(target=t, source="s.t", phase=1, rows=3) for t in TABLES],
        started_at="2026-02-02T08:00:00+00:00",
    )
    [row] = _rows_of(approval_body(plan), "Länder")
    assert row == "| 1 | Sales Data.Länder \\| Countries | 3 |"
