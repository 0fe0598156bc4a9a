"""forward/inverse expressions are parsed when the manifest loads: one expression, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sensei_airflow.demo import shop
from sensei_airflow.expressions import check_expression, denied
from sensei_airflow.manifest import load_manifests

BALANCE = "phases.0.tables.0.columns.3"


def with_balance(tmp_path: Path, **mapping: Any) -> list[str]:
    """The demo manifest with the balance column's mapping changed; the load errors."""
    data = shop.manifest()
    data["phases"][0]["tables"][0]["columns"][3].update(mapping)
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(data))
    return [str(e) for e in load_manifests(tmp_path).errors]


@pytest.mark.parametrize(
    ("key", "text", "problem"),
    [
        ("inverse", "balance_cents / 100; DROP TABLE crm.customers", "statement separator (;)"),
        ("inverse", "balance_cents / 100;", "statement separator (;)"),
        ("forward", "balance * 100 -- keep\n; DELETE FROM crm.customers", "statement separator (;)"),
        ("inverse", "(SELECT max(balance_cents) FROM crm.customers)", "holds a subquery"),
        ("inverse", "balance_cents IN (SELECT 1)", "holds a subquery"),
        ("inverse", "nextval('crm.customers_id_seq')", "calls nextval()"),
        ("forward", "balance + setval('s', 1)", "calls setval()"),
        ("inverse", "pg_catalog.pg_sleep(10)", "calls pg_sleep()"),
        ("inverse", "pg_terminate_backend(1234)", "calls pg_terminate_backend()"),
        ("inverse", "dblink_exec('host=elsewhere', 'DELETE FROM t')", "calls dblink_exec()"),
        ("inverse", "pg_read_file('/etc/passwd')", "calls pg_read_file()"),
        ("inverse", "lo_import('/etc/passwd')", "calls lo_import()"),
        ("inverse", "set_config('search_path', 'evil', false)", "calls set_config()"),
        ("inverse", "length(query_to_xml('DELETE FROM t', true, true, ''))", "calls query_to_xml()"),
        ("inverse", "DROP TABLE crm.customers", "is not one SQL expression"),
        ("inverse", "balance_cents balance", "is not one SQL expression"),
        ("inverse", "   ", "is empty"),
    ],
)
def test_bad_expression_is_a_manifest_error_with_file_key_and_problem(
    tmp_path: Path, key: str, text: str, problem: str
) -> None:
    errors = with_balance(tmp_path, **{key: text})
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'shop.yaml'}: {BALANCE}.{key}: "), errors
    assert problem in errors[0], errors


def test_ordinary_expressions_load_unchanged(tmp_path: Path) -> None:
    text = "CASE WHEN balance_cents IS NULL THEN 0 ELSE round(balance_cents / 100.0, 2) END::numeric(12,2)"
    assert with_balance(tmp_path, inverse=text, forward="coalesce(balance, 0) * 100") == []
    mapping = load_manifests(tmp_path).get("mig_shop_2026").tables[0].columns[3]
    assert mapping.inverse == text  # nothing dropped or rewritten


def test_quoted_column_names_with_spaces_and_semicolons_in_strings() -> None:
    assert check_expression('"Display Name" * 100') == '"Display Name" * 100'
    assert check_expression("replace(\"Straße Name\", ';', ',')") == "replace(\"Straße Name\", ';', ',')"
    assert check_expression('"order" || \' \' || "user"') == '"order" || \' \' || "user"'


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("NEXTVAL", True),
        ("pg_catalog.pg_sleep_for", True),
        ('"lo_unlink"', True),
        ("pg_advisory_xact_lock", True),
        ("upper", False),
        ("split_part", False),
        ("my_schema.cents_to_euros", False),
        ("pg_size_pretty", False),
    ],
)
def test_deny_list_by_name_and_family(name: str, refused: bool) -> None:
    assert denied(name) is refused
