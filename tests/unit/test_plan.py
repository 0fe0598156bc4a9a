from __future__ import annotations

import pytest
import yaml

from sensei_airflow.conf import InvalidRequest, RollbackRequest
from sensei_airflow.demo import shop
from sensei_airflow.engines.base import ForeignKey
from sensei_airflow.manifest import Strategy, parse_manifest
from sensei_airflow.plan import RefusedError, dependency_order, resolve_scope, strategy_candidates

MANIFEST = parse_manifest(yaml.safe_dump(shop.manifest()), "shop.yaml")


def request(**kwargs):
    return RollbackRequest.parse({"migration_id": "mig_shop_2026", **kwargs})


def test_scope_all_phase_and_tables():
    assert [t.target for t in resolve_scope(MANIFEST, request())] == [
        "crm.customers",
        "sales.orders",
        "sales.order_items",
    ]
    assert [t.target for t in resolve_scope(MANIFEST, request(scope="phase", phase=3))] == [
        "sales.order_items"
    ]
    chosen = resolve_scope(
        MANIFEST, request(scope="tables", tables=["order_items", "orders", "sales.orders"])
    )
    assert [t.target for t in chosen] == ["sales.orders", "sales.order_items"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"scope": "phase", "phase": 9},
            r"phase 9 does not exist in migration mig_shop_2026 \(phases: 1, 2, 3\)",
        ),
        (
            {"scope": "tables", "tables": ["invoices"]},
            r"table 'invoices' is not part of migration mig_shop_2026",
        ),
        ({"scope": "tables", "tables": ["orders; DROP TABLE x"]}, r"'orders; DROP TABLE x' is not part"),
        ({"scope": "tables", "tables": ['"Orders"']}, r"""'"Orders"' is not part"""),
    ],
)
def test_scope_refusals(kwargs, message):
    with pytest.raises(RefusedError, match=message):
        resolve_scope(MANIFEST, request(**kwargs))


def test_a_table_name_that_breaks_the_grammar_is_refused_with_the_request():
    with pytest.raises(InvalidRequest) as raised:
        request(scope="tables", tables=['orders"'])
    assert str(raised.value) == (
        """tables.0: part 'orders"' of 'orders"' holds a double quote: quote the part and write the quote """
        """twice: "orders""\""""
    )


def test_dependency_order_puts_parents_first_whatever_the_listing():
    fks = [
        ForeignKey("fk_items_orders", "sales.order_items", "sales.orders"),
        ForeignKey("fk_orders_customers", "sales.orders", "crm.customers"),
        ForeignKey("fk_outside", "crm.notes", "crm.customers"),
    ]
    listed = ["sales.order_items", "sales.orders", "crm.customers"]
    assert dependency_order(listed, fks) == ["crm.customers", "sales.orders", "sales.order_items"]


def test_dependency_order_survives_cycles_and_self_references():
    fks = [
        ForeignKey("a_b", "a", "b"),
        ForeignKey("b_a", "b", "a"),
        ForeignKey("c_c", "c", "c"),
        ForeignKey("c_a", "c", "a"),
    ]
    ordered = dependency_order(["a", "b", "c"], fks)
    assert sorted(ordered) == ["a", "b", "c"]
    assert ordered.index("a") < ordered.index("c")


def test_strategy_candidates_auto_uses_preferred_then_fallback():
    data = shop.manifest()
    data["rollback"].update(preferred_strategy="point_in_time", fallback_strategy="truncate")
    manifest = parse_manifest(yaml.safe_dump(data), "m.yaml")
    assert strategy_candidates(manifest, request()) == [Strategy.POINT_IN_TIME, Strategy.TRUNCATE]
    assert strategy_candidates(manifest, request(strategy="truncate")) == [Strategy.TRUNCATE]
