"""What a rollback changed, told to Airflow: asset events and hook lineage.

- **Asset events**: the execute and resume tasks declare the Asset alias
  :data:`ROLLBACK_ASSET_ALIAS` as their outlet and add, through it, an event for the Asset of each
  table whose data the rollback changed (:func:`emit_asset_events`). Which tables a rollback
  touches is known only at run time, hence the alias. A DAG scheduled on a table's Asset sees
  the event; while it is halted, it runs once resume unpauses it.
- **Lineage**: the same tables go to Airflow's hook lineage collector (common-compat's
  ``get_hook_lineage_collector``) as input and output assets of the engine's provider hook, so
  the OpenLineage provider, when installed and enabled, reports them. Without a lineage reader
  the collector is a no-op.

Both are best effort (ADR 0409): the URIs come from the connections (no query, except a
Snowflake connection without a ``database``), and a failure here is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sensei_airflow.engines import Engine, get_engine
from sensei_airflow.manifest import Manifest, Strategy
from sensei_airflow.plan import RollbackPlan

log = logging.getLogger(__name__)

#: the Asset alias the execute and resume tasks emit the changed tables' events through.
ROLLBACK_ASSET_ALIAS = "sensei_rollback_tables"


@dataclass
class TableAssets:
    """The Asset URIs a rollback read (inputs) and changed (outputs), each with the engine's hook."""

    inputs: list[tuple[str, Any]] = field(default_factory=list)
    outputs: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return [uri for uri, _ in self.outputs]


def _uris(engine: Engine, tables: Sequence[str]) -> list[tuple[str, Any]]:
    found = [engine.asset_uri(table) for table in tables]
    return [(uri, engine.hook) for uri in found if uri]


def table_assets(manifest: Manifest, plan: RollbackPlan) -> TableAssets:
    """The tables' Assets: a reverse migration reads the target and changes the source; every
    other strategy changes the target.

    :param manifest: the migration.
    :param plan: the plan that was executed.
    """
    target = get_engine(manifest.target.conn_id)
    if plan.strategy == Strategy.REVERSE_MIGRATION:
        source = get_engine(manifest.source.conn_id)
        return TableAssets(
            inputs=_uris(target, plan.table_names), outputs=_uris(source, [t.source for t in plan.tables])
        )
    return TableAssets(outputs=_uris(target, plan.table_names))


def emit_asset_events(outlet_events: Any, uris: Sequence[str], extra: Mapping[str, Any]) -> list[str]:
    """Add an asset event per URI through the rollback's alias.

    :param outlet_events: the task context's ``outlet_events``.
    :param uris: the Assets whose data changed.
    :param extra: the events' extra (JSON): which rollback, which step.
    """
    from airflow.sdk import Asset, AssetAlias

    accessor = outlet_events[AssetAlias(ROLLBACK_ASSET_ALIAS)]
    for uri in uris:
        accessor.add(Asset(uri=uri), extra=dict(extra))
    return list(uris)


def collect_lineage(assets: TableAssets) -> None:
    """Hand the inputs and outputs to the hook lineage collector (a no-op without a reader)."""
    from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

    collector = get_hook_lineage_collector()
    for uri, hook in assets.inputs:
        collector.add_input_asset(context=hook, uri=uri)
    for uri, hook in assets.outputs:
        collector.add_output_asset(context=hook, uri=uri)


def tell_airflow(
    context: Mapping[str, Any], manifest: Manifest, plan: RollbackPlan, step: str, *, lineage: bool = True
) -> dict[str, Any]:
    """Asset events (and, with ``lineage``, hook lineage) for the tables ``plan`` changed. Never raises.

    :param context: the task's context.
    :param manifest: the migration.
    :param plan: the plan that was executed.
    :param step: the runbook step (``execute`` or ``resume``), in the events' extra.
    :param lineage: also report inputs and outputs to the hook lineage collector.
    :returns: ``{"asset_events": [uri, ...]}``, or ``{"asset_events_error": why}``.
    """
    from sensei_airflow.redaction import redact_error

    try:
        assets = table_assets(manifest, plan)
        if lineage:
            collect_lineage(assets)
        extra = {
            "migration_id": plan.migration_id,
            "rollback_id": plan.rollback_id,
            "strategy": plan.strategy.value,
            "step": step,
        }
        return {"asset_events": emit_asset_events(context["outlet_events"], assets.changed, extra)}
    except Exception as exc:  # telling Airflow is a courtesy; the rollback's work is done
        log.warning("asset events and lineage of %s not recorded: %s", step, redact_error(exc))
        return {"asset_events_error": redact_error(exc)}
