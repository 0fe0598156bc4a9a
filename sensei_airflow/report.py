"""The final rollback report, as JSON and as Markdown a DBA reads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sensei_airflow.names import markdown_cell


def _changes(changes: Mapping[str, Any] | None) -> str:
    if not changes:
        return ""
    if "insert" not in changes:
        return f"not counted: {changes.get('why', '')}"
    counts = f"{changes['insert']} / {changes['update']} / {changes['delete']}"
    return counts if changes.get("exact") else f"at least {counts}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; a ``|`` or a line break inside a value (a table name may hold one) is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    status = report["status"]
    plan = report.get("plan") or {}
    lines = [
        f"# Rollback {status['rollback_id']} of {status['migration_id']}: {status['rollback_status']}",
        "",
        f"- Strategy: {status['strategy_used'] or 'none'}"
        + (f" (requested: {plan.get('requested_strategy')})" if plan else ""),
        f"- Scope: {json.dumps(status['scope'])}",
        f"- Triggered by: {report.get('triggered_by') or 'unknown'}",
        f"- Reason: {report.get('reason') or 'not given'}",
        f"- Started: {report.get('started_at')}; finished: {report.get('finished_at')} "
        f"({status['duration_seconds']} s)",
    ]
    if status.get("restored_to"):
        lines.append(f"- Restored to: {status['restored_to']}")
    if plan:
        lines += ["", "## Plan", ""]
        if any(t.get("changes") for t in plan["tables"]):
            lines += _table(
                ["order", "target table", "source table", "phase", "rows before", "source rows to insert / update / delete"],
                [[i + 1, t["target"], t["source"], t["phase"], t["rows"], _changes(t.get("changes"))]
                 for i, t in enumerate(plan["tables"])],
            )  # fmt: skip
        else:
            lines += _table(
                ["order", "target table", "source table", "phase", "rows before"],
                [
                    [i + 1, t["target"], t["source"], t["phase"], t["rows"]]
                    for i, t in enumerate(plan["tables"])
                ],
            )
        for note in plan.get("notes", []):
            lines.append(f"- Note: {note}")
        for warning in plan.get("warnings", []):
            lines.append(f"- Warning: {warning}")
    execution = report.get("execution")
    if execution:
        lines += ["", "## Executed", "", "```sql", *[f"{s};" for s in execution["statements"]], "```", ""]
        lines += _table(["table", "rows affected"], [[t, n] for t, n in execution["rows_affected"].items()])
    elif plan and plan.get("statements"):
        lines += ["", "## SQL that would run", "", "```sql", *[f"{s};" for s in plan["statements"]], "```"]
    verification = report.get("verification")
    lines += ["", "## Verification", ""]
    lines += [f"- {k}: {v}" for k, v in status["verification"].items()]
    if verification and verification.get("checks"):
        lines.append("")
        lines += _table(
            ["table", "check", "expected", "actual", "ok"],
            [
                [c["table"], c["check"], c["expected"], c["actual"], "yes" if c["ok"] else "NO"]
                for c in verification["checks"]
            ],
        )
    consumers = report.get("consumers")
    if consumers:
        lines += ["", "## Downstream consumers", "", f"```json\n{json.dumps(consumers, indent=2)}\n```"]
    investigation = report.get("investigation")
    if investigation and investigation.get("needed"):
        lines += ["", "## Investigation", ""]
        for error in investigation.get("errors", []):
            lines.append(f"- {error['task_id']} (try {error['try_number']}): {error['error']}")
        if investigation.get("table_states"):
            lines.append("")
            lines += _table(
                ["table", "rows before", "rows now"],
                [[t, s.get("before"), s.get("now")] for t, s in investigation["table_states"].items()],
            )
        lines += _runbook_investigation(investigation)
    lines += _runbook_sections(report)
    if report.get("timeline"):
        lines += ["", "## Timeline (audit trail)", ""]
        lines += _table(
            ["seq", "at", "task", "try", "action"],
            [
                [e["seq"], e["recorded_at"], e["task_id"], e["try_number"], e["action"]]
                for e in report["timeline"]
            ],
        )
    chain = report.get("audit_chain")
    if chain:
        lines += [
            "",
            f"Audit chain: {'intact' if chain['ok'] else 'BROKEN'}, {chain['events']} events, "
            f"head hash `{chain['head_hash']}`",
        ]
        lines += _audit_anchor_lines(chain)
    return "\n".join(lines) + "\n"


def _audit_anchor_lines(chain: Mapping[str, Any]) -> list[str]:
    """The chain's problems and warnings, and where this run anchored it."""
    lines = [f"- PROBLEM: {p}" for p in chain.get("problems") or []]
    lines += [f"- Warning: {w}" for w in chain.get("warnings") or []]
    anchor = chain.get("anchor")
    if anchor:
        signed = anchor.get("signature")
        how = f"signed with audit key {signed.split(':')[1]}" if signed else "unsigned: no audit key"
        lines.append(
            f"- Anchored at event {anchor['head_seq']} ({anchor['events']} events, hash `{anchor['head_hash']}`, {how})"
        )
    if chain.get("anchor_written"):
        lines.append(f"- Anchor written to {chain['anchor_written']}")
    if chain.get("anchor_error"):
        lines.append(f"- Anchor NOT written to the backup location: {chain['anchor_error']}")
    return lines


def _runbook_investigation(investigation: Mapping[str, Any]) -> list[str]:
    """Differing key ranges, fingerprints and consumers still halted, from the investigate step."""
    lines: list[str] = []
    ranges = investigation.get("differing_key_ranges") or {}
    if ranges:
        lines += ["", "### Differing key ranges (located by bisection)", ""]
        rows = []
        for table, found in ranges.items():
            for r in found:
                rows.append(
                    [
                        table,
                        r.get("after") or "-inf",
                        r.get("up_to") or "+inf",
                        r.get("source_rows"),
                        r.get("expected_rows"),
                    ]
                )
        lines += _table(["table", "keys after", "keys up to", "rows found", "rows expected"], rows)
    states = investigation.get("table_states") or {}
    if any(s.get("fingerprint_now") for s in states.values()):
        lines += ["", "### Fingerprints (count and in-database checksum)", ""]
        lines += _table(
            ["table", "at halt", "now"],
            [[t, s.get("fingerprint_at_halt"), s.get("fingerprint_now")] for t, s in states.items()],
        )
    still = investigation.get("consumers_still_halted") or []
    if still:
        lines += ["", f"{len(still)} consumer(s) stay halted until a rollback of this migration verifies."]
    return lines


def _runbook_sections(report: Mapping[str, Any]) -> list[str]:
    """Approval, fallback, sequences, consumers, notifications, timings and where the report went."""
    lines: list[str] = []
    approval = report.get("approval")
    if approval and approval.get("required"):
        answer = "approved" if approval.get("approved") else "REJECTED (nothing was changed)"
        lines += ["", "## Approval", "", f"- {answer} by {approval.get('by')} at {approval.get('at')}"]
    fallback = report.get("fallback")
    if fallback:
        lines += ["", "## Fallback", "", f"- {fallback['from']} -> {fallback['to']}: {fallback['why']}"]
    if report.get("sql_executed"):
        lines += ["", "## All SQL executed (halt, execute, resume)", "", "```sql"]
        lines += [f"{s};" for s in report["sql_executed"]] + ["```"]
    sequences = (report.get("sequences") or {}).get("sequences") or []
    if sequences:
        lines += ["", "## Sequences reset", ""]
        lines += _table(
            ["side", "table", "column", "sequence", "next value"],
            [[q["side"], q["table"], q["column"], q["sequence"], q["next_value"]] for q in sequences],
        )
    consumers = report.get("consumers") or {}
    halted = consumers.get("halted") or {}
    resumed = (consumers.get("resumed") or {}).get("resumed") or []
    if halted or resumed or consumers.get("still_halted"):
        lines += ["", "## Consumers halted and resumed", ""]
        for dag in halted.get("dags", []):
            lines.append(f"- DAG {dag['dag_id']} paused ({dag['why']}; paused before: {dag['was_paused']})")
        for grant in halted.get("grants", []):
            privileges = ", ".join(g["privilege"] for g in grant["grants"])
            lines.append(f"- role {grant['role']} lost {privileges} on {grant['table']}")
        for item in resumed:
            if item["kind"] == "dag":
                lines.append(
                    f"- DAG {item['dag_id']} {'unpaused' if item['unpaused'] else 'left paused (was paused)'}"
                )
            else:
                lines.append(f"- role {item['role']} regained its grants on {item['table']}")
        for hold in consumers.get("still_halted") or []:
            lines.append(f"- STILL HALTED: {hold['kind']} {hold['name']} {hold.get('object') or ''}".rstrip())
    notifications = report.get("notifications") or {}
    deliveries = [
        (when, d)
        for when in ("start", "end")
        for d in (
            (notifications.get(when) or {}).get("deliveries", [])
            if when == "start"
            else notifications.get(when) or []
        )
    ]
    if deliveries:
        lines += ["", "## Notifications", ""]
        lines += _table(
            ["when", "channel", "kind", "sent", "attempts", "error"],
            [
                [w, d["conn_id"], d["kind"], "yes" if d["ok"] else "NO", d["attempts"], d["error"]]
                for w, d in deliveries
            ],
        )
    if report.get("timings"):
        lines += ["", "## Timings", ""]
        lines += _table(["task", "seconds"], [[t, s] for t, s in report["timings"].items()])
    if report.get("published"):
        lines += ["", "Report also written to: " + ", ".join(report["published"])]
    if report.get("published_error"):
        lines += ["", f"Report NOT written to the backup location: {report['published_error']}"]
    return lines
