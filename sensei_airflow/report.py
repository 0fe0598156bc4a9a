"""The final rollback report, as JSON and as Markdown a DBA reads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
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
        lines += _table(
            ["order", "target table", "source table", "phase", "rows before"],
            [[i + 1, t["target"], t["source"], t["phase"], t["rows"]] for i, t in enumerate(plan["tables"])],
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
    return "\n".join(lines) + "\n"
