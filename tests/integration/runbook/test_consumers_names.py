"""A consumer role named with a space loses and regains its grants on tables named as real schemas name
them; the Asset URI of such a table; against real PostgreSQL (tests/hostile_shop.py)."""

from __future__ import annotations

import uuid

import pytest

from sensei_airflow import consumers
from sensei_airflow.engines import get_engine
from sensei_airflow.state import StateStore
from tests import hostile_shop as shop

GRANTS_OF = """
SELECT n.nspname, c.relname, a.privilege_type FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
WHERE r.rolname = %s ORDER BY 1, 2, 3
"""


@pytest.fixture
def team(databases, migrations_dir):
    """Role ``Analysts | Team <id>`` with grants on two tables in scope and one outside it."""
    role = f"Analysts | Team {uuid.uuid4().hex[:6]}"
    with databases.connect("target") as conn:
        shop.prepare_target(conn)
        conn.execute(f'CREATE ROLE "{role}"')
        conn.execute(f'GRANT SELECT, INSERT ON "Sales Data"."user" TO "{role}"')
        conn.execute(f'GRANT SELECT ON "Straße.Ümlaut"."Order Items, 2026" TO "{role}"')
        conn.execute(f'GRANT SELECT ON "Sales Data"."Länder | Countries" TO "{role}"')
    yield role
    with databases.connect("target") as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def grants_of(databases, role: str) -> list[tuple[str, str, str]]:
    with databases.connect("target") as conn:
        return [tuple(r) for r in conn.execute(GRANTS_OF, (role,)).fetchall()]


def test_a_spaced_role_loses_and_regains_its_grants_on_such_tables(databases, migrations_dir, team):
    document = shop.manifest()
    document["downstream"] = {"db_roles": [team]}  # unquoted: a space and a pipe need no quotes
    manifest = shop.write_manifest(migrations_dir, document)
    store, target = StateStore(manifest.state.conn_id), get_engine(manifest.target.conn_id)
    before = grants_of(databases, team)
    scope = [target.qualify(t.target) for t in manifest.tables]

    halted = consumers.halt(manifest, "run_1", store, target, scope, api=None)

    assert grants_of(databases, team) == [("Sales Data", "Länder | Countries", "SELECT")]
    assert {(g["role"], g["table"]) for g in halted.grants} == {
        (team, "Sales Data.user"),
        (team, '"Straße.Ümlaut".Order Items, 2026'),
    }
    assert f'REVOKE INSERT, SELECT ON TABLE "Sales Data"."user" FROM "{team}"' in halted.statements  # noqa: S608

    consumers.resume(manifest, "run_1", store, target, api=None)

    assert grants_of(databases, team) == before
    assert store.open_holds(manifest.id) == []


def test_the_asset_uri_of_such_a_table_is_percent_encoded(databases):
    target = get_engine("shop_target")
    uri = target.asset_uri('"Straße.Ümlaut"."Order Items, 2026"')
    assert uri is not None
    assert uri.endswith(f"/{databases.target}/Stra%C3%9Fe.%C3%9Cmlaut/Order%20Items%2C%202026")
    assert target.asset_uri("sales.orders").endswith(f"/{databases.target}/sales/orders")  # plain: unchanged
