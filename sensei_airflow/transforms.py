"""Column transforms and their inverses: how a target value becomes a source value again.

A manifest column mapping (:class:`sensei_airflow.manifest.ColumnMapping`) is one of:

* a copy or a rename (``{source: email, target: email_address}``);
* a pair of SQL expressions, ``forward`` over source columns and ``inverse`` over target
  columns (a ``forward`` without ``inverse`` is irreversible);
* a built-in transform that knows its own inverse (``transform:`` with exactly one of
  ``scale``, ``offset``, ``cast``, ``map``, ``split``, ``join``, ``timezone``)::

      - {source: price, target: price_cents, transform: {scale: 100}}
      - {source: created, target: created, transform: {offset: "2 hours"}}
      - {source: qty, target: qty, transform: {cast: {to: bigint, from: integer}}}
      - {source: status, target: status, transform: {map: {A: active, B: blocked}}}
      - {source: name, target: first, transform: {split: {delimiter: " ", into: [first, last]}}}
      - {source: first, target: full, transform: {join: {delimiter: " ", columns: [first, last]}}}
      - {source: at, target: at_utc, transform: {timezone: {from: Europe/Paris, to: UTC}}}

  A ``map`` that is not one-to-one is irreversible.

Expressions are PostgreSQL-flavoured SQL (an engine renders them in its dialect). This module
is imported by the manifest, so it stays free of heavy imports (no sqlglot at import time).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sensei_airflow.names import canonical_part, parse_name, quote_part

if TYPE_CHECKING:
    from sensei_airflow.manifest import ColumnMapping, TableMapping

Quote = Callable[[str], str]

_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\])?$")
_ZONE = re.compile(r"^[A-Za-z0-9_+\-/:]{1,64}$")
_INTERVAL = re.compile(r"^[0-9A-Za-z .:+\-]{1,64}$")


def sql_literal(value: str | int | float | bool) -> str:
    """A SQL literal for a manifest constant (numbers bare, text quoted with ``'`` doubled)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _plain_quote(name: str) -> str:
    """A written column name quoted as PostgreSQL spells it (the engine-neutral default)."""
    return quote_part(parse_name(name, 1)[0].text)


#: a column name as a manifest writes it (sensei_airflow/names.py), kept in canonical form.
ColumnName = Annotated[str, AfterValidator(canonical_part)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _check_type(name: str) -> str:
    if not _TYPE_NAME.match(name):
        raise ValueError(f"{name!r} is not a SQL type name")
    return name


class CastSpec(_Frozen):
    """``{to: bigint, from: integer}``: the target holds ``CAST(x AS to)``; ``from`` is the source type."""

    to: str
    from_: str | None = Field(None, alias="from")

    @model_validator(mode="after")
    def _types(self) -> CastSpec:
        _check_type(self.to)
        if self.from_ is not None:
            _check_type(self.from_)
        return self


class SplitSpec(_Frozen):
    """One source column split on ``delimiter`` into the target columns ``into`` (the last takes the rest)."""

    delimiter: Annotated[str, Field(min_length=1)]
    into: Annotated[list[ColumnName], Field(min_length=2)]


class JoinSpec(_Frozen):
    """The source ``columns`` joined with ``delimiter`` into one target column."""

    delimiter: Annotated[str, Field(min_length=1)]
    columns: Annotated[list[ColumnName], Field(min_length=2)]


class TimezoneSpec(_Frozen):
    """A ``timestamp`` local to zone ``from`` on the source, local to zone ``to`` on the target."""

    from_: str = Field(alias="from")
    to: str

    @model_validator(mode="after")
    def _zones(self) -> TimezoneSpec:
        for zone in (self.from_, self.to):
            if not _ZONE.match(zone):
                raise ValueError(f"{zone!r} is not a time zone name")
        return self


class BuiltinTransform(_Frozen):
    """A built-in transform that knows its inverse; exactly one key is set."""

    scale: float | int | None = None
    offset: float | int | str | None = None
    cast: CastSpec | None = None
    map: dict[str | int, str | int] | None = None
    split: SplitSpec | None = None
    join: JoinSpec | None = None
    timezone: TimezoneSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BuiltinTransform:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"transform: give exactly one of {names} (got {', '.join(chosen) or 'none'})")
        if self.scale is not None and self.scale == 0:
            raise ValueError("transform: scale 0 cannot be undone")
        if isinstance(self.offset, str) and not _INTERVAL.match(self.offset):
            raise ValueError(f"transform: offset {self.offset!r} is neither a number nor an interval")
        if self.map is not None and not self.map:
            raise ValueError("transform: map needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def reversible(self) -> bool:
        """False only for a value map that sends two values to the same one."""
        if self.map is not None:
            return len(set(map(str, self.map.values()))) == len(self.map)
        return True

    @property
    def why_irreversible(self) -> str:
        if self.map is not None and not self.reversible:
            seen: dict[str, str] = {}
            for key, value in self.map.items():
                if str(value) in seen:
                    return f"its map sends both {seen[str(value)]!r} and {key!r} to {value!r}"
                seen[str(value)] = str(key)
        return ""


# -- the expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InverseColumn:
    """A source column and the SQL (over target columns) that gives its value back."""

    source: str
    inverse: str


@dataclass(frozen=True)
class ForwardColumn:
    """A target column and the SQL (over source columns) the forward migration applied."""

    target: str
    forward: str


def source_columns(mapping: ColumnMapping) -> list[str]:
    """The source columns a mapping reads (several for ``join``)."""
    if mapping.transform is not None and mapping.transform.join is not None:
        return list(mapping.transform.join.columns)
    return [mapping.source]


def target_columns(mapping: ColumnMapping) -> list[str]:
    """The target columns a mapping writes (several for ``split``)."""
    if mapping.transform is not None and mapping.transform.split is not None:
        return list(mapping.transform.split.into)
    return [mapping.target]


def _part(expr: str, delimiter: str, index: int, count: int) -> str:
    """Part ``index`` (0-based) of ``count`` of ``expr`` split on ``delimiter``; the last takes the rest."""
    d = sql_literal(delimiter)
    if index < count - 1:
        return f"split_part({expr}, {d}, {index + 1})"
    return f"array_to_string((string_to_array({expr}, {d}))[{count}:], {d})"


def _amount(offset: float | str) -> str:
    return f"interval {sql_literal(offset)}" if isinstance(offset, str) else sql_literal(offset)


def _joined(exprs: Sequence[str], delimiter: str) -> str:
    return f" || {sql_literal(delimiter)} || ".join(f"({e})" for e in exprs)


def inverse_columns(mapping: ColumnMapping, quote: Quote = _plain_quote) -> list[InverseColumn]:
    """The inverse expressions of one mapping, one per source column it reads.

    :raises ValueError: when the mapping has no inverse (see :attr:`ColumnMapping.reversible`).
    """
    if not mapping.reversible:
        raise ValueError(f"column {mapping.source} -> {mapping.target} has no inverse")
    t = quote(mapping.target)
    spec = mapping.transform
    if spec is None:
        return [InverseColumn(mapping.source, mapping.inverse if mapping.forward is not None else t)]  # type: ignore[arg-type]
    if spec.scale is not None:
        return [InverseColumn(mapping.source, f"(({t})::numeric / {sql_literal(spec.scale)})")]
    if spec.offset is not None:
        amount = _amount(spec.offset)
        return [InverseColumn(mapping.source, f"({t} - {amount})")]
    if spec.cast is not None:
        expr = f"CAST({t} AS {spec.cast.from_})" if spec.cast.from_ else t
        return [InverseColumn(mapping.source, expr)]
    if spec.map is not None:
        cases = " ".join(f"WHEN {sql_literal(v)} THEN {sql_literal(k)}" for k, v in spec.map.items())
        return [InverseColumn(mapping.source, f"(CASE {t} {cases} END)")]
    if spec.split is not None:
        parts = [quote(c) for c in spec.split.into]
        return [InverseColumn(mapping.source, _joined(parts, spec.split.delimiter))]
    if spec.join is not None:
        n = len(spec.join.columns)
        return [
            InverseColumn(column, _part(t, spec.join.delimiter, i, n))
            for i, column in enumerate(spec.join.columns)
        ]
    assert spec.timezone is not None
    zones = spec.timezone
    return [
        InverseColumn(
            mapping.source,
            f"(({t} AT TIME ZONE {sql_literal(zones.to)}) AT TIME ZONE {sql_literal(zones.from_)})",
        )
    ]


def forward_columns(mapping: ColumnMapping, quote: Quote = _plain_quote) -> list[ForwardColumn]:
    """The forward expressions of one mapping, one per target column it writes.

    A ``forward`` without inverse is returned too (it is what the migration did).
    """
    s = quote(mapping.source)
    spec = mapping.transform
    if spec is None:
        return [ForwardColumn(mapping.target, mapping.forward if mapping.forward is not None else s)]
    if spec.scale is not None:
        return [ForwardColumn(mapping.target, f"({s} * {sql_literal(spec.scale)})")]
    if spec.offset is not None:
        amount = _amount(spec.offset)
        return [ForwardColumn(mapping.target, f"({s} + {amount})")]
    if spec.cast is not None:
        return [ForwardColumn(mapping.target, f"CAST({s} AS {spec.cast.to})")]
    if spec.map is not None:
        cases = " ".join(f"WHEN {sql_literal(k)} THEN {sql_literal(v)}" for k, v in spec.map.items())
        return [ForwardColumn(mapping.target, f"(CASE {s} {cases} END)")]
    if spec.split is not None:
        n = len(spec.split.into)
        return [ForwardColumn(c, _part(s, spec.split.delimiter, i, n)) for i, c in enumerate(spec.split.into)]
    if spec.join is not None:
        return [
            ForwardColumn(mapping.target, _joined([quote(c) for c in spec.join.columns], spec.join.delimiter))
        ]
    assert spec.timezone is not None
    zones = spec.timezone
    return [
        ForwardColumn(
            mapping.target,
            f"(({s} AT TIME ZONE {sql_literal(zones.from_)}) AT TIME ZONE {sql_literal(zones.to)})",
        )
    ]


def irreversible_columns(table: TableMapping) -> list[str]:
    """``"target_table.column (why)"`` for every mapping of the table that has no inverse."""
    found = []
    for mapping in table.columns or []:
        if mapping.reversible:
            continue
        if mapping.transform is not None:
            why = mapping.transform.why_irreversible
        else:
            why = f"forward {mapping.forward!r} has no inverse"
        found.append(f"{table.target}.{mapping.target} ({why})")
    return found


def key_is_copied(table: TableMapping) -> list[str]:
    """Key columns (target names) mapped by more than a copy, rename or cast: key ranges would not match."""
    bad = []
    for key in table.key:
        for mapping in table.columns or []:
            if key in target_columns(mapping):
                plain = mapping.forward is None and mapping.transform is None
                cast = mapping.transform is not None and mapping.transform.cast is not None
                if not (plain or cast):
                    bad.append(key)
    return bad


@dataclass(frozen=True)
class ColumnPlan:
    """How every written source column of a table is computed from the target (engine-neutral)."""

    #: (source column, inverse expression over target columns)
    inverses: list[InverseColumn]
    #: source key columns, in the manifest's key order
    source_key: list[str]
    #: target key columns, in the manifest's key order
    target_key: list[str]
    #: (target column, forward expression over source columns), for the round-trip proof
    forwards: list[ForwardColumn]


def column_plan(table: TableMapping, source_columns_now: Sequence[str], quote: Quote) -> ColumnPlan:
    """Resolve a table's mappings against the source's columns.

    With no ``columns`` in the manifest, every source column is copied under its own name.

    :param source_columns_now: the source table's columns (used when the manifest lists none).
    """
    if table.columns is None:
        inverses = [InverseColumn(c, quote(c)) for c in source_columns_now]
        forwards = [ForwardColumn(c, quote(c)) for c in source_columns_now]
        return ColumnPlan(inverses, list(table.key), list(table.key), forwards)
    inverses = [inv for m in table.columns for inv in inverse_columns(m, quote)]
    forwards = [fwd for m in table.columns for fwd in forward_columns(m, quote)]
    by_target = {}
    for mapping in table.columns:
        for target in target_columns(mapping):
            by_target[target] = mapping.source
    return ColumnPlan(inverses, [by_target[k] for k in table.key], list(table.key), forwards)


def describe(mapping: ColumnMapping) -> dict[str, Any]:
    """A mapping as the report shows it: names and both expressions."""
    out: dict[str, Any] = {"source": mapping.source, "target": mapping.target}
    try:
        out["inverse"] = [i.inverse for i in inverse_columns(mapping)]
    except ValueError:
        out["inverse"] = None
    out["forward"] = [f.forward for f in forward_columns(mapping)]
    return out
