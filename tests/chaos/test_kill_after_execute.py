"""kill -9 in execute_sequences and in resume (after the strategy committed), then the rollback again.

The strategy's change is complete when these steps are killed; what they do is idempotent: the
rollback started again sets every sequence past its highest key and gives every halted role
exactly the grants it had before the first halt.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from sensei_airflow.engines import get_engine
from sensei_airflow.manifest import load_manifests
from sensei_airflow.state import StateStore
from tests.chaos.harness import (
    DEADLINE,
    MIG,
    dsns,
    hold,
    kill_when_blocked,
    release_crashed_lock,
    rows,
    staging,
    start_rollback,
    wait_until_gone,
)
from tests.fixtures import migrate_demo, run_dag
from tests.integration.reverse.conftest import assert_source_is_inverse_of_target
from tests.integration.runbook.support import write_manifest

pytestmark = pytest.mark.e2e
TARGET_TABLES = ["crm.customers", "sales.orders", "sales.order_items", "crm.campaigns"]
SCOPE = ["crm.customers", "sales.orders", "sales.order_items"]


def sequences(databases, which: str, tables: list[str]) -> dict[str, tuple[int, int]]:
    """(next value the sequence hands out, highest id) of each table's id sequence."""
    found = {}
    with databases.connect(which) as conn:
        for table in tables:
            sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
            last, called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()  # noqa: S608
            highest = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]  # noqa: S608
            found[table] = (last + 1 if called else last, highest)
    return found


def test_killed_in_execute_sequences_then_run_again(changed, databases):
    target = rows(databases, "target", TARGET_TABLES)
    conf = {"migration_id": MIG, "strategy": "reverse_migration"}
    # the reverse migration only reads the target; its sequence step is the first to need this one
    query = kill_when_blocked(
        databases.cluster.dsn(databases.target),
        ["ALTER SEQUENCE crm.customers_id_seq INCREMENT BY 1"],
        conf,
        "execute_sequences",
    )
    assert query.startswith("SELECT setval(")
    wait_until_gone(*dsns(databases))

    assert_source_is_inverse_of_target(databases)  # execute had committed: fully done
    assert rows(databases, "target", TARGET_TABLES) == target
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    assert_source_is_inverse_of_target(databases)
    assert rows(databases, "target", TARGET_TABLES) == target
    assert staging(databases) == []
    for which, tables in (
        ("target", ["crm.customers", "sales.orders"]),
        ("source", ["public.customers", "public.orders"]),
    ):
        for table, (following, highest) in sequences(databases, which, tables).items():
            assert following > highest, f"{which} {table}: next id {following}, highest {highest}"


@pytest.fixture
def analyst(databases, migrations_dir, airflow_db) -> Any:
    """A role (mixed case, non-ASCII) with grants on two tables in scope; the manifest halts it."""
    role = f"Analyst_Zoë_{uuid.uuid4().hex[:6]}"
    target = get_engine("shop_target")
    write_manifest(migrations_dir, downstream={"dags": [], "db_roles": [role]})
    migrate_demo(load_manifests(migrations_dir).get(MIG))
    quoted = target.quote_identifier(role)
    with databases.connect("target") as conn:
        conn.execute(f"CREATE ROLE {quoted}")
        conn.execute(f"GRANT SELECT, UPDATE ON crm.customers TO {quoted}")
        conn.execute(f"GRANT SELECT ON sales.orders TO {quoted} WITH GRANT OPTION")
    yield role
    with databases.connect("target") as conn:
        conn.execute(f"DROP OWNED BY {quoted}")
        conn.execute(f"DROP ROLE {quoted}")


def grants(databases, role: str) -> list[tuple[Any, ...]]:
    with databases.connect("target") as conn:
        return conn.execute(
            "SELECT n.nspname || '.' || c.relname, a.privilege_type, a.is_grantable FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN LATERAL aclexplode(c.relacl) a "
            "JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname = %s ORDER BY 1, 2",
            (role,),
        ).fetchall()


def first_grant_hold(databases, alive: Any) -> int:
    """The id of the first role hold halt records (waits until halt has recorded both)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        with databases.connect("state") as conn:
            if conn.execute("SELECT to_regclass('sensei.consumer_holds')").fetchone()[0]:
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM sensei.consumer_holds WHERE migration_id = %s AND kind = 'grants' "
                    "AND resumed_at IS NULL ORDER BY id", (MIG,)
                ).fetchall()]  # fmt: skip
                if len(ids) == 2:
                    return ids[0]
        assert alive(), "the rollback ended before halt recorded its holds"
        assert time.monotonic() < deadline, "halt never recorded its holds"
        time.sleep(0.02)


def test_killed_in_resume_then_run_again(analyst, databases):
    original = grants(databases, analyst)
    assert len(original) == 3
    conf = {"migration_id": MIG, "strategy": "truncate"}
    child = start_rollback(conf)
    try:
        first = first_grant_hold(databases, child.alive)
        # resume restores the first role's grants, then closes its record: that update waits here
        with hold(
            databases.cluster.dsn(databases.state),
            "SELECT id FROM sensei.consumer_holds WHERE id = %s FOR UPDATE",
            params=(first,),
        ) as held:
            _, query = held.blocked(child.alive, "resume closing its first record")
            assert "UPDATE sensei.consumer_holds SET resumed_at" in query
            child.kill()
    finally:
        child.stop()
    wait_until_gone(*dsns(databases))

    assert rows(databases, "target", SCOPE) == {t: [] for t in SCOPE}  # execute had committed
    partly = grants(databases, analyst)
    assert partly and partly != original  # one table's grants back, the other's still suspended
    open_holds = StateStore("sensei_state").open_holds(MIG)
    assert len(open_holds) == 2
    release_crashed_lock()
    outcome = run_dag("sensei_rollback", conf)

    assert outcome.state == "success", outcome.task_states
    assert grants(databases, analyst) == original  # exactly the grants it had before the first halt
    assert StateStore("sensei_state").open_holds(MIG) == []
    assert rows(databases, "target", SCOPE) == {t: [] for t in SCOPE}
