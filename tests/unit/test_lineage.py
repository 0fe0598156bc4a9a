"""The tables a rollback read and changed go to Airflow's hook lineage collector, with their hooks."""

from __future__ import annotations

import pytest

from sensei_airflow import lineage


def test_inputs_and_outputs_reach_the_hook_lineage_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lineage reader (e.g. the OpenLineage provider) then sees them; none installed here, so a
    real collector is put in place of the no-op one Airflow hands out without a reader."""
    import airflow.providers.common.compat.lineage.hook as compat
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.lineage import HookLineageCollector

    collector = HookLineageCollector()
    monkeypatch.setattr(compat, "get_hook_lineage_collector", lambda: collector)
    source, target = (
        PostgresHook(postgres_conn_id="shop_source"),
        PostgresHook(postgres_conn_id="shop_target"),
    )
    assets = lineage.TableAssets(
        inputs=[("postgres://db:5432/Lager/Sales%20Data/order", target)],
        outputs=[("postgres://db:5432/Quelle/public/%C3%BCbersicht", source)],
    )

    lineage.collect_lineage(assets)

    collected = collector.collected_assets
    assert [(i.asset.uri, i.context) for i in collected.inputs] == [
        ("postgres://db:5432/Lager/Sales%20Data/order", target)
    ]
    assert [(o.asset.uri, o.context) for o in collected.outputs] == [
        ("postgres://db:5432/Quelle/public/%C3%BCbersicht", source)
    ]
    assert assets.changed == ["postgres://db:5432/Quelle/public/%C3%BCbersicht"]
