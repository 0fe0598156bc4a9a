from __future__ import annotations

import pytest

from sensei_airflow.conf import InvalidRequest, RollbackRequest, rollback_params

SEED_BODIES = [
    {"strategy": "truncate"},
    {"strategy": "reverse_migration", "verify_after": True},
    {"strategy": "point_in_time", "restore_to": "2026-02-02T07:59:00Z"},
    {"strategy": "backup_restore", "backup_id": "bkp_abc123"},
    {"strategy": "truncate", "scope": "phase", "phase": 3},
    {"strategy": "truncate", "scope": "tables", "tables": ["orders", "order_items"]},
]


@pytest.mark.parametrize("body", SEED_BODIES)
def test_seed_bodies_are_valid_requests(body):
    request = RollbackRequest.parse({"migration_id": "mig_shop_2026", **body})
    assert request.conf()["strategy"] == body["strategy"]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"strategy": "truncate"}, "migration_id: is required"),
        ({"migration_id": "mig", "strategy": "nuke"}, "strategy: Input should be"),
        ({"migration_id": "mig", "stratgy": "truncate"}, "stratgy: unknown key"),
        ({"migration_id": "mig", "scope": "phase"}, "needs a phase number"),
        ({"migration_id": "mig", "scope": "tables", "tables": []}, "needs a non-empty list"),
        ({"migration_id": "mig", "phase": 2}, "phase is only used with scope 'phase'"),
        (
            {"migration_id": "mig", "scope": "phase", "phase": 0},
            "phase: Input should be greater than or equal to 1",
        ),
        (
            {"migration_id": "mig", "restore_to": "2026-02-02T07:59:00"},
            "restore_to: Input should have timezone info",
        ),
        ({"migration_id": "mig", "strategy": "truncate", "backup_id": "bkp_1"}, "backup_id is only used"),
        ({"migration_id": "mig", "backup_id": "bkp'; DROP"}, "backup_id: String should match pattern"),
        ({"migration_id": "../etc", "strategy": "truncate"}, "migration_id: String should match pattern"),
        ({"migration_id": "mig", "dry_run": "maybe"}, "dry_run: Input should be a valid boolean"),
    ],
)
def test_bad_requests_are_rejected_with_the_key(conf, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        RollbackRequest.parse(conf)


def test_params_defaults_validate_and_offer_known_migrations():
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(rollback_params(["mig_b", "mig_a"]))
    resolved = params.validate()
    assert resolved["strategy"] == "auto" and resolved["dry_run"] is False
    assert params.get_param("migration_id").schema["examples"] == ["mig_a", "mig_b"]
    assert next(iter(params)) == "dry_run"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("strategy", "nuke"),
        ("scope", "everything"),
        ("phase", 0),
        ("phase", "three"),
        ("tables", "orders"),
        ("backup_id", "bkp'; DROP"),
        ("dry_run", "maybe"),
    ],
)
def test_form_schema_and_model_reject_the_same_values(key, value):
    """What the UI form / REST API refuse, the model refuses too (and the other way round)."""
    from airflow.sdk.definitions.param import ParamValidationError

    param = rollback_params(["mig_a"])[key]
    with pytest.raises(ParamValidationError):
        param.resolve(value)
    conf = {"migration_id": "mig_a", "scope": "phase" if key == "phase" else "all", key: value}
    with pytest.raises(InvalidRequest):
        RollbackRequest.parse(conf)


@pytest.mark.parametrize("body", SEED_BODIES)
def test_form_schema_accepts_what_the_model_accepts(body):
    params = rollback_params(["mig_shop_2026"])
    for key, value in {"migration_id": "mig_shop_2026", **body}.items():
        assert params[key].resolve(value) == value


def test_tables_take_any_written_form():
    tables = [
        "orders",
        "sales.orders",
        "Sales Data.Order Items",
        '"Sales Data"."Order.Items"',
        'public."a""b"',
        "Straße.Ümlaut",
        "  user  ",  # surrounding whitespace (a form line) is dropped
        "Order Items, 2026",
    ]
    request = RollbackRequest.parse({"migration_id": "mig", "scope": "tables", "tables": tables})
    assert request.tables == [*tables[:6], "user", "Order Items, 2026"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "a.b.c",
            "tables.0: 'a.b.c' has 3 dot-separated parts, but a table name is table or schema.table: a part "
            'holding a dot must be quoted ("a.b".c or a."b.c")',
        ),
        ('sales."orders', """tables.0: 'sales."orders' has an unterminated quote"""),
        ("sales..orders", "tables.0: 'sales..orders' has an empty part"),
    ],
)
def test_a_table_that_is_not_a_name_is_refused_with_how_to_write_it(table, message):
    with pytest.raises(InvalidRequest) as raised:
        RollbackRequest.parse({"migration_id": "mig", "scope": "tables", "tables": [table]})
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_api_tables_parameter_repeated_or_comma_separated():
    from sensei_airflow.plugins.api import tables_parameter

    assert tables_parameter(["Order Items, 2026", " orders "]) == ["Order Items, 2026", "orders"]
    assert tables_parameter(['"Sales, EU".orders, order_items']) == ['"Sales, EU".orders', "order_items"]
    assert tables_parameter(["orders,order_items"]) == ["orders", "order_items"]
