"""Database roles lose and regain exactly their grants; sequences — against real PostgreSQL (locks: tests/integration/test_lock.py)."""

from __future__ import annotations

import uuid

import pytest

from sensei_airflow import consumers
from sensei_airflow.engines import get_engine
from sensei_airflow.state import StateStore

GRANTS_OF = """
SELECT n.nspname || '.' || c.relname, a.privilege_type, a.is_grantable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
WHERE r.rolname = %s ORDER BY 1, 2
"""


def grants_of(databases, role: str) -> list[tuple[str, str, bool]]:
    with databases.connect("target") as conn:
        return [tuple(r) for r in conn.execute(GRANTS_OF, (role,)).fetchall()]


@pytest.fixture
def analyst(databases, migrated):
    """A role with grants on two tables in scope (one with grant option) and one outside it."""
    role = f"analyst_{uuid.uuid4().hex[:6]}"
    with databases.connect("target") as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT SELECT, INSERT ON sales.orders TO {role}")
        conn.execute(f"GRANT SELECT ON crm.customers TO {role} WITH GRANT OPTION")
        conn.execute(f"GRANT UPDATE (name) ON crm.customers TO {role}")
        conn.execute(f"GRANT SELECT ON crm.campaigns TO {role}")
    yield role
    with databases.connect("target") as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def _manifest(migrations_dir, role):
    from sensei_airflow.manifest import load_manifests

    path = migrations_dir / "mig_shop_2026.yaml"
    path.write_text(path.read_text().replace("db_roles: []", f"db_roles: [{role}]"))
    return load_manifests(migrations_dir).get("mig_shop_2026")


def test_role_loses_and_regains_exactly_its_grants(databases, migrations_dir, analyst):
    manifest = _manifest(migrations_dir, analyst)
    store, target = StateStore(manifest.state.conn_id), get_engine(manifest.target.conn_id)
    before = grants_of(databases, analyst)
    scope = ["crm.customers", "sales.orders"]

    halted = consumers.halt(manifest, "run_1", store, target, scope, api=None)

    assert grants_of(databases, analyst) == [("crm.campaigns", "SELECT", False)]
    assert {(g["role"], g["table"]) for g in halted.grants} == {(analyst, t) for t in scope}
    with databases.connect("target") as conn:
        conn.execute(f"SET ROLE {analyst}")
        with pytest.raises(Exception, match="permission denied"):
            conn.execute("SELECT count(*) FROM sales.orders")
    assert [h.object for h in store.open_holds(manifest.id)] == scope

    resumed = consumers.resume(manifest, "run_1", store, target, api=None)

    assert grants_of(databases, analyst) == before
    assert ("crm.customers", "SELECT", True) in before
    assert len(resumed["resumed"]) == 2
    assert store.open_holds(manifest.id) == []
    assert any("WITH GRANT OPTION" in s for s in resumed["statements"])


def test_a_crashed_halt_is_resumed_by_a_later_run_with_the_original_grants(
    databases, migrations_dir, analyst
):
    manifest = _manifest(migrations_dir, analyst)
    store, target = StateStore(manifest.state.conn_id), get_engine(manifest.target.conn_id)
    before = grants_of(databases, analyst)
    consumers.halt(manifest, "crashed_run", store, target, ["sales.orders"], api=None)
    # the crashed run never resumed; a later run halts again (nothing left to revoke) ...
    again = consumers.halt(manifest, "later_run", store, target, ["sales.orders"], api=None)
    assert again.grants[0]["halted_by"] == "crashed_run"

    consumers.resume(manifest, "later_run", store, target, api=None)

    assert grants_of(databases, analyst) == before
    closed = store.holds_of_run("crashed_run")
    assert [h.resumed_by for h in closed] == ["later_run"]


def test_an_unknown_role_refuses_before_anything_changes(databases, migrations_dir, migrated):
    from sensei_airflow.plan import RefusedError

    manifest = _manifest(migrations_dir, "nobody_here")
    store, target = StateStore(manifest.state.conn_id), get_engine(manifest.target.conn_id)
    with pytest.raises(RefusedError, match="role nobody_here does not exist"):
        consumers.halt(manifest, "run_x", store, target, ["sales.orders"], api=None)
    assert store.open_holds(manifest.id) == []


def test_sequences_follow_the_highest_key_after_rows_are_removed(databases, migrated):
    target = get_engine("shop_target")
    with databases.connect("target") as conn:
        conn.execute("DELETE FROM sales.order_items")
        conn.execute("DELETE FROM sales.orders WHERE id > 10")
        conn.execute("SELECT setval('sales.orders_id_seq', 5000)")
        conn.execute(
            "DELETE FROM crm.customers c WHERE NOT EXISTS "
            "(SELECT 1 FROM sales.orders o WHERE o.customer_id = c.id)"
        )

    resets = {
        r.table: r for r in target.reset_sequences(["sales.orders", "crm.customers", "sales.order_items"])
    }

    max_customer = databases.scalar("target", "SELECT max(id) FROM crm.customers")
    assert resets["sales.orders"].next_value == 11
    assert resets["crm.customers"].next_value == max_customer + 1
    assert "sales.order_items" not in resets  # no serial or identity column
    with databases.connect("target") as conn:
        new_id = conn.execute(
            "INSERT INTO sales.orders (customer_id, status, total, ordered_at) "
            "VALUES (1, 'new', 1, now()) RETURNING id"
        ).fetchone()[0]
    assert new_id == 11
