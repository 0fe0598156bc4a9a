"""The final rollback report: built from what the run's tasks left, anchored, rendered as Markdown a DBA
reads, and published to the backup location."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sensei_airflow.anchors import Anchor, make_anchor, verify_trail, write_anchor
from sensei_airflow.names import markdown_cell
from sensei_airflow.redaction import redact

if TYPE_CHECKING:
    from sensei_airflow.audit import AuditTrail
    from sensei_airflow.plan import RollbackPlan
    from sensei_airflow.status import StatusDocument

log = logging.getLogger(__name__)


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
    if verification and verification.get("warnings"):
        lines += ["", *[f"- Warning: {w}" for w in verification["warnings"]]]
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


# -- building and publishing the report ----------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """What a rollback run's tasks left behind, as the document step reads it (their XComs)."""

    assessed_plan: RollbackPlan | None
    #: the plan that was executed: the fallback's when it ran, else the assessed one.
    plan: RollbackPlan | None
    execution: Mapping[str, Any] | None
    fallback: Mapping[str, Any] | None
    approval: Mapping[str, Any] | None
    verification: Mapping[str, Any] | None
    halted: Mapping[str, Any] | None
    resumed: Mapping[str, Any] | None
    sequences: Mapping[str, Any] | None
    notified: Mapping[str, Any] | None
    investigation: Mapping[str, Any] | None
    errors: list[dict[str, Any]]
    triggered_by: str | None
    reason: str | None
    started_at: datetime
    finished_at: datetime


def build_report(document: StatusDocument, run: RunOutcome) -> dict[str, Any]:
    """The report of a run (JSON-ready): the status document, then everything a DBA audits."""
    return {
        "status": document.as_json(),
        "plan": run.assessed_plan.model_dump(mode="json") if run.assessed_plan else None,
        "executed_plan": run.plan.model_dump(mode="json") if run.fallback and run.plan else None,
        "fallback": {k: run.fallback[k] for k in ("from", "to", "why")} if run.fallback else None,
        "approval": run.approval,
        "execution": run.execution,
        "sql_executed": [
            *((run.halted or {}).get("statements", [])),
            *((run.execution or {}).get("statements", [])),
            *((run.resumed or {}).get("statements", [])),
        ],
        "rows_affected": (run.execution or {}).get("rows_affected"),
        "sequences": run.sequences,
        "verification": run.verification,
        "consumers": {"halted": run.halted, "resumed": run.resumed},
        "notifications": {"start": run.notified},
        "investigation": run.investigation,
        "errors": run.errors,
        "triggered_by": run.triggered_by,
        "reason": run.reason,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat(),
    }


def timings(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds each task took (last try), from its started and finished/failed/skipped events."""
    started: dict[str, datetime] = {}
    took: dict[str, float] = {}
    for event in events:
        task = str(event.get("task_id"))
        at = datetime.fromisoformat(event["recorded_at"])
        if event["action"] == "started":
            started[task] = at
        elif event["action"] in ("finished", "failed", "skipped") and task in started:
            took[task] = round((at - started[task]).total_seconds(), 3)
    return took


def check_and_anchor(
    trail: AuditTrail, migration_id: str | None, rollback_id: str, events: list[dict[str, Any]]
) -> tuple[Anchor, dict[str, Any]]:
    """Verify the chain against the run records' anchors, and anchor it at this run's documented event.

    Problems and warnings (no audit key, a state role that could disable the append-only trigger)
    go into the report and the log; they do not fail the step.

    :param events: the run's audit events, its ``documented`` event among them.
    :returns: the anchor, and the report's ``audit_chain`` section.
    """
    check = verify_trail(trail)
    documented = next(e for e in reversed(events) if e["action"] == "documented")
    anchor = make_anchor(trail, migration_id, rollback_id, documented["seq"], documented["hash"])
    for problem in check.problems:
        log.error("audit trail: %s", problem)
    for warning in check.warnings:
        log.warning("audit trail: %s", warning)
    return anchor, {**check.as_json(), "anchor": anchor.as_json()}


def publish_report(
    location: str, migration_id: str, rollback_id: str, report: Mapping[str, Any], markdown: str
) -> list[str]:
    """Write the report (JSON and Markdown) to ``location``/reports/<migration>/; returns where it went.

    ``location`` is the manifest's ``rollback.backup_location``, written through the backup
    storage backends (local path or ``file://``, ``s3://``, ``gs://``).
    """
    from sensei_airflow.backups.storage import storage_for

    storage = storage_for(location)
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in rollback_id)
    body = json.dumps(report, indent=2, default=str, sort_keys=True)
    written = []
    for ext, text in (("json", body), ("md", markdown)):
        name = f"reports/{migration_id}/{safe_id}.{ext}"
        with storage.open_write(name) as out:
            out.write(text.encode("utf-8"))
        written.append(storage.url_of(name))
    return written


def publish(location: str | None, report: dict[str, Any], anchor: Anchor | None) -> str:
    """Write the anchor, then the report, to the backup location; returns the report's Markdown.

    The anchor outside the state store comes first. Where either could not go is said in the
    report (which stays in the state store), never raised.

    :param location: the manifest's ``rollback.backup_location`` (None: nothing is written).
    :param report: :func:`build_report`'s, updated with where things went.
    """
    status = report["status"]
    if location and anchor is not None:
        try:
            report["audit_chain"]["anchor_written"] = write_anchor(location, anchor)
        except Exception as exc:
            report["audit_chain"]["anchor_error"] = f"{location}: {type(exc).__name__}: {exc}"
            log.exception("the audit anchor could not be written to %s", location)
    markdown = render_markdown(report)
    if not location:
        return markdown
    try:
        report["published"] = publish_report(
            location, status["migration_id"], status["rollback_id"], report, markdown
        )
    except Exception as exc:
        report["published_error"] = redact(f"{location}: {type(exc).__name__}: {exc}")
        log.exception("the report could not be written to %s", location)
    return render_markdown(report)
