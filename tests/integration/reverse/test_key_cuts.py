"""Cutting a composite key into equal parts: by walking its index, or by numbering the rows.

Chunks of a reverse migration and the bisection of verify both cut key ranges. The cuts must
follow the key's own order (``9`` before ``10``, not the order of their text) whichever way
they are found, on names with spaces, quotes, reserved words and non-ASCII letters.
"""

from __future__ import annotations

import math

import pytest

from sensei_airflow.engines.postgres import PostgresEngine
from sensei_airflow.verify import KeyRange

TABLE = '"Sales Data"."Order Items"'
KEY = ("Région", "line no")  # a text column, then an integer whose text order differs
ROWS = [(region, line) for region in ("Zoë", "order", "Ängel", 'a "b"') for line in range(1, 26)]


def expected_cuts(keys: list[tuple[str, int]], parts: int) -> list[tuple[str, str]]:
    """The last key of each of ``parts`` equal parts (the last part excepted), in the key's order."""
    size = math.ceil(len(keys) / parts)
    return [(keys[n - 1][0], str(keys[n - 1][1])) for n in range(size, len(keys), size)]


@pytest.fixture
def reader(databases):
    with databases.connect("target") as conn:
        conn.execute('CREATE SCHEMA "Sales Data"')
        conn.execute(f'CREATE TABLE {TABLE} ("Région" text COLLATE "C", "line no" integer, "user" text)')
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s, 'x')", ROWS)  # noqa: S608
        conn.execute(f"ANALYZE {TABLE}")
    return PostgresEngine(databases.conn_ids["target"]).row_source("Sales Data.Order Items", list(KEY))


def _index(databases) -> None:
    with databases.connect("target") as conn:
        conn.execute(f'ALTER TABLE {TABLE} ADD PRIMARY KEY ("Région", "line no")')
        conn.execute(f"ANALYZE {TABLE}")


def _ordered(databases) -> list[tuple[str, int]]:
    with databases.connect("target") as conn:
        return conn.execute(f'SELECT "Région", "line no" FROM {TABLE} ORDER BY 1, 2').fetchall()  # noqa: S608


@pytest.mark.parametrize("indexed", [True, False], ids=["index walked", "rows numbered"])
def test_cuts_follow_the_key_order_either_way(reader, databases, indexed: bool) -> None:
    if indexed:
        _index(databases)
    keys = _ordered(databases)
    with reader.engine.hook.get_conn() as conn:
        where, params = reader._where(KeyRange())
        assert reader._index_ordered(conn, where, params) is indexed

    cuts = reader.boundaries(KeyRange(), 7)

    assert cuts == expected_cuts(keys, 7)  # in text order ("10" before "9") every cut would differ


@pytest.mark.parametrize("indexed", [True, False], ids=["index walked", "rows numbered"])
def test_a_sub_range_is_cut_inside_its_bounds(reader, databases, indexed: bool) -> None:
    if indexed:
        _index(databases)
    keys = _ordered(databases)
    lo, hi = keys[9], keys[80]  # (lo, hi]: 71 rows
    inside = keys[10:81]

    cuts = reader.boundaries(KeyRange((lo[0], str(lo[1])), (hi[0], str(hi[1]))), 4)

    assert cuts == expected_cuts(inside, 4)
    assert reader.boundaries(KeyRange(), 1) == []
