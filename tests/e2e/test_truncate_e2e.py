from __future__ import annotations

from tests.fixtures import run_dag


def test_smoke(databases, migrations_dir, airflow_db):
    from sensei_airflow.demo import shop

    (migrations_dir / "mig_shop_2026.yaml").write_text(shop.manifest_yaml())
    out = run_dag("sensei_demo_migration")
    print(out)
    out = run_dag("sensei_rollback", {"migration_id": "mig_shop_2026", "strategy": "truncate"})
    print(out)
    assert out.state == "success"
