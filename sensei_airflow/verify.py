"""Verification results, shared by every strategy: counts, samples and source comparison.

Also the engine-neutral comparison of two tables: order-independent checksums computed inside
each database, random samples compared column by column, and bisection by key range to
localise differences (the engines supply the SQL, see :class:`RowSource`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["passed", "failed", "skipped"]
T = TypeVar("T")


class TableCheck(BaseModel):
    """One table's check: what was expected, what was found."""

    model_config = ConfigDict(frozen=True)

    table: str
    check: str
    expected: Any = None
    actual: Any = None
    ok: bool


class Verification(BaseModel):
    """The verification block of the status document, with the evidence behind it."""

    model_config = ConfigDict(frozen=True)

    source_comparison: Outcome = "skipped"
    record_counts_match: bool | None = None
    sample_verification: Outcome = "skipped"
    checks: list[TableCheck] = Field(default_factory=list)
    #: what was compared with less than asked, or with something else (one line each; they fail nothing).
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def skipped(cls) -> Verification:
        return cls()

    @property
    def passed(self) -> bool:
        return (
            self.record_counts_match is not False
            and self.source_comparison != "failed"
            and self.sample_verification != "failed"
        )

    @property
    def failures(self) -> list[TableCheck]:
        return [c for c in self.checks if not c.ok]

    def status_block(self) -> dict[str, Any]:
        return {
            "source_comparison": self.source_comparison,
            "record_counts_match": self.record_counts_match,
            "sample_verification": self.sample_verification,
        }


def count_checks(check: str, expected: dict[str, int], actual: dict[str, int]) -> list[TableCheck]:
    """Compare expected with actual row counts, table by table."""
    return [
        TableCheck(table=t, check=check, expected=n, actual=actual.get(t), ok=actual.get(t) == n)
        for t, n in expected.items()
    ]


# -- source comparison: checksums, samples and diff localisation ---------------------------------
#
# A table is compared through two :class:`RowSource` objects, one per side, that render the
# same columns the same way (the source's columns; the target's inverse expressions cast to
# the source's types). Each side computes its checksum inside its own database; only counts,
# sums, a few key boundaries and sampled rows come back to Python.

KeyValues = tuple[str, ...]


@dataclass(frozen=True)
class KeyRange:
    """Keys ``lo < key <= hi`` (row comparison, both optional: an open end)."""

    lo: KeyValues | None = None
    hi: KeyValues | None = None

    def as_json(self) -> dict[str, list[str] | None]:
        return {"after": list(self.lo) if self.lo else None, "up_to": list(self.hi) if self.hi else None}

    def __str__(self) -> str:
        lo = ",".join(self.lo) if self.lo else "-inf"
        hi = ",".join(self.hi) if self.hi else "+inf"
        return f"({lo} .. {hi}]"


def split_range(key_range: KeyRange, boundaries: Sequence[KeyValues]) -> list[KeyRange]:
    """Cut a range at the given (ascending, inside the range) boundaries; covers the range exactly."""
    edges: list[KeyValues | None] = [key_range.lo, *boundaries, key_range.hi]
    return [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class RowSource(Protocol):
    """One side of a table comparison, as its engine computes it."""

    #: names of the compared columns (source names), in order.
    columns: list[str]

    def checksum(self, key_range: KeyRange) -> tuple[int, int]:
        """``(row count, order-independent hash sum)`` of the rows in the range."""

    def boundaries(self, key_range: KeyRange, parts: int) -> list[KeyValues]:
        """Up to ``parts - 1`` ascending keys cutting the range into parts of similar size."""

    def sample_keys(self, n: int) -> list[KeyValues]:
        """About ``n`` random keys."""

    def rows(self, keys: Sequence[KeyValues]) -> dict[KeyValues, tuple[str | None, ...]]:
        """The rows with these keys, columns rendered as text, by key."""


def both(left: Callable[[], T], right: Callable[[], T]) -> tuple[T, T]:
    """Run two database calls at once (each side is a different database)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(left), pool.submit(right)
        return a.result(), b.result()


@dataclass(frozen=True)
class RangeDiff:
    """A key range whose rows differ, with each side's row count."""

    key_range: KeyRange
    left_rows: int
    right_rows: int

    def as_json(self) -> dict[str, Any]:
        return {**self.key_range.as_json(), "source_rows": self.left_rows, "expected_rows": self.right_rows}


def localise_differences(
    left: RowSource,
    right: RowSource,
    key_range: KeyRange | None = None,
    *,
    parts: int = 8,
    min_rows: int = 64,
    max_ranges: int = 20,
) -> list[RangeDiff]:
    """Bisect by key range (as data-diff does) down to ranges of at most ``min_rows`` rows.

    Ranges whose checksums agree are dropped at each level; cut points come from whichever
    side holds more rows in the range. At most ``max_ranges`` ranges are returned.
    """
    pending = [key_range or KeyRange()]
    found: list[RangeDiff] = []
    while pending and len(found) < max_ranges:
        current = pending.pop(0)
        (lc, lh), (rc, rh) = both(partial(left.checksum, current), partial(right.checksum, current))
        if (lc, lh) == (rc, rh):
            continue
        if max(lc, rc) <= min_rows:
            found.append(RangeDiff(current, lc, rc))
            continue
        cutter = left if lc >= rc else right
        cuts = cutter.boundaries(current, parts)
        if not cuts:
            found.append(RangeDiff(current, lc, rc))
            continue
        pending[:0] = split_range(current, cuts)
    return found[:max_ranges]


class HashedRowSource(RowSource, Protocol):
    """A side that can also list its rows' keys with a hash of each row (what a change count needs)."""

    def row_hashes(self, key_range: KeyRange) -> dict[KeyValues, int]:
        """Key -> hash of the row (the same hash :meth:`RowSource.checksum` sums), for the range."""


@dataclass(frozen=True)
class ChangeCount:
    """What making ``left`` equal to ``right`` takes: rows to insert, to update, to delete.

    ``exact`` is False when the bound left differing key ranges unclassified: the counts are then
    lower bounds, and ``unclassified_rows`` says how many rows (left side, right side) those
    ranges hold.
    """

    inserted: int
    updated: int
    deleted: int
    exact: bool = True
    unclassified_rows: tuple[int, int] = (0, 0)

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "insert": self.inserted,
            "update": self.updated,
            "delete": self.deleted,
            "exact": self.exact,
        }
        if not self.exact:
            found["unclassified_rows"] = {
                "source": self.unclassified_rows[0],
                "target": self.unclassified_rows[1],
            }
        return found

    def describe(self) -> str:
        counts = f"insert {self.inserted}, update {self.updated}, delete {self.deleted}"
        if self.exact:
            return counts
        left, right = self.unclassified_rows
        return f"at least {counts} ({left} source and {right} target rows in differing key ranges not classified)"


def count_changes(
    left: HashedRowSource,
    right: HashedRowSource,
    *,
    leaf_rows: int = 1000,
    max_rows: int = 200_000,
    max_ranges: int = 2000,
    parts: int = 8,
) -> ChangeCount:
    """Rows to insert into, update in and delete from ``left`` to make it equal to ``right``, changing nothing.

    The bisection of :func:`localise_differences`: ranges whose in-database checksums agree are
    dropped; a differing range of at most ``leaf_rows`` rows a side (or one that cannot be cut
    further) is classified from both sides' (key, row hash) lists. At most ``max_rows`` rows are
    fetched and ``max_ranges`` ranges checksummed; what is left over adds only what its counts
    prove (more rows on one side) and makes the result a lower bound.
    """
    inserted = updated = deleted = 0
    fetched = 0
    left_over = [0, 0]
    pending = [KeyRange()]
    checked = 0
    while pending:
        current = pending.pop(0)
        (lc, lh), (rc, rh) = both(partial(left.checksum, current), partial(right.checksum, current))
        checked += 1
        if (lc, lh) == (rc, rh):
            continue
        cuts: list[KeyValues] = []
        if max(lc, rc) > leaf_rows and checked < max_ranges:
            cuts = (left if lc >= rc else right).boundaries(current, parts)
        if cuts:
            pending[:0] = split_range(current, cuts)
            continue
        if fetched + lc + rc > max_rows or checked >= max_ranges:
            left_over[0] += lc
            left_over[1] += rc
            inserted += max(0, rc - lc)
            deleted += max(0, lc - rc)
            continue
        mine, theirs = both(partial(left.row_hashes, current), partial(right.row_hashes, current))
        fetched += lc + rc
        for key, digest in theirs.items():
            if key not in mine:
                inserted += 1
            elif mine[key] != digest:
                updated += 1
        deleted += sum(1 for key in mine if key not in theirs)
    return ChangeCount(inserted, updated, deleted, left_over == [0, 0], (left_over[0], left_over[1]))


@dataclass(frozen=True)
class SampleResult:
    checked: int
    mismatches: list[dict[str, Any]]


def compare_sample(left: RowSource, right: RowSource, n: int = 200, *, limit: int = 10) -> SampleResult:
    """Compare about ``n`` random keys (drawn from both sides) column by column."""
    keys = list(dict.fromkeys([*right.sample_keys(n // 2 or 1), *left.sample_keys(n - n // 2 or 1)]))
    if not keys:
        return SampleResult(0, [])
    left_rows, right_rows = both(lambda: left.rows(keys), lambda: right.rows(keys))
    mismatches: list[dict[str, Any]] = []
    for key in keys:
        a, b = left_rows.get(key), right_rows.get(key)
        if a == b:
            continue
        if a is None or b is None:
            row = {"source": a and list(a), "expected": b and list(b)}
            mismatches.append({"key": list(key), "column": None, **row})
        else:
            for column, x, y in zip(left.columns, a, b, strict=True):
                if x != y:
                    mismatches.append({"key": list(key), "column": column, "source": x, "expected": y})
        if len(mismatches) >= limit:
            break
    return SampleResult(len(keys), mismatches)


@dataclass
class TableComparison:
    """Counts, checksum and sample of one table: source against the expected (inverse target) rows."""

    table: str
    source_rows: int
    expected_rows: int
    checksums_match: bool | None
    sample: SampleResult
    differing_ranges: list[RangeDiff] = field(default_factory=list)

    def checks(self) -> list[TableCheck]:
        found = [
            TableCheck(
                table=self.table,
                check="row count (source vs inverse of target)",
                expected=self.expected_rows,
                actual=self.source_rows,
                ok=self.source_rows == self.expected_rows,
            )
        ]
        if self.checksums_match is not None:
            found.append(
                TableCheck(
                    table=self.table,
                    check="checksum (source vs inverse of target)",
                    expected="equal",
                    actual="equal"
                    if self.checksums_match
                    else {"differing_key_ranges": [d.as_json() for d in self.differing_ranges]},
                    ok=self.checksums_match,
                )
            )
        found.append(
            TableCheck(
                table=self.table,
                check="sample of keys, column by column",
                expected=f"{self.sample.checked} rows equal",
                actual=self.sample.mismatches[:5] or f"{self.sample.checked} rows equal",
                ok=not self.sample.mismatches,
            )
        )
        return found


def compare_table(
    table: str, source: RowSource, expected: RowSource, *, sample_size: int = 200, checksums: bool = True
) -> TableComparison:
    """Compare a table's two sides: counts and checksums in one scan per side (run at once), then a sample.

    :param checksums: False when the two engines cannot hash rows the same way (counts and the
        sample are still compared).
    """
    whole = KeyRange()
    if checksums:
        (sc, sh), (ec, eh) = both(lambda: source.checksum(whole), lambda: expected.checksum(whole))
        match: bool | None = (sc, sh) == (ec, eh)
    else:
        sc, ec = both(lambda: source.checksum(whole)[0], lambda: expected.checksum(whole)[0])
        match = None
    sample = compare_sample(source, expected, sample_size)
    diffs = localise_differences(source, expected) if match is False else []
    return TableComparison(table, sc, ec, match, sample, diffs)


def comparison_verification(
    comparisons: Sequence[TableComparison], extra: Sequence[TableCheck] = ()
) -> Verification:
    """The verification block from table comparisons (plus any other checks)."""
    checks = [c for comparison in comparisons for c in comparison.checks()] + list(extra)
    counts_ok = all(c.source_rows == c.expected_rows for c in comparisons)
    sums_ok = all(c.checksums_match is not False for c in comparisons) and counts_ok
    samples_ok = all(not c.sample.mismatches for c in comparisons)
    return Verification(
        source_comparison="passed" if sums_ok and all(c.ok for c in extra) else "failed",
        record_counts_match=counts_ok,
        sample_verification="passed" if samples_ok else "failed",
        checks=checks,
    )
