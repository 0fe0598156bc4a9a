"""count_changes(): exact on what it classifies, a stated lower bound beyond its row budget.

The two sides are plain in-memory tables behind the RowSource interface (the PostgreSQL side is
tested against real databases in tests/integration/reverse).
"""

from __future__ import annotations

from collections.abc import Sequence

from sensei_airflow.verify import KeyRange, KeyValues, count_changes


class Table:
    """Rows keyed by one integer key; checksum and boundaries as the engines compute them."""

    columns = ["value"]

    def __init__(self, rows: dict[int, str]) -> None:
        self.data = rows

    def _in(self, key_range: KeyRange) -> dict[int, str]:
        lo = int(key_range.lo[0]) if key_range.lo else None
        hi = int(key_range.hi[0]) if key_range.hi else None
        return {k: v for k, v in self.data.items() if (lo is None or k > lo) and (hi is None or k <= hi)}

    def checksum(self, key_range: KeyRange) -> tuple[int, int]:
        found = self._in(key_range)
        return len(found), sum(hash((k, v)) for k, v in found.items())

    def boundaries(self, key_range: KeyRange, parts: int) -> list[KeyValues]:
        keys = sorted(self._in(key_range))
        if len(keys) < 2:
            return []
        step = max(1, len(keys) // parts)
        return [(str(k),) for k in keys[step:-1:step]]

    def sample_keys(self, n: int) -> list[KeyValues]:
        return [(str(k),) for k in sorted(self.data)[:n]]

    def rows(self, keys: Sequence[KeyValues]) -> dict[KeyValues, tuple[str | None, ...]]:
        return {k: (self.data[int(k[0])],) for k in keys if int(k[0]) in self.data}

    def row_hashes(self, key_range: KeyRange) -> dict[KeyValues, int]:
        return {(str(k),): hash((k, v)) for k, v in self._in(key_range).items()}


SOURCE = {k: f"row {k}" for k in range(1, 5001)}
TARGET = {**{k: v for k, v in SOURCE.items() if k not in (10, 2000, 4999)}, 7: "changed", 3001: "changed",
          6001: "new", 6002: "new"}  # fmt: skip


def test_exact_counts_within_the_budget():
    changes = count_changes(Table(SOURCE), Table(TARGET), leaf_rows=100)
    assert (changes.inserted, changes.updated, changes.deleted, changes.exact) == (2, 2, 3, True)
    assert changes.describe() == "insert 2, update 2, delete 3"


def test_equal_sides_cost_one_checksum_and_count_nothing():
    changes = count_changes(Table(SOURCE), Table(dict(SOURCE)))
    assert changes.as_json() == {"insert": 0, "update": 0, "delete": 0, "exact": True}


def test_beyond_the_row_budget_the_counts_are_lower_bounds_and_say_so():
    changes = count_changes(Table(SOURCE), Table(TARGET), leaf_rows=100, max_rows=150)
    assert not changes.exact
    assert changes.inserted <= 2 and changes.updated <= 2 and changes.deleted <= 3
    assert sum(changes.unclassified_rows) > 0
    assert changes.describe().startswith("at least insert ")
    assert changes.as_json()["unclassified_rows"]["source"] == changes.unclassified_rows[0]
