from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sensei_airflow.demo import shop
from sensei_airflow.manifest import ManifestInvalid, Strategy, load_manifests, parse_manifest


def write(folder: Path, name: str, data: object) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_demo_manifest_loads_with_its_phases_and_mappings(tmp_path):
    write(tmp_path, "shop.yaml", shop.manifest())
    manifests = load_manifests(tmp_path)
    assert manifests.errors == []
    manifest = manifests.get("mig_shop_2026")
    assert [t.target for t in manifest.tables] == ["crm.customers", "sales.orders", "sales.order_items"]
    balance = next(c for c in manifest.tables[0].columns if c.target == "balance_cents")
    assert balance.reversible and balance.inverse
    assert manifest.state.conn_id == "sensei_state"
    assert manifest.rollback.preferred_strategy is Strategy.TRUNCATE


def test_contract_example_manifest_is_accepted():
    text = """
id: mig_shop_2026
description: Shop DB to warehouse
source: {conn_id: shop_source}
target: {conn_id: shop_target}
state:  {conn_id: sensei_state}
started_at: "2026-02-02T08:00:00Z"
phases:
  - phase: 1
    tables:
      - source: public.customers
        target: crm.customers
        key: [id]
        columns:
          - {source: id, target: id}
          - {source: email, target: email_address}
          - {source: balance, target: balance_cents, forward: "balance * 100", inverse: "balance_cents / 100"}
          - {source: notes, target: notes_upper, forward: "upper(notes)"}
  - phase: 2
    tables:
      - {source: public.orders, target: sales.orders, key: [id]}
  - phase: 3
    tables:
      - {source: public.order_items, target: sales.order_items, key: [order_id, line_no]}
rollback:
  backup_before_start: true
  backup_type: logical
  backup_location: s3://backups/
  rollback_window_hours: 168
  preferred_strategy: point_in_time
  fallback_strategy: reverse_migration
  verify_rollback: true
  pre_migration_backup:
    enabled: true
    type: logical
    storage: s3://backups/pre-migration/
    retention_days: 30
    schedule: "@daily"
  point_in_time: {}
downstream:
  dags: [reporting_daily]
  db_roles: [analyst]
notify:
  - {conn_id: ops_smtp, to: [dba@example.com]}
  - {conn_id: ops_webhook}
"""
    manifest = parse_manifest(text, "contract.yaml")
    notes = next(c for c in manifest.tables[0].columns if c.target == "notes_upper")
    assert not notes.reversible
    assert manifest.rollback.fallback_strategy is Strategy.REVERSE_MIGRATION
    assert manifest.window_closes_at().isoformat() == "2026-02-09T08:00:00+00:00"


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (lambda m: m.pop("source"), "source", "Field required"),
        (lambda m: m.update(id="Mig-Shop"), "id", "should match pattern"),
        (lambda m: m.update(started_at="2026-02-02T08:00:00"), "started_at", "timezone"),
        (lambda m: m.update(bogus=1), "bogus", "Extra inputs are not permitted"),
        (lambda m: m["phases"][1]["tables"][0].update(key=[]), "phases.1.tables.0.key", "at least 1"),
        (
            lambda m: m["phases"][1]["tables"][0].update(target="sales.orders.archive"),
            "phases.1.tables.0.target",
            "has 3 dot-separated parts, but a table name is table or schema.table: a part holding a dot must "
            'be quoted ("sales.orders".archive or sales."orders.archive")',
        ),
        (
            lambda m: m["phases"][1]["tables"][0].update(target='sales.say "hi"'),
            "phases.1.tables.0.target",
            'holds a double quote: quote the part and write the quote twice: "say ""hi"""',
        ),
        (
            lambda m: m["phases"][1]["tables"][0].update(key=['"id']),
            "phases.1.tables.0.key.0",
            "has an unterminated quote",
        ),
        (
            lambda m: m["phases"][0]["tables"][0]["columns"][0].update(target=" id"),
            "phases.0.tables.0.columns.0.target",
            """starts or ends with whitespace: quote it to keep the spaces (" id"), or remove them""",
        ),
        (
            lambda m: m["rollback"].update(preferred_strategy="magic"),
            "rollback.preferred_strategy",
            "Input should be",
        ),
        (lambda m: m.update(state={"conn_id": "shop_target"}), "", "audit trail cannot live on the target"),
        (lambda m: m["phases"][2].update(phase=1), "", "phase numbers must be unique"),
    ],
)
def test_bad_manifest_names_file_key_and_problem(tmp_path, change, key, problem):
    data = shop.manifest()
    change(data)
    path = write(tmp_path, "bad.yaml", data)
    with pytest.raises(ManifestInvalid) as raised:
        parse_manifest(path.read_text(), str(path))
    messages = [str(e) for e in raised.value.errors]
    assert any(m.startswith(f"{path}: {key}") and problem in m for m in messages), messages


def test_unicode_identifiers_are_plain_identifiers(tmp_path):
    data = shop.manifest()
    data["phases"][1]["tables"][0]["target"] = "ventes.commandes_été"
    manifest = parse_manifest(yaml.safe_dump(data, allow_unicode=True), "unicode.yaml")
    assert manifest.resolve_table("commandes_été").target == "ventes.commandes_été"


def test_one_bad_file_never_hides_the_others(tmp_path):
    write(tmp_path, "a_good.yaml", shop.manifest(migration_id="mig_a"))
    write(tmp_path, "b_broken_yaml.yaml", "id: [unclosed\n")
    write(tmp_path, "c_not_a_mapping.yaml", "- just\n- a list\n")
    bad = shop.manifest(migration_id="mig_c")
    del bad["phases"]
    write(tmp_path, "d_invalid.yaml", bad)
    write(tmp_path, "e_duplicate.yaml", shop.manifest(migration_id="mig_a"))
    write(tmp_path, "f_good.yml", shop.manifest(migration_id="mig_f"))
    (tmp_path / "notes.txt").write_text("ignored")
    manifests = load_manifests(tmp_path)
    assert sorted(manifests.manifests) == ["mig_a", "mig_f"]
    problems = {Path(e.path).name: str(e) for e in manifests.errors}
    assert set(problems) == {
        "b_broken_yaml.yaml",
        "c_not_a_mapping.yaml",
        "d_invalid.yaml",
        "e_duplicate.yaml",
    }
    assert "not valid YAML" in problems["b_broken_yaml.yaml"]
    assert "must be a YAML mapping" in problems["c_not_a_mapping.yaml"]
    assert "phases: Field required" in problems["d_invalid.yaml"]
    assert "already used by" in problems["e_duplicate.yaml"]


def test_unknown_migration_lists_the_known_ones(tmp_path):
    write(tmp_path, "a.yaml", shop.manifest(migration_id="mig_a"))
    with pytest.raises(LookupError, match=r"unknown migration 'nope'.*known: mig_a"):
        load_manifests(tmp_path).get("nope")


def test_missing_folder_is_an_empty_set(tmp_path):
    manifests = load_manifests(tmp_path / "absent")
    assert manifests.manifests == {} and manifests.errors == []


def test_table_resolution_qualified_unqualified_and_ambiguous(tmp_path):
    data = shop.manifest()
    data["phases"].append(
        {
            "phase": 4,
            "tables": [{"source": "public.orders_archive", "target": "archive.orders", "key": ["id"]}],
        }
    )
    manifest = parse_manifest(yaml.safe_dump(data), "m.yaml")
    assert manifest.resolve_table("order_items").target == "sales.order_items"
    assert manifest.resolve_table("archive.orders").target == "archive.orders"
    with pytest.raises(
        LookupError, match=r"ambiguous.*(archive\.orders, sales\.orders|sales\.orders, archive\.orders)"
    ):
        manifest.resolve_table("orders")
    with pytest.raises(LookupError, match="not part of migration"):
        manifest.resolve_table("orders; DROP TABLE x")


def hostile(columns, key=("id",), target="sales.orders"):
    data = shop.manifest()
    data["phases"][1]["tables"][0].update(target=target, key=list(key), columns=columns)
    return data


def test_a_spaced_source_column_is_accepted_however_it_is_written(tmp_path):
    # the issue: source column "Display Name" was refused, so every rollback of the migration failed
    data = hostile(
        [
            {"source": "id", "target": "id"},
            {"source": '"Display Name"', "target": "Display Name"},
            {"source": "Straße", "target": '"Straße"'},
            {"source": "order", "target": "select"},
            {"source": '"Quoted"', "target": '"a.b"'},
            {"source": '"say ""hi"""', "target": "user"},
        ],
        key=["id"],
        target='"Sales Data"."Order.Items"',
    )
    manifest = parse_manifest(yaml.safe_dump(data, allow_unicode=True), "names.yaml")
    table = manifest.phases[1].tables[0]
    # stored in canonical form: quotes that change nothing on any engine are dropped
    assert table.target == 'Sales Data."Order.Items"'
    assert table.target_name == '"Order.Items"'
    assert table.key == ["id"]
    assert [(c.source, c.target) for c in table.columns] == [
        ("id", "id"),
        ("Display Name", "Display Name"),
        ("Straße", "Straße"),
        ("order", "select"),
        ('"Quoted"', '"a.b"'),
        ('"say ""hi"""', "user"),
    ]


def test_names_are_compared_parsed_not_as_raw_text(tmp_path):
    # the same column written twice, once quoted: a duplicate
    data = hostile([{"source": "id", "target": "id"}, {"source": "x", "target": '"Display Name"'},
                    {"source": "y", "target": "Display Name"}])  # fmt: skip
    with pytest.raises(ManifestInvalid, match="target column 'Display Name' is mapped twice"):
        parse_manifest(yaml.safe_dump(data), "dup.yaml")
    # the key written quoted, the column not: the same column
    data = hostile([{"source": "Order No", "target": "Order No"}], key=['"Order No"'])
    assert parse_manifest(yaml.safe_dump(data), "key.yaml").phases[1].tables[0].key == ["Order No"]
    # "id" quoted is another column than id on Snowflake and Oracle: the message says so
    data = hostile([{"source": "id", "target": '"id"'}], key=["id"])
    with pytest.raises(ManifestInvalid) as raised:
        parse_manifest(yaml.safe_dump(data), "fold.yaml")
    assert str(raised.value.errors[0]).endswith(
        """key column 'id' is not among the mapped target columns (a column is written "id": spell the """
        "key the same way)"
    )
    # two tables that are the same once parsed
    data = shop.manifest()
    data["phases"][0]["tables"][0]["target"] = "Sales Data.Order Items"
    data["phases"][1]["tables"][0]["target"] = '"Sales Data"."Order Items"'
    with pytest.raises(ManifestInvalid, match=r"target table 'Sales Data\.Order Items' appears twice"):
        parse_manifest(yaml.safe_dump(data), "twice.yaml")


def test_resolve_table_accepts_every_written_form(tmp_path):
    data = hostile([{"source": "id", "target": "id"}], target='"Sales Data"."Order.Items"')
    data["phases"][0]["tables"][0]["target"] = 'crm."customers"'
    manifest = parse_manifest(yaml.safe_dump(data), "forms.yaml")
    for written in ['"Sales Data"."Order.Items"', 'Sales Data."Order.Items"', '"Order.Items"']:
        assert manifest.resolve_table(written).target == 'Sales Data."Order.Items"', written
    for written in ['crm."customers"', "crm.customers", "customers", '"customers"']:
        assert manifest.resolve_table(written).target == 'crm."customers"', written
    with pytest.raises(
        LookupError, match=r"table 'Order\.Items\.x' is not a table name: .*3 dot-separated parts"
    ):
        manifest.resolve_table("Order.Items.x")
