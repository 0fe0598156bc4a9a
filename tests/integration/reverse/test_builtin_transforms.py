"""The built-in reversible transforms, rolled back for real: split, map, scale, timezone, cast, offset."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from tests.integration.reverse.conftest import make_plan

SOURCE_DDL = """
CREATE TABLE public.people (
    id        serial PRIMARY KEY,
    full_name text NOT NULL,
    status    text NOT NULL,
    price     numeric(10, 2) NOT NULL,
    seen_at   timestamp NOT NULL,
    qty       integer NOT NULL,
    score     integer NOT NULL
);
INSERT INTO public.people (full_name, status, price, seen_at, qty, score) VALUES
    ('Ada Lovelace', 'A', 12.50, '2026-03-29 01:30:00', 3, 7),
    ('Jean Paul Sartre', 'B', 0.99, '2026-07-14 12:00:00', 1, 0),
    ('Grace Hopper', 'A', 1000.00, '2026-01-01 00:00:00', 42, -5);
"""
TARGET_DDL = """
CREATE SCHEMA crm;
CREATE TABLE crm.people (
    id          bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    status      text NOT NULL,
    price_cents bigint NOT NULL,
    seen_at_utc timestamp NOT NULL,
    qty         bigint NOT NULL,
    score       integer NOT NULL
);
"""
COLUMNS = [
    {"source": "id", "target": "id", "transform": {"cast": {"to": "bigint", "from": "integer"}}},
    {
        "source": "full_name",
        "target": "first_name",
        "transform": {"split": {"delimiter": " ", "into": ["first_name", "last_name"]}},
    },
    {"source": "status", "target": "status", "transform": {"map": {"A": "active", "B": "blocked"}}},
    {"source": "price", "target": "price_cents", "transform": {"scale": 100}},
    {
        "source": "seen_at",
        "target": "seen_at_utc",
        "transform": {"timezone": {"from": "Europe/Paris", "to": "UTC"}},
    },
    {"source": "qty", "target": "qty", "transform": {"cast": {"to": "bigint"}}},
    {"source": "score", "target": "score", "transform": {"offset": 1000}},
]


def _manifest(migrations_dir: Any, columns: list[dict[str, Any]]) -> Any:
    from sensei_airflow.manifest import load_manifests

    document = {
        "id": "mig_people",
        "source": {"conn_id": "shop_source"},
        "target": {"conn_id": "shop_target"},
        "state": {"conn_id": "sensei_state"},
        "started_at": datetime.now(UTC).isoformat(),
        "phases": [
            {
                "phase": 1,
                "tables": [
                    {"source": "public.people", "target": "crm.people", "key": ["id"], "columns": columns}
                ],
            }
        ],
    }
    (migrations_dir / "mig_people.yaml").write_text(yaml.safe_dump(document))
    return load_manifests().get("mig_people")


def _migrate_forward(databases: Any, manifest: Any) -> None:
    """The forward migration, computed by the transforms' own forward expressions on the source."""
    from sensei_airflow.transforms import forward_columns

    forwards = [f for m in manifest.tables[0].columns for f in forward_columns(m)]
    with databases.connect("source") as src, databases.connect("target") as dst:
        src.execute(SOURCE_DDL)
        dst.execute(TARGET_DDL)
        select = ", ".join(f.forward for f in forwards)
        rows = src.execute(f"SELECT {select} FROM public.people").fetchall()  # noqa: S608
        names = ", ".join(f.target for f in forwards)
        marks = ", ".join(["%s"] * len(forwards))
        dst.cursor().executemany(f"INSERT INTO crm.people ({names}) VALUES ({marks})", rows)  # noqa: S608


def _strategy(manifest: Any) -> Any:
    from sensei_airflow.state import StateStore
    from sensei_airflow.strategies.reverse import ReverseMigrationStrategy

    return ReverseMigrationStrategy(manifest, StateStore(manifest.state.conn_id))


def _request() -> Any:
    from sensei_airflow.conf import RollbackRequest

    return RollbackRequest.parse({"migration_id": "mig_people", "strategy": "reverse_migration"})


def test_builtin_transforms_roll_back_exactly(databases, migrations_dir):
    manifest = _manifest(migrations_dir, COLUMNS)
    _migrate_forward(databases, manifest)
    assert databases.scalar("target", "SELECT price_cents FROM crm.people WHERE id = 1") == 1250
    assert databases.scalar("target", "SELECT last_name FROM crm.people WHERE id = 2") == "Paul Sartre"
    assert (
        str(databases.scalar("target", "SELECT seen_at_utc FROM crm.people WHERE id = 2"))
        == "2026-07-14 10:00:00"
    )
    with databases.connect("target") as conn:
        conn.execute(
            "UPDATE crm.people SET status = 'blocked', price_cents = 1999, score = 1500 WHERE id = 1"
        )
        conn.execute("DELETE FROM crm.people WHERE id = 3")
        conn.execute(
            "INSERT INTO crm.people VALUES (9, 'Alan', 'Turing', 'active', 5, '2026-06-23 08:00:00', 2, 1001)"
        )
    strategy = _strategy(manifest)
    plan = make_plan(manifest, strategy.assess(manifest.tables, _request()).tables)

    strategy.execute(plan)

    with databases.connect("source") as conn:
        rows = conn.execute("SELECT * FROM public.people ORDER BY id").fetchall()
    assert rows == [
        (1, "Ada Lovelace", "B", Decimal("19.99"), datetime(2026, 3, 29, 1, 30), 3, 500),
        (2, "Jean Paul Sartre", "B", Decimal("0.99"), datetime(2026, 7, 14, 12, 0), 1, 0),
        (9, "Alan Turing", "A", Decimal("0.05"), datetime(2026, 6, 23, 10, 0), 2, 1),
    ]
    assert strategy.verify(plan).passed
    assert databases.scalar("source", "SELECT nextval(pg_get_serial_sequence('public.people', 'id'))") == 10


def test_an_inverse_that_loses_information_is_refused_with_an_example(databases, migrations_dir):
    from sensei_airflow.plan import RefusedError

    _migrate_forward(databases, _manifest(migrations_dir, COLUMNS))
    before = databases.scalar("source", "SELECT count(*) FROM public.people")
    lossy_price = {
        "source": "price",
        "target": "price_cents",
        "forward": "(price * 100)::bigint",
        "inverse": "round(price_cents / 100.0, 1)",
    }
    manifest = _manifest(migrations_dir, [lossy_price if c["source"] == "price" else c for c in COLUMNS])
    with pytest.raises(
        RefusedError, match=r"crm\.people\.price_cents does not round-trip: key \d+ holds '\d+'"
    ):
        _strategy(manifest).assess(manifest.tables, _request())
    assert databases.scalar("source", "SELECT count(*) FROM public.people") == before
