"""Halt and resume what consumes the target while it is rolled back.

Two kinds of consumers:

- **Airflow DAGs**: the manifest's ``downstream.dags`` and every DAG scheduled on a target table
  of the scope as an Asset. They are paused through Airflow's REST API (``/api/v2``, token from
  ``POST /auth/token``; tasks may not touch the metadata DB) and, on resume, unpaused only if
  they were unpaused before the first halt.
- **Database roles**: ``downstream.db_roles`` lose their direct privileges on the tables in scope,
  and get exactly those privileges (with their grant option) back on resume.

Each consumer is recorded in the state store *before* it is halted (:meth:`StateStore.record_hold`),
so a resume after a crash, or in a later run of the same migration, knows what to restore and
what state it was in. Nothing here knows Airflow's task context. The REST client is
:mod:`sensei_airflow.airflow_api`, shared with the demo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sensei_airflow.airflow_api import AirflowApi, AirflowApiError, api_conn_id, connect_api
from sensei_airflow.engines.base import Engine, Grant
from sensei_airflow.manifest import Manifest
from sensei_airflow.plan import RefusedError
from sensei_airflow.state import StateStore

log = logging.getLogger(__name__)

DAG = "dag"
GRANTS = "grants"


@dataclass
class HaltResult:
    """What halt stopped, and what it could not look at."""

    dags: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "dags": self.dags,
            "grants": self.grants,
            "statements": self.statements,
            "warnings": self.warnings,
        }


def asset_scheduled_dags(api: AirflowApi, target: Engine, tables: Sequence[str]) -> dict[str, str]:
    """DAGs scheduled on Assets that are target tables of the scope: dag id -> the asset's URI.

    An asset matches a table when its URI is the engine's Asset URI of the table (its names
    percent-encoded, or as they are), or its name is the qualified table name.
    """
    from urllib.parse import unquote

    wanted: dict[str, str] = {}
    for table in tables:
        uri = target.asset_uri(table)
        if uri:
            wanted[uri] = table
            wanted[unquote(uri)] = table
        wanted[target.qualify(table)] = table
    found: dict[str, str] = {}
    for asset in api.assets():
        if asset.get("uri") in wanted or asset.get("name") in wanted:
            for ref in asset.get("scheduled_dags", []):
                found.setdefault(ref["dag_id"], asset["uri"])
    return found


def dags_to_halt(
    manifest: Manifest, api: AirflowApi | None, target: Engine, tables: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """The DAGs to pause (dag id -> why) and warnings about what could not be checked."""
    reasons = {dag_id: "downstream.dags of the manifest" for dag_id in manifest.downstream.dags}
    warnings: list[str] = []
    if api is None:
        if reasons:
            raise RefusedError(
                f"downstream.dags must be paused but the Airflow API connection {api_conn_id()!r} is not "
                "defined; add it (host = the api-server URL, login and password of a user who may pause DAGs)"
            )
        warnings.append(
            f"DAGs scheduled on the target tables as Assets were not looked up: no {api_conn_id()!r} "
            "connection"
        )
        return reasons, warnings
    for dag_id, uri in asset_scheduled_dags(api, target, tables).items():
        reasons.setdefault(dag_id, f"scheduled on asset {uri}")
    return reasons, warnings


def halt(
    manifest: Manifest,
    rollback_id: str,
    store: StateStore,
    target: Engine,
    tables: Sequence[str],
    api: AirflowApi | None,
) -> HaltResult:
    """Pause the consumer DAGs and suspend the consumer roles' privileges on ``tables``.

    Safe to retry: each consumer is recorded before it is halted, and an open record (from this
    run's earlier try or a crashed run) keeps the state it had before the first halt.
    """
    result = HaltResult()
    dags, result.warnings = dags_to_halt(manifest, api, target, tables)
    for dag_id, why in sorted(dags.items()):
        assert api is not None
        try:
            info = api.dag(dag_id)
        except AirflowApiError as exc:
            raise RefusedError(f"consumer DAG {dag_id} cannot be paused: {exc}") from None
        hold = store.record_hold(
            manifest.id, rollback_id, DAG, dag_id, {"was_paused": bool(info["is_paused"]), "why": why}
        )
        api.set_paused(dag_id, True)
        result.dags.append(
            {
                "dag_id": dag_id,
                "why": why,
                "was_paused": hold.detail["was_paused"],
                "halted_by": hold.rollback_id,
            }
        )
    roles = [target.identifier(r) for r in manifest.downstream.db_roles]  # exact role names
    if roles:
        missing = [r for r in roles if not target.role_exists(r)]
        if missing:
            raise RefusedError(
                f"downstream.db_roles: role {missing[0]} does not exist on {manifest.target.conn_id}"
            )
        current = target.table_grants(roles, tables)
        for (role, table), grants in sorted(_by_role_table(current).items()):
            detail = {"grants": [g.as_json() for g in grants]}
            store.record_hold(manifest.id, rollback_id, GRANTS, role, detail, obj=table)
        result.statements = [s.sql for s in target.revoke_grants(current)] if current else []
        left = target.table_grants(roles, tables)
        if left:
            raise RefusedError(
                f"role {left[0].role} still holds {left[0].privilege} on {left[0].table} after the revoke "
                "(granted by another role?); revoke it by hand before rolling back"
            )
        in_scope = {target.qualify(t) for t in tables}
        open_grants = [
            h
            for h in store.open_holds(manifest.id)
            if h.kind == GRANTS and h.name in roles and h.object in in_scope
        ]
        for hold in open_grants:
            result.grants.append(
                {
                    "role": hold.name,
                    "table": hold.object,
                    "grants": hold.detail["grants"],
                    "halted_by": hold.rollback_id,
                }
            )
        without = sorted(set(roles) - {h.name for h in open_grants})
        if without:
            result.warnings.append(
                f"roles with no direct privileges on the tables in scope: {', '.join(without)}"
            )
    return result


def _by_role_table(grants: Sequence[Grant]) -> dict[tuple[str, str], list[Grant]]:
    grouped: dict[tuple[str, str], list[Grant]] = {}
    for grant in grants:
        grouped.setdefault((grant.role, grant.table), []).append(grant)
    return grouped


def resume(
    manifest: Manifest,
    rollback_id: str,
    store: StateStore,
    target: Engine,
    api: AirflowApi | None,
) -> dict[str, Any]:
    """Restore every consumer still halted for this migration, by this run or an earlier one.

    DAGs are unpaused only if they were unpaused before the first halt; roles get exactly their
    recorded grants back. Each record is closed once its consumer is restored, so a retry
    continues where it stopped.
    """
    resumed: list[dict[str, Any]] = []
    statements: list[str] = []
    for hold in store.open_holds(manifest.id):
        if hold.kind == DAG:
            was_paused = bool(hold.detail.get("was_paused"))
            if not was_paused:
                if api is None:
                    raise RefusedError(
                        f"DAG {hold.name} must be unpaused but the Airflow API connection {api_conn_id()!r} "
                        "is not defined"
                    )
                api.set_paused(hold.name, False)
            resumed.append(
                {"kind": DAG, "dag_id": hold.name, "unpaused": not was_paused, "halted_by": hold.rollback_id}
            )
        elif hold.kind == GRANTS:
            grants = [Grant(**g) for g in hold.detail.get("grants", [])]
            statements += [s.sql for s in target.restore_grants(grants)]
            resumed.append(
                {
                    "kind": GRANTS,
                    "role": hold.name,
                    "table": hold.object,
                    "grants": hold.detail.get("grants", []),
                    "halted_by": hold.rollback_id,
                }
            )
        store.close_hold(hold.id, rollback_id)
    return {"resumed": resumed, "statements": statements}


__all__ = [
    "DAG",
    "GRANTS",
    "AirflowApi",
    "AirflowApiError",
    "HaltResult",
    "api_conn_id",
    "connect_api",
    "dags_to_halt",
    "halt",
    "resume",
]
