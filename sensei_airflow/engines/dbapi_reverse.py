"""Reverse migration from a target that is not PostgreSQL: the inverse SELECT read in batches.

The inverse expressions (PostgreSQL-flavoured in the manifest) are rendered in the target's
dialect and run inside the target's ``SELECT``; rows come back through the provider's DB-API
connection in batches (``fetchmany``) and are written to the PostgreSQL source's staging with
``COPY`` (see :class:`sensei_airflow.engines.postgres.reverse.PostgresReverseWriter`). Memory stays
at one batch.

Checksums of two different engines do not compare (their hash functions differ), so this
reader's ``hash_family`` is its dialect: verification compares counts and a sample column by
column. Sampled values are rendered as PostgreSQL renders the source's types (``numeric(12,2)``
with its scale, ``timestamptz`` in UTC), so a sample compares as text with the source's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sensei_airflow.engines.base import INTEGER_TYPES, integer_cuts
from sensei_airflow.verify import KeyRange, KeyValues

#: rows per fetch.
BATCH_ROWS = 10_000
_SCALE = re.compile(r"^numeric\(\d+,\s*(\d+)\)$")


def render_like_postgres(value: Any, source_type: str) -> str | None:
    """``value`` as PostgreSQL prints it for ``source_type`` (session TimeZone UTC, DateStyle ISO)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    scale = _SCALE.match(source_type)
    if scale and isinstance(value, Decimal | int | float):
        return f"{Decimal(str(value)):.{int(scale.group(1))}f}"
    if isinstance(value, datetime):
        with_zone = source_type.startswith("timestamp with")
        if with_zone and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if with_zone:
            value = value.astimezone(UTC)
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        return text + ("+00" if with_zone else "")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


@dataclass
class BatchedRowSource:
    """A target table read as source rows through its inverse expressions, over DB-API.

    :param engine: a DB-API engine (``connect()``, ``placeholder()``, ``transpile()``).
    :param table: quoted, qualified target table.
    :param columns: source column names, in order.
    :param exprs: inverse expressions in the engine's dialect.
    :param types: the source columns' PostgreSQL types (for rendering samples).
    :param keys: quoted target key columns.
    :param key_types: the source key columns' PostgreSQL types.
    """

    engine: Any
    table: str
    columns: list[str]
    exprs: list[str]
    types: list[str]
    keys: list[str]
    key_types: list[str]

    @property
    def hash_family(self) -> str:
        return f"{self.engine.dialect}: not comparable"

    def _value(self, text: str, position: int) -> Any:
        return int(text) if self.key_types[position] in INTEGER_TYPES else text

    def _where(self, key_range: KeyRange) -> tuple[str, list[Any]]:
        if len(self.keys) != 1 and (key_range.lo or key_range.hi):
            raise ValueError("key ranges of a composite key are cut on PostgreSQL targets only")
        parts: list[str] = []
        params: list[Any] = []
        if key_range.lo is not None:
            parts.append(f"{self.keys[0]} > {self.engine.placeholder(len(params) + 1)}")
            params.append(self._value(key_range.lo[0], 0))
        if key_range.hi is not None:
            parts.append(f"{self.keys[0]} <= {self.engine.placeholder(len(params) + 1)}")
            params.append(self._value(key_range.hi[0], 0))
        return " AND ".join(parts) or "1 = 1", params

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.engine.query(sql, params)

    def count_rows(self, key_range: KeyRange) -> int:
        where, params = self._where(key_range)
        return int(self._query(f"SELECT count(*) FROM {self.table} WHERE {where}", params)[0][0])  # noqa: S608

    def checksum(self, key_range: KeyRange) -> tuple[int, int]:
        """Only the count: this engine's hashes do not compare with PostgreSQL's."""
        return self.count_rows(key_range), 0

    def boundaries(self, key_range: KeyRange, parts: int) -> list[KeyValues]:
        """Cuts of a single integer key (other keys: one range)."""
        if parts < 2 or len(self.keys) != 1 or self.key_types[0] not in INTEGER_TYPES:
            return []
        return integer_cuts(self._query, self.table, self.keys[0], self._where(key_range), parts)

    def batches(self, key_range: KeyRange) -> Iterator[Sequence[tuple[Any, ...]]]:
        where, params = self._where(key_range)
        q = self.engine.quote_identifier
        selected = ", ".join(f"{e} AS {q(f'__sensei_c{i}')}" for i, e in enumerate(self.exprs))
        sql = f"SELECT {selected} FROM {self.table} WHERE {where}"  # noqa: S608
        with self.engine.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, tuple(params)) if params else cur.execute(sql)
                while True:
                    rows = cur.fetchmany(BATCH_ROWS)
                    if not rows:
                        break
                    yield [tuple(r) for r in rows]
            finally:
                cur.close()

    def sample_keys(self, n: int) -> list[KeyValues]:
        keys = ", ".join(self.keys)
        # no ORDER BY random(): engines differ in what random() returns (the PostgreSQL side of a
        # comparison samples at random; this side contributes the rows its engine returns first)
        rows = self._query(f"SELECT {keys} FROM {self.table} LIMIT {int(n)}")  # noqa: S608
        return [tuple(str(v) for v in r) for r in rows]

    def rows(self, keys: Sequence[KeyValues]) -> dict[KeyValues, tuple[str | None, ...]]:
        if not keys:
            return {}
        found: dict[KeyValues, tuple[str | None, ...]] = {}
        n = len(self.keys)
        for key in keys:
            where = " AND ".join(f"{k} = {self.engine.placeholder(i + 1)}" for i, k in enumerate(self.keys))
            q = self.engine.quote_identifier
            selected = [f"{k} AS {q(f'__sensei_k{i}')}" for i, k in enumerate(self.keys)]
            selected += [f"{e} AS {q(f'__sensei_c{i}')}" for i, e in enumerate(self.exprs)]
            sql = f"SELECT {', '.join(selected)} FROM {self.table} WHERE {where}"  # noqa: S608
            for row in self._query(sql, [self._value(v, i) for i, v in enumerate(key)]):
                rendered = tuple(render_like_postgres(v, t) for v, t in zip(row[n:], self.types, strict=True))
                found[tuple(str(v) for v in row[:n])] = rendered
        return found

    def round_trip(
        self, forwards: Sequence[Any], target_types: dict[str, str], n: int
    ) -> tuple[dict[str, Any] | None, int]:
        """Inverse then forward on ``n`` target rows, in the target's dialect (as on PostgreSQL)."""
        q = self.engine.quote_identifier
        inner = [f"{k} AS {q(f'__sensei_k{i}')}" for i, k in enumerate(self.keys)]
        inner += [
            f"{self.engine.reverse_quote_column(f.target)} AS {q(f'__sensei_t{i}')}"
            for i, f in enumerate(forwards)
        ]
        inner += [
            f"{e} AS {self.engine.reverse_quote_column(c)}"
            for c, e in zip(self.columns, self.exprs, strict=True)
        ]
        back = [self.engine.transpile(f"CAST(({f.forward}) AS {target_types[f.target]})") for f in forwards]
        outer = ", ".join(f"{q(f'__sensei_t{i}')}, {b}" for i, b in enumerate(back))
        keys = ", ".join(q(f"__sensei_k{i}") for i in range(len(self.keys)))
        sql = (
            f"SELECT {keys}, {outer} FROM (SELECT {', '.join(inner)} FROM {self.table} "  # noqa: S608
            f"LIMIT {int(n)}) s"
        )
        try:
            found = self._query(sql)
        except Exception as exc:  # a bad expression fails inside the database
            message = str(exc).splitlines()[0]
            return {"column": "(expression)", "key": None, "target": message, "round_trip": "error"}, 0
        nk = len(self.keys)
        for row in found:
            for i, forward in enumerate(forwards):
                kept, again = row[nk + 2 * i], row[nk + 2 * i + 1]
                if kept != again:
                    key = row[0] if nk == 1 else list(row[:nk])
                    return {
                        "column": forward.target,
                        "key": key,
                        "target": str(kept),
                        "round_trip": str(again),
                    }, len(found)
        return None, len(found)
