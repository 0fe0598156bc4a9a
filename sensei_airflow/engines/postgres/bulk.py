"""Loading many rows into keyed, foreign-keyed tables: constraints set aside, then put back.

A table that checks its foreign keys and maintains its indexes row by row loads several times
slower than one that is checked once: one validating join per foreign key (``ALTER TABLE ...
ADD CONSTRAINT``) and one sorted build per index instead of one lookup and one insertion per
row. Both the backup restore (ADR 0103) and the reverse migration's apply (ADR 0200) load this
way, inside their single transaction, with the tables locked ``ACCESS EXCLUSIVE`` until commit:
nobody sees the tables without their constraints.

Foreign keys come back by their own name and definition, indexes through their constraint or
their ``CREATE INDEX`` (:func:`.catalog.rebuildable_indexes` says which are kept in place),
comments included. A row that breaks a foreign key fails the load with
:class:`ForeignKeyBroken`, whose message is one line naming the constraint and the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from sensei_airflow.engines.postgres import catalog

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine


class ForeignKeyBroken(Exception):
    """A loaded row breaks a foreign key: the validating join found it (the transaction rolls back)."""


@dataclass
class SetAside:
    """The foreign keys and indexes dropped for a load, and the SQL run to drop and rebuild them."""

    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


def set_aside(
    cur: Any, engine: PostgresEngine, quoted_tables: list[str], *, indexes: bool = True
) -> SetAside:
    """Drop the foreign keys of the tables (their referencing side) and, with ``indexes``, their
    rebuildable indexes, in the caller's transaction.

    :param cur: a cursor (or connection) in the load's transaction.
    :param quoted_tables: the tables about to be loaded, quoted and qualified.
    :param indexes: also drop the indexes (off when the load itself needs them, e.g. an upsert's key).
    """
    aside = SetAside()
    if not quoted_tables:
        return aside
    aside.foreign_keys = catalog.foreign_key_definitions(cur, quoted_tables)
    for fk in aside.foreign_keys:
        statement = f"ALTER TABLE {fk['table']} DROP CONSTRAINT {engine.quote_identifier(fk['name'])}"
        cur.execute(statement)
        aside.statements.append(statement)
    if indexes:
        aside.indexes = catalog.rebuildable_indexes(cur, quoted_tables)
        for index in aside.indexes:
            if index["constraint"]:
                constraint = engine.quote_identifier(index["constraint"])
                statement = f"ALTER TABLE {index['table']} DROP CONSTRAINT {constraint}"
            else:
                statement = f"DROP INDEX {index['index']}"
            cur.execute(statement)
            aside.statements.append(statement)
    return aside


def put_back(cur: Any, engine: PostgresEngine, aside: SetAside) -> list[str]:
    """Build the indexes again, then add each foreign key back, validated by one join; the SQL run.

    :raises ForeignKeyBroken: a loaded row breaks a foreign key (one line: constraint, table, row).
    """
    run: list[str] = []
    for index in aside.indexes:
        constraint = engine.quote_identifier(index["constraint"]) if index["constraint"] else ""
        if index["constraint"]:
            statement = (
                f"ALTER TABLE {index['table']} ADD CONSTRAINT {constraint} {index['constraint_definition']}"
            )
        else:
            statement = index["definition"]
        cur.execute(statement)
        run.append(statement)
        if index["comment"] is not None:
            comment(cur, f"COMMENT ON INDEX {index['index']}", index["comment"])
        if index["constraint_comment"] is not None:
            comment(
                cur, f"COMMENT ON CONSTRAINT {constraint} ON {index['table']}", index["constraint_comment"]
            )
    for fk in aside.foreign_keys:
        name = engine.quote_identifier(fk["name"])
        statement = f"ALTER TABLE {fk['table']} ADD CONSTRAINT {name} {fk['definition']}"
        try:
            cur.execute(statement)
        except psycopg.errors.ForeignKeyViolation as exc:
            detail = (exc.diag.message_detail or "").replace("\n", " ").strip()
            raise ForeignKeyBroken(
                f"foreign key {fk['name']} of {fk['table']} does not hold for the loaded rows"
                + (f" ({detail})" if detail else "")
                + "; the transaction was rolled back, nothing was changed"
            ) from None
        run.append(statement)
        if fk["comment"] is not None:
            comment(cur, f"COMMENT ON CONSTRAINT {name} ON {fk['table']}", fk["comment"])
    return run


def comment(cur: Any, target: str, text: str) -> None:
    """``COMMENT ON ... IS '<text>'``: a utility statement takes no bind parameters, so quote the literal."""
    cur.execute(sql.SQL(target + " IS {}").format(sql.Literal(text)))  # type: ignore[arg-type]
